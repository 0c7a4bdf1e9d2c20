"""Promotion gate: the pure rules (table-driven), gate/rollback against a real local MLflow store, the
decision records, and the race the promotion lock exists for (concurrent processes, file lock and
PostgreSQL advisory lock, plus a no-lock control that ends with a worse champion).

The race tests force the losing interleaving (see "race" below), so they are deterministic: without the
lock they fail every run, with it they pass every run. Test-only switches, off by default and not part
of the normal run:

* ``MLOPS_TEST_RACE_NO_LOCK=1``: the lock tests run with ``promotion_lock`` replaced by a no-op and must
  then FAIL (proof that they catch a missing or broken lock);
* ``MLOPS_TEST_RACE_RUNS=N``: every race test runs N times (``test_race_file_lock[0]`` ... ``[N-1]``).

    MLOPS_TEST_RACE_RUNS=10 MLOPS_TEST_RACE_NO_LOCK=1 .venv/bin/python -m pytest -q -k race \\
        tests/unit/test_promotion.py   # the two lock tests must fail 10/10, the control pass 10/10
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

import pytest

from mlops_bundle import promotion
from mlops_bundle.config import DEFAULT_CONFIG_PATH, load_config
from mlops_bundle.promotion import (
    NOOP,
    PROMOTE,
    REJECT,
    ROLLBACK,
    GateError,
    GatePolicy,
    PromotionLockTimeout,
    decide,
)
from mlops_bundle.tracking import alias_version
from tests.gate_models import FEATURE_SETS, decisions_of, make_scorer, register
from tests.racing import RACE_NO_LOCK

# ------------------------------------------------------------------------------------------- decide

POLICY = GatePolicy(metric="roc_auc", floor=0.70, min_improvement=0.005, guard_metrics={"f1": 0.02})
LOSS_POLICY = GatePolicy(metric="log_loss", floor=0.60, min_improvement=0.01, guard_metrics={"brier": 0.01})
JUST = "holdout relabelled after incident 42"

DECIDE_CASES = [
    # id, challenger, champion, policy, kwargs, verdict, reason fragments
    ("first-above-floor", {"roc_auc": 0.81, "f1": 0.6}, None, POLICY, {}, PROMOTE,
     ["no champion yet: first model promoted (roc_auc 0.81 >= floor 0.70)"]),
    ("first-below-floor", {"roc_auc": 0.64, "f1": 0.6}, None, POLICY, {}, REJECT, ["roc_auc 0.64 < floor 0.70"]),
    ("first-exactly-floor", {"roc_auc": 0.70, "f1": 0.6}, None, POLICY, {}, PROMOTE, [">= floor 0.70"]),
    ("better", {"roc_auc": 0.83, "f1": 0.61}, {"roc_auc": 0.81, "f1": 0.60}, POLICY, {}, PROMOTE,
     ["roc_auc 0.83 beats champion 0.81 by +0.0200", "guards ok: f1 0.61 vs champion 0.60"]),
    ("worse", {"roc_auc": 0.79, "f1": 0.6}, {"roc_auc": 0.81, "f1": 0.6}, POLICY, {}, REJECT,
     ["roc_auc 0.79 does not beat champion 0.81 (improvement -0.0200"]),
    ("below-min-improvement", {"roc_auc": 0.813, "f1": 0.6}, {"roc_auc": 0.81, "f1": 0.6}, POLICY, {}, REJECT,
     ["beats too little", "min_improvement 0.005"]),
    ("exactly-min-improvement", {"roc_auc": 0.815, "f1": 0.6}, {"roc_auc": 0.81, "f1": 0.6}, POLICY, {},
     PROMOTE, ["by +0.0050"]),
    ("exact-tie", {"roc_auc": 0.81, "f1": 0.6}, {"roc_auc": 0.81, "f1": 0.6}, POLICY, {}, REJECT,
     ["ties champion 0.81"]),
    ("tie-with-zero-min-improvement", {"roc_auc": 0.81}, {"roc_auc": 0.81},
     GatePolicy("roc_auc", 0.7, 0.0, {}), {}, REJECT, ["ties champion", "needs > 0"]),
    ("negative-min-improvement-still-needs-gain", {"roc_auc": 0.80}, {"roc_auc": 0.81},
     GatePolicy("roc_auc", 0.7, -0.05, {}), {}, REJECT, ["does not beat"]),
    ("guard-within-tolerance", {"roc_auc": 0.83, "f1": 0.58}, {"roc_auc": 0.81, "f1": 0.60}, POLICY, {},
     PROMOTE, ["guards ok: f1 0.58 vs champion 0.60 (tolerance 0.02)"]),
    ("guard-over-tolerance", {"roc_auc": 0.83, "f1": 0.55}, {"roc_auc": 0.81, "f1": 0.60}, POLICY, {}, REJECT,
     ["guard f1 got worse by 0.05: champion 0.60 -> challenger 0.55 (tolerance 0.02)"]),
    ("guard-missing-on-champion-is-skipped", {"roc_auc": 0.83, "f1": 0.5}, {"roc_auc": 0.81}, POLICY, {},
     PROMOTE, ["guard f1 skipped: champion has no f1"]),
    ("lower-is-better-primary-better", {"log_loss": 0.40, "brier": 0.15}, {"log_loss": 0.45, "brier": 0.15},
     LOSS_POLICY, {}, PROMOTE, ["log_loss 0.40 beats champion 0.45 by +0.0500"]),
    ("lower-is-better-primary-worse", {"log_loss": 0.50, "brier": 0.15}, {"log_loss": 0.45, "brier": 0.15},
     LOSS_POLICY, {}, REJECT, ["log_loss 0.50 does not beat champion 0.45 (improvement -0.0500"]),
    ("lower-is-better-ceiling", {"log_loss": 0.65, "brier": 0.2}, None, LOSS_POLICY, {}, REJECT,
     ["log_loss 0.65 > ceiling 0.60 (lower is better)"]),
    ("lower-is-better-guard", {"log_loss": 0.40, "brier": 0.18}, {"log_loss": 0.45, "brier": 0.15},
     LOSS_POLICY, {}, REJECT, ["guard brier got worse by 0.03: champion 0.15 -> challenger 0.18"]),
    ("forced-worse", {"roc_auc": 0.60, "f1": 0.3}, {"roc_auc": 0.81, "f1": 0.6}, POLICY,
     {"force": True, "justification": JUST}, PROMOTE,
     ["FORCED promotion (justification: " + JUST + ") overriding:", "roc_auc 0.60 < floor 0.70",
      "does not beat champion 0.81", "guard f1 got worse by 0.30"]),
    ("forced-but-fine", {"roc_auc": 0.83, "f1": 0.6}, {"roc_auc": 0.81, "f1": 0.6}, POLICY,
     {"force": True, "justification": JUST}, PROMOTE, ["FORCED promotion", "no rules overridden"]),
    ("forced-champion-without-primary", {"roc_auc": 0.83, "f1": 0.6}, {"f1": 0.6}, POLICY,
     {"force": True, "justification": JUST}, PROMOTE, ["overriding: champion has no roc_auc"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("challenger", "champion", "policy", "kwargs", "verdict", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in DECIDE_CASES],
)
def test_decide(challenger, champion, policy, kwargs, verdict, fragments):
    got_verdict, reason = decide(challenger, champion, policy, **kwargs)
    assert got_verdict == verdict, reason
    for fragment in fragments:
        assert fragment in reason


DECIDE_ERRORS = [
    ("forced-without-justification", {"roc_auc": 0.9, "f1": 0.6}, None, {"force": True}, "justification"),
    ("forced-blank-justification", {"roc_auc": 0.9, "f1": 0.6}, None,
     {"force": True, "justification": "   \n  "}, "at least 10 characters"),
    ("forced-short-justification", {"roc_auc": 0.9, "f1": 0.6}, None,
     {"force": True, "justification": "because"}, "at least 10 characters"),
    ("challenger-missing-primary", {"f1": 0.6}, None, {}, "challenger metrics have no usable 'roc_auc'"),
    ("challenger-nan-primary", {"roc_auc": float("nan"), "f1": 0.6}, None, {}, "no usable 'roc_auc'"),
    ("challenger-missing-guard", {"roc_auc": 0.9}, {"roc_auc": 0.8, "f1": 0.6}, {},
     "challenger metrics have no usable 'f1'"),
    ("challenger-missing-guard-first-model", {"roc_auc": 0.9}, None, {}, "no usable 'f1'"),
    ("champion-missing-primary", {"roc_auc": 0.9, "f1": 0.6}, {"f1": 0.6}, {},
     "champion metrics have no usable 'roc_auc'"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("challenger", "champion", "kwargs", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in DECIDE_ERRORS],
)
def test_decide_errors(challenger, champion, kwargs, message):
    with pytest.raises(GateError, match=message.replace("(", r"\(")):
        decide(challenger, champion, POLICY, **kwargs)


def test_policy_from_config_and_validation():
    cfg = load_config(DEFAULT_CONFIG_PATH, environ={})
    policy = GatePolicy.from_config(cfg)
    assert policy.metric == cfg.training.metric
    assert policy.floor == cfg.promotion.floor
    assert policy.guard_metrics == dict(cfg.promotion.guard_metrics)
    with pytest.raises(GateError, match="tolerances must be >= 0"):
        GatePolicy("roc_auc", 0.7, 0.0, {"f1": -0.1})


def test_lock_key_is_stable_and_signed_64_bit():
    key = promotion.lock_key("churn-classifier")
    assert key == promotion.lock_key("churn-classifier") != promotion.lock_key("other")
    assert -(2**63) <= key < 2**63
    assert key == 7766059317442499239  # pinned: every host and release must agree


def test_decision_to_dict_is_json_safe():
    decision = promotion.Decision(
        model_name="m",
        verdict=REJECT,
        reason="r",
        challenger={"version": "1", "run_id": None, "metrics": {"roc_auc": float("nan")}},
        champion=None,
        policy=POLICY.to_dict(),
        actor="test",
        context={"path": Path("/x"), "n": 3, "tags": {"a", "b"}},
    )
    out = json.loads(json.dumps(decision.to_dict()))
    assert out["challenger"]["metrics"]["roc_auc"] is None
    assert out["context"]["path"] == "/x"
    assert len(out["decision_id"]) == 32 and out["decided_at"].endswith("+00:00")


# ------------------------------------------------------------------------------------ MLflow fixtures


def _env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {"MLOPS_MLFLOW__TRACKING_URI": str(tmp_path / "mlflow")}
    env.update({f"MLOPS_PROMOTION__{k.upper()}": v for k, v in overrides.items()})
    return env


@pytest.fixture(scope="module")
def template_db(tmp_path_factory) -> Path:
    """An empty, migrated MLflow SQLite DB, copied per test: migrating one is slow, copying it is not
    (benchmarks/README.md, "Test fixtures")."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_store(tmp_path, template_db):
    """A private local tracking store under tmp_path/mlflow (what _env points the config at); restores
    MLflow's process-global tracking URI afterwards."""
    import shutil

    import mlflow

    (tmp_path / "mlflow").mkdir()
    (tmp_path / "downloads").mkdir()
    shutil.copy(template_db, tmp_path / "mlflow" / "mlflow.db")
    before = mlflow.get_tracking_uri()
    yield tmp_path
    mlflow.set_tracking_uri(before)


