"""The training window: validated partitions -> a time-split train/holdout pair, handed between tasks.

:func:`assemble_window` reads every validated partition (one with a manifest) of the window and splits it
*by time*: the most recent ``training.holdout_fraction`` of rows is the holdout, never trained on, so the
score is what the model would have scored on the days that followed its data. :func:`save_window` /
:func:`load_window` hand it between tasks (maybe on other workers) as Parquet under the configured work
prefix in the store, with a small JSON-safe dict through XCom.

:class:`TrainingError` lives here because the window is the first step of the stage; the other training
modules raise it too.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_bundle.config import BundleConfig
from mlops_bundle.features import proba_collisions
from mlops_bundle.ingest import MANIFEST_FILE, validated_dates
from mlops_bundle.names import parse_date
from mlops_bundle.storage import Storage, join

log = logging.getLogger(__name__)


class TrainingError(ValueError):
    """Training cannot proceed; the message names the window/candidate/family/column and what to do."""


@dataclass
class Window:
    """The data of one training run: train and holdout frames split by time, plus where they came from.

    ``split_ts`` is the ISO timestamp of the boundary: every holdout row has ``timestamp >= split_ts``
    and every train row ``timestamp < split_ts`` (without ``dataset.timestamp_column``: the batch date of
    the row's partition, midnight). ``fingerprint`` identifies the window's input data.
    ``train_uri``/``holdout_uri`` are set once the window was saved with :func:`save_window`.
    """

    train: pd.DataFrame
    holdout: pd.DataFrame
    partitions: list[dict[str, Any]]
    fingerprint: str
    start: str
    end: str
    split_ts: str
    train_uri: str | None = None
    holdout_uri: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-safe description (no frames) for logs, XCom and MLflow."""
        return {
            "start": self.start,
            "end": self.end,
            "split_ts": self.split_ts,
            "fingerprint": self.fingerprint,
            "train_rows": int(len(self.train)),
            "holdout_rows": int(len(self.holdout)),
            "partitions": self.partitions,
        }


def window_fingerprint(partitions: Iterable[dict[str, Any]]) -> str:
    """sha256 over the partitions' (date, fingerprint) pairs sorted by date.

    The date is included so that the same batch staged under another date is a different window.
    """
    lines = sorted(f"{p['date']}={p['fingerprint']}" for p in partitions)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _dates(end_date: str, window_days: int) -> tuple[dt.date, dt.date]:
    end = dt.date.fromisoformat(parse_date(end_date))
    if window_days < 1:
        raise TrainingError(f"window_days must be at least 1, got {window_days}")
    return end - dt.timedelta(days=window_days - 1), end


def _read_parquet(store: Storage, key: str) -> pd.DataFrame:
    path = store.local_path(key)
    if path is not None:
        return pq.read_table(path).to_pandas()
    return pq.read_table(io.BytesIO(store.read_bytes(key))).to_pandas()


def _check_classes(df: pd.DataFrame, cfg: BundleConfig, what: str) -> None:
    """The target can be learnt from ``df``: binary needs both classes, multiclass at least two, each with
    a probability column of its own (features.proba_column), regression at least two distinct values (a
    constant target leaves nothing to learn)."""
    target, task = cfg.dataset.target, cfg.dataset.task
    values = df[target].dropna().unique().tolist()
    same = proba_collisions(values) if task == "multiclass" else {}
    if same:
        raise TrainingError(
            f"{what}: the classes {sorted(t for texts in same.values() for t in texts)} of {target!r} would share "
            f"the probability column(s) {sorted(same)} (features.proba_column), so the model could not be "
            f"monitored; make those labels distinct in the data before training"
        )
    if len(values) >= 2 and not (task == "binary" and len(values) > 2):
        return
    widen = "widen the window (training.window_days or the window_days param) or ingest more days"
    if task == "binary" and len(values) > 2:
        raise TrainingError(
            f"{what} has {len(values)} classes of {target!r} ({sorted(map(str, values))[:10]}): dataset.task "
            f"'binary' needs exactly two; set dataset.task: multiclass in {cfg.source or 'the config'}"
        )
    if task == "regression":
        only = f"the single value {values[0]}" if values else "no labelled rows"
        raise TrainingError(
            f"{what} has {only} for target {target!r} ({len(df)} rows): a regressor needs a target that "
            f"varies; {widen}, or check dataset.target in {cfg.source or 'the config'}"
        )
    only = f"only class {values[0]}" if values else "no labelled rows"
    need = "both classes" if task == "binary" else "at least two classes"
    raise TrainingError(
        f"{what} contains {only} of {target!r} ({len(df)} rows): a classifier needs {need}; {widen}"
    )


def assemble_window(
    store: Storage, cfg: BundleConfig, end_date: str, window_days: int | None = None
) -> Window:
    """Read the validated partitions for dates in (end_date - window_days, end_date] and split by time.

    Only partitions with a manifest count: ingest writes the manifest last, so a half-written or
    quarantined batch is never trained on. The holdout is the most recent ``holdout_fraction`` of rows by
    ``dataset.timestamp_column`` (without one: by batch date, so whole days go to the holdout); rows
    sharing the boundary instant all go to the holdout so no instant is on both sides. Rows are ordered
    by that instant, then ``dataset.id_column`` (without one: the file's row order). Raises TrainingError
    for an empty window, too few rows, or a side with one class.
    """
    days = window_days or cfg.training.window_days
    start, end = _dates(end_date, days)
    base = join(cfg.storage.staging_prefix, cfg.dataset.name)
    base_uri = store.uri(base)
    dates = [d for d in validated_dates(store, cfg) if start.isoformat() <= d <= end.isoformat()]
    log.info("window %s..%s: %d validated partition(s) under %s", start, end, len(dates), base_uri)
    if not dates:
        raise TrainingError(
            f"no validated partitions between {start} and {end} under {base_uri}: run the ingest DAG for "
            "those dates or widen the window (training.window_days or the window_days param)"
        )

    frames, partitions = [], []
    for date in dates:
        prefix = join(base, f"ds={date}")
        manifest = json.loads(store.read_bytes(join(prefix, MANIFEST_FILE)))
        df = _read_parquet(store, join(prefix, manifest["data"]))
        if "rows" in manifest and int(manifest["rows"]) != len(df):
            raise TrainingError(
                f"partition {store.uri(prefix)} holds {len(df)} rows but its manifest says {manifest['rows']}: "
                f"it was modified outside the ingest DAG; re-run the ingest DAG for {date}"
            )
        frames.append(df)
        partitions.append(
            {
                "date": date,
                "rows": int(len(df)),
                "fingerprint": manifest["fingerprint"],
                "uri": store.uri(prefix),
            }
        )
        log.info("  %s: %d rows (%s)", date, len(df), manifest["fingerprint"][:19])
    # the batch date of every row (frames are in date order): the split key without a timestamp column
    batch_dates = pd.Series(
        pd.to_datetime([p["date"] for p in partitions]).repeat([len(f) for f in frames]), name=None
    )
    data = pd.concat(frames, ignore_index=True, sort=False) if len(frames) > 1 else frames[0]
    del frames
    data = _normalise_dtypes(data, cfg)

    n = len(data)
    if n < cfg.training.min_rows:
        raise TrainingError(
            f"window {start}..{end} under {base_uri} holds {n} rows in {len(dates)} partition(s), fewer than "
            f"training.min_rows={cfg.training.min_rows}: widen the window or ingest more days"
        )
    ts_col, id_col, target = cfg.dataset.timestamp_column, cfg.dataset.id_column, cfg.dataset.target
    for col in (ts_col, target):
        missing = int(data[col].isna().sum()) if col is not None else 0
        if missing:
            raise TrainingError(
                f"column {col!r} has {missing} missing values in window {start}..{end} under {base_uri}; "
                "the GX suite should have rejected those batches: check it and re-run the ingest DAG"
            )

    # stable order: timestamp (else batch date), then id (else the file's row order within a batch)
    if ts_col is not None:
        when = data[ts_col].reset_index(drop=True)
        split_name = repr(ts_col)
    else:
        when = batch_dates
        split_name = "the batch date (no dataset.timestamp_column)"
    order = pd.DataFrame({"_when": when.to_numpy()})
    if id_col is not None:
        order["_id"] = data[id_col].to_numpy()
    positions = order.sort_values(list(order.columns), kind="stable").index.to_numpy()
    data = data.iloc[positions].reset_index(drop=True)
    when = when.iloc[positions].reset_index(drop=True)
    n_hold = max(1, math.ceil(n * cfg.training.holdout_fraction))
    boundary = when.iloc[n - n_hold]
    is_hold = (when >= boundary).to_numpy()
    train, holdout = data.loc[~is_hold].reset_index(drop=True), data.loc[is_hold].reset_index(drop=True)
    window_name = f"window {start}..{end}"
    if len(train) == 0:
        raise TrainingError(
            f"{window_name}: every row has {split_name} >= {boundary}, so nothing is left to train on before "
            "the holdout (rows of one instant never straddle the split); widen the window"
        )
    _check_classes(train, cfg, f"the train set of {window_name} ({split_name} < {boundary})")
    _check_classes(holdout, cfg, f"the holdout of {window_name} ({split_name} >= {boundary})")
    window = Window(
        train=train,
        holdout=holdout,
        partitions=partitions,
        fingerprint=window_fingerprint(partitions),
        start=start.isoformat(),
        end=end.isoformat(),
        split_ts=pd.Timestamp(boundary).isoformat(),
    )
    log.info(
        "%s: %d rows -> train %d, holdout %d (%s >= %s), fingerprint %s",
        window_name,
        n,
        len(train),
        len(holdout),
        split_name,
        window.split_ts,
        window.fingerprint,
    )
    return window


def _normalise_dtypes(df: pd.DataFrame, cfg: BundleConfig) -> pd.DataFrame:
    """Category columns as pandas ``category`` again after concat (differing categories turn them object)."""
    for spec in cfg.dataset.columns:
        if spec.dtype == "category" and spec.name in df.columns and df[spec.name].dtype != "category":
            df[spec.name] = df[spec.name].astype("category")
    return df


def _work_prefix(cfg: BundleConfig, key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._=-]{1,128}", key):
        raise TrainingError(f"work key {key!r} must be 1-128 characters of letters, digits and ._=-")
    return join(cfg.storage.work_prefix, cfg.dataset.name, "train", key)


def _write_parquet(store: Storage, key: str, df: pd.DataFrame) -> str:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="snappy")
    return store.write_bytes(key, buf.getvalue())


