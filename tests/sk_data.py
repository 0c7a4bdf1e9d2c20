"""scikit-learn's bundled data sets as a bundle data set: a config file and validated staging partitions.

The tests of the task types (binary, multiclass, regression) train on real data that has neither an id nor
a timestamp column, the way a data set loaded with sklearn's ``load_*`` arrives. The rows are shuffled
once (fixed seed) and cut into one partition per day, written as ingest writes them (minus the GX run).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DATASETS = {
    # name: (sklearn loader, dataset.task)
    "cancer": ("load_breast_cancer", "binary"),
    "wine": ("load_wine", "multiclass"),
    "diabetes": ("load_diabetes", "regression"),
}
TARGET = "target"


def frame(name: str) -> pd.DataFrame:
    """The data set as one frame, feature names as identifiers, rows shuffled with a fixed seed."""
    import sklearn.datasets

    loader, _ = DATASETS[name]
    df = getattr(sklearn.datasets, loader)(as_frame=True).frame
    df.columns = [re.sub(r"\W+", "_", str(c)).strip("_") for c in df.columns]
    return df.sample(frac=1.0, random_state=7).reset_index(drop=True)


def write_config(
    folder: Path,
    name: str,
    candidates: list[dict[str, Any]],
    *,
    id_column: bool = False,
    timestamp_column: bool = False,
    audit: dict[str, Any] | None = None,
    **training: Any,
) -> Path:
    """A config file for data set ``name`` in ``folder`` (lake and MLflow store beside it); its path.

    ``id_column``/``timestamp_column`` add a ``row_id`` int / ``event_ts`` datetime column to the schema
    (the staged frames then carry them, see :func:`stage_days`). ``audit`` is the config's audit section
    (default: disabled); in a catalog folder beside other data sets it must match theirs (one audit chain
    per deployment), e.g. ``{}`` for the defaults with the session's ``MLOPS_AUDIT__*`` overrides."""
    df = frame(name)
    _, task = DATASETS[name]
    columns = [
        {"name": c, "dtype": "int" if pd.api.types.is_integer_dtype(df[c]) else "float"} for c in df.columns
    ]
    dataset: dict[str, Any] = {"name": name, "target": TARGET, "task": task, "columns": columns}
    if id_column:
        columns.insert(0, {"name": "row_id", "dtype": "int"})
        dataset["id_column"] = "row_id"
    if timestamp_column:
        columns.insert(0, {"name": "event_ts", "dtype": "datetime"})
        dataset["timestamp_column"] = "event_ts"
    doc = {
        "dataset": dataset,
        "storage": {"root_uri": "lake"},
        "validation": {"suite_name": name, "validation_definition": name, "checkpoint_name": name},
        "mlflow": {"tracking_uri": "mlflow"},
        "training": {"window_days": 30, "min_rows": 50, "candidates": candidates, **training},
        "audit": {"enabled": False} if audit is None else audit,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def stage_days(store: Any, cfg: Any, days: list[str], df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Cut the data set into ``len(days)`` consecutive partitions, one per day; return the staged rows.

    With the config's id/timestamp columns the frames carry them: ``row_id`` counts down (so an id order
    differs from the file order) and ``event_ts`` is the day plus one second per row."""
    from mlops_bundle import ingest
    from tests import lake

    df = frame(cfg.dataset.name) if df is None else df
    parts = []
    size = -(-len(df) // len(days))
    for i, day in enumerate(days):
        part = df.iloc[i * size : (i + 1) * size].copy()
        if cfg.dataset.id_column:
            part[cfg.dataset.id_column] = range(len(df) - i * size, len(df) - i * size - len(part), -1)
        if cfg.dataset.timestamp_column:
            part[cfg.dataset.timestamp_column] = pd.Timestamp(day) + pd.to_timedelta(range(len(part)), "s")
        part, problems = ingest.coerce(part, cfg)
        if problems:
            raise RuntimeError(f"{cfg.dataset.name} {day} does not coerce cleanly: {problems}")
        ingest.write_staging(store, cfg, day, part, lake.manifest_of(cfg, day, part))
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
