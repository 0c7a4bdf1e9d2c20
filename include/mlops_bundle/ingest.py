"""Ingestion: landing files -> typed, fingerprinted batch -> quality gate -> staging or quarantine.

Rules this module keeps, whatever the input:
- landing files are only ever read, never modified or deleted;
- staging is written only after every check passed, one object at a time and atomically, so a failed
  or interrupted run leaves the previous partition as it was; a rerun of the same date replaces the
  partition (same keys), it never adds a second copy;
- a rejected batch is copied byte for byte to quarantine together with the reason (and the GX result
  when validation ran), and the raised error names the file, the column or rule, the counts, and what
  to do next.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_bundle.audit import record_event
from mlops_bundle.config import BundleConfig
from mlops_bundle.names import parse_date
from mlops_bundle.storage import ObjectInfo, Storage, join, match_any

log = logging.getLogger(__name__)

STAGING_FILE = "part-0.parquet"
MANIFEST_FILE = "_manifest.json"


class NoLandingFiles(FileNotFoundError):
    """No file for the date: nothing to ingest and nothing to quarantine."""


class BatchRejected(RuntimeError):
    """The batch failed a check and was quarantined; the message says which, where, and what to do."""

    def __init__(self, message: str, *, kind: str, quarantine_uri: str | None, problems: list[str]):
        super().__init__(message)
        self.kind = kind
        self.quarantine_uri = quarantine_uri
        self.problems = problems


@dataclass
class IngestResult:
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
    timings: dict[str, float] = field(default_factory=dict)

    def to_xcom(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- layout


def landing_prefix(cfg: BundleConfig, date: str) -> str:
    return join(cfg.storage.landing_prefix, cfg.dataset.name, date)


def staging_prefix(cfg: BundleConfig, date: str) -> str:
    return join(cfg.storage.staging_prefix, cfg.dataset.name, f"ds={date}")


def quarantine_prefix(cfg: BundleConfig, date: str, attempt: str) -> str:
    return join(cfg.storage.quarantine_prefix, cfg.dataset.name, f"ds={date}", attempt)


# ---------------------------------------------------------------- discovery and reading


def discover(store: Storage, prefix: str, patterns: list[str]) -> list[ObjectInfo]:
    """The landing files for one batch; raise NoLandingFiles naming where we looked."""
    found = [o for o in store.list(prefix) if match_any(o.key.rsplit("/", 1)[-1], patterns)]
    if not found:
        others = [o.key for o in store.list(prefix)]
        hint = f" (ignored, not matching {patterns}: {others[:5]})" if others else ""
        raise NoLandingFiles(
            f"no landing files under {store.uri(prefix)} matching {patterns}{hint}. "
            "Upload the batch there (or pass a 'source' override) and trigger the ingest DAG again."
        )
    return found


def _describe_read_error(name: str, exc: Exception, delimiter: str) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    if low.startswith("not a csv file"):
        return f"file {name} is {text}"
    if "invalid utf8" in low or "utf-8" in low or "utf8" in low:
        why = f"is not valid UTF-8 ({text}); re-export the file as UTF-8"
        return f"file {name} {why}"
    elif "empty csv" in low or "empty file" in low:
        why = "is empty (0 bytes); the upstream export probably failed, re-deliver the file"
    elif "gzip" in low or "compressed" in low or "zlib" in low or "truncated" in low:
        why = "is a truncated or damaged gzip stream; re-deliver the complete file"
    elif "parquet" in low and ("magic" in low or "footer" in low or "not a parquet" in low):
        why = "is not a valid Parquet file (no Parquet footer); check that it is really Parquet"
    elif "expected" in low and "columns" in low:
        why = f"has rows with a different number of fields than its header (delimiter is {delimiter!r})"
    else:
        why = "could not be parsed as data"
    return f"file {name} {why} [{type(exc).__name__}: {text}]"


_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"PK\x03\x04": "a ZIP archive",
    b"%PDF": "a PDF document",
    b"PAR1": "a Parquet file",
    b"\x1f\x8b": "gzip data",
    b"\x7fELF": "a program",
}


def _sniff_text(path: Path, name: str) -> None:
    """Refuse binary content in a .csv before the parser turns it into nonsense columns."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise ValueError(f"not a CSV file: its content is {what}; check what was delivered")
    if b"\x00" in head:
        raise ValueError("not a CSV file: it contains NUL bytes (binary content)")


