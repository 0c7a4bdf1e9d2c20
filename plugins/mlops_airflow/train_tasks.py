"""Task bodies of the train and rollback DAGs: Airflow context in, library calls, small JSON-safe values out.

Training errors caused by the data or the config (empty window, one class, unknown model family) fail at
once without retries; infrastructure errors (MLflow unreachable, storage hiccups) raise normally so the
task's retries apply.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow import runtime

log = logging.getLogger(__name__)

# what evaluate_gate found before promote; dags/train.py maps each to the task ids it follows
NO_APPROVAL = "no_approval"  # no approval needed (approval_rules): straight to promote
ASK_APPROVAL = "ask_approval"  # the gate would promote: a human approves or rejects first
# the gate would reject (evaluation recorded): nobody is asked; promote records the decision (a reject,
# also if the champion changed meanwhile: a promotion that needs an approval never happens without one)
GATE_REJECTS = "gate_rejects"


def actor(dag_run: Any) -> str:
    """Who or what started this run, for MLflow tags and decision records (spelled as in the audit log)."""
    from mlops_bundle.names import actor as actor_name

    return actor_name(dag_run.run_type, dag_run.triggering_user_name, getattr(dag_run, "triggered_by", None))


def decision_key(dag_run: Any, task_id: str) -> str:
    """The key of the one decision a task makes in a run: every retry of that task completes it."""
    return f"{dag_run.dag_id}/{dag_run.run_id}/{task_id}"


def run_tags(dag_run: Any) -> dict[str, str]:
    tags = {
        "airflow.dag_id": dag_run.dag_id,
        "airflow.run_id": dag_run.run_id,
        "airflow.run_type": str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        "airflow.triggered_by": actor(dag_run),
    }
    sources = sorted({f"{e.source_dag_id}/{e.source_run_id}" for e in dag_run.consumed_asset_events or []})
    if sources:
        tags["airflow.triggering_asset_runs"] = ",".join(sources)[:500]
    return tags


def _end_date(params: dict, dag_run: Any, validated: list[str]) -> str:
    """The window's last day: the `end_date` Param, else the newest validated partition at this moment.

    Not the newest date among the run's triggering events: Airflow creates an asset-triggered run from
    the first queued event and consumes only the events up to it, so a batch validated while the run
    waited (train at max_active_runs) would miss every run. The staging partitions are the truth.
    """
    from mlops_bundle.names import parse_date

    if params.get("end_date"):
        return parse_date(params["end_date"])
    today = dag_run.run_after.date().isoformat()
    future = [d for d in validated if d > today]
    if future:  # a mis-dated delivery must not move every default window past the real batches
        log.warning("ignoring validated partition(s) dated after today (%s): %s", today, future[-5:])
    past = [d for d in validated if d <= today]
    if past:
        return past[-1]
    return (dag_run.run_after.date() - dt.timedelta(days=1)).isoformat()


def _triggering_batches(dag_run: Any) -> list[dict[str, Any]]:
    """The validated batches (dataset, date, fingerprint, source run) among the run's consumed events.

    Only events the data set's own ingest DAG emitted, with a well-formed date: anyone allowed to create
    asset events through the REST API can add others, and those are not batches (ignored, with a warning)."""
    from mlops_airflow import names
    from mlops_bundle.names import DATE_RE

    dataset = names.dataset_of(dag_run.dag_id)
    ingest_dag = names.dag_id(str(dataset), names.INGEST)
    out = []
    for e in dag_run.consumed_asset_events or []:
        extra = e.extra or {}
        if _asset_name(e) != names.asset_name(str(dataset), names.VALIDATED_DATA):
            continue
        date = extra.get("date")
        if e.source_dag_id != ingest_dag or not isinstance(date, str) or not DATE_RE.match(date):
            log.warning(
                "ignoring a validated_data event not emitted by %s (source %s/%s)",
                ingest_dag,
                e.source_dag_id,
                e.source_run_id,
            )
            continue
        out.append(
            {
                "dataset": str(extra.get("dataset")),
                "date": date,
                "fingerprint": str(extra.get("fingerprint")),
                "source_run": f"{e.source_dag_id}/{e.source_run_id}",
            }
        )
    return out


def _drift_retrains_started(cfg: Any, store: Any, dag_run: Any) -> None:
    """The drift triggers this run consumed now count against the retrain cooldown (they started)."""
    from mlops_airflow import names
    from mlops_bundle.monitoring.guard import mark_started

    drift = names.asset_name(cfg.dataset.name, names.DRIFT_DETECTED)
    keys = [
        f"{e.source_dag_id}/{e.source_run_id}"
        for e in dag_run.consumed_asset_events or []
        if _asset_name(e) == drift
    ]
    marked = mark_started(cfg, store, keys, f"{dag_run.dag_id}/{dag_run.run_id}", dt.datetime.now(dt.UTC))
    if marked:
        log.info("drift-triggered retrain(s) started by this run: %s", marked)


def _asset_name(event: Any) -> str | None:
    asset = getattr(event, "asset", None)
    return getattr(asset, "name", None) or getattr(event, "name", None)


def _record_untrained(cfg: Any, dag_run: Any, batches: list[dict[str, Any]], reason: str) -> None:
    """Every triggering batch this run does not train on leaves its reason (log + audit record)."""
    from mlops_bundle.audit import record_event

    for b in batches:
        log.warning("batch %s/%s is not trained on by this run: %s", b["dataset"], b["date"], reason)
        record_event(
            cfg,
            "train.batch_not_trained",
            actor=actor(dag_run),
            subject=f"{b['dataset']}/{b['date']}",
            payload={**b, "run_id": dag_run.run_id, "reason": reason},
            once=f"train.batch_not_trained/{dag_run.dag_id}/{dag_run.run_id}/{b['date']}/{b['fingerprint']}",
        )


def _not_in_window(batches: list[dict[str, Any]], window: Any) -> dict[str, list[dict[str, Any]]]:
    """Triggering batches the window does not hold, grouped by the reason."""
    held = {p["date"]: p["fingerprint"] for p in window.partitions}
    out: dict[str, list[dict[str, Any]]] = {}
    for b in batches:
        if b["date"] < window.start or b["date"] > window.end:
            why = f"outside the training window {window.start}..{window.end} (set end_date/window_days to include it)"
        elif b["date"] not in held:
            why = "its staging partition is gone (re-ingested and rejected, or removed) by the time training started"
        else:
            continue  # held (possibly re-ingested since with newer data: the window trains on the newest)
        out.setdefault(why, []).append(b)
    return out


def prepare(params: dict, dag_run: Any) -> list[dict[str, Any]]:
    """Check MLflow is reachable, assemble and persist the training window, resolve the candidates.

    Returns one small job per candidate (the mapped training tasks' input): window location, spec, key.
    """
    from mlops_bundle import tracking, training
    from mlops_bundle.ingest import validated_dates

    cfg = runtime.bundle_config()
    tracking.check_reachable(cfg)  # ConnectionError -> retried
    store = runtime.storage(cfg)
    batches = _triggering_batches(dag_run)
    _drift_retrains_started(cfg, store, dag_run)
    try:
        specs = training.resolve_candidates(cfg, params.get("candidates") or None)
        end = _end_date(params, dag_run, validated_dates(store, cfg))
        window = training.assemble_window(store, cfg, end, params.get("window_days"))
    except (training.TrainingError, ValueError) as exc:
        _record_untrained(cfg, dag_run, batches, f"training could not start: {exc}")
        raise AirflowFailException(str(exc)) from None
    for reason, missed in _not_in_window(batches, window).items():
        _record_untrained(cfg, dag_run, missed, reason)
    key = runtime.attempt_label(dag_run.run_id, None).removesuffix("-try1")
    info = training.save_window(store, cfg, window, key)
    train_key = training.train_key(window.fingerprint, specs, cfg)
    log.info(
        "window %s..%s: %d train / %d holdout rows from %d partition(s); %d candidate(s)",
        window.start,
        window.end,
        len(window.train),
        len(window.holdout),
        len(window.partitions),
        len(specs),
    )
    return [
        {"window": info, "candidate": s.model_dump(), "train_key": train_key, "end_date": end} for s in specs
    ]


def train_one(job: dict, dag_run: Any) -> dict[str, Any]:
    """Fit one candidate, evaluate it on the holdout and log it to MLflow."""
    from mlops_bundle import training
    from mlops_bundle.config import CandidateSpec

    cfg = runtime.bundle_config()
    spec = CandidateSpec.model_validate(job["candidate"])
    window = training.load_window(runtime.storage(cfg), cfg, job["window"])
    try:
        model, metrics = training.train_candidate(spec, window, cfg)
    except training.TrainingError as exc:
        raise AirflowFailException(str(exc)) from None
    run_id = training.log_candidate(cfg, spec, model, metrics, window, run_tags(dag_run))
    log.info("candidate %s: %s (MLflow run %s)", spec.name, _fmt(metrics), run_id)
    return {
        "candidate": spec.name,
        "run_id": run_id,
        "metrics": metrics,
        "window": job["window"],
        "train_key": job["train_key"],
        # the winning model's own key: another run that picks the same model reuses its version
        "model_key": training.model_key(window.fingerprint, spec, cfg),
    }


def register(results: list[dict], dag_run: Any, ti: Any = None) -> dict[str, Any]:
    """Register the best candidate as a model version (reused when this exact training already ran).

    The returned dict also carries the window location and train key for the gate tasks.
    """
    from mlops_bundle import training

    cfg = runtime.bundle_config()
    results = list(results)
    train_key = results[0]["train_key"]
    best = training.register_best(cfg, results, train_key, run_tags(dag_run))
    best = {**best, "window": results[0]["window"]}  # train_key: the key the version carries
    from mlops_bundle import monitoring, tracking

    if monitoring.reference_needed(tracking.client(cfg), best["run_id"], reused=best["reused"]):
        store = runtime.storage(cfg)  # with encryption on, it seals the reference (rows) for MLflow
        window = training.load_window(store, cfg, best["window"])
        model = training.load_model(cfg, best["model_uri"])
        path = monitoring.log_reference(
            cfg, tracking.client(cfg), best["run_id"], model, window.train, store=store
        )
        log.info("drift reference recorded as %s of run %s", path, best["run_id"])
    from mlops_airflow import links

    url = links.mlflow_model_url(cfg.tracking_uri, cfg.model_name, best["version"])
    if url and ti is not None:
        ti.xcom_push(key=links.MLFLOW_URL_KEY, value=url)
    log.info(
        "best candidate %s -> %s version %s%s",
        best["candidate"],
        cfg.model_name,
        best["version"],
        " (already registered by an earlier run with the same data and params)" if best["reused"] else "",
    )
    return best


def _fmt(metrics: dict) -> str:
    return ", ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items())
    )


def _scorer(cfg, window_info: dict):
    from mlops_bundle import training

    holdout = training.load_window(runtime.storage(cfg), cfg, window_info).holdout

    def score(model_uri: str) -> dict[str, float]:
        return training.evaluate(training.load_model(cfg, model_uri), holdout, cfg)

    return score


def gate(
    registered: dict,
    params: dict,
    dag_run: Any,
    *,
    apply: bool,
    task_id: str,
    approved_by: str | None = None,
) -> dict[str, Any]:
    """Challenger vs champion on the challenger's holdout; with apply, decide and promote under the lock
    (once per run and task: a retry completes the recorded decision); without, record an evaluation."""
    from mlops_bundle import promotion, tracking

    cfg = runtime.bundle_config()
    force = bool(params.get("force"))
    try:
        decision = promotion.gate(
            cfg,
            tracking.client(cfg),
            challenger_version=str(registered["version"]),
            score=_scorer(cfg, registered["window"]),
            force=force,
            justification=params.get("justification"),
            actor=actor(dag_run),
            context={
                "data_fingerprint": registered["window"].get("fingerprint"),
                "partitions": registered["window"].get("partitions"),
                "train_key": registered["train_key"],
                "gx": "every partition passed the GX gate at ingest (staging holds only validated data)",
                **run_tags(dag_run),
            },
            apply=apply,
            decision_key=decision_key(dag_run, task_id),
            triggered_by=dag_run.triggering_user_name,
            approved_by=approved_by,
        )
    except promotion.GateError as exc:
        raise AirflowFailException(str(exc)) from None
    record = decision.to_dict()
    log.info(
        "gate %s %s: %s — %s", record["kind"], record["decision_id"], record["verdict"], record["reason"]
    )
    return record


def pre_approval(registered: dict, params: dict, dag_run: Any, task_id: str) -> str:
    """NO_APPROVAL when no approval is needed (``approval_rules``: none asked, no force, no four eyes);
    else evaluate first (an evaluation is recorded, nothing applied) and answer ASK_APPROVAL only when
    the gate would promote, else GATE_REJECTS."""
    from mlops_bundle import promotion

    cfg = runtime.bundle_config()
    needed, _ = promotion.approval_rules(cfg, bool(params.get("force")))
    if not needed:
        return NO_APPROVAL
    decision = gate(registered, params, dag_run, apply=False, task_id=task_id)
    if decision["verdict"] != promotion.PROMOTE:
        log.info("gate rejects version %s: no approval requested", registered["version"])
        return GATE_REJECTS
    return ASK_APPROVAL


def champion_event(decision: dict) -> dict[str, Any]:
    """The extra of the champion-model asset event: which version is champion now, and why."""
    return {
        "model": decision["model_name"],
        "version": decision["challenger"]["version"],
        "previous": decision.get("previous_champion"),
        "verdict": decision["verdict"],
        "decision_id": decision["decision_id"],
    }


def roll_back(params: dict, dag_run: Any, task_id: str) -> dict[str, Any]:
    """Move the champion back to `previous` (or to_version), recorded with the reason and the actor; the
    target is fixed in the decision ledger by the first attempt, so a retry never reverses it."""
    from mlops_bundle import promotion, tracking

    cfg = runtime.bundle_config()
    try:
        decision = promotion.rollback(
            cfg,
            tracking.client(cfg),
            reason=params.get("reason") or "",
            actor=actor(dag_run),
            to_version=params.get("to_version") or None,
            context=run_tags(dag_run),
            decision_key=decision_key(dag_run, task_id),
            triggered_by=dag_run.triggering_user_name,
        )
    except promotion.GateError as exc:
        raise AirflowFailException(str(exc)) from None
    record = decision.to_dict()
    log.info(
        "rollback %s: champion is now version %s", record["decision_id"], record["challenger"]["version"]
    )
    return record
