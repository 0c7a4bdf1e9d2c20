"""Drift reports with real Evidently and a real scikit-learn model; the retrain guard's rules.

The model is a small logistic regression trained on a few days of the sample data; the reference is its
scored training data, the current batch a later day (same distribution, or drift=1.0).
"""

from __future__ import annotations

import datetime as dt
import json
import threading

import numpy as np
import pandas as pd
import pytest

from mlops_bundle.config import load_config
from mlops_bundle.monitoring import (
    CATEGORICAL_DRIFT,
    NUMERIC_DRIFT,
    MonitoringError,
    append_history,
    build_report,
    decide_retrain,
    history_key,
    load_history,
    read_predictions,
    reference_needed,
    sample,
    score_batch,
    should_trigger_retrain,
    write_predictions,
    write_report,
)
from mlops_bundle.monitoring.guard import mark_started
from mlops_bundle.sample import generate_batch
from mlops_bundle.storage import LocalStorage
from tests.models import CAT, NUM, fit_logreg


@pytest.fixture(scope="module")
def cfg():
    return load_config()


@pytest.fixture(scope="module")
def model_and_train():
    train = pd.concat([generate_batch(f"2026-01-0{d}", 10_000) for d in range(1, 4)], ignore_index=True)
    return fit_logreg(train), train


@pytest.fixture(scope="module")
def reference(model_and_train, cfg):
    model, train = model_and_train
    return score_batch(model, train, cfg)


def _current(model, cfg, rows: int, drift: float = 0.0, day: str = "2026-02-01") -> pd.DataFrame:
    return score_batch(model, generate_batch(day, rows, drift=drift, seed=11), cfg)


@pytest.fixture(scope="module")
def drifted(model_and_train, reference, cfg):
    model, _ = model_and_train
    return build_report(reference, _current(model, cfg, 3_000, drift=1.0), cfg)


# ------------------------------------------------------------------------------------------ sampling


def test_sample_is_deterministic_uniform_and_keeps_order():
    df = pd.DataFrame({"x": np.arange(10_000)})
    a, b = sample(df, 1_000, seed=3), sample(df, 1_000, seed=3)
    assert len(a) == 1_000 and a.equals(b)
    assert a["x"].is_monotonic_increasing and a["x"].is_unique
    assert not a.equals(sample(df, 1_000, seed=4))
    assert 4_000 < a["x"].mean() < 6_000  # uniform over the whole frame, not the head
    assert sample(df, 20_000, seed=0) is df  # fits: no copy


def test_score_batch_adds_predictions_and_keeps_keys(model_and_train, cfg):
    model, _ = model_and_train
    batch = generate_batch("2026-02-02", 1_000)
    scored = score_batch(model, batch, cfg, chunk_rows=300)
    expected = model.predict_proba(batch[NUM + CAT])[:, 1]
    np.testing.assert_allclose(scored["prediction_proba"].to_numpy(), expected)
    assert (scored["prediction"] == (expected >= 0.5)).all()
    assert {"customer_id", "event_ts", "churned", *NUM, *CAT} <= set(scored.columns)
    slim = score_batch(model, batch, cfg, keep_features=False)
    assert list(slim.columns) == ["customer_id", "event_ts", "prediction", "prediction_proba"]
    with pytest.raises(MonitoringError, match=r"lacks columns \['region'\]"):
        score_batch(model, batch.drop(columns="region"), cfg)


# -------------------------------------------------------------------------------------------- drift


@pytest.mark.parametrize("rows", [2_000, 20_000])
def test_same_distribution_is_not_drift_at_any_size(model_and_train, cfg, rows):
    """The pinned distances must not flip to 'drift' just because there are more rows."""
    model, _ = model_and_train
    ref = score_batch(model, generate_batch("2026-01-20", rows, seed=5), cfg)
    cur = _current(model, cfg, rows)
    result = build_report(ref, cur, cfg)
    assert not result.dataset_drift, result.describe()
    assert result.drifted_columns == []
    assert not result.prediction_drift["drifted"]
    for col, score in result.column_scores.items():
        expected = NUMERIC_DRIFT if col in NUM else CATEGORICAL_DRIFT
        assert (score["method"], score["threshold"]) == (expected.name, expected.threshold)
        assert score["score"] < 0.8 * score["threshold"], (col, score)  # clear of the threshold
    assert result.quality is not None and result.quality["current"]["roc_auc"] > 0.7


