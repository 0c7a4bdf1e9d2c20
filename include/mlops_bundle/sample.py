"""A deterministic sample data set: customer churn, one batch per day.

Realistic enough to exercise every gate: numeric and categorical features, missing values, a label that
depends non-linearly on the features plus label noise, and knobs for covariate/concept drift and for the
typical ways a batch gets corrupted upstream. The same (day, rows, seed, drift, corrupt) always gives the
same frame, so tests and the demo are reproducible; generation is vectorised so millions of rows take
seconds.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

CONTRACT_TYPES = ("month_to_month", "one_year", "two_year")
PAYMENT_METHODS = ("credit_card", "bank_transfer", "electronic_check", "mailed_check")
REGIONS = ("north", "south", "east", "west")

# Corruptions a batch can suffer upstream; each should be stopped by the ingest gate.
CORRUPTIONS = (
    "nulls",  # total_charges mostly null (over the 5% limit)
    "out_of_range",  # negative monthly charges, ages of 250
    "unknown_category",  # a region nobody declared
    "duplicate_ids",  # the same customer_id twice
    "missing_column",  # region column dropped
    "extra_column",  # an undeclared column appears
    "wrong_type",  # text in a numeric column
    "bad_target",  # label values other than 0/1
)

_ID_STRIDE = 100_000_000  # ids are day-ordinal * stride + row, so they are unique across days


def generate_batch(
    day: dt.date | str,
    rows: int = 2_000,
    *,
    seed: int = 7,
    drift: float = 0.0,
    corrupt: str | None = None,
    label_noise: float = 0.05,
) -> pd.DataFrame:
    """Return one day's batch.

    drift: 0 = the reference distribution; 1 = strong drift (pricier, shorter-tenure, more month-to-month
    customers from the south, and a shifted relation to the label).
    corrupt: one of CORRUPTIONS, to produce a batch the quality gate must reject.
    label_noise: share of labels flipped at random (0.5 = labels carry no signal: "worse data").
    """
    if isinstance(day, str):
        day = dt.date.fromisoformat(day)
    if rows < 0 or rows >= _ID_STRIDE:
        raise ValueError(f"rows must be in [0, {_ID_STRIDE}), got {rows}")
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corrupt!r}; choose one of {CORRUPTIONS}")
    rng = np.random.default_rng([seed, day.toordinal(), int(round(drift * 1000))])

    contract_p = np.array([0.50, 0.28, 0.22])
    contract_p = contract_p + drift * (np.array([0.85, 0.10, 0.05]) - contract_p)
    contract_idx = rng.choice(3, size=rows, p=contract_p / contract_p.sum())
    payment_idx = rng.choice(4, size=rows, p=[0.30, 0.25, 0.30, 0.15])
    region_p = np.array([0.25, 0.25, 0.25, 0.25]) + drift * np.array([-0.15, 0.45, -0.15, -0.15])
    region_idx = rng.choice(4, size=rows, p=region_p / region_p.sum())

    tenure = rng.gamma(shape=2.0, scale=14.0 * (1 - 0.5 * drift), size=rows)
    tenure = np.clip(np.round(tenure + contract_idx * 12), 0, 120).astype("int64")
    monthly = rng.normal(65 + 30 * drift + 15 * (payment_idx == 2), 22, size=rows)
    monthly = np.round(np.clip(monthly, 15, 250), 2)
    total = np.round(monthly * np.maximum(tenure, 1) * rng.uniform(0.9, 1.05, size=rows), 2)
    tickets = (
        rng.poisson(1.2 + 2.0 * (contract_idx == 0) + 1.5 * drift, size=rows).clip(0, 40).astype("int64")
    )
    age = np.round(np.clip(rng.normal(45, 14, size=rows), 18, 95)).astype("float64")

    logit = (
        -1.2
        - 0.045 * tenure
        + 0.018 * (monthly - 65)
        + 0.35 * tickets
        + 1.1 * (contract_idx == 0)
        - 0.8 * (contract_idx == 2)
        + 0.6 * (payment_idx == 2)
        - 0.01 * (age - 45)
        + drift * (0.9 * (region_idx == 1) - 0.02 * (monthly - 65))  # concept drift
    )
    churned = (rng.uniform(size=rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    if not 0 <= label_noise <= 1:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    noise = rng.uniform(size=rows) < label_noise
    churned = np.where(noise, 1 - churned, churned)

    # missing values: total_charges for brand-new customers' billing lag, age not given
    total = np.where(rng.uniform(size=rows) < 0.02, np.nan, total)
    age = np.where(rng.uniform(size=rows) < 0.01, np.nan, age)

    start = pd.Timestamp(day)
    seconds = np.sort(rng.integers(0, 86_400, size=rows))
    df = pd.DataFrame(
        {
            "customer_id": day.toordinal() * _ID_STRIDE + np.arange(rows, dtype="int64"),
            "event_ts": start + pd.to_timedelta(seconds, unit="s"),
            "tenure_months": tenure,
            "monthly_charges": monthly,
            "total_charges": total,
            "support_tickets": tickets,
            "age": age,
            "contract_type": np.array(CONTRACT_TYPES, dtype=object)[contract_idx],
            "payment_method": np.array(PAYMENT_METHODS, dtype=object)[payment_idx],
            "region": np.array(REGIONS, dtype=object)[region_idx],
            "churned": churned,
        }
    )
    if corrupt is not None and rows:
        df = _corrupt(df, corrupt, rng)
    return df


def _corrupt(df: pd.DataFrame, kind: str, rng: np.random.Generator) -> pd.DataFrame:
    df = df.copy()
    n = len(df)
    k = max(1, n // 20)  # 5% of rows
    idx = rng.choice(n, size=k, replace=False)
    if kind == "nulls":
        df.loc[rng.uniform(size=n) < 0.3, "total_charges"] = np.nan
    elif kind == "out_of_range":
        df.loc[idx, "monthly_charges"] = -abs(df.loc[idx, "monthly_charges"])
        df.loc[idx[: max(1, k // 2)], "age"] = 250.0
    elif kind == "unknown_category":
        df.loc[idx, "region"] = "atlantis"
    elif kind == "duplicate_ids":
        df.loc[idx, "customer_id"] = df["customer_id"].iloc[0]
    elif kind == "missing_column":
        df = df.drop(columns=["region"])
    elif kind == "extra_column":
        df["promo_code"] = "WINTER"
    elif kind == "wrong_type":
        df["tenure_months"] = df["tenure_months"].astype(object)
        df.loc[idx, "tenure_months"] = "twelve"
    elif kind == "bad_target":
        df.loc[idx, "churned"] = 2
    return df


def write_landing(
    df: pd.DataFrame, landing_dir: str | Path, *, fmt: str = "csv", name: str = "batch"
) -> Path:
    """Write a batch the way an upstream system would drop it: csv, csv.gz or parquet."""
    landing_dir = Path(landing_dir)
    landing_dir.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        path = landing_dir / f"{name}.csv"
        df.to_csv(path, index=False)
    elif fmt == "csv.gz":
        path = landing_dir / f"{name}.csv.gz"
        df.to_csv(path, index=False, compression="gzip")
    elif fmt == "parquet":
        path = landing_dir / f"{name}.parquet"
        df.to_parquet(path, index=False)
    else:
        raise ValueError(f"unknown landing format {fmt!r}; use csv, csv.gz or parquet")
    return path


# ------------------------------------------------------------------- scikit-learn's bundled data sets
# The demo's second data set (and the task-type tests' data): one of sklearn's ``load_*`` sets, which ship
# with scikit-learn (no download), cut into daily batches. They have neither an id nor a timestamp column.
SKLEARN_TARGET = "target"


def sklearn_frame(loader: str, seed: int = 7) -> pd.DataFrame:
    """sklearn's ``loader`` (e.g. ``load_diabetes``) as one frame: feature names made identifiers, the
    label in column ``target``, rows shuffled once with ``seed``."""
    import re

    import sklearn.datasets

    df = getattr(sklearn.datasets, loader)(as_frame=True).frame
    df.columns = [re.sub(r"\W+", "_", str(c)).strip("_") for c in df.columns]
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def sklearn_batch(loader: str, part: int, parts: int, day: dt.date | str, seed: int = 7) -> pd.DataFrame:
    """Batch ``part`` (0-based) of ``parts`` equal slices of :func:`sklearn_frame`, as delivered on ``day``:
    an ``event_ts`` column (UTC, spread over the day) comes first, so a window of one day still splits
    into train and holdout by time."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is not in 0..{parts - 1}")
    df = sklearn_frame(loader, seed)
    bounds = np.linspace(0, len(df), parts + 1).astype(int)
    df = df.iloc[bounds[part] : bounds[part + 1]].reset_index(drop=True)
    start = pd.Timestamp(str(day), tz="UTC")
    seconds = np.linspace(0, 86_399, len(df)).astype(int) if len(df) else np.array([], dtype=int)
    df.insert(0, "event_ts", start + pd.to_timedelta(seconds, unit="s"))
    return df