def save_window(store: Storage, cfg: BundleConfig, window: Window, key: str) -> dict[str, Any]:
    """Persist the window under ``work/<dataset>/train/<key>/`` and return a small JSON-safe dict.

    Why: the candidates train in separate (mapped, pool-limited) tasks, maybe on other workers; they
    share the exact same split through the store, and XCom carries only this dict. Sets
    ``window.train_uri``/``holdout_uri``.
    """
    prefix = _work_prefix(cfg, key)
    train_key, holdout_key = join(prefix, "train.parquet"), join(prefix, "holdout.parquet")
    window.train_uri = _write_parquet(store, train_key, window.train)
    window.holdout_uri = _write_parquet(store, holdout_key, window.holdout)
    info = {
        "key": key,
        "prefix": prefix,
        "train_key": train_key,
        "holdout_key": holdout_key,
        "train_uri": window.train_uri,
        "holdout_uri": window.holdout_uri,
        **window.summary(),
    }
    store.write_bytes(join(prefix, "window.json"), json.dumps(info, indent=2, sort_keys=True).encode())
    log.info("saved window (%d + %d rows) to %s", len(window.train), len(window.holdout), store.uri(prefix))
    return info


def load_window(store: Storage, cfg: BundleConfig, info: dict[str, Any]) -> Window:
    """The window saved by :func:`save_window`, from its dict; TrainingError if the objects are gone."""
    frames = {}
    for side in ("train", "holdout"):
        key = info[f"{side}_key"]
        if not store.exists(key):
            raise TrainingError(
                f"saved window data {store.uri(key)} is missing (cleaned up or another storage root?): "
                "re-run the window assembly task of this DAG run"
            )
        frames[side] = _read_parquet(store, key)
    return Window(
        train=frames["train"],
        holdout=frames["holdout"],
        partitions=list(info["partitions"]),
        fingerprint=info["fingerprint"],
        start=info["start"],
        end=info["end"],
        split_ts=info["split_ts"],
        train_uri=info.get("train_uri"),
        holdout_uri=info.get("holdout_uri"),
    )
