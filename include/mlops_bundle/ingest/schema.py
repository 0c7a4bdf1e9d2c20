"""Typing and fingerprinting: the raw frame cast to the configured schema, and the batch's sha256 identity.

Values that cannot be cast are reported (column, count, examples), never silently dropped; the fingerprint
is computed on the typed frame (column names, dtypes, every row in order), not on the files' bytes.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd

from mlops_bundle.config import BundleConfig


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