def test_drifted_batch_is_detected(drifted, cfg):
    r = drifted
    assert r.dataset_drift and r.drift_share >= cfg.monitoring.drift_share_threshold
    assert {"monthly_charges", "region"} <= set(r.drifted_columns)
    assert r.column_scores["monthly_charges"]["score"] > 1.0  # mean +30 on a std of ~22
    assert not r.column_scores["payment_method"]["drifted"]  # untouched by the drift knob
    assert r.prediction_drift["drifted"] and r.prediction_drift["method"] == "wasserstein"
    assert r.drift_share == len(r.drifted_columns) / len(r.column_scores)
    text = r.describe()
    assert "DRIFT" in text and "monthly_charges" in text and "threshold 0.30" in text
    # Evidently's own count agrees with ours
    counts = [m for m in r.json["metrics"] if m["config"]["type"].endswith(":DriftedColumnsCount")]
    assert counts and counts[0]["value"]["share"] == pytest.approx(r.drift_share)


def test_quality_matches_sklearn_for_both_sides(drifted, reference):
    from sklearn.metrics import roc_auc_score

    q = drifted.quality
    assert q is not None and drifted.quality_skipped_reason is None
    assert set(q["current"]) >= {"accuracy", "precision", "recall", "f1", "roc_auc"}
    ref_auc = roc_auc_score(reference["churned"], reference["prediction_proba"])
    assert q["reference"]["roc_auc"] == pytest.approx(ref_auc, abs=1e-6)


def test_missing_labels_skip_quality_but_keep_drift(model_and_train, reference, cfg):
    model, _ = model_and_train
    cur = _current(model, cfg, 2_000, drift=1.0).drop(columns="churned")
    r = build_report(reference, cur, cfg)
    assert r.quality is None
    assert "no labels" in r.quality_skipped_reason and "churned" in r.quality_skipped_reason
    assert r.dataset_drift and "region" in r.drifted_columns
    assert "quality: skipped" in r.describe()
    all_null = cur.assign(churned=np.nan)
    assert build_report(reference, all_null, cfg).quality is None
    forced_off = build_report(reference, _current(model, cfg, 2_000), cfg, labels_available=False)
    assert forced_off.quality is None and "labels_available=False" in forced_off.quality_skipped_reason


def test_partial_labels_give_quality_on_labeled_rows(model_and_train, reference, cfg):
    from sklearn.metrics import roc_auc_score

    model, _ = model_and_train
    cur = _current(model, cfg, 2_000)
    cur.loc[cur.index[:500], "churned"] = np.nan
    r = build_report(reference, cur, cfg)
    lab = cur.dropna(subset=["churned"])
    assert r.quality["current"]["roc_auc"] == pytest.approx(
        roc_auc_score(lab["churned"].astype(int), lab["prediction_proba"]), abs=1e-6
    )
    assert any("500 of 2,000" in n for n in r.notes)
    assert "Classification quality (labeled rows only)" in r.html


def test_missing_columns_are_named(model_and_train, reference, cfg):
    model, _ = model_and_train
    cur = _current(model, cfg, 500).drop(columns=["region", "age"])
    with pytest.raises(
        MonitoringError, match=r"current batch lacks columns \['age', 'region'\] that the champion"
    ):
        build_report(reference, cur, cfg)
    with pytest.raises(MonitoringError, match="prediction_proba.*score_batch"):
        build_report(reference, generate_batch("2026-02-01", 100), cfg)


def test_empty_current_is_an_error(reference, cfg):
    with pytest.raises(MonitoringError, match="no rows to monitor for churn"):
        build_report(reference, reference.iloc[:0], cfg)


def test_feature_missing_entirely_counts_as_drift(model_and_train, reference, cfg):
    model, _ = model_and_train
    cur = _current(model, cfg, 2_000).assign(total_charges=np.nan)
    r = build_report(reference, cur, cfg)
    assert r.column_scores["total_charges"]["drifted"] and r.column_scores["total_charges"]["score"] is None
    assert "total_charges" in r.drifted_columns


