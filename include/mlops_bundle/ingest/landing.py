"""Landing files: where a batch's raw files are, which of them belong to it, and reading them into one frame.

Landing files are only ever read, never modified or deleted. A remote object is fetched to a temporary file
first so the parsers can stream it. An unreadable file is not an exception but a problem string naming the
file, what is wrong with it and what to do, so one run reports every bad file of a batch at once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlops_bundle.config import BundleConfig
from mlops_bundle.storage import ObjectInfo, Storage, join, match_any


class NoLandingFiles(FileNotFoundError):
    """No file for the date: nothing to ingest and nothing to quarantine."""


def landing_prefix(cfg: BundleConfig, date: str) -> str:
    """Where a day's raw files are delivered: ``landing/<dataset>/<date>``."""
    return join(cfg.storage.landing_prefix, cfg.dataset.name, date)


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