def _read_one(path: Path, name: str, cfg: BundleConfig) -> pd.DataFrame:
    if name.endswith(".parquet"):
        table = pq.read_table(path)
    else:
        if name.endswith(".csv"):
            _sniff_text(path, name)
        parse = pacsv.ParseOptions(delimiter=cfg.ingest.csv_delimiter)
        convert = pacsv.ConvertOptions(strings_can_be_null=True)
        table = pacsv.read_csv(path, parse_options=parse, convert_options=convert)
        binary = [
            f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
        ]
        if binary:
            col = table.column(binary[0])
            bad = next((i for i, v in enumerate(col.to_pylist()) if v is not None and not _is_utf8(v)), None)
            raise ValueError(f"invalid UTF-8 in column(s) {binary}, first at data row {bad}")
    return table.to_pandas(split_blocks=True, self_destruct=True)


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def read_batch(store: Storage, files: list[ObjectInfo], cfg: BundleConfig) -> tuple[pd.DataFrame, list[str]]:
    """Read every landing file into one frame. Returns (frame, problems); unreadable files are problems."""
    frames, problems = [], []
    with tempfile.TemporaryDirectory(prefix="mlops-ingest-") as tmp:
        for obj in files:
            name = obj.key.rsplit("/", 1)[-1]
            path = store.local_path(obj.key)
            if path is None:  # remote object: fetch to a temp file so parsers can stream it
                path = store.get_file(obj.key, Path(tmp) / name)
            try:
                df = _read_one(path, name, cfg)
            except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
                problems.append(_describe_read_error(obj.key, exc, cfg.ingest.csv_delimiter))
                continue
            if len(df.columns) == 1 and len(cfg.dataset.columns) > 1:
                header = str(df.columns[0])
                for sep in (";", "\t", "|", ","):
                    if sep != cfg.ingest.csv_delimiter and sep in header:
                        problems.append(
                            f"file {obj.key} has a single column {header[:60]!r}: it looks {sep!r}-delimited but "
                            f"the config says ingest.csv_delimiter={cfg.ingest.csv_delimiter!r}; re-export it "
                            "with the configured delimiter or change the config"
                        )
                        break
            if len(df) == 0:
                problems.append(
                    f"file {obj.key} has a header but no data rows; re-deliver the complete export"
                )
            frames.append(df)
    if not frames:
        return pd.DataFrame(), problems
    if len(frames) == 1:
        return frames[0], problems
    return pd.concat(frames, ignore_index=True, sort=False), problems


# ---------------------------------------------------------------- schema coercion


def _examples(values: pd.Series, n: int) -> list:
    return [
        v if isinstance(v, int | float | str) else str(v) for v in values.drop_duplicates().head(n).tolist()
    ]