# ------------------------------------------------------------------------------------ gate/rollback


def test_gate_promote_reject_rollback_with_records(tmp_path, mlflow_store):
    from mlflow import MlflowClient

    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path))
    v = register(cfg, ["f3", "f1", "f5"])
    client = MlflowClient(cfg.tracking_uri)
    score = make_scorer(tmp_path / "downloads")
    ctx = {"dag_id": "train", "run_id": "manual__1", "data_fingerprint": "abc"}
    assert promotion.champion_info(cfg, client) is None

    first = promotion.gate(cfg, client, challenger_version=v["f3"], score=score, actor="test", context=ctx)
    assert (first.verdict, first.applied, first.champion) == (PROMOTE, True, None)
    assert first.reason.startswith("no champion yet: first model promoted (roc_auc 0.8")

    worse = promotion.gate(cfg, client, challenger_version=v["f1"], score=score, actor="test", context=ctx)
    assert (worse.verdict, worse.applied) == (REJECT, False)
    assert worse.reason.startswith(f"vs champion version {v['f3']}: roc_auc 0.7")
    assert "does not beat champion" in worse.reason
    assert alias_version(client, cfg.model_name, "champion") == v["f3"]
    assert alias_version(client, cfg.model_name, "previous") is None

    # apply=False: an evaluation is recorded (not a decision), aliases untouched (before a human approval)
    dry = promotion.gate(cfg, client, challenger_version=v["f5"], score=score, actor="test", apply=False)
    assert (dry.verdict, dry.applied, dry.kind) == (PROMOTE, False, "evaluation")
    assert dry.reason.startswith("evaluation before approval, not a decision: vs champion version")
    assert alias_version(client, cfg.model_name, "champion") == v["f3"]

    better = promotion.gate(cfg, client, challenger_version=v["f5"], score=score, actor="approver")
    assert (better.verdict, better.applied, better.previous_champion) == (PROMOTE, True, v["f3"])
    assert "beats champion" in better.reason and "guards ok: f1" in better.reason
    assert alias_version(client, cfg.model_name, "champion") == v["f5"]
    assert alias_version(client, cfg.model_name, "previous") == v["f3"]

    again = promotion.gate(cfg, client, challenger_version=v["f5"], score=score, actor="test")
    assert (again.verdict, again.applied) == (NOOP, False)
    assert again.reason == f"version {v['f5']} is already the champion; nothing changed"

    info = promotion.champion_info(cfg, client)
    assert info["version"] == v["f5"] and info["previous"] == v["f3"]
    assert client.get_model_version(cfg.model_name, v["f5"]).tags["gate.applied"] == "false"  # the noop
    assert info["aliases"] == ["champion"] and info["metrics"]["roc_auc"] > 0.85

    with pytest.raises(GateError, match="at least 10 characters"):
        promotion.rollback(cfg, client, reason="oops", actor="oncall")
    back = promotion.rollback(cfg, client, reason="f5 misbehaves on live traffic", actor="oncall")
    assert (back.verdict, back.applied, back.challenger["version"]) == (ROLLBACK, True, v["f3"])
    assert (
        back.reason
        == f"rolled back from version {v['f5']} to version {v['f3']}: f5 misbehaves on live traffic"
    )
    assert alias_version(client, cfg.model_name, "champion") == v["f3"]
    assert alias_version(client, cfg.model_name, "previous") == v["f5"]

    # records: one JSON artifact per call on the subject's run, latest verdict in the version tags
    f3, f1, f5 = (decisions_of(client, cfg, v[k], tmp_path / "downloads") for k in ("f3", "f1", "f5"))
    assert sorted(d["verdict"] for d in f3) == [PROMOTE, ROLLBACK]
    assert [d["verdict"] for d in f1] == [REJECT]
    assert sorted((d["verdict"], d["applied"], d["kind"]) for d in f5) == [
        (NOOP, False, "decision"),
        (PROMOTE, True, "decision"),
    ]
    evaluations = decisions_of(client, cfg, v["f5"], tmp_path / "downloads", "evaluations")
    assert [(d["verdict"], d["applied"], d["kind"]) for d in evaluations] == [(PROMOTE, False, "evaluation")]
    assert f1[0]["context"] == ctx and f1[0]["champion"]["version"] == v["f3"]
    assert f1[0]["policy"]["floor"] == cfg.promotion.floor and f1[0]["actor"] == "test"
    tags3 = client.get_model_version(cfg.model_name, v["f3"]).tags
    assert tags3["gate.verdict"] == ROLLBACK and tags3["gate.decision_id"] == back.decision_id
    assert tags3["superseded_by"] == v["f5"] and "demoted_at" in tags3 and "promoted_at" in tags3
    tags1 = client.get_model_version(cfg.model_name, v["f1"]).tags
    assert tags1["gate.verdict"] == REJECT and tags1["gate.forced"] == "false"
    assert tags1["gate.reason"] == worse.reason and json.loads(tags1["gate.metrics"])["roc_auc"] < 0.8
    assert client.get_model_version(cfg.model_name, v["f5"]).tags["superseded_by"] == v["f3"]


