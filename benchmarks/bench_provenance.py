"""Provenance check cost per model load: digest + HMAC of the model file vs the skops load it guards.

Trains the config's largest candidate (``random_forest``: 150 trees, depth 10) on a generated batch,
writes it as ``model.skops`` the way MLflow's sklearn flavour does, signs it (``provenance.signed_tags``)
and then times, ``--repeat`` times each in this process:

* **check**: ``provenance.verify`` on the downloaded-model folder (find the skops file, SHA-256 it, HMAC,
  constant-time compare), i.e. what every load adds before deserializing;
* **load**: ``skops.io.load`` with the bundle's trust list (``training.trusted_types``), the load itself.

The download from the artifact store is the same with or without the check and is not timed. Goal: the
check costs < 50 ms per load (median); its share of check + load is printed too.

    .venv/bin/python benchmarks/bench_provenance.py [--rows 20000] [--repeat 20] [--strict]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
os.environ.setdefault("MLOPS_PROVENANCE_KEY", "benchmark-key-not-a-secret")

from mlops_bundle import ingest, provenance, training  # noqa: E402
from mlops_bundle.config import load_config  # noqa: E402
from mlops_bundle.sample import generate_batch  # noqa: E402

GOAL_MS = 50.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()

    import skops.io

    cfg = load_config(REPO / "config" / "datasets" / "churn.yaml")
    df, _ = ingest.coerce(generate_batch("2026-01-05", rows=args.rows), cfg)
    spec = next(s for s in training.resolve_candidates(cfg) if s.family == "random_forest")
    model = training.build_pipeline(spec, cfg).fit(training.model_input(df, cfg), df[cfg.dataset.target])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.skops"
        skops.io.dump(model, path)
        tags = provenance.signed_tags("run-1", "train-key-1", provenance.file_sha256(path))
        mv = types.SimpleNamespace(version="1", run_id="run-1", tags={**tags, "train_key": "train-key-1"})
        trusted = training.trusted_types(cfg)
        check, load = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            provenance.verify("bench", mv, folder)
            t1 = time.perf_counter()
            skops.io.load(path, trusted=trusted)
            t2 = time.perf_counter()
            check.append((t1 - t0) * 1000)
            load.append((t2 - t1) * 1000)
        size = path.stat().st_size
    c, ld = statistics.median(check), statistics.median(load)
    ok = c < GOAL_MS
    print(f"model: {spec.name} ({spec.family}), model.skops {size / 2**20:.1f} MiB, {args.repeat} repeats")
    print(f"provenance check: median {c:.1f} ms (best {min(check):.1f}); skops load: median {ld:.1f} ms")
    print(f"check share of check + load: {c / (c + ld):.1%}")
    print(f"goal: check < {GOAL_MS:.0f} ms per load -> {'PASS' if ok else 'FAIL'}")
    return 1 if (args.strict and not ok) else 0


if __name__ == "__main__":
    raise SystemExit(main())
