"""What envelope encryption at rest costs compared with a plain file copy, measured in one run.

A 1 GiB file of generated, incompressible data is written to a temporary folder (``--dir``; removed at
the end), flushed to disk once (``os.sync``), then, ``--repeat`` times in alternation, best time kept:

* **copy**: ``shutil.copyfile`` (in-kernel ``sendfile``, the fastest plain copy Python has);
* **stream copy**: a Python read/write loop with 1 MiB buffers (what any streaming transform must at
  least do; informational);
* **encrypt**: ``mlops_bundle.crypto.encrypt_stream`` file to file (local KEK keyset, Tink
  AES256_GCM_HKDF_1MB streaming AEAD, fresh data key);
* **decrypt**: ``decrypt_stream`` of that ciphertext, file to file.
Destinations are deleted before each run, so every writer starts from the same page-cache state; all
four write 1 GiB into the page cache without fsync. ``--durable`` adds a second table where every
output is fsync'ed: copy + fsync vs ``encrypt_file`` / ``decrypt_file`` (atomic temp file + fsync +
rename, the way the bundle writes objects) -- there the disk, not the cipher, sets the pace.

Peak RSS (``ru_maxrss``) of ``encrypt_file`` and ``decrypt_file`` is measured in a fresh subprocess each,
for a 64 MiB and a 2 GiB input. Linux carries ``ru_maxrss`` across exec (a child starts with its parent's
peak), so the throughput runs above happen in a child of their own and this parent, which only generates
files through a 1 MiB buffer and starts the children, never imports Tink; its own peak is printed as the
floor under every child's, and VmHWM (the child's own address space) beside each peak. Goals: encrypt and decrypt throughput >= 0.8x of copy; peak RSS at
2 GiB within 64 MiB of the 64 MiB run. Exit 0 unless ``--strict`` is given and a goal is missed.

    .venv/bin/python benchmarks/bench_crypto.py [--size-mib 1024] [--repeat 3] [--durable] [--strict]
        [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOAL_RATIO = 0.8
GOAL_RSS_MB = 64.0
MiB = 1 << 20


def _generate(path: Path, size: int) -> None:
    """Incompressible data, fast: a random 1 MiB block, its first 8 bytes varied per block."""
    block = bytearray(os.urandom(MiB))
    with open(path, "wb", buffering=0) as fh:
        written, i = 0, 0
        while written < size:
            block[:8] = i.to_bytes(8, "big")
            n = min(MiB, size - written)
            fh.write(memoryview(block)[:n])
            written += n
            i += 1


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hwm_mb() -> float:
    """VmHWM: the high-water mark of this process's own address space (not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _child(mode: str, src: str, dst: str, keyset_file: str) -> None:
    """Run one encrypt/decrypt in this (fresh) process and print its peak RSS as JSON."""
    from mlops_bundle.crypto import LocalKeyring, decrypt_file, encrypt_file

    keyring = LocalKeyring(Path(keyset_file).read_text())
    before = _peak_rss_mb()
    t0 = time.perf_counter()
    (encrypt_file if mode == "encrypt" else decrypt_file)(Path(src), Path(dst), keyring)
    seconds = time.perf_counter() - t0
    out = {"peak_rss_mb": _peak_rss_mb(), "hwm_mb": _hwm_mb(), "rss_before_mb": before, "seconds": seconds}
    print(json.dumps(out))


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "include")}


