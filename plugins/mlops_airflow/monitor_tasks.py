"""Task bodies of the monitor DAG: score the day's validated batch with the champion, build the Evidently
report against the champion's own reference, and decide (with guard rails) whether drift triggers a
retrain."""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from mlops_airflow import runtime

log = logging.getLogger(__name__)


def _skip(ti: Any, reason: str) -> AirflowSkipException:
    """A skip whose reason is kept as XCom `skip_reason` (shown by summaries; logs are not enough)."""
    if ti is not None:
        ti.xcom_push(key="skip_reason", value=reason)
    log.info("skipping: %s", reason)
    return AirflowSkipException(reason)


def score(params: dict, logical_date, run_after, ti: Any = None) -> dict[str, Any]:
    """Score the day's validated partition with models:/<name>@champion; predictions stored per day."""
    from mlops_bundle import ingest, monitoring, tracking, training

    cfg = runtime.bundle_config()
    try:
        date = runtime.batch_date(params.get("date"), logical_date, run_after)
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    tracking.check_reachable(cfg)  # ConnectionError -> retried
    client = tracking.client(cfg)
    version = tracking.alias_version(client, cfg.model_name, "champion")
    if version is None:
        raise _skip(
            ti,
            f"no champion yet for {cfg.model_name}: nothing to monitor; the train DAG promotes one "
            "after the first validated batch",
        )
    store = runtime.storage(cfg)
    manifest = ingest.read_manifest(store, cfg, date)
    if manifest is None:
        raise _skip(
            ti,
            f"no validated partition for {cfg.dataset.name}/{date} under "
            f"{store.uri(ingest.staging_prefix(cfg, date))}: the batch was not ingested (or was quarantined); "
            "nothing to monitor for that day",
        )
    df = ingest.read_staging(store, cfg, date)
    if len(df) == 0:
        raise _skip(ti, f"the validated partition for {date} has no rows: nothing to monitor")
    run_id = client.get_model_version(cfg.model_name, version).run_id
    model = training.load_model(cfg, f"models:/{cfg.model_name}/{version}")
    t0 = time.perf_counter()
    try:
        scored = monitoring.score_batch(model, df, cfg)
    except monitoring.MonitoringError as exc:
        raise AirflowFailException(f"{cfg.dataset.name}/{date}: {exc}") from None
    seconds = time.perf_counter() - t0
    buf = io.BytesIO()
    scored.to_parquet(buf, index=False)
    uri = store.write_bytes(monitoring.predictions_key(cfg, date), buf.getvalue())
    log.info(
        "scored %d rows of %s with %s version %s in %.2fs (%.0f rows/s) -> %s",
        len(scored),
        date,
        cfg.model_name,
        version,
        seconds,
        len(scored) / max(seconds, 1e-9),
        uri,
    )
    return {
        "dataset": cfg.dataset.name,
        "date": date,
        "champion_version": str(version),
        "champion_run_id": run_id,
        "rows_scored": int(len(scored)),
        "rows_rejected": int(len(df) - len(scored)),
        "predictions_uri": uri,
        "score_seconds": round(seconds, 3),
        "rows_per_second": round(len(scored) / max(seconds, 1e-9), 1),
        "gx_success": bool(manifest.get("gx_success", False)),
    }


def report(scored: dict, dag_run: Any, ti: Any) -> dict[str, Any]:
    """Evidently report of the day vs the champion's reference; HTML/JSON under reports/, numbers to MLflow."""
    import pandas as pd

    from mlops_bundle import monitoring, tracking

    cfg = runtime.bundle_config()
    store = runtime.storage(cfg)
    client = tracking.client(cfg)
    current = pd.read_parquet(io.BytesIO(store.read_bytes(monitoring.predictions_key(cfg, scored["date"]))))
    try:
        reference = monitoring.load_reference(client, scored["champion_run_id"])
        result = monitoring.build_report(reference, current, cfg)
    except monitoring.MonitoringError as exc:
        raise AirflowFailException(f"{cfg.dataset.name}/{scored['date']}: {exc}") from None
    uris = monitoring.write_report(store, monitoring.reports_prefix(cfg, scored["date"]), result)
    summary = result.summary()
    started = getattr(ti, "start_date", None)
    run_id = monitoring.log_monitoring_run(
        cfg,
        client,
        date=scored["date"],
        summary=summary,
        operations={
            "rows_scored": scored["rows_scored"],
            "rows_rejected": scored["rows_rejected"],
            "scoring_rows_per_second": scored["rows_per_second"],
            "score_seconds": scored["score_seconds"],
            "report_seconds": result.seconds,
        },
        tags={
            "champion_version": scored["champion_version"],
            "report_html": uris["html"],
            "airflow.dag_id": dag_run.dag_id,
            "airflow.run_id": dag_run.run_id,
            "airflow.task_started": str(started or ""),
        },
    )
    log.info("drift report for %s:\n%s", scored["date"], result.describe())
    from mlops_airflow import links

    ti.xcom_push(key=links.REPORT_URL_KEY, value=links.report_url(cfg, scored["date"]))
    log.info("report: %s (MLflow monitoring run %s)", uris["html"], run_id)
    return {
        "dataset": cfg.dataset.name,
        "date": scored["date"],
        "champion_version": scored["champion_version"],
        "dataset_drift": summary["dataset_drift"],
        "drift_share": summary["drift_share"],
        "drifted_columns": summary["drifted_columns"],
        "prediction_drift": summary["prediction_drift"],
        "quality": summary["quality"],
        "quality_skipped_reason": summary["quality_skipped_reason"],
        "report_html": uris["html"],
        "report_json": uris["json"],
        "summary_json": uris["summary"],
        "mlflow_run_id": run_id,
        "gx_success": scored["gx_success"],
    }


def decide_retrain(result: dict, ti: Any = None) -> dict[str, Any]:
    """Guard rails before drift may start a retrain: drift verdict, GX, cooldown, max per day."""
    from mlops_bundle import monitoring

    cfg = runtime.bundle_config()
    store = runtime.storage(cfg)
    key = monitoring.history_key(cfg)
    now = dt.datetime.now(dt.UTC)
    go, reason = monitoring.should_trigger_retrain(
        result, monitoring.load_history(store, key), now, cfg, data_gx_success=result["gx_success"]
    )
    if not go:
        raise _skip(ti, f"no drift-triggered retrain: {reason}")
    record = {
        "at": now.isoformat(),
        "date": result["date"],
        "drift_share": result["drift_share"],
        "drifted_columns": result["drifted_columns"],
        "champion_version": result["champion_version"],
        "report_html": result["report_html"],
    }
    monitoring.append_history(store, key, record)
    log.info("drift-triggered retrain: %s", reason)
    return {**record, "dataset": result["dataset"], "reason": reason}