def test_a_decision_key_decides_once(tmp_path, mlflow_store):
    """The same decision key (an Airflow task's dag_id/run_id/task_id) gives the same decision on every
    call: no scoring, no new record, even when the world changed in between (here: a better challenger
    was promoted by another run). Fault injection on a real server: tests/integration/test_decision_faults.py."""
    from mlflow import MlflowClient

    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path))
    v = register(cfg, ["f3", "f5"])
    client = MlflowClient(cfg.tracking_uri)
    calls: list[str] = []
    scorer = make_scorer(tmp_path / "downloads")

    def score(uri: str) -> dict[str, float]:
        calls.append(uri)
        return scorer(uri)

    key = "train/manual__a/promote"
    first = promotion.gate(cfg, client, challenger_version=v["f3"], score=score, actor="a", decision_key=key)
    assert (first.verdict, first.applied) == (PROMOTE, True)
    assert first.decision_id == promotion.decision_id(cfg.model_name, key)
    promotion.gate(
        cfg, client, challenger_version=v["f5"], score=score, actor="b", decision_key="train/b/promote"
    )
    assert alias_version(client, cfg.model_name, "champion") == v["f5"]
    calls.clear()
    again = promotion.gate(cfg, client, challenger_version=v["f3"], score=score, actor="a", decision_key=key)
    assert calls == []  # nothing scored: the stored decision is completed, not computed again
    assert again.to_dict() == first.to_dict()
    assert alias_version(client, cfg.model_name, "champion") == v["f5"]  # the later decision stands
    assert len(decisions_of(client, cfg, v["f3"], tmp_path / "downloads")) == 1
    # rollback keys too: the stored target, never "previous" read again
    rb = "rollback/manual__r/roll_back"
    back = promotion.rollback(cfg, client, reason="f5 misbehaves live", actor="o", decision_key=rb)
    assert (
        back.challenger["version"] == v["f3"] and alias_version(client, cfg.model_name, "previous") == v["f5"]
    )
    again = promotion.rollback(cfg, client, reason="f5 misbehaves live", actor="o", decision_key=rb)
    assert again.to_dict() == back.to_dict()
    assert alias_version(client, cfg.model_name, "champion") == v["f3"]