def _run_child(mode: str, src: Path, dst: Path, keyset_file: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(src), str(dst), str(keyset_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stream_copy(src: Path, dst: Path) -> None:
    buf = bytearray(MiB)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            fout.write(view[:n])


def _copy_durable(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def _table(title: str, size: int, times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    print(f"\n{title} (best of {len(times[baseline])}; median in brackets)")
    base = min(times[baseline])
    ratios = {}
    for name, ts in times.items():
        best, med = min(ts), statistics.median(ts)
        ratios[name] = base / best
        print(
            f"  {name:<13} {size / best / 2**30:6.2f} GiB/s  [{size / med / 2**30:5.2f}]  "
            f"{best:6.2f} s   {ratios[name]:4.2f}x of {baseline}"
        )
    return ratios


def _throughput(args: argparse.Namespace, tmp: Path) -> None:
    """The throughput tables (a child process: Tink and its buffers stay out of the parent's peak RSS).
    Writes the keyset the RSS children use and ``throughput.json`` with the verdict."""
    from mlops_bundle.crypto import LocalKeyring, decrypt_stream, encrypt_stream, generate_local_keyset

    size = args.size_mib * MiB
    keyset_file = tmp / "keyset.json"
    keyset_file.write_text(generate_local_keyset())
    keyset_file.chmod(0o600)
    keyring = LocalKeyring(keyset_file.read_text())
    src = tmp / "input.bin"
    print(f"generating {args.size_mib} MiB in {tmp} ...", flush=True)
    _generate(src, size)
    os.sync()

    out = {k: tmp / k for k in ("copy.bin", "stream.bin", "enc.bin", "dec.bin")}

    def encrypt() -> None:
        with open(src, "rb", buffering=0) as fin, open(out["enc.bin"], "wb") as fout:
            encrypt_stream(fin, fout, keyring)

    def decrypt() -> None:
        with open(out["enc.bin"], "rb") as fin, open(out["dec.bin"], "wb") as fout:
            decrypt_stream(fin, fout, keyring)

    times: dict[str, list[float]] = {"copy": [], "stream copy": [], "encrypt": [], "decrypt": []}
    for _ in range(args.repeat):
        for p in out.values():
            p.unlink(missing_ok=True)
        times["copy"].append(_timed(shutil.copyfile, src, out["copy.bin"]))
        times["stream copy"].append(_timed(_stream_copy, src, out["stream.bin"]))
        times["encrypt"].append(_timed(encrypt))
        times["decrypt"].append(_timed(decrypt))
    ratios = _table(f"throughput, {args.size_mib} MiB, page cache", size, times, "copy")
    enc_over_stream = min(times["stream copy"]) / min(times["encrypt"])
    dec_over_stream = min(times["stream copy"]) / min(times["decrypt"])
    print(f"  vs stream copy: encrypt {enc_over_stream:.2f}x, decrypt {dec_over_stream:.2f}x")
    ok_speed = ratios["encrypt"] >= GOAL_RATIO and ratios["decrypt"] >= GOAL_RATIO
    print(
        f"goal: encrypt and decrypt >= {GOAL_RATIO}x of copy -> encrypt {ratios['encrypt']:.2f}x, "
        f"decrypt {ratios['decrypt']:.2f}x {'PASS' if ok_speed else 'FAIL'}"
    )
    print(f"  ciphertext overhead: {out['enc.bin'].stat().st_size - size} bytes on {size} bytes")
    for p in out.values():
        p.unlink(missing_ok=True)

    if args.durable:
        from mlops_bundle.crypto import decrypt_file, encrypt_file

        os.sync()
        dtimes: dict[str, list[float]] = {"copy+fsync": [], "encrypt_file": [], "decrypt_file": []}
        dtimes["copy+fsync"].append(_timed(_copy_durable, src, out["copy.bin"]))
        dtimes["encrypt_file"].append(_timed(encrypt_file, src, out["enc.bin"], keyring))
        dtimes["decrypt_file"].append(_timed(decrypt_file, out["enc.bin"], out["dec.bin"], keyring))
        _table(f"durable throughput, {args.size_mib} MiB, fsync'ed", size, dtimes, "copy+fsync")
        for p in out.values():
            p.unlink(missing_ok=True)
    src.unlink()
    (tmp / "throughput.json").write_text(json.dumps({"ok_speed": ok_speed}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--durable", action="store_true", help="also compare fsync'ed copy vs encrypt_file")
    ap.add_argument("--rss-small-mib", type=int, default=64)
    ap.add_argument("--rss-large-mib", type=int, default=2048)
    ap.add_argument("--dir", default=None, help="where the temporary files go (default: system temp)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a goal is missed")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--throughput-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0
    if args.throughput_child:
        _throughput(args, args.throughput_child)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="bench-crypto-", dir=args.dir))
    t_start = time.perf_counter()
    try:
        cmd = [sys.executable, __file__, "--throughput-child", str(tmp), "--size-mib", str(args.size_mib)]
        cmd += ["--repeat", str(args.repeat), *(["--durable"] if args.durable else [])]
        subprocess.run(cmd, env=_child_env(), check=True)  # its tables go straight to this stdout
        ok_speed = json.loads((tmp / "throughput.json").read_text())["ok_speed"]
        keyset_file = tmp / "keyset.json"

        print(
            f"\npeak RSS, fresh subprocess each (inputs {args.rss_small_mib} MiB vs {args.rss_large_mib} MiB)"
        )
        rss = {}
        for mib in (args.rss_small_mib, args.rss_large_mib):
            path = tmp / f"rss-{mib}.bin"
            _generate(path, mib * MiB)
            enc = _run_child("encrypt", path, tmp / f"rss-{mib}.enc", keyset_file)
            path.unlink()
            dec = _run_child("decrypt", tmp / f"rss-{mib}.enc", tmp / f"rss-{mib}.out", keyset_file)
            (tmp / f"rss-{mib}.enc").unlink()
            (tmp / f"rss-{mib}.out").unlink()
            rss[mib] = (enc["peak_rss_mb"], dec["peak_rss_mb"])
            print(
                f"  {mib:>5} MiB: encrypt peak {enc['peak_rss_mb']:7.1f} MB (VmHWM {enc['hwm_mb']:.1f}; "
                f"{mib / enc['seconds'] / 1024:.2f} GiB/s), decrypt peak {dec['peak_rss_mb']:7.1f} MB "
                f"(VmHWM {dec['hwm_mb']:.1f}; {mib / dec['seconds'] / 1024:.2f} GiB/s)"
            )
        print(f"  this parent's own peak RSS (a floor under every child's): {_peak_rss_mb():.1f} MB")
        small, large = rss[args.rss_small_mib], rss[args.rss_large_mib]
        d_enc, d_dec = large[0] - small[0], large[1] - small[1]
        ok_rss = abs(d_enc) <= GOAL_RSS_MB and abs(d_dec) <= GOAL_RSS_MB
        print(
            f"goal: peak RSS equal within {GOAL_RSS_MB:.0f} MB -> encrypt {d_enc:+.1f} MB, decrypt {d_dec:+.1f} MB "
            f"{'PASS' if ok_rss else 'FAIL'}"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 1 if (args.strict and not (ok_speed and ok_rss)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