def test_write_report_writes_three_files(drifted, tmp_path):
    store = LocalStorage(tmp_path / "lake")
    uris = write_report(store, "reports/churn/2026-02-01", drifted)
    assert set(uris) == {"html", "json", "summary"}
    keys = {o.key for o in store.list("reports/churn/2026-02-01")}
    assert keys == {f"reports/churn/2026-02-01/{n}" for n in ("report.html", "report.json", "summary.json")}
    html = store.read_bytes("reports/churn/2026-02-01/report.html").decode()
    assert html.lstrip().lower().startswith("<html") or "<!doctype html" in html[:200].lower()
    assert "<script src=" not in html  # self-contained: no external JS
    summary = json.loads(store.read_bytes("reports/churn/2026-02-01/summary.json"))
    assert summary["dataset_drift"] is True and "html" not in summary
    assert summary["report_html"] == uris["html"]
    evidently_json = json.loads(store.read_bytes("reports/churn/2026-02-01/report.json"))
    assert {"metrics", "tests"} <= set(evidently_json)
    json.dumps(drifted.summary(), allow_nan=False)  # JSON-safe


# ------------------------------------------------------------------------------------- retrain guard

NOW = dt.datetime(2026, 2, 1, 15, 0, tzinfo=dt.UTC)
DRIFT = {"dataset_drift": True, "drift_share": 0.62, "drift_share_threshold": 0.3}
NO_DRIFT = {"dataset_drift": False, "drift_share": 0.12, "drift_share_threshold": 0.3}


def _at(hours_ago: float) -> dict:
    return {"at": (NOW - dt.timedelta(hours=hours_ago)).isoformat(), "run_id": "x"}


@pytest.mark.parametrize(
    ("summary", "history", "expected", "reason"),
    [
        (NO_DRIFT, [], False, "no dataset drift: drift share 0.12 < threshold 0.30"),
        (DRIFT, [_at(2)], False, "cooldown: last drift-triggered retrain at .* 2.0 h ago < cooldown_hours 6"),
        (DRIFT, [_at(7)], True, "last one 7.0 h ago .* retrain 2 of 2 today"),
        (
            DRIFT,
            [_at(14.5), _at(7)],
            False,
            r"max retrains per day reached: 2 .* 2026-02-01 .* >= max_retrains_per_day 2",
        ),
        (DRIFT, [_at(30)], True, "retrain 1 of 2 today"),  # yesterday does not count
        (DRIFT, [], True, "dataset drift: share 0.62 >= threshold 0.30; first trigger"),
    ],
    ids=["no-drift", "cooldown-active", "cooldown-expired", "max-per-day", "yesterday", "first"],
)
def test_retrain_guard(cfg, summary, history, expected, reason):
    ok, why = should_trigger_retrain(summary, history, NOW, cfg)
    assert ok is expected
    assert __import__("re").search(reason, why), why


def test_guard_accepts_naive_times_and_rejects_bad_records(cfg):
    naive = {"at": (NOW - dt.timedelta(hours=1)).replace(tzinfo=None).isoformat()}
    ok, why = should_trigger_retrain(DRIFT, [naive], NOW, cfg)
    assert not ok and "cooldown" in why
    with pytest.raises(MonitoringError, match="record #0 .*fix or remove"):
        should_trigger_retrain(DRIFT, [{"at": "yesterday"}], NOW, cfg)


def test_history_roundtrip_and_concurrent_appends_are_not_lost(tmp_path, cfg):
    store = LocalStorage(tmp_path / "lake")
    key = history_key(cfg)
    assert key == "monitoring/churn/retrain_history.json"
    assert load_history(store, key) == []

    def worker(n: int) -> None:
        for i in range(5):
            append_history(store, key, {"at": NOW.isoformat(), "worker": n, "i": i})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = load_history(store, key)
    assert len(records) == 30
    assert {(r["worker"], r["i"]) for r in records} == {(n, i) for n in range(6) for i in range(5)}
    store.write_bytes(key, b"{not json")
    with pytest.raises(MonitoringError, match="retrain_history.json is not valid JSON"):
        load_history(store, key)


