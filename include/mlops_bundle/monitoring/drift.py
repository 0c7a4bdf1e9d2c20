"""The pinned drift methods and the Evidently runs that apply them; reading Evidently's results back.

Why the methods are pinned: Evidently's automatic choice switches from statistical tests (p-values) at
<= 1,000 rows to distances above, and p-values shrink with sample size, so the same small shift is "no
drift" on a thousand rows and "drift" on a million. Every feature therefore gets an explicit method:

- numeric: ``wasserstein`` (Wasserstein-1 distance divided by the reference standard deviation): "the
  distribution moved by this share of a standard deviation on average". Scale-free and bin-free. PSI was
  rejected for numbers because Evidently bins them with Sturges' rule on the combined data, so its bin
  count (and score) grows with the row count; KS/t-tests return p-values that shrink with n.
- categorical: ``jensenshannon`` (Jensen-Shannon distance of the category shares, natural log, range
  0..0.83). Symmetric, bounded, and a category that appears on one side only does not blow it up.
- prediction drift: the same numeric method on the positive-class probability.

Thresholds: a distance between two samples of one distribution is never zero and its noise grows as the
samples shrink, so no fixed threshold is honest at every size. Each method's pinned threshold (0.15
numeric, 0.1 categorical: the smallest move that counts as drift) is a *floor*; the threshold used is the
larger of the floor and what same-distribution resamples of the reference score at the batch's size
(:mod:`mlops_bundle.monitoring.calibration`), unless ``monitoring.column_thresholds`` fixes a column's
threshold. Below ``monitoring.min_rows`` rows on a side the verdict is "insufficient data".

Column types come from the config, never from Evidently's inference.
Evidently is imported inside the functions: its import takes seconds, which DAG parsing and code that
only uses the retrain guard must not pay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_bundle.features import feature_kind
from mlops_bundle.monitoring.scoring import MonitoringError

if TYPE_CHECKING:
    import pandas as pd

    from mlops_bundle.config import BundleConfig


@dataclass(frozen=True)
class DriftMethod:
    """An Evidently stat test name plus the score at or above which a column counts as drifted."""

    name: str
    threshold: float


# Pinned for every sample size; the thresholds are floors (see the module docstring).
NUMERIC_DRIFT = DriftMethod("wasserstein", 0.15)
CATEGORICAL_DRIFT = DriftMethod("jensenshannon", 0.1)
PREDICTION_DRIFT = NUMERIC_DRIFT
# Evidently metric type -> our quality key.
_QUALITY_METRICS = {
    "Accuracy": "accuracy",
    "Precision": "precision",
    "Recall": "recall",
    "F1Score": "f1",
    "RocAuc": "roc_auc",
    "LogLoss": "log_loss",
}


def method(kind: str) -> DriftMethod:
    """The pinned method of an Evidently column kind ("numerical" / "categorical")."""
    return NUMERIC_DRIFT if kind == "numerical" else CATEGORICAL_DRIFT


# ------------------------------------------------------------------------------------ column selection


def feature_kinds(cfg: BundleConfig) -> tuple[dict[str, str], list[str]]:
    """Map each feature to "numerical" / "categorical" from the config's declared dtypes (not guessed)."""
    kinds: dict[str, str] = {}
    notes: list[str] = []
    for col in cfg.dataset.feature_columns:
        dtype = cfg.dataset.column(col).dtype
        kind = feature_kind(dtype)
        if kind is not None:
            kinds[col] = {"numeric": "numerical"}.get(kind, kind)  # Evidently's spelling
        else:
            notes.append(f"feature {col!r} has dtype {dtype!r}: no drift method for it, not monitored")
    return kinds, notes


def split_scorable(
    ref: pd.DataFrame, cur: pd.DataFrame, kinds: Mapping[str, str]
) -> tuple[list[str], dict[str, dict[str, Any]], list[str]]:
    """Columns Evidently can score; an all-null side cannot be scored (Evidently raises) so decide here.

    All null in current but not in reference = the feature disappeared upstream: counted as drifted.
    All null in reference = nothing to compare with: left out of the share, with a note.
    """
    scorable: list[str] = []
    forced: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for col in kinds:
        ref_empty = not ref[col].notna().any()
        cur_empty = not cur[col].notna().any()
        if ref_empty:
            notes.append(f"feature {col!r} is all null in the reference: not monitored")
        elif cur_empty:
            forced[col] = {
                "method": "all_null",
                "score": None,
                "threshold": None,
                "drifted": True,
                "reason": "all values missing in the current batch",
            }
        else:
            scorable.append(col)
    return scorable, forced, notes


