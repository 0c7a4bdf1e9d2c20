"""One batch's outcome (staged partition or quarantine copy) and the ``ingest_batch`` step deciding it.

Staging is written only after every check passed, data object first and manifest last (readers trust only
the manifest), so a failed or interrupted run leaves the previous partition as it was; a rerun of the same
date replaces the partition (same keys), it never adds a second copy. A rejected batch is copied byte for
byte to quarantine with the reason (and the GX result when validation ran).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_bundle.audit import record_event
from mlops_bundle.config import BundleConfig
from mlops_bundle.ingest.landing import discover, landing_prefix, read_batch
from mlops_bundle.ingest.schema import coerce, fingerprint
from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.names import parse_date
from mlops_bundle.storage import ObjectInfo, Storage, join

log = logging.getLogger(__name__)

STAGING_FILE = "part-0.parquet"
MANIFEST_FILE = "_manifest.json"


class BatchRejected(RuntimeError):
    """The batch failed a check and was quarantined; the message says which, where, and what to do."""

    def __init__(self, message: str, *, kind: str, quarantine_uri: str | None, problems: list[str]):
        super().__init__(message)
        self.kind = kind
        self.quarantine_uri = quarantine_uri
        self.problems = problems


@dataclass
class IngestResult:
    """What a staged batch returns to the task (XCom); the ingest DAG copies dataset, date, rows,
    fingerprint, staging_uri and gx_success into the ``mlops.<dataset>.validated_data`` Asset event's extra."""

    dataset: str
    date: str
    rows: int
    fingerprint: str
    staging_uri: str
    files: list[str]
    gx_success: bool
    gx_evaluated: int
    gx_successful: int
    data_docs_url: str | None
    unchanged: bool
    # who staged the partition's current content (``staged_by`` of ``ingest_batch``; the earlier one when
    # ``unchanged``) and who published it to training (:func:`mark_published`; None: nobody yet)
    staged_by: str | None = None
    published_by: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- layout


def staging_prefix(cfg: BundleConfig, date: str) -> str:
    """The validated partition of a day: ``staging/<dataset>/ds=<date>``."""
    return join(cfg.storage.staging_prefix, cfg.dataset.name, f"ds={date}")


def quarantine_prefix(cfg: BundleConfig, date: str, attempt: str) -> str:
    """One folder per rejected attempt, so a retry never overwrites the evidence of the one before."""
    return join(cfg.storage.quarantine_prefix, cfg.dataset.name, f"ds={date}", attempt)


# ---------------------------------------------------------------- staging and quarantine


def read_manifest(store: Storage, cfg: BundleConfig, date: str) -> dict | None:
    """The partition's manifest (written last, so it exists only for a complete partition), or None."""
    key = join(staging_prefix(cfg, date), MANIFEST_FILE)
    if not store.exists(key):
        return None
    return json.loads(store.read_bytes(key))


def write_staging(store: Storage, cfg: BundleConfig, date: str, df: pd.DataFrame, manifest: dict) -> str:
    """Write the partition's data object, then its manifest (readers trust only the manifest)."""
    prefix = staging_prefix(cfg, date)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf, compression="snappy")
    data_uri = store.write_bytes(join(prefix, STAGING_FILE), buf.getvalue())
    manifest = {**manifest, "data": STAGING_FILE, "data_uri": data_uri, "bytes": buf.tell()}
    store.write_bytes(join(prefix, MANIFEST_FILE), json.dumps(manifest, indent=2, sort_keys=True).encode())
    return store.uri(prefix)


