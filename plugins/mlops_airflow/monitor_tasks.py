"""Task bodies of the monitor DAG: Airflow context in, a library call (``mlops_bundle.monitoring``), its
verdict mapped to Airflow (a skip with the reason, a failure without retry) and a small JSON-safe value
out."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow import runtime

log = logging.getLogger(__name__)


def score(params: dict, logical_date, run_after, ti: Any = None) -> dict[str, Any]:
    """Score the day's validated partition with models:/<name>@champion; predictions stored per day."""
    from mlops_bundle import monitoring, tracking

    cfg = runtime.bundle_config()
    try:
        date = runtime.batch_date(params.get("date"), logical_date, run_after)
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    tracking.check_reachable(cfg)  # ConnectionError -> retried
    from mlops_bundle.provenance import ProvenanceError

    try:
        scored = monitoring.score_day(cfg, runtime.storage(cfg), tracking.client(cfg), date)
    except (monitoring.MonitoringError, ProvenanceError) as exc:  # a refused champion: no retry helps
        raise AirflowFailException(f"{cfg.dataset.name}/{date}: {exc}") from None
    if scored.skip_reason:
        raise runtime.skip(ti, scored.skip_reason)
    return scored.summary


def report(scored: dict, dag_run: Any, ti: Any) -> dict[str, Any]:
    """Evidently report of the day vs the champion's reference; HTML/JSON under reports/, numbers to MLflow."""
    from mlops_airflow import links
    from mlops_bundle import monitoring, tracking

    cfg = runtime.bundle_config()
    tags = {
        "airflow.dag_id": dag_run.dag_id,
        "airflow.run_id": dag_run.run_id,
        "airflow.task_started": str(getattr(ti, "start_date", None) or ""),
    }
    try:
        day = monitoring.report_day(cfg, runtime.storage(cfg), tracking.client(cfg), scored, tags=tags)
    except monitoring.MonitoringError as exc:
        raise AirflowFailException(f"{cfg.dataset.name}/{scored['date']}: {exc}") from None
    log.info("drift report for %s:\n%s", scored["date"], day.result.describe())
    ti.xcom_push(key=links.REPORT_URL_KEY, value=links.report_url(cfg, scored["date"]))
    log.info("report: %s (MLflow monitoring run %s)", day.uris["html"], day.mlflow_run_id)
    return day.to_xcom()


def decide_retrain(result: dict, dag_run: Any = None, ti: Any = None) -> dict[str, Any]:
    """The retrain guard's verdict on the day's drift (cooldown, max per day): a skip with the rule that
    said no, or the history record of the retrain it starts. One retrain per run at most: a retry or a
    cleared task whose run already started one skips with that reason."""
    from mlops_bundle import monitoring

    cfg = runtime.bundle_config()
    verdict = monitoring.decide_retrain(
        cfg,
        runtime.storage(cfg),
        result,
        dt.datetime.now(dt.UTC),
        decision_key=f"{dag_run.dag_id}/{dag_run.run_id}" if dag_run is not None else None,
    )
    if not verdict.retrain:
        raise runtime.skip(ti, f"no drift-triggered retrain: {verdict.reason}")
    log.info("drift-triggered retrain: %s", verdict.reason)
    record = {k: v for k, v in verdict.record.items() if k != "decision_key"}
    return {**record, "dataset": result["dataset"], "reason": verdict.reason}
