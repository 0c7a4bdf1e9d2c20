"""What training costs through the library, measured in one run: per-model log+register, per-family fit.

A temporary lake gets ``--days`` (default 10) validated partitions of ``--rows`` (default 10,000) rows each,
written the way the ingest DAG writes them (``generate_batch`` -> ``ingest.coerce`` ->
``ingest.write_staging`` with a manifest; the GX gate is not part of training and is skipped), and a
temporary MLflow store (a folder -> SQLite + local artifacts; ``--tracking-uri`` for a server). Then:

* **cold**: one-off costs, not part of the timings below: creating the SQLite schema + experiment (once
  per store), and the first log + register of a tiny model in a process (skops import, MLflow's first
  requirement check; once per worker process);
* **direct**: :func:`run_direct` = ``assemble_window`` + ``train_candidate`` for every configured
  candidate + ``log_candidate`` for each + ``register_best`` (what one process does without Airflow);
* **per model**: ``log_candidate`` + ``register_best`` (its own key, so it really registers) for each
  fitted model. Goal: < 1 s each.

The lead's DAG-vs-direct comparison imports :func:`run_direct` from this file.

    .venv/bin/python benchmarks/bench_training.py [--days 10] [--rows 10000] [--tracking-uri URI] [--strict]
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
sys.path.insert(0, str(REPO))  # tests.lake: partitions written as ingest writes them
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# registering a version signs it (mlops_bundle.provenance): a throwaway key for the benchmark's own store
os.environ.setdefault("MLOPS_PROVENANCE_KEY", "benchmark-key-not-a-secret")
GOAL_LOG_REGISTER_S = 1.0
END_DATE = "2026-01-10"


def stage_lake(cfg, store, end_date: str, days: int, rows: int) -> int:
    """Write `days` validated partitions ending at end_date; return the total row count."""
    from tests.lake import stage

    end = dt.date.fromisoformat(end_date)
    total = 0
    for i in range(days):
        date = (end - dt.timedelta(days=days - 1 - i)).isoformat()
        df = stage(store, cfg, date, rows)
        total += len(df)
    return total


def run_direct(cfg, store, end_date: str, models_out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train every configured candidate without Airflow: assemble + train + log + register.

    Returns {"seconds": total, "per_stage": {...}, "registered": register_best's dict}. Window days come
    from the config. If ``models_out`` is a dict, the fitted (spec, model, metrics, window) land in it.
    """
    from mlops_bundle import training

    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    t = time.perf_counter()
    window = training.assemble_window(store, cfg, end_date)
    stages["assemble_s"] = time.perf_counter() - t
    specs = training.resolve_candidates(cfg)
    key = training.train_key(window.fingerprint, specs, cfg)
    results = []
    for spec in specs:
        t = time.perf_counter()
        model, metrics = training.train_candidate(spec, window, cfg)
        stages[f"train_{spec.name}_s"] = time.perf_counter() - t
        t = time.perf_counter()
        run_id = training.log_candidate(cfg, spec, model, metrics, window, {"triggered_by": "bench_training"})
        stages[f"log_{spec.name}_s"] = time.perf_counter() - t
        results.append({"candidate": spec.name, "run_id": run_id, "metrics": metrics})
        if models_out is not None:
            models_out[spec.name] = (spec, model, metrics, window)
    t = time.perf_counter()
    registered = training.register_best(cfg, results, key)
    stages["register_s"] = time.perf_counter() - t
    total = time.perf_counter() - t0
    return {
        "seconds": round(total, 3),
        "per_stage": {k: round(v, 3) for k, v in stages.items()},
        "registered": registered,
    }


