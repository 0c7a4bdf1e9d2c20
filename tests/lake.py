"""Validated staging partitions of generated sample data, written as the ingest DAG writes them (minus the
GX run): one home for the tests and benchmarks that need a lake to train or monitor on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def manifest_of(cfg: Any, date: str, df: pd.DataFrame) -> dict[str, Any]:
    """The manifest ingest writes beside a partition (data set, date, rows, fingerprint)."""
    from mlops_bundle import ingest

    return {"dataset": cfg.dataset.name, "date": date, "rows": len(df), "fingerprint": ingest.fingerprint(df)}


def stage(store: Any, cfg: Any, date: str, rows: int, mutate=None) -> pd.DataFrame:
    """Write one partition of ``generate_batch(date, rows)`` (``mutate`` may change it first); return it."""
    from mlops_bundle import ingest
    from mlops_bundle.sample import generate_batch

    df, problems = ingest.coerce(generate_batch(date, rows), cfg)
    if problems:
        raise RuntimeError(f"generated batch {date} does not coerce cleanly: {problems}")
    if mutate is not None:
        df = mutate(df)
    ingest.write_staging(store, cfg, date, df, manifest_of(cfg, date, df))
    return df