def test_a_default_rollback_never_undoes_a_rollback(tmp_path, mlflow_store):
    """Two rollbacks of one bad champion (a double click, two concurrent runs): the second would restore
    the version the first removed; it is refused and the champion stays; to_version does it on purpose."""
    from mlflow import MlflowClient

    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path))
    v = register(cfg, ["f3", "f5"])
    client = MlflowClient(cfg.tracking_uri)
    score = make_scorer(tmp_path / "downloads")
    promotion.gate(cfg, client, challenger_version=v["f3"], score=score, actor="t")
    promotion.gate(cfg, client, challenger_version=v["f5"], score=score, actor="t")
    promotion.rollback(
        cfg, client, reason="f5 misbehaves live", actor="a", decision_key="rollback/1/roll_back"
    )
    with pytest.raises(GateError, match=f"was set by rollback .* pass to_version={v['f5']}"):
        promotion.rollback(
            cfg, client, reason="f5 misbehaves live", actor="b", decision_key="rollback/2/roll_back"
        )
    assert alias_version(client, cfg.model_name, "champion") == v["f3"]
    on_purpose = promotion.rollback(
        cfg, client, reason="f5 was fine after all", actor="b", to_version=v["f5"]
    )
    assert on_purpose.applied and alias_version(client, cfg.model_name, "champion") == v["f5"]