def coerce(df: pd.DataFrame, cfg: BundleConfig) -> tuple[pd.DataFrame, list[str]]:
    """Cast the declared columns to their configured dtypes, in config order, extra columns last.

    Values that cannot be cast become missing and are reported (column, count, examples): the GX suite
    then sees the batch as it would be staged, and the error says exactly what was wrong.
    """
    n_ex = cfg.ingest.error_examples
    problems: list[str] = []
    out: dict[str, pd.Series] = {}
    declared = cfg.dataset.column_names
    missing = [c for c in declared if c not in df.columns]
    extra = [c for c in df.columns if c not in declared]
    if missing:
        problems.append(f"missing columns {missing}: the config declares them (dataset.columns)")
    if extra:
        problems.append(f"unexpected columns {[str(c) for c in extra]}: not declared in dataset.columns")
    for spec in cfg.dataset.columns:
        if spec.name not in df.columns:
            continue
        col = df[spec.name]
        try:
            new = _cast(col, spec.dtype)
        except (TypeError, ValueError) as exc:
            problems.append(f"column {spec.name} cannot be read as {spec.dtype}: {exc}")
            continue
        # values the cast turned into missing ones (text cannot lose values, so skip the check there)
        if spec.dtype in ("string", "category") or new.dtype == col.dtype:
            bad = pd.Series(False, index=col.index)
        else:
            bad = new.isna() & col.notna()
        if spec.dtype == "int" and new.dtype.kind == "f":
            frac = new.notna() & (new != np.floor(new))
            if frac.any():
                problems.append(
                    f"column {spec.name} (dtype int): {int(frac.sum())} non-integer values, e.g. "
                    f"{_examples(col[frac], n_ex)}"
                )
            elif not new.isna().any():
                new = new.astype("int64")
        if bad.any():
            problems.append(
                f"column {spec.name} (dtype {spec.dtype}): {int(bad.sum())} values cannot be parsed, e.g. "
                f"{_examples(col[bad], n_ex)}"
            )
        out[spec.name] = new
    for name in extra:
        out[str(name)] = df[name]
    return pd.DataFrame(out, index=df.index if len(out) else None), problems


def _cast(col: pd.Series, dtype: str) -> pd.Series:
    if dtype in ("int", "float"):
        if col.dtype.kind in "iu" and dtype == "int":
            return col.astype("int64")
        if col.dtype.kind in "iuf":
            return col.astype("float64")
        if col.dtype.kind == "b":
            return col.astype("int64" if dtype == "int" else "float64")
        num = pd.to_numeric(col, errors="coerce")
        return num.astype("float64") if num.dtype.kind in "iuf" else num
    if dtype in ("string", "category"):
        if isinstance(col.dtype, pd.CategoricalDtype):
            text = col.astype(object)
        else:
            text = col
        if text.dtype != object or pd.api.types.infer_dtype(text, skipna=True) not in ("string", "empty"):
            text = text.map(
                lambda v: v if v is None or isinstance(v, str) else (None if pd.isna(v) else str(v))
            )
        # categories as pandas 'category': cheaper to validate, fingerprint and store than Python strings
        return text.astype("category") if dtype == "category" else text
    if dtype == "bool":
        mapping = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
        if col.dtype.kind == "b":
            return col
        return col.map(lambda v: mapping.get(str(v).strip().lower()) if pd.notna(v) else None)
    if dtype == "datetime":
        if col.dtype.kind == "M":
            ts = col
        else:
            ts = pd.to_datetime(col, errors="coerce", utc=True, format="ISO8601")
        if getattr(ts.dt, "tz", None) is not None:
            ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
        return ts.astype("datetime64[ns]")
    raise ValueError(f"unknown dtype {dtype}")


def fingerprint(df: pd.DataFrame) -> str:
    """sha256 of the canonical batch: column names + dtypes + a stable hash of every row, in order."""
    h = hashlib.sha256()
    h.update(json.dumps([[str(c), str(t)] for c, t in df.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------- staging and quarantine


def read_manifest(store: Storage, cfg: BundleConfig, date: str) -> dict | None:
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
        store.write_bytes(
            join(prefix, "gx_result.json"), json.dumps(gx_result, indent=2, default=str).encode()
        )
    store.write_bytes(join(prefix, "reason.json"), json.dumps(reason, indent=2, default=str).encode())
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
) -> IngestResult:
    """Ingest one day's batch end to end; raise BatchRejected (after quarantining) or NoLandingFiles."""
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
    if unchanged:
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
        timings=timings,
    )
