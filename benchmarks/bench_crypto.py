"""Encryption at rest per core: encrypt and decrypt GiB/s and peak RSS, 64 MiB to 2 GiB, in one run.

For each size (64 MiB, 256 MiB, 1 GiB, 2 GiB; ``--quick``: 64 and 256 MiB) a file of generated,
incompressible data is written to a temporary folder (``--dir``; removed as it goes) and flushed to disk
(``os.sync``). A fresh child process then encrypts it and decrypts the result ``--repeat`` (5) times in
alternation, file to file, single-threaded, the way ``EncryptingStorage`` streams a local object:
``encrypt_stream`` from the file opened unbuffered into a new file, ``decrypt_stream`` from the buffered
ciphertext into a new file (local KEK keyset, Tink AES256_GCM_HKDF_1MB streaming AEAD, a fresh data key
per object, the lake's associated data). Before each timed run, outside the timing, its destination is
deleted and ``os.sync`` flushes the previous runs' output, so every writer starts from a new file and no
writeback competes with it. Nothing is fsync'ed inside the timing (``--durable`` adds one fsync'ed
``encrypt_file`` / ``decrypt_file`` per size and a ``copy + fsync`` beside them: there the disk sets the
pace, not the cipher). The last decrypted file is compared byte for byte with the input.

Beside them: a plain Python stream copy of the same file (128 KiB read/write loop, the floor of any
file-to-file transform on this machine at this moment), and every rate per CPU-second of the child
(``time.process_time``; printed as copy/encrypt/decrypt): what one core delivers when it is not shared.
On a loaded machine the wall-clock rate falls with the share of a core the child gets; this one much less.

Memory: each size runs in a child of its own, which reports its peak RSS (``ru_maxrss``: imports and all
timed runs), then the high-water mark of its address space per direction (VmHWM, reset through
``/proc/self/clear_refs`` before one more run of each). Linux carries ``ru_maxrss`` across exec, so this
parent, which only generates files through a 1 MiB buffer and never imports Tink, stays small; its own
peak is printed as the floor under every child's. The load average and CPU count are printed per size.

Goals (issue 17): encrypt and decrypt >= 1 GiB/s each (wall clock, best of ``--repeat``, at every size);
peak RSS flat (the largest size's child within +32 MB of the smallest's). Exit 0 unless ``--strict`` is
given and a goal is missed (1 whenever a round trip differs).

    .venv/bin/python benchmarks/bench_crypto.py [--quick] [--sizes-mib 64,256,1024,2048] [--repeat 5]
        [--durable] [--strict] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procmem import memory  # benchmarks/ is sys.path[0] when run as a script

REPO = Path(__file__).resolve().parents[1]
GOAL_GIBS = 1.0
GOAL_FLAT_MB = 32.0
SIZES_MIB = (64, 256, 1024, 2048)
QUICK_SIZES_MIB = (64, 256)
MiB = 1 << 20
# the stream copy's piece: what Tink's stream adapters write (on this VM, 1 MiB writes into new page cache
# sporadically cost several times the CPU; benchmarks/README.md, "Encryption")
COPY_PIECE = 128 << 10
GiB = 1 << 30
AAD = b'{"key":"staging/bench/part-0.parquet","lake":"bench"}'  # what EncryptingStorage binds


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min) on {os.cpu_count()} CPUs"


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


def _reset_hwm() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0); harmless where /proc is not writable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _child(folder: Path, repeat: int, durable: bool) -> None:
    """Time `repeat` encrypt + decrypt runs of folder/input.bin in this fresh process; JSON on stdout."""
    from mlops_bundle.crypto import (
        LocalKeyring,
        decrypt_file,
        decrypt_stream,
        encrypt_file,
        encrypt_stream,
        generate_local_keyset,
    )

    keyring = LocalKeyring(generate_local_keyset())
    src, enc, dec = folder / "input.bin", folder / "input.enc", folder / "output.bin"
    size = src.stat().st_size
    out: dict = {"load_start": os.getloadavg()[0], "before": memory()}
    for k in ("enc", "dec", "copy", "enc_cpu", "dec_cpu", "copy_cpu"):
        out[k] = []

    def encrypt() -> None:
        with open(src, "rb", buffering=0) as fin, open(enc, "wb") as fout:
            encrypt_stream(fin, fout, keyring, aad=AAD)

    def decrypt() -> None:
        with open(enc, "rb") as fin, open(dec, "wb") as fout:
            decrypt_stream(fin, fout, keyring, aad=AAD)

    def copy() -> None:  # the floor of any file-to-file transform in Python: read + write, 128 KiB pieces
        buf = bytearray(COPY_PIECE)
        view = memoryview(buf)
        with open(src, "rb", buffering=0) as fin, open(folder / "copy.bin", "wb", buffering=0) as fout:
            while n := fin.readinto(buf):
                fout.write(view[:n])

    def timed(fn, dst: Path, key: str | None = None) -> float:
        dst.unlink(missing_ok=True)  # outside the timing: every writer starts from a new file, and with
        os.sync()  # nothing dirty, so no writeback below the dirty threshold competes with the timed run
        cpu0, t0 = time.process_time(), time.perf_counter()
        fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if key:  # CPU seconds of this process (user + system): what the run cost one core
            out[f"{key}_cpu"].append(cpu)
        return seconds

    for i in range(repeat):
        out["copy"].append(timed(copy, folder / "copy.bin", "copy"))
        (folder / "copy.bin").unlink()
        out["enc"].append(timed(encrypt, enc, "enc"))
        dec.unlink(missing_ok=True)  # keep one copy of the data at a time in the page cache
        out["dec"].append(timed(decrypt, dec, "dec"))
        if i != repeat - 1:
            dec.unlink()
    peak = memory()["peak_rss_mb"]  # ru_maxrss before any VmHWM reset (the reset lowers it too)
    out["ciphertext_bytes"] = enc.stat().st_size
    out["same"] = dec.stat().st_size == size and filecmp.cmp(src, dec, shallow=False)
    # VmHWM per direction: one more run of each after a reset (the timed runs above held both)
    for direction, fn, dst in (("enc", encrypt, enc), ("dec", decrypt, dec)):
        dst.unlink(missing_ok=True)
        _reset_hwm()
        fn()
        out[f"hwm_{direction}_mb"] = memory().get("hwm_mb", 0.0)
    if durable:
        copy = folder / "copy.bin"
        for p in (enc, dec, copy):
            p.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        shutil.copyfile(src, copy)
        _fsync_path(copy)
        out["durable"] = {"copy+fsync": time.perf_counter() - t0}
        copy.unlink()
        out["durable"]["encrypt_file"] = timed(lambda: encrypt_file(src, enc, keyring, aad=AAD), enc)
        out["durable"]["decrypt_file"] = timed(lambda: decrypt_file(enc, dec, keyring, aad=AAD), dec)
    out["after"] = memory()
    out["peak_rss_mb"] = max(peak, out["after"]["peak_rss_mb"])
    out["load_end"] = os.getloadavg()[0]
    print(json.dumps(out))


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "include")}


def _run_size(tmp: Path, mib: int, args: argparse.Namespace) -> dict:
    folder = tmp / f"{mib}mib"
    folder.mkdir()
    try:
        _generate(folder / "input.bin", mib * MiB)
        os.sync()  # the input's writeback must not compete with the timed writers
        cmd = [sys.executable, __file__, "--child", str(folder), "--repeat", str(args.repeat)]
        cmd += ["--durable"] if args.durable else []
        done = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
        if done.returncode:
            raise SystemExit(f"bench_crypto: the {mib} MiB child failed:\n{done.stderr.strip()}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rate(size: int, seconds: float) -> float:
    return size / seconds / GiB


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mib", default=None, help="comma-separated sizes (default 64,256,1024,2048)")
    ap.add_argument("--quick", action="store_true", help="64 and 256 MiB, 3 runs each (a smoke run)")
    ap.add_argument("--repeat", type=int, default=None, help="runs per size, best kept (default 5)")
    ap.add_argument("--durable", action="store_true", help="also time fsync'ed encrypt_file/decrypt_file")
    ap.add_argument("--dir", default=None, help="where the temporary files go (default: system temp)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a goal is missed")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.child:
        _child(args.child, args.repeat, args.durable)
        return 0
    sizes = QUICK_SIZES_MIB if args.quick else SIZES_MIB
    if args.sizes_mib:
        sizes = tuple(int(s) for s in args.sizes_mib.split(","))

    tmp = Path(tempfile.mkdtemp(prefix="bench-crypto-", dir=args.dir))
    need = 3 * max(sizes) * MiB + 256 * MiB  # input, ciphertext, decrypted copy
    free = shutil.disk_usage(tmp).free
    if free < need:
        shutil.rmtree(tmp, ignore_errors=True)
        print(
            f"bench_crypto: {tmp.parent} has {free / GiB:.1f} GiB free, the run needs {need / GiB:.1f}; "
            "pass --dir on a larger disk or smaller --sizes-mib",
            file=sys.stderr,
        )
        return 2
    print(
        f"encryption benchmark: python {sys.version.split()[0]}, {_load()}, files in {tmp}; best of "
        f"{args.repeat} in GiB/s (median in brackets), single thread, file to file through the page cache",
        flush=True,
    )
    t_start = time.perf_counter()
    results: dict[int, dict] = {}
    try:
        header = (
            f"{'size':>9} | {'stream copy':>11} | {'encrypt':>11} | {'decrypt':>11} | {'per CPU-s':>14} | "
            f"{'peak RSS':>9} | {'VmHWM enc/dec':>13} | load (start->end)"
        )
        print(header + "\n" + "-" * len(header), flush=True)
        for mib in sizes:
            r = results[mib] = _run_size(tmp, mib, args)
            size = mib * MiB
            best = {k: _rate(size, min(r[k])) for k in ("copy", "enc", "dec")}
            med = {k: _rate(size, statistics.median(r[k])) for k in ("copy", "enc", "dec")}
            cpu = {k: _rate(size, min(r[f"{k}_cpu"])) for k in ("copy", "enc", "dec")}
            cols = [f"{best[k]:.2f} [{med[k]:.2f}]" for k in ("copy", "enc", "dec")]
            print(
                f"{mib:>5} MiB | {cols[0]:>11} | {cols[1]:>11} | {cols[2]:>11} | "
                f"{cpu['copy']:.2f}/{cpu['enc']:.2f}/{cpu['dec']:.2f} | {r['peak_rss_mb']:6.1f} MB | "
                f"{r['hwm_enc_mb']:5.1f}/{r['hwm_dec_mb']:5.1f} MB | {r['load_start']:.2f}->{r['load_end']:.2f}"
                + ("" if r["same"] else "  ROUND TRIP DIFFERS"),
                flush=True,
            )
            if "durable" in r:
                print(
                    "          durable (fsync'ed, the disk's pace): "
                    + ", ".join(f"{k} {_rate(size, v):.2f} GiB/s" for k, v in r["durable"].items()),
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    small, large = results[min(sizes)], results[max(sizes)]
    overhead = (small["ciphertext_bytes"] - min(sizes) * MiB, large["ciphertext_bytes"] - max(sizes) * MiB)
    print(
        f"ciphertext overhead: {overhead[0]} bytes on {min(sizes)} MiB, {overhead[1]} bytes on {max(sizes)} MiB; "
        f"child baseline after imports {small['before']['peak_rss_mb']:.1f} MB; this parent's own peak RSS "
        f"(a floor under every child's) {memory()['peak_rss_mb']:.1f} MB"
    )
    slowest = {k: min(_rate(m * MiB, min(r[k])) for m, r in results.items()) for k in ("enc", "dec")}
    slowest_cpu = {
        k: min(_rate(m * MiB, min(r[f"{k}_cpu"])) for m, r in results.items()) for k in ("enc", "dec")
    }
    slowest_enc, slowest_dec = slowest["enc"], slowest["dec"]
    ok_speed = slowest_enc >= GOAL_GIBS and slowest_dec >= GOAL_GIBS
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    ok_flat = growth <= GOAL_FLAT_MB
    ok_same = all(r["same"] for r in results.values())
    print(
        f"goal: encrypt and decrypt >= {GOAL_GIBS:.0f} GiB/s at every size -> slowest size: encrypt "
        f"{slowest_enc:.2f}, decrypt {slowest_dec:.2f} GiB/s {'PASS' if ok_speed else 'FAIL'} ({_load()})"
    )
    print(
        f"      per CPU-second of the process (what one core does when it is not shared; writeback by the "
        f"kernel's flusher threads not counted): encrypt {slowest_cpu['enc']:.2f}, decrypt "
        f"{slowest_cpu['dec']:.2f} GiB/s at the slowest size"
    )
    print(
        f"goal: peak RSS flat ({max(sizes)} MiB within +{GOAL_FLAT_MB:.0f} MB of {min(sizes)} MiB) -> "
        f"{small['peak_rss_mb']:.1f} MB vs {large['peak_rss_mb']:.1f} MB ({growth:+.1f} MB) "
        f"{'PASS' if ok_flat else 'FAIL'}"
    )
    if not ok_same:
        print("FAIL: a decrypted file differs from its input")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if not ok_same:
        return 1
    return 1 if (args.strict and not (ok_speed and ok_flat)) else 0


if __name__ == "__main__":
    raise SystemExit(main())
