"""One day's monitoring run, as the orchestrator's tasks call it: score the day with the champion, report
against the champion's reference, log the numbers to MLflow.

Each step returns a verdict or a small JSON-safe value; the caller only maps verdicts to its own notions
(an Airflow skip, a failed task). Heavy libraries (pandas, MLflow, the model) load inside the functions.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_bundle.features import safe_name
from mlops_bundle.monitoring.calibration import CalibrationCache
from mlops_bundle.monitoring.report import MonitoringResult, build_report, reports_prefix, write_report
from mlops_bundle.monitoring.scoring import load_reference, read_predictions, score_batch, write_predictions

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig
    from mlops_bundle.storage import Storage

log = logging.getLogger(__name__)

# what an MLflow metric key may hold (mlflow.utils.validation, the Windows-safe set: no ':')
_METRIC_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. /]")
_METRIC_KEY_MAX = 250  # MLflow's MAX_ENTITY_KEY_LENGTH


def metric_key(prefix: str, column: str) -> str:
    """The MLflow metric key for a column's number: ``<prefix><column>`` when MLflow accepts that as is,
    else the column's text made safe by :func:`mlops_bundle.features.safe_name` (characters outside
    letters, digits, ``_ - . space /`` become ``_``, plus a hash of the name, so two columns never share a
    key); a key MLflow would read as a path (``a//b``, ``../x``, a trailing ``/``) or longer than 250
    characters gets the same treatment with ``/`` replaced too. ``income ($)`` -> ``drift.income ___<8 hex>``.
    """
    key = prefix + safe_name(column, _METRIC_UNSAFE)
    if posixpath.normpath(key) == key and len(key) <= _METRIC_KEY_MAX:
        return key
    safe = safe_name(column, re.compile(r"[^0-9A-Za-z_\-. ]"))
    if safe == column:  # only the length was wrong
        safe = safe_name(column + "/", re.compile(r"/"))  # forces the hash suffix
    key = prefix + safe
    return key if len(key) <= _METRIC_KEY_MAX else key[: _METRIC_KEY_MAX - 9] + key[-9:]


@dataclass(frozen=True)
class ScoredDay:
    """The outcome of scoring a day: ``skip_reason`` when there is nothing to monitor, else ``summary``."""

    skip_reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def score_day(cfg: BundleConfig, store: Storage, client: Any, date: str) -> ScoredDay:
    """Score the day's validated partition with ``models:/<name>@champion`` and store the predictions.

    Nothing to monitor (no champion yet, no validated partition, an empty one) is a skip with the
    reason, not an error. Raises MonitoringError when the batch cannot be scored (missing columns...).
    """
    from mlops_bundle import ingest, tracking, training
    from mlops_bundle.promotion import CHAMPION_ALIAS

    version = tracking.alias_version(client, cfg.model_name, CHAMPION_ALIAS)
    if version is None:
        return ScoredDay(
            f"no champion yet for {cfg.model_name}: nothing to monitor; the train DAG promotes one "
            "after the first validated batch"
        )
    if ingest.read_manifest(store, cfg, date) is None:
        return ScoredDay(
            f"no validated partition for {cfg.dataset.name}/{date} under "
            f"{store.uri(ingest.staging_prefix(cfg, date))}: the batch was not ingested (or was quarantined); "
            "nothing to monitor for that day"
        )
    df = ingest.read_staging(store, cfg, date)
    if len(df) == 0:
        return ScoredDay(f"the validated partition for {date} has no rows: nothing to monitor")
    run_id = client.get_model_version(cfg.model_name, version).run_id
    model = training.load_model(cfg, f"models:/{cfg.model_name}/{version}")
    t0 = time.perf_counter()
    scored = score_batch(model, df, cfg)
    seconds = time.perf_counter() - t0
    uri = write_predictions(store, cfg, date, scored)
    rate = len(scored) / max(seconds, 1e-9)
    log.info(
        "scored %d rows of %s with %s version %s in %.2fs (%.0f rows/s) -> %s",
        len(scored),
        date,
        cfg.model_name,
        version,
        seconds,
        rate,
        uri,
    )
    return ScoredDay(
        summary={
            "dataset": cfg.dataset.name,
            "date": date,
            "champion_version": str(version),
            "champion_run_id": run_id,
            "rows_scored": int(len(scored)),
            "rows_rejected": int(len(df) - len(scored)),
            "predictions_uri": uri,
            "score_seconds": round(seconds, 3),
            "rows_per_second": round(rate, 1),
        }
    )


@dataclass(frozen=True)
class DayReport:
    """A day's report: the result, where its files went, the MLflow monitoring run that holds its numbers."""

    result: MonitoringResult
    uris: dict[str, str]
    mlflow_run_id: str
    scored: Mapping[str, Any]

    def to_xcom(self) -> dict[str, Any]:
        """The small JSON-safe value downstream steps (the retrain guard, summaries) read."""
        s = self.result.summary()
        return {
            "dataset": self.scored["dataset"],
            "date": self.scored["date"],
            "champion_version": self.scored["champion_version"],
            "dataset_drift": s["dataset_drift"],
            "drift_share": s["drift_share"],
            "drift_share_threshold": s["drift_share_threshold"],
            "drifted_columns": s["drifted_columns"],
            "prediction_drift": s["prediction_drift"],
            "quality": s["quality"],
            "quality_skipped_reason": s["quality_skipped_reason"],
            "report_html": self.uris["html"],
            "report_json": self.uris["json"],
            "summary_json": self.uris["summary"],
            "mlflow_run_id": self.mlflow_run_id,
        }


def calibration_prefix(cfg: BundleConfig, champion_run_id: str) -> str:
    """Where the drift-threshold calibrations of one champion's reference are cached in the store: under
    the work prefix, so encrypted (and authenticated) whenever encryption is on."""
    return f"{cfg.storage.work_prefix}/{cfg.dataset.name}/calibration/{champion_run_id}"


def report_day(
    cfg: BundleConfig,
    store: Storage,
    client: Any,
    scored: Mapping[str, Any],
    *,
    tags: Mapping[str, str] | None = None,
) -> DayReport:
    """Report the day ``score_day`` scored against the champion's reference: HTML/JSON/summary under
    reports/, numbers and operational figures to the MLflow monitoring experiment (with ``tags``).

    Raises MonitoringError when the report cannot be built (no reference, unusable columns...).
    """
    date = scored["date"]
    current = read_predictions(store, cfg, date)
    reference = load_reference(client, scored["champion_run_id"], cfg=cfg, store=store)
    cache = CalibrationCache(store, calibration_prefix(cfg, scored["champion_run_id"]))
    result = build_report(reference, current, cfg, calibration_cache=cache)
    uris = write_report(store, reports_prefix(cfg, date), result)
    run_id = log_monitoring_run(
        cfg,
        client,
        date=date,
        summary=result.summary(),
        operations={
            "rows_scored": scored["rows_scored"],
            "rows_rejected": scored["rows_rejected"],
            "scoring_rows_per_second": scored["rows_per_second"],
            "score_seconds": scored["score_seconds"],
            "report_seconds": result.seconds,
        },
        tags={"champion_version": scored["champion_version"], "report_html": uris["html"], **(tags or {})},
    )
    return DayReport(result, uris, run_id, scored)


def log_monitoring_run(
    cfg: BundleConfig,
    client: Any,
    *,
    date: str,
    summary: Mapping[str, Any],
    operations: Mapping[str, float],
    tags: Mapping[str, str],
) -> str:
    """Log one day's key numbers to the MLflow monitoring experiment (``mlflow.monitoring_experiment``).

    Drift share, per-column scores, prediction drift and quality (when labels exist) sit next to the
    operational figures (rows scored/rejected, scoring throughput, task durations), so one MLflow chart
    shows whether the model, the data or the pipeline changed. A column's drift score is logged as
    ``drift.<column>``, under :func:`metric_key` when the name is not a valid MLflow key (``income ($)``);
    the run's summary.json maps such keys to their columns (``metric_columns``). Returns the MLflow run id.
    """
    from mlflow.entities import Metric

    from mlops_bundle import tracking

    exp_id = tracking.ensure_experiment(cfg, cfg.monitoring_experiment_name)
    task = str(summary.get("task") or cfg.dataset.task)  # quality.* metrics are named per task
    run = client.create_run(exp_id, run_name=f"monitor-{date}", tags={"date": date, "task": task, **tags})
    metrics: dict[str, float] = {
        "drift_share": float(summary["drift_share"]),
        "dataset_drift": float(bool(summary["dataset_drift"])),
        "prediction_drift_score": float(summary["prediction_drift"].get("score") or 0.0),
        "rows_reference": float(summary["rows_reference"]),
        "rows_current": float(summary["rows_current"]),
    }
    renamed: dict[str, str] = {}  # metric key -> the column it measures, where the two differ
    for col, score in summary["column_scores"].items():
        if score.get("score") is not None:
            key = metric_key("drift.", col)
            metrics[key] = float(score["score"])
            if key != f"drift.{col}":
                renamed[key] = col
    for side, values in (summary.get("quality") or {}).items():
        for k, v in (values or {}).items():
            if v is not None:
                metrics[f"quality.{side}.{k}"] = float(v)
    metrics.update({k: float(v) for k, v in operations.items()})
    stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])
    # summary.json keeps the real column names; metric_columns maps the keys that had to differ back to them
    client.log_dict(run.info.run_id, {**summary, "metric_columns": renamed}, "summary.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