def mark_published(store: Storage, cfg: BundleConfig, date: str, fingerprint: str, by: str) -> bool:
    """Record in the partition's manifest that ``by`` hands this content to training (an asset event, or
    one train run over a backfilled range). Only the first publisher of a content is kept (a retry of it
    finds itself); False when the partition holds other content now or was published already."""
    manifest = read_manifest(store, cfg, date)
    if manifest is None or manifest.get("fingerprint") != fingerprint or manifest.get("published_by"):
        return False
    manifest["published_by"] = by
    key = join(staging_prefix(cfg, date), MANIFEST_FILE)
    store.write_bytes(key, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return True


def validated_dates(store: Storage, cfg: BundleConfig) -> list[str]:
    """Every date with a complete validated partition (one with a manifest), oldest first."""
    import re

    base = join(cfg.storage.staging_prefix, cfg.dataset.name)
    found = re.compile(r"(?:^|/)ds=([0-9]{4}-[0-9]{2}-[0-9]{2})/" + re.escape(MANIFEST_FILE) + r"\Z")
    return sorted({m.group(1) for obj in store.list(base) if (m := found.search(obj.key))})


def read_staging(store: Storage, cfg: BundleConfig, date: str) -> pd.DataFrame:
    """One validated partition as a frame (raises FileNotFoundError naming the partition)."""
    manifest = read_manifest(store, cfg, date)
    if manifest is None:
        raise FileNotFoundError(
            f"no validated partition {store.uri(staging_prefix(cfg, date))}: run the ingest DAG for {date}"
        )
    data = store.read_bytes(join(staging_prefix(cfg, date), manifest["data"]))
    return pq.read_table(io.BytesIO(data)).to_pandas()


def quarantine(
    source: Storage,
    files: list[ObjectInfo],
    store: Storage,
    cfg: BundleConfig,
    date: str,
    attempt: str,
    reason: dict,
    gx_result: dict | None,
) -> str:
    """Copy the raw batch byte for byte plus the reason (and GX result) to quarantine; return its URI."""
    prefix = quarantine_prefix(cfg, date, attempt)
    for obj in files:
        name = obj.key.rsplit("/", 1)[-1]
        store.write_bytes(join(prefix, "raw", name), source.read_bytes(obj.key))
    if gx_result is not None:
        store.write_bytes(join(prefix, "gx_result.json"), json.dumps(json_safe(gx_result), indent=2).encode())
    store.write_bytes(join(prefix, "reason.json"), json.dumps(json_safe(reason), indent=2).encode())
    return store.uri(prefix)


# ---------------------------------------------------------------- the whole step

Validator = Callable[[pd.DataFrame, BundleConfig, str], Any]


def _default_validator(df: pd.DataFrame, cfg: BundleConfig, label: str):
    from mlops_bundle.validation import validation_from_config

    return validation_from_config(df, cfg, label)


def ingest_batch(
    cfg: BundleConfig,
    date: str,
    store: Storage,
    *,
    source: Storage | None = None,
    source_prefix: str | None = None,
    files: list[ObjectInfo] | None = None,
    attempt: str | None = None,
    validator: Validator = _default_validator,
    staged_by: str | None = None,
) -> IngestResult:
    """Ingest one day's batch end to end; raise BatchRejected (after quarantining) or NoLandingFiles.

    ``staged_by`` (e.g. ``dag_id/run_id``) is written into a new partition's manifest and returned as
    ``IngestResult.staged_by``; for an unchanged batch the result carries the manifest's ``staged_by`` and
    ``published_by`` (:func:`mark_published`), so the caller can tell a batch already handed to training
    from one that never was (a retry of the run that staged it, a backfill that held training).
    """
    date = parse_date(date)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    source = source or store
    prefix = landing_prefix(cfg, date) if source_prefix is None else source_prefix
    files = files if files is not None else discover(source, prefix, cfg.ingest.file_patterns)
    total = sum(o.size for o in files)
    log.info("found %d landing file(s), %.1f MB, under %s", len(files), total / 1e6, source.uri(prefix))
    attempt = attempt or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    file_uris = [source.uri(o.key) for o in files]

    raw, problems = read_batch(source, files, cfg)
    df, schema_problems = coerce(raw, cfg) if len(raw.columns) else (raw, [])
    problems += schema_problems
    del raw
    timings["read_coerce_s"] = round(time.perf_counter() - t0, 3)
    log.info("read %d rows x %d columns in %.2fs", len(df), len(df.columns), timings["read_coerce_s"])

    outcome = None
    if len(df.columns):
        t1 = time.perf_counter()
        outcome = validator(df, cfg, f"{cfg.dataset.name}/{date}")
        timings["validate_s"] = round(time.perf_counter() - t1, 3)
        log.info(
            "GX suite %s: %d/%d expectations passed in %.2fs",
            outcome.suite_name,
            outcome.successful,
            outcome.evaluated,
            timings["validate_s"],
        )

    if problems or outcome is None or not outcome.success:
        kind = "unreadable" if outcome is None else ("schema" if problems else "quality")
        lines = list(problems)
        if outcome is not None and not outcome.success:
            lines.append(outcome.describe())
        reason = {
            "dataset": cfg.dataset.name,
            "date": date,
            "kind": kind,
            "problems": lines,
            "files": file_uris,
            "rows_read": int(len(df)),
            "attempt": attempt,
        }
        q_uri = quarantine(
            source, files, store, cfg, date, attempt, reason, outcome.result if outcome else None
        )
        record_event(
            cfg,
            "ingest.quarantine",
            actor="ingest",
            subject=f"{cfg.dataset.name}/{date}",
            payload={
                "date": date,
                "files": file_uris,
                "kind": kind,
                "quarantine_uri": q_uri,
                "attempt": attempt,
                "problems": len(lines),
            },
        )
        message = (
            f"batch {cfg.dataset.name}/{date} rejected ({kind}); {len(files)} file(s): "
            f"{', '.join(file_uris)}\n"
            + "\n".join(f"- {p}" for p in lines)
            + f"\nRaw files and the reason were copied to {q_uri}; the landing files are untouched and the "
            f"staging partition was not changed. Fix the batch at the source, re-deliver it under "
            f"{source.uri(prefix)} and trigger the ingest DAG again for date={date}."
        )
        raise BatchRejected(message, kind=kind, quarantine_uri=q_uri, problems=lines)

    t2 = time.perf_counter()
    fp = fingerprint(df)
    timings["fingerprint_s"] = round(time.perf_counter() - t2, 3)
    previous = read_manifest(store, cfg, date)
    unchanged = bool(previous and previous.get("fingerprint") == fp)
    published_by = None
    if unchanged and previous:
        staged_by, published_by = previous.get("staged_by"), previous.get("published_by")
        staging_uri = store.uri(staging_prefix(cfg, date))
        log.info("partition %s already holds this exact batch (%s): nothing rewritten", staging_uri, fp)
    else:
        t3 = time.perf_counter()
        staging_uri = write_staging(
            store,
            cfg,
            date,
            df,
            {
                "dataset": cfg.dataset.name,
                "date": date,
                "rows": int(len(df)),
                "columns": [str(c) for c in df.columns],
                "fingerprint": fp,
                "source_files": file_uris,
                "gx_suite": outcome.suite_name,
                "gx_success": True,
                "staged_by": staged_by,
                "written_at": dt.datetime.now(dt.UTC).isoformat(),
            },
        )
        timings["write_s"] = round(time.perf_counter() - t3, 3)
        log.info("staged %d rows to %s (%s)", len(df), staging_uri, "replaced" if previous else "new")
    timings["total_s"] = round(time.perf_counter() - t0, 3)
    return IngestResult(
        dataset=cfg.dataset.name,
        date=date,
        rows=int(len(df)),
        fingerprint=fp,
        staging_uri=staging_uri,
        files=file_uris,
        gx_success=True,
        gx_evaluated=outcome.evaluated,
        gx_successful=outcome.successful,
        data_docs_url=outcome.data_docs_url,
        unchanged=unchanged,
        staged_by=staged_by,
        published_by=published_by,
        timings=timings,
    )
