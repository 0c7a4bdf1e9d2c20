"""Batch scoring, Evidently drift/quality reports and the guard that turns drift into a retrain.

One module per concern:

- :mod:`.scoring`: sampling, ``score_batch``, the day's stored predictions, the champion's drift
  reference (recorded at training time, repaired when a crashed attempt left a version without one);
- :mod:`.drift`: the pinned drift methods (and why), their thresholds, the Evidently runs, reading results;
- :mod:`.calibration`: thresholds calibrated on the reference at the batch's size (honest at any size);
- :mod:`.report`: ``build_report`` -> :class:`MonitoringResult`, the stored report files and listings;
- :mod:`.guard`: the retrain guard (cooldown, max per day) and the history of drift-triggered retrains;
- :mod:`.runs`: one day's run as the monitor DAG calls it (score, report, log to MLflow, decide).

Importing this package is cheap: Evidently, pandas and MLflow are imported inside the functions (their
import costs are in benchmarks/README.md), so DAG parsing and code that only uses the guard do not pay.
"""

from __future__ import annotations

from mlops_bundle.monitoring.drift import (
    CATEGORICAL_DRIFT,
    NUMERIC_DRIFT,
    PREDICTION_DRIFT,
    DriftMethod,
)
from mlops_bundle.monitoring.guard import (
    HISTORY_KEEP,
    RetrainVerdict,
    append_history,
    decide_retrain,
    history_key,
    load_history,
    should_trigger_retrain,
)
from mlops_bundle.monitoring.report import (
    REPORT_FILES,
    MonitoringResult,
    build_report,
    report_dates,
    report_key,
    reports_prefix,
    write_report,
)
from mlops_bundle.monitoring.runs import DayReport, ScoredDay, log_monitoring_run, report_day, score_day
from mlops_bundle.monitoring.scoring import (
    REFERENCE_ARTIFACT_DIR,
    REFERENCE_FILE,
    MonitoringError,
    has_reference,
    load_reference,
    log_reference,
    predictions_key,
    read_predictions,
    reference_needed,
    sample,
    score_batch,
    write_predictions,
)

__all__ = [
    "CATEGORICAL_DRIFT",
    "HISTORY_KEEP",
    "NUMERIC_DRIFT",
    "PREDICTION_DRIFT",
    "REFERENCE_ARTIFACT_DIR",
    "REFERENCE_FILE",
    "REPORT_FILES",
    "DayReport",
    "DriftMethod",
    "MonitoringError",
    "MonitoringResult",
    "RetrainVerdict",
    "ScoredDay",
    "append_history",
    "build_report",
    "decide_retrain",
    "has_reference",
    "history_key",
    "load_history",
    "load_reference",
    "log_monitoring_run",
    "log_reference",
    "predictions_key",
    "read_predictions",
    "reference_needed",
    "report_dates",
    "report_day",
    "report_key",
    "reports_prefix",
    "sample",
    "score_batch",
    "score_day",
    "should_trigger_retrain",
    "write_predictions",
    "write_report",
]
