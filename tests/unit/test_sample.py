"""The sample generator: deterministic, realistic, with working drift and corruption knobs."""

from __future__ import annotations

import pandas as pd
import pytest

from mlops_bundle.sample import CORRUPTIONS, REGIONS, generate_batch, write_landing


def test_deterministic_and_day_dependent():
    a = generate_batch("2026-01-05", rows=500)
    pd.testing.assert_frame_equal(a, generate_batch("2026-01-05", rows=500))
    assert not a.equals(generate_batch("2026-01-06", rows=500))
    assert a["customer_id"].is_unique
    assert set(a["customer_id"]).isdisjoint(generate_batch("2026-01-06", rows=500)["customer_id"])


def test_realistic_shape():
    df = generate_batch("2026-01-05", rows=20_000)
    assert 0.15 < df["churned"].mean() < 0.5  # imbalanced but not degenerate
    assert 0.005 < df["total_charges"].isna().mean() < 0.05  # some missing values
    assert 0.001 < df["age"].isna().mean() < 0.05
    assert set(df["region"]) == set(REGIONS)
    assert df["event_ts"].dt.date.nunique() == 1
    # the label depends on the features: month-to-month customers churn more
    by_contract = df.groupby("contract_type")["churned"].mean()
    assert by_contract["month_to_month"] > by_contract["two_year"] + 0.1


def test_drift_knob_moves_distributions():
    base = generate_batch("2026-01-05", rows=20_000)
    drifted = generate_batch("2026-01-05", rows=20_000, drift=1.0)
    assert drifted["monthly_charges"].mean() > base["monthly_charges"].mean() + 15
    assert (drifted["region"] == "south").mean() > (base["region"] == "south").mean() + 0.2


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_every_corruption_changes_the_batch(kind):
    clean = generate_batch("2026-01-05", rows=300)
    bad = generate_batch("2026-01-05", rows=300, corrupt=kind)
    assert not clean.equals(bad)


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="unknown corruption"):
        generate_batch("2026-01-05", corrupt="gremlins")
    with pytest.raises(ValueError, match="rows must be"):
        generate_batch("2026-01-05", rows=-1)


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet"])
def test_write_landing_round_trips(tmp_path, fmt):
    df = generate_batch("2026-01-05", rows=100)
    path = write_landing(df, tmp_path, fmt=fmt)
    back = pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)
    assert len(back) == 100 and list(back.columns) == list(df.columns)