def test_four_eyes_in_the_gate(tmp_path, mlflow_store):
    """A forced promotion stands only with an approval by someone other than the triggering user
    (promotion.four_eyes extends that to every promotion); otherwise the decision is a recorded reject."""
    from mlflow import MlflowClient

    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path))
    v = register(cfg, ["f3", "f1"])
    client = MlflowClient(cfg.tracking_uri)
    score = make_scorer(tmp_path / "downloads")
    promotion.gate(cfg, client, challenger_version=v["f3"], score=score, actor="t")
    forced = {"challenger_version": v["f1"], "score": score, "force": True, "justification": JUST}
    alone = promotion.gate(cfg, client, actor="user:alice", triggered_by="alice", **forced)
    assert (alone.verdict, alone.applied) == (REJECT, False) and "needs a human approval" in alone.reason
    self_ok = promotion.gate(
        cfg, client, actor="user:alice", triggered_by="alice", approved_by=" Alice", **forced
    )
    assert (self_ok.verdict, self_ok.applied) == (REJECT, False) and "needs a second person" in self_ok.reason
    assert alias_version(client, cfg.model_name, "champion") == v["f3"]
    ok = promotion.gate(cfg, client, actor="user:alice", triggered_by="alice", approved_by="bob", **forced)
    assert (ok.verdict, ok.applied, ok.triggered_by, ok.approved_by) == (PROMOTE, True, "alice", "bob")
    assert client.get_model_version(cfg.model_name, v["f1"]).tags["gate.approved_by"] == "bob"
    # the same rule for normal promotions, by config
    strict = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path, four_eyes="true"))
    assert promotion.approval_rules(strict, forced=False) == (True, True)
    assert promotion.approval_rules(cfg, forced=False) == (False, False)
    assert promotion.approval_rules(cfg, forced=True) == (True, True)