# ---------------------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Thresholds:
    """The thresholds one report applies: per feature, for the prediction, and where each came from."""

    columns: dict[str, float]
    prediction: float
    # feature -> "fixed" (monitoring.column_thresholds), "floor" or "calibrated" (raised above the floor)
    origin: dict[str, str]
    calibration: dict[str, Any]


def thresholds(
    ref: pd.DataFrame,
    current_rows: int,
    scored: Sequence[str],
    kinds: Mapping[str, str],
    proba: str,
    cfg: BundleConfig,
    cache: Any = None,
) -> Thresholds:
    """Calibrated thresholds for the ``scored`` features and the prediction at ``current_rows`` rows.

    ``cache``: a :class:`~mlops_bundle.monitoring.calibration.CalibrationCache` of this reference, or None.
    """
    from mlops_bundle.monitoring import calibration

    mon = cfg.monitoring
    fixed = {c: float(mon.column_thresholds[c]) for c in scored if c in mon.column_thresholds}
    free = {c: kinds[c] for c in scored if c not in fixed}
    floors = {c: method(k).threshold for c, k in free.items()}
    common = {"share_threshold": mon.drift_share_threshold, "false_alarm_rate": mon.false_alarm_rate}
    columns, origin, info = dict(fixed), dict.fromkeys(fixed, "fixed"), {}
    if free:
        cal = calibration.cached_calibration(cache, "features", ref, free, floors, current_rows, **common)
        columns.update(cal.thresholds)
        origin.update({c: "calibrated" if cal.thresholds[c] > floors[c] else "floor" for c in free})
        info = cal.to_json()
    pred = calibration.cached_calibration(
        cache,
        "prediction",
        ref,
        {proba: "numerical"},
        {proba: PREDICTION_DRIFT.threshold},
        current_rows,
        **common,
    )
    return Thresholds({c: columns[c] for c in scored}, pred.thresholds[proba], origin, info)


# ----------------------------------------------------------------------------------------- Evidently


def _frame_for_evidently(df: pd.DataFrame, columns: Sequence[str], kinds: Mapping[str, str]) -> pd.DataFrame:
    """Only the needed columns; categoricals as plain objects so both sides' category sets may differ."""
    out = df[list(columns)]
    cat_cols = [c for c in columns if kinds.get(c) == "categorical" and str(out[c].dtype) == "category"]
    if cat_cols:
        out = out.assign(**{c: out[c].astype(object) for c in cat_cols})
    return out


def _definition(
    kinds: Mapping[str, str], scored: Sequence[str], pred: str, proba: str, target: str | None
) -> Any:
    """Column types from the config, never inferred: Evidently's inference would call a 0/1 int column
    or a low-cardinality number "categorical" and pick a different drift method for it."""
    from evidently import BinaryClassification, DataDefinition

    numerical = [c for c in scored if kinds[c] == "numerical"] + [proba]
    categorical = [c for c in scored if kinds[c] == "categorical"] + [pred]
    classification = None
    if target is not None:
        categorical.append(target)
        classification = [
            BinaryClassification(target=target, prediction_labels=pred, prediction_probas=proba, pos_label=1)
        ]
    return DataDefinition(
        numerical_columns=numerical, categorical_columns=categorical, classification=classification
    )


def run_drift(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    cfg: BundleConfig,
    scored: Sequence[str],
    kinds: Mapping[str, str],
    pred: str,
    proba: str,
    limits: Thresholds,
    *,
    with_quality: bool,
) -> Any:
    """One Evidently run: pinned per-column drift at ``limits``, prediction drift, quality when labels exist."""
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, DataDriftPreset

    target = cfg.dataset.target if with_quality else None
    cols = list(scored) + [pred, proba] + ([target] if target else [])
    definition = _definition(kinds, scored, pred, proba, target)
    items: list[Any] = []
    if scored:
        items.append(
            DataDriftPreset(
                columns=list(scored),
                drift_share=cfg.monitoring.drift_share_threshold,
                per_column_method={c: method(kinds[c]).name for c in scored},
                per_column_threshold={c: limits.columns[c] for c in scored},
            )
        )
    items.append(ValueDrift(column=proba, method=PREDICTION_DRIFT.name, threshold=limits.prediction))
    if with_quality:
        items.append(ClassificationPreset())
    report = Report(items, include_tests=True)
    return report.run(
        Dataset.from_pandas(_frame_for_evidently(cur, cols, kinds), data_definition=definition),
        Dataset.from_pandas(_frame_for_evidently(ref, cols, kinds), data_definition=definition),
    )