def cold_start(cfg, store, end_date: str) -> tuple[float, float]:
    """(create the store + experiment, first log + register of a tiny model in this process).

    The first is paid once per tracking store, the second once per worker process.
    """
    from mlops_bundle import tracking, training

    t = time.perf_counter()
    tracking.ensure_experiment(cfg)
    t_store = time.perf_counter() - t

    small = cfg.model_copy(
        update={"mlflow": cfg.mlflow.model_copy(update={"registered_model": "bench-warmup"})}
    )
    window = training.assemble_window(store, small, end_date, window_days=1)
    spec = training.resolve_candidates(small)[0]
    model, metrics = training.train_candidate(spec, window, small)
    t = time.perf_counter()
    run_id = training.log_candidate(small, spec, model, metrics, window, {"triggered_by": "bench_training"})
    training.register_best(small, [{"candidate": spec.name, "run_id": run_id, "metrics": metrics}], "warmup")
    return t_store, time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--rows", type=int, default=10_000, help="rows per day")
    parser.add_argument("--tracking-uri", default=None, help="default: a temporary SQLite folder")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a model misses the goal")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from mlops_bundle.catalog import dataset_config
    from mlops_bundle.storage import LocalStorage

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        cfg = dataset_config(
            "churn",
            environ={
                "MLOPS_STORAGE__ROOT_URI": (root / "lake").as_uri(),
                "MLOPS_MLFLOW__TRACKING_URI": args.tracking_uri or str(root / "mlflow"),
                "MLOPS_TRAINING__WINDOW_DAYS": str(args.days),
            },
        )
        store = LocalStorage(root / "lake")
        t = time.perf_counter()
        rows = stage_lake(cfg, store, END_DATE, args.days, args.rows)
        print(f"staged {rows:,} rows in {args.days} partitions in {time.perf_counter() - t:.1f}s")
        print(f"tracking: {cfg.tracking_uri}")

        t = time.perf_counter()
        import mlflow  # noqa: F401
        import sklearn  # noqa: F401

        print(f"imports (mlflow, sklearn): {time.perf_counter() - t:.2f}s")
        t_store, t_first = cold_start(cfg, store, END_DATE)
        print(f"create tracking store + experiment (once per store): {t_store:.2f}s")
        print(
            f"first log+register in a process (tiny model; skops import, MLflow first calls): {t_first:.2f}s"
        )

        models: dict[str, Any] = {}
        direct = run_direct(cfg, store, END_DATE, models_out=models)
        print(f"\ndirect (assemble + train + log all + register best): {direct['seconds']:.2f}s")
        for stage, seconds in direct["per_stage"].items():
            print(f"  {stage:<32} {seconds:7.3f}s")
        reg = direct["registered"]
        print(f"  registered {reg['model_uri']} ({reg['candidate']}, reused={reg['reused']})")

        from mlops_bundle import training

        print(f"\nper model, on {rows:,} rows (goal: log+register < {GOAL_LOG_REGISTER_S:.1f}s)")
        print(f"  {'candidate':<18} {'family':<24} {'fit':>7} {'log':>7} {'register':>9} {'log+reg':>8}  "
              f"{'roc_auc':>7}  verdict")  # fmt: skip
        misses = 0
        for name, (spec, model, metrics, window) in models.items():
            t = time.perf_counter()
            run_id = training.log_candidate(
                cfg, spec, model, metrics, window, {"triggered_by": "bench_training"}
            )
            t_log = time.perf_counter() - t
            key = training.train_key(window.fingerprint, spec, cfg)
            t = time.perf_counter()
            training.register_best(cfg, [{"candidate": name, "run_id": run_id, "metrics": metrics}], key)
            t_reg = time.perf_counter() - t
            both = t_log + t_reg
            ok = both < GOAL_LOG_REGISTER_S
            misses += not ok
            print(
                f"  {name:<18} {spec.family:<24} {direct['per_stage'][f'train_{name}_s']:6.2f}s {t_log:6.3f}s "
                f"{t_reg:8.3f}s {both:7.3f}s  {metrics['roc_auc']:.4f}  {'PASS' if ok else 'FAIL'}"
            )
    return 1 if (args.strict and misses) else 0


if __name__ == "__main__":
    sys.exit(main())