def test_gate_and_rollback_errors(tmp_path, mlflow_store):
    from mlflow import MlflowClient

    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path))
    v = register(cfg, ["noise", "f2"])
    client = MlflowClient(cfg.tracking_uri)
    score = make_scorer(tmp_path / "downloads")
    with pytest.raises(GateError, match="no previous champion to roll back to"):
        promotion.rollback(cfg, client, reason="nothing to roll back to", actor="oncall")
    with pytest.raises(GateError, match="has no version 99"):
        promotion.gate(cfg, client, challenger_version="99", score=score, actor="t")
    with pytest.raises(GateError, match="justification"):
        promotion.gate(cfg, client, challenger_version=v["f2"], score=score, actor="t", force=True)
    with pytest.raises(GateError, match="scoring the challenger .* failed"):
        promotion.gate(cfg, client, challenger_version=v["f2"], score=lambda uri: 1 / 0, actor="t")

    low = promotion.gate(cfg, client, challenger_version=v["noise"], score=score, actor="t")
    assert low.verdict == REJECT and "< floor 0.70" in low.reason
    forced = promotion.gate(
        cfg,
        client,
        challenger_version=v["noise"],
        score=score,
        actor="t",
        force=True,
        justification=JUST,
        triggered_by="t",
        approved_by="second-person",
    )
    assert (forced.verdict, forced.applied, forced.forced) == (PROMOTE, True, True)
    assert "overriding: roc_auc 0.5" in forced.reason
    assert client.get_model_version(cfg.model_name, v["noise"]).tags["gate.forced"] == "true"
    with pytest.raises(GateError, match="has no version 42"):
        promotion.rollback(cfg, client, reason="to a version that is gone", actor="o", to_version=42)
    with pytest.raises(GateError, match="already is the champion"):
        promotion.rollback(cfg, client, reason="roll back onto itself", actor="o", to_version=v["noise"])


# ----------------------------------------------------------------------------------------------- lock


def test_file_lock_timeout_names_model_and_holder(tmp_path):
    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path))
    with promotion.promotion_lock(cfg, "churn-classifier"):
        lock_file = tmp_path / "mlflow" / "promotion-churn-classifier.lock"
        assert f"pid {os.getpid()}" in lock_file.read_text()
        with pytest.raises(PromotionLockTimeout) as err:
            with promotion.promotion_lock(cfg, "churn-classifier", timeout_s=0.3):
                pass
        message = str(err.value)
        assert "another promotion of 'churn-classifier' has held the lock for 0.3 s" in message
        assert str(lock_file) in message and f"pid {os.getpid()}" in message
        # other models are not blocked
        with promotion.promotion_lock(cfg, "other-model", timeout_s=0.3):
            pass
    with promotion.promotion_lock(cfg, "churn-classifier", timeout_s=0.3):
        pass


def test_unsupported_lock_uri(tmp_path):
    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path, lock_uri="redis://localhost"))
    with pytest.raises(GateError, match="promotion.lock_uri 'redis://localhost' is not supported"):
        with promotion.promotion_lock(cfg, "m"):
            pass


@pytest.fixture
def pg_lock_uri(pg_database):
    """A throwaway PostgreSQL database for advisory locks (tests/conftest.py's, marker postgres)."""
    return pg_database


def test_pg_lock_timeout_and_release(tmp_path, pg_lock_uri):
    cfg = load_config(DEFAULT_CONFIG_PATH, environ=_env(tmp_path, lock_uri=pg_lock_uri))
    assert promotion.lock_description(cfg, "m").startswith("postgres advisory lock")
    acquired = threading.Event()
    release = threading.Event()

    def hold():
        with promotion.promotion_lock(cfg, "churn-classifier"):
            acquired.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert acquired.wait(10)
        with pytest.raises(PromotionLockTimeout, match=r"'churn-classifier' has held the lock for 0.3 s"):
            with promotion.promotion_lock(cfg, "churn-classifier", timeout_s=0.3):
                pass
    finally:
        release.set()
        holder.join(10)
    with promotion.promotion_lock(cfg, "churn-classifier", timeout_s=2):
        pass