def run_quality_only(
    ref: pd.DataFrame,
    cur_labeled: pd.DataFrame,
    cfg: BundleConfig,
    kinds: Mapping[str, str],
    pred: str,
    proba: str,
) -> Any:
    """Quality on the labeled subset when only part of the current period has labels."""
    from evidently import Dataset, Report
    from evidently.presets import ClassificationPreset

    target = cfg.dataset.target
    cols = [pred, proba, target]
    definition = _definition(kinds, [], pred, proba, target)
    return Report([ClassificationPreset()], include_tests=True).run(
        Dataset.from_pandas(_frame_for_evidently(cur_labeled, cols, kinds), data_definition=definition),
        Dataset.from_pandas(_frame_for_evidently(ref, cols, kinds), data_definition=definition),
    )


def render_html(snap: Any, quality_snap: Any | None) -> str:
    """Evidently's self-contained HTML; a labeled-subset quality run is appended as its own section."""
    if quality_snap is None:
        return snap.get_html_str(as_iframe=False)
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget

    # Snapshot.get_html_str renders group_widget(self._widgets) + self._tests_widgets; do the same for two.
    widgets = [
        group_widget(title="Drift (all rows)", widgets=snap._widgets),
        group_widget(title="Classification quality (labeled rows only)", widgets=quality_snap._widgets),
    ]
    return render_widgets(widgets + snap._tests_widgets + quality_snap._tests_widgets, as_iframe=False)


# ----------------------------------------------------------------------------------- reading results


def _value_drift_metrics(report_json: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Evidently's ValueDrift results keyed by column (config holds the method/threshold we pinned)."""
    out = {}
    for m in report_json.get("metrics", []):
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith(":ValueDrift"):
            out[cfg["column"]] = {"method": cfg["method"], "threshold": cfg["threshold"], "score": m["value"]}
    return out


def column_scores(
    report_json: Mapping[str, Any], scored: Sequence[str], kinds: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Per feature: method, score, threshold, drifted (score >= threshold, Evidently's own rule)."""
    found = _value_drift_metrics(report_json)
    out = {}
    for col in scored:
        if col not in found:
            raise MonitoringError(f"Evidently returned no drift score for column {col!r}")
        m = found[col]
        score = float(m["score"])
        out[col] = {
            "method": m["method"],
            "score": score,
            "threshold": float(m["threshold"]),
            "drifted": bool(score >= m["threshold"]),
        }
    return out


def prediction_drift(report_json: Mapping[str, Any], proba_col: str) -> dict[str, Any]:
    """The prediction-probability drift: method, score, threshold, drifted."""
    m = _value_drift_metrics(report_json)[proba_col]
    score = float(m["score"])
    return {
        "column": proba_col,
        "method": m["method"],
        "score": score,
        "threshold": float(m["threshold"]),
        "drifted": bool(score >= m["threshold"]),
    }


def quality(snap: Any, report_json: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Current (and reference) accuracy/precision/recall/f1/roc_auc/log_loss from Evidently's results."""
    current: dict[str, float | None] = {}
    reference: dict[str, float | None] = {}
    for m in report_json.get("metrics", []):
        kind = m.get("config", {}).get("type", "").rsplit(":", 1)[-1]
        key = _QUALITY_METRICS.get(kind)
        if key is None or key in current:
            continue
        current[key] = _num(m.get("value"))
        try:  # reference values are kept on the run context, not in Snapshot.dict()
            ref_result = snap.context.get_reference_metric_result(m["id"])
            reference[key] = _num(getattr(ref_result, "value", None))
        except Exception:  # a missing reference value only drops that number, never the report
            reference[key] = None
    out: dict[str, dict[str, float | None]] = {"current": current}
    if any(v is not None for v in reference.values()):
        out["reference"] = reference
    return out


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