def test_decide_retrain_records_the_retrain_and_a_run_starts_at_most_one(tmp_path, cfg):
    store = LocalStorage(tmp_path / "lake")
    day = {**DRIFT, "date": "2026-02-01", "drifted_columns": ["region"], "champion_version": "3"}
    first = decide_retrain(cfg, store, day, NOW, decision_key="monitor/run-1")
    assert first.retrain and "first trigger" in first.reason
    assert first.record["date"] == "2026-02-01" and first.record["champion_version"] == "3"
    [stored] = load_history(store, history_key(cfg))
    assert stored == first.record
    # a retry or a cleared task of the same run never starts a second retrain...
    later = NOW + dt.timedelta(minutes=5)
    retry = decide_retrain(cfg, store, day, later, decision_key="monitor/run-1")
    assert not retry.retrain and retry.record == {}
    assert "this run already started a drift-triggered retrain" in retry.reason
    # ...once the train run that consumed it started, another run is held back by the cooldown
    assert first.record["status"] == "pending"
    assert mark_started(cfg, store, ["monitor/run-1"], "train/run-a", later) == ["monitor/run-1"]
    assert mark_started(cfg, store, ["monitor/run-1"], "train/run-b", later) == [], "a retry keeps the first"
    [stored] = load_history(store, history_key(cfg))
    assert stored["status"] == "started" and stored["train_run"] == "train/run-a"
    other = decide_retrain(cfg, store, day, later, decision_key="monitor/run-2")
    assert not other.retrain and "cooldown" in other.reason and other.record == {}
    quiet = decide_retrain(
        cfg, store, {**NO_DRIFT, "date": "2026-02-02"}, later, decision_key="monitor/run-3"
    )
    assert not quiet.retrain and "no dataset drift" in quiet.reason
    assert len(load_history(store, history_key(cfg))) == 1


def test_a_drift_retrain_that_never_started_does_not_use_up_the_cooldown(tmp_path, cfg):
    """Train paused or its run never created: the trigger stays pending; after an hour it no longer counts,
    so the next drift may trigger again; pending triggers count for neither the cooldown nor the daily
    maximum. Within that hour it holds repeated monitor runs back (one queued retrain, not one each)."""
    store = LocalStorage(tmp_path / "lake")
    day = {**DRIFT, "date": "2026-02-01"}
    first = decide_retrain(cfg, store, day, NOW, decision_key="monitor/run-1")
    assert first.retrain
    soon = decide_retrain(cfg, store, day, NOW + dt.timedelta(minutes=10), decision_key="monitor/run-2")
    assert not soon.retrain and "has not started yet" in soon.reason
    later = NOW + dt.timedelta(hours=2)
    second = decide_retrain(cfg, store, day, later, decision_key="monitor/run-3")
    assert second.retrain and "first trigger" in second.reason, "the pending trigger is not the last retrain"
    history = load_history(store, history_key(cfg))
    assert [r["status"] for r in history] == ["pending", "pending"]
    # the train run consumed both events: both started now, so the cooldown and the daily count apply
    mark_started(cfg, store, ["monitor/run-1", "monitor/run-3"], "train/run-a", later)
    held = decide_retrain(cfg, store, day, later + dt.timedelta(minutes=5), decision_key="monitor/run-9")
    assert not held.retrain and "cooldown" in held.reason


def test_predictions_roundtrip_and_missing_day_is_named(model_and_train, cfg, tmp_path):
    model, _ = model_and_train
    store = LocalStorage(tmp_path / "lake")
    scored = score_batch(model, generate_batch("2026-02-03", 200), cfg)
    uri = write_predictions(store, cfg, "2026-02-03", scored)
    assert uri.endswith("predictions/churn/ds=2026-02-03/predictions.parquet")
    pd.testing.assert_frame_equal(read_predictions(store, cfg, "2026-02-03"), scored.reset_index(drop=True))
    with pytest.raises(MonitoringError, match="no predictions for churn/2026-02-04 .*score the day first"):
        read_predictions(store, cfg, "2026-02-04")


class _Artifacts:
    def __init__(self, paths):
        self.paths = paths

    def list_artifacts(self, run_id, path):
        return [type("A", (), {"path": p})() for p in self.paths]


def test_reference_is_recorded_for_new_versions_and_repaired_for_reused_ones():
    recorded = _Artifacts(["reference/reference.parquet"])
    assert reference_needed(recorded, "r1", reused=False)  # a new version always gets one
    assert not reference_needed(recorded, "r1", reused=True)
    # reused, but the attempt that registered it died before recording the reference
    assert reference_needed(_Artifacts([]), "r1", reused=True)