# ----------------------------------------------------------------------------------------------- race
#
# Six racers (one process per registered version) gate their version at the same moment. The losing
# interleaving is forced, not left to timing, by hooks the test wraps around each racer's scorer and
# MlflowClient (the gate code has no test hooks); they are the same with and without the lock:
#
# 1. ``start``: after scoring its challenger (outside the lock) each racer waits for all the others, so
#    they all reach promotion_lock together;
# 2. ``read``: right after reading the champion alias each racer waits until every racer has read it,
#    for READ_WAIT_S at most. Without the lock all of them read "no champion" before anyone writes.
#    With it only the lock holder gets there: its wait times out and breaks the barrier, and the later
#    holders pass straight through (READ_WAIT_S once per test);
# 3. the champion alias writes go in rank order (0 = best score): without the lock each eligible racer
#    first waits until every eligible racer has reached its write (so each has already checked that the
#    champion is still none), then until every better one has written (a shared counter, not a sleep, so a
#    loaded machine cannot reorder them): the best version writes first and the worst eligible one last
#    (the last writer wins); with the lock, where a wait would hold the lock, the racer ranked r sleeps
#    r * WRITE_STAGGER_S instead.
#
# So without the lock every run ends with several "first" promotions and a worse champion; with it every
# run ends with a chain of promotions up to the best version.

READ_WAIT_S = 8.0
WRITE_STAGGER_S = 0.5

RACER_PRELOAD = [
    "mlflow",
    "mlflow.sklearn",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic.command",
    "psycopg2",
    "sklearn.compose",
    "sklearn.linear_model",
    "sklearn.metrics",
    "sklearn.pipeline",
    "mlops_bundle.promotion",
    __name__,
]


def _hook_racer(client, score, rank: int, start, read, turn=None, arrive=None):
    """Install hooks 1-3 (above) on one racer's client; returns its scorer wrapped with hook 1."""
    import time

    get_alias, set_alias = client.get_model_version_by_alias, client.set_registered_model_alias
    done: set[str] = set()

    def score_then_start(uri):
        metrics = score(uri)
        if "start" not in done:  # the first call scores the challenger, before the lock
            done.add("start")
            start.wait(timeout=300)
        return metrics

    def read_then_wait(name, alias):
        try:
            return get_alias(name, alias)  # raises when there is no champion yet
        finally:
            if alias == promotion.CHAMPION_ALIAS and "read" not in done:
                done.add("read")
                with contextlib.suppress(threading.BrokenBarrierError):
                    read.wait(timeout=READ_WAIT_S)

    def staggered_set(name, alias, version):
        if alias != promotion.CHAMPION_ALIAS:
            return set_alias(name, alias, version)
        if turn is None:
            time.sleep(rank * WRITE_STAGGER_S)
            return set_alias(name, alias, version)
        # every eligible racer gets here only after its own check that the champion is still the one it
        # expects (none): wait until all have checked, so no write can precede another racer's check
        with contextlib.suppress(threading.BrokenBarrierError):
            arrive.wait(timeout=300)
        deadline = time.monotonic() + 300
        while turn.value != rank and time.monotonic() < deadline:
            time.sleep(0.02)
        try:
            return set_alias(name, alias, version)
        finally:
            with turn.get_lock():
                turn.value += 1

    client.get_model_version_by_alias = read_then_wait
    client.set_registered_model_alias = staggered_set
    return score_then_start


def _race_worker(env, version, rank, mode, start, read, results, turn, arrive):
    """One process = one training run finishing at the same moment as the others and calling gate()."""
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    try:
        import mlflow
        from mlflow import MlflowClient

        cfg = load_config(DEFAULT_CONFIG_PATH, environ=env)
        mlflow.set_tracking_uri(cfg.tracking_uri)
        client = MlflowClient(cfg.tracking_uri)
        if mode == "nolock":  # patch the defining module: champion.py looks it up there
            promotion.lock.promotion_lock = lambda *a, **k: contextlib.nullcontext()
        score = make_scorer(Path(env["MLOPS_MLFLOW__TRACKING_URI"]).parent / "downloads")
        decision = promotion.gate(
            cfg,
            client,
            challenger_version=version,
            score=_hook_racer(client, score, rank, start, read, turn, arrive),
            actor=f"racer-{version}",
            context={"mode": mode},
        )
        results.put((version, decision.verdict, decision.applied, decision.previous_champion, None))
    except Exception as exc:  # report, never hang the parent
        results.put((version, None, None, None, f"{type(exc).__name__}: {exc}"))


