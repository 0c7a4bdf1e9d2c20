"""Memory of the current process, as the benchmarks' child processes report it (Linux).

Peak (``ru_maxrss``), current (VmRSS) and the address space's high-water mark (VmHWM), in MB. Linux
carries ``ru_maxrss`` across exec, so a child spawned by a big parent inherits the parent's peak: the
benchmarks keep their parents small (data is prepared in a child of its own) and print VmHWM, which
belongs to the new address space only, as a cross-check.
"""

from __future__ import annotations

from pathlib import Path


def memory() -> dict[str, float]:
    """``peak_rss_mb`` always; ``rss_mb`` and ``hwm_mb`` where /proc is readable."""
    import resource

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                out["hwm_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out