# ------------------------------------------------------------------------- thresholds at small sizes


def test_a_small_same_distribution_batch_gets_calibrated_thresholds(model_and_train, reference, cfg):
    """At 120 rows the pinned thresholds sit inside the noise: build_report raises them (calibrated on the
    reference at the batch's size), passes them to Evidently and decides with them."""
    model, _ = model_and_train
    r = build_report(reference, _current(model, cfg, 120), cfg)
    assert r.verdict == "no_drift" and not r.dataset_drift, r.describe()
    assert "calibrated" in r.thresholds["origin"].values()
    for score in r.column_scores.values():
        floor = (NUMERIC_DRIFT if score["method"] == NUMERIC_DRIFT.name else CATEGORICAL_DRIFT).threshold
        assert score["threshold"] >= floor
        assert score["drifted"] == (score["score"] >= score["threshold"])  # Evidently's flag, our threshold
    assert any("thresholds raised" in n for n in r.notes)


def test_a_real_shift_is_still_drift_at_small_sizes(model_and_train, reference, cfg):
    model, _ = model_and_train
    r = build_report(reference, _current(model, cfg, 300, drift=1.0), cfg)
    assert r.verdict == "drift" and r.dataset_drift, r.describe()


def test_too_few_rows_is_insufficient_data_and_never_a_retrain(model_and_train, reference, cfg, tmp_path):
    model, _ = model_and_train
    small = cfg.model_copy(update={"monitoring": cfg.monitoring.model_copy(update={"min_rows": 500})})
    r = build_report(reference, _current(model, small, 300, drift=1.0), small)
    assert r.verdict == "insufficient_data" and not r.dataset_drift
    assert r.drift_share >= small.monitoring.drift_share_threshold  # the scores did move ...
    assert "INSUFFICIENT DATA" in r.describe()
    verdict = decide_retrain(
        small, LocalStorage(tmp_path), r.summary(), dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    )
    assert not verdict.retrain and verdict.reason.startswith("insufficient data")  # ... but no retrain


def test_fixed_column_thresholds_are_used_as_given(model_and_train, reference, cfg):
    model, _ = model_and_train
    fixed = cfg.model_copy(
        update={
            "monitoring": cfg.monitoring.model_copy(update={"column_thresholds": {"monthly_charges": 0.5}})
        }
    )
    r = build_report(reference, _current(model, fixed, 120), fixed)
    assert r.column_scores["monthly_charges"]["threshold"] == 0.5
    assert r.thresholds["origin"]["monthly_charges"] == "fixed"


def test_calibrations_are_cached_per_reference_and_size(model_and_train, reference, cfg, tmp_path):
    from mlops_bundle.monitoring.calibration import CalibrationCache, size_bucket

    model, _ = model_and_train
    store = LocalStorage(tmp_path)
    cache = CalibrationCache(store, "work/churn/calibration/run-1")
    current = _current(model, cfg, 150)
    first = build_report(reference, current, cfg, calibration_cache=cache)
    key = cache.key(f"features-{size_bucket(150)}")
    assert store.exists(key)
    # what is cached is what is used: an entry edited by hand (same parameters) shows up in the next report
    data = json.loads(store.read_bytes(key))
    data["thresholds"]["monthly_charges"] = 0.77
    store.write_bytes(key, json.dumps(data).encode())
    second = build_report(reference, current, cfg, calibration_cache=cache)
    assert second.column_scores["monthly_charges"]["threshold"] == 0.77
    # a planted entry that would hide any drift (review: NaN or a huge threshold) is recomputed, not used
    for poison in (float("nan"), 1e9):
        data["thresholds"]["contract_type"] = poison
        store.write_bytes(key, json.dumps(data).encode())
        poisoned = build_report(reference, current, cfg, calibration_cache=cache)
        assert (
            poisoned.column_scores["contract_type"]["threshold"]
            == first.column_scores["contract_type"]["threshold"]
        )
    # an entry computed for other parameters (another share threshold) is recomputed, not trusted
    other = cfg.model_copy(
        update={"monitoring": cfg.monitoring.model_copy(update={"drift_share_threshold": 0.5})}
    )
    third = build_report(reference, current, other, calibration_cache=cache)
    assert (
        third.column_scores["monthly_charges"]["threshold"]
        == first.column_scores["monthly_charges"]["threshold"]
    )