def _race(tmp_path, mode: str, **promotion_env: str):
    import multiprocessing

    from mlflow import MlflowClient

    env = _env(tmp_path, guard_metrics="{}", **promotion_env)
    cfg = load_config(DEFAULT_CONFIG_PATH, environ=env)
    versions = register(cfg, list(FEATURE_SETS))
    score = make_scorer(tmp_path / "downloads")
    scores = {v: score(f"models:/{cfg.model_name}/{v}")["roc_auc"] for v in versions.values()}
    eligible = sorted((s, v) for v, s in scores.items() if s >= cfg.promotion.floor)
    gaps = [b[0] - a[0] for a, b in zip(eligible, eligible[1:], strict=False)]
    assert len(eligible) >= 3 and min(gaps) > cfg.promotion.min_improvement, scores  # clearly different
    best = eligible[-1][1]
    # rank 0 = best (writes first, hook 3)
    ranks = {v: i for i, (_, v) in enumerate(sorted(((s, v) for v, s in scores.items()), reverse=True))}

    # forkserver + preload: the heavy imports are paid once, not per racer
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(RACER_PRELOAD)
    start = ctx.Barrier(len(versions))
    read = ctx.Barrier(len(versions))
    results = ctx.Queue()
    turn = ctx.Value("i", 0) if mode == "nolock" else None  # eligible racers are ranks 0..k-1
    arrive = ctx.Barrier(len(eligible)) if mode == "nolock" else None
    procs = [
        ctx.Process(target=_race_worker, args=(env, v, ranks[v], mode, start, read, results, turn, arrive))
        for v in versions.values()
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(30)
    errors = [o for o in outcomes if o[4]]
    assert not errors, errors
    client = MlflowClient(cfg.tracking_uri)
    return cfg, client, versions, scores, best, eligible, outcomes


def _assert_race_safe(tmp_path, **promotion_env):
    mode = "nolock" if RACE_NO_LOCK else "lock"  # nolock: must fail (see the module docstring)
    cfg, client, versions, scores, best, eligible, outcomes = _race(tmp_path, mode, **promotion_env)
    champion = alias_version(client, cfg.model_name, "champion")
    assert champion == best, (champion, scores, outcomes)
    for v in versions.values():
        records = decisions_of(client, cfg, v, tmp_path / "downloads")
        assert len(records) == 1, (v, records)
    promoted = [o for o in outcomes if o[1] == PROMOTE and o[2]]
    # serialized: each applied promotion replaced the one applied just before it (a chain from None)
    by_previous = {o[3]: o[0] for o in promoted}
    assert len(by_previous) == len(promoted), outcomes
    chain, current = [], None
    while current in by_previous:
        current = by_previous[current]
        chain.append(current)
    assert chain[-1] == best and len(chain) == len(promoted)
    assert [scores[c] for c in chain] == sorted(scores[c] for c in chain)
    previous = alias_version(client, cfg.model_name, "previous")
    assert (previous is None and len(chain) == 1) or previous == chain[-2]
    below_floor = [v for v, s in scores.items() if s < cfg.promotion.floor]
    assert all(o[1] == REJECT for o in outcomes if o[0] in below_floor)


@pytest.mark.slow  # concurrent racer processes, each with MLflow and scikit-learn loaded
def test_race_file_lock(tmp_path, mlflow_store, race_run):
    _assert_race_safe(tmp_path)


@pytest.mark.slow
def test_race_postgres_advisory_lock(tmp_path, mlflow_store, pg_lock_uri, race_run):
    _assert_race_safe(tmp_path, lock_uri=pg_lock_uri)


@pytest.mark.slow
def test_race_without_lock_ends_with_worse_champion(tmp_path, mlflow_store, race_run):
    """The control: with the lock replaced by a no-op every eligible racer reads "no champion" and
    promotes, and the last alias write wins, so the champion ends up worse than the best one gated."""
    cfg, client, versions, scores, best, eligible, outcomes = _race(tmp_path, "nolock")
    champion = alias_version(client, cfg.model_name, "champion")
    applied = [o for o in outcomes if o[1] == PROMOTE and o[2]]
    assert sorted(o[0] for o in applied) == sorted(v for _, v in eligible), outcomes
    assert all(o[3] is None for o in applied), outcomes  # all believed they were first
    assert champion != best and scores[champion] < scores[best], (champion, scores)
