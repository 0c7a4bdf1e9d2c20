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
- prediction drift, per ``dataset.task`` (:class:`Outputs`): binary on the positive-class probability
  and regression on the predicted value (numeric method), multiclass on the predicted label
  (categorical method).

Quality (when the current period has labels) uses Evidently's preset of the task's family
(``task_types.TaskType.evidently_kind``) and is reported under the training metrics' names
(:data:`QUALITY_METRICS`), so the monitoring experiment's numbers line up with training's.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_bundle.features import feature_kind
from mlops_bundle.monitoring.scoring import MonitoringError
from mlops_bundle.task_types import TaskType

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
# the binary prediction drift (on the positive-class probability); see Outputs.drift_method per task
PREDICTION_DRIFT = NUMERIC_DRIFT
# task -> Evidently metric type -> the training metric's name (task_types.TASKS[task].metrics). Evidently
# computes multiclass precision/recall/f1 macro-averaged and roc_auc one-vs-rest macro (as sklearn's
# *_macro and roc_auc_score(multi_class="ovr")); its MAPE is a percentage, reported here as a fraction.
QUALITY_METRICS: dict[str, dict[str, str]] = {
    "binary": {
        "Accuracy": "accuracy",
        "Precision": "precision",
        "Recall": "recall",
        "F1Score": "f1",
        "RocAuc": "roc_auc",
        "LogLoss": "log_loss",
    },
    "multiclass": {
        "Accuracy": "accuracy",
        "Precision": "precision_macro",
        "Recall": "recall_macro",
        "F1Score": "f1_macro",
        "RocAuc": "roc_auc_ovr",
        "LogLoss": "log_loss",
    },
    "regression": {"RMSE": "rmse", "MAE": "mae", "R2Score": "r2", "MAPE": "mape"},
}
# Evidently metrics whose value is a percentage: divided by 100 to match the training metric
_PERCENT = frozenset({"MAPE"})


def method(kind: str) -> DriftMethod:
    """The pinned method of an Evidently column kind ("numerical" / "categorical")."""
    return NUMERIC_DRIFT if kind == "numerical" else CATEGORICAL_DRIFT


@dataclass(frozen=True)
class Outputs:
    """The scored columns one report reads (``scoring.score_batch`` wrote them) and how, per task.

    binary: ``prediction`` (0/1) + ``proba`` (positive-class probability, the prediction-drift column);
    multiclass: ``prediction`` (the label, the prediction-drift column, categorical) + the per-class
    probability columns in ``class_probas`` (stored name -> the label's text, the name Evidently needs);
    regression: ``prediction`` (the value, the prediction-drift column, numeric).

    ``class_probas`` is empty when quality runs on the labels alone; ``per_class`` False uses Evidently's
    small classification preset (no per-class sections, which fail when a class has no labeled rows).
    ``report.build_report`` decides both from the labels.
    """

    task: TaskType
    prediction: str
    proba: str | None = None
    class_probas: Mapping[str, str] = field(default_factory=dict)
    per_class: bool = True

    @property
    def drift_column(self) -> str:
        return self.proba if self.task.name == "binary" and self.proba else self.prediction

    @property
    def drift_kind(self) -> str:
        return "categorical" if self.task.name == "multiclass" else "numerical"

    @property
    def drift_method(self) -> DriftMethod:
        return method(self.drift_kind)

    def stored_columns(self) -> list[str]:
        """The scored columns the Evidently run reads from the frames (before any renaming)."""
        return [self.prediction] + ([self.proba] if self.proba else []) + list(self.class_probas)

    def with_class_probas(self, class_probas: Mapping[str, str], *, per_class: bool = True) -> Outputs:
        return Outputs(self.task, self.prediction, self.proba, dict(class_probas), per_class)


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
    prediction: str,
    cfg: BundleConfig,
    cache: Any = None,
    *,
    prediction_kind: str = "numerical",
) -> Thresholds:
    """Calibrated thresholds for the ``scored`` features and the prediction-drift column ``prediction``
    (of kind ``prediction_kind``: "numerical" for a probability or a regression value, "categorical" for
    a multiclass label) at ``current_rows`` rows.

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
        {prediction: prediction_kind},
        {prediction: method(prediction_kind).threshold},
        current_rows,
        **common,
    )
    return Thresholds({c: columns[c] for c in scored}, pred.thresholds[prediction], origin, info)


# ----------------------------------------------------------------------------------------- Evidently


def _frame_for_evidently(
    df: pd.DataFrame, columns: Sequence[str], kinds: Mapping[str, str], outputs: Outputs, target: str | None
) -> pd.DataFrame:
    """Only the needed columns; categoricals as plain objects so both sides' category sets may differ.

    Multiclass: the label columns (prediction, target) as text and each class's probability column renamed
    to the label's text, because Evidently matches probability columns to classes by name (and its
    precision-recall table fails on integer labels next to text column names).
    """
    out = df[list(columns)]
    labels = [c for c in (outputs.prediction, target) if c is not None]
    conv: dict[str, Any] = {}
    for c in columns:
        if str(out[c].dtype) == "category" and (kinds.get(c) == "categorical" or c in labels):
            conv[c] = out[c].astype(object)
    if outputs.task.name == "multiclass":
        conv.update({c: out[c].astype(str) for c in labels})
    if conv:
        out = out.assign(**conv)
    if outputs.class_probas:
        out = out.rename(columns=dict(outputs.class_probas))
    return out


def _definition(kinds: Mapping[str, str], scored: Sequence[str], outputs: Outputs, target: str | None) -> Any:
    """Column types from the config, never inferred: Evidently's inference would call a 0/1 int column
    or a low-cardinality number "categorical" and pick a different drift method for it. The task's
    mapping (Binary/MulticlassClassification, Regression) when labels are there."""
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression

    numerical = [c for c in scored if kinds[c] == "numerical"]
    categorical = [c for c in scored if kinds[c] == "categorical"]
    task = outputs.task.name
    pred = outputs.prediction
    classification = regression = None
    if task == "binary":
        numerical.append(outputs.proba)
        categorical.append(pred)
        if target is not None:
            categorical.append(target)
            classification = [
                BinaryClassification(
                    target=target, prediction_labels=pred, prediction_probas=outputs.proba, pos_label=1
                )
            ]
    elif task == "multiclass":
        categorical.append(pred)
        probas = list(outputs.class_probas.values())
        numerical.extend(probas)
        if target is not None:
            categorical.append(target)
            classification = [
                MulticlassClassification(
                    target=target, prediction_labels=pred, prediction_probas=probas or None
                )
            ]
    else:
        numerical.append(pred)
        if target is not None:
            numerical.append(target)
            regression = [Regression(target=target, prediction=pred)]
    return DataDefinition(
        numerical_columns=numerical,
        categorical_columns=categorical,
        classification=classification,
        regression=regression,
    )


def _quality_preset(outputs: Outputs) -> Any:
    from evidently.presets import ClassificationPreset, ClassificationQuality, RegressionPreset

    if not outputs.task.is_classification:
        return RegressionPreset()
    return ClassificationPreset() if outputs.per_class else ClassificationQuality(conf_matrix=True)


def run_drift(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    cfg: BundleConfig,
    scored: Sequence[str],
    kinds: Mapping[str, str],
    outputs: Outputs,
    limits: Thresholds,
    *,
    with_quality: bool,
) -> Any:
    """One Evidently run: pinned per-column drift at ``limits``, prediction drift, quality when labels exist."""
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    target = cfg.dataset.target if with_quality else None
    if not with_quality:
        outputs = outputs.with_class_probas({})  # probabilities per class only serve quality
    cols = list(scored) + outputs.stored_columns() + ([target] if target else [])
    definition = _definition(kinds, scored, outputs, target)
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
    items.append(
        ValueDrift(column=outputs.drift_column, method=outputs.drift_method.name, threshold=limits.prediction)
    )
    if with_quality:
        items.append(_quality_preset(outputs))
    report = Report(items, include_tests=True)
    return report.run(
        Dataset.from_pandas(
            _frame_for_evidently(cur, cols, kinds, outputs, target), data_definition=definition
        ),
        Dataset.from_pandas(
            _frame_for_evidently(ref, cols, kinds, outputs, target), data_definition=definition
        ),
    )


def run_quality_only(
    ref: pd.DataFrame,
    cur_labeled: pd.DataFrame,
    cfg: BundleConfig,
    kinds: Mapping[str, str],
    outputs: Outputs,
) -> Any:
    """Quality on the labeled subset when only part of the current period has labels."""
    from evidently import Dataset, Report

    target = cfg.dataset.target
    cols = outputs.stored_columns() + [target]
    definition = _definition(kinds, [], outputs, target)
    return Report([_quality_preset(outputs)], include_tests=True).run(
        Dataset.from_pandas(
            _frame_for_evidently(cur_labeled, cols, kinds, outputs, target), data_definition=definition
        ),
        Dataset.from_pandas(
            _frame_for_evidently(ref, cols, kinds, outputs, target), data_definition=definition
        ),
    )


def render_html(snap: Any, quality_snap: Any | None, quality_title: str = "Classification quality") -> str:
    """Evidently's self-contained HTML; a labeled-subset quality run is appended as its own section."""
    if quality_snap is None:
        return snap.get_html_str(as_iframe=False)
    from evidently.core.metric_types import render_widgets
    from evidently.legacy.renderers.html_widgets import group_widget

    # Snapshot.get_html_str renders group_widget(self._widgets) + self._tests_widgets; do the same for two.
    widgets = [
        group_widget(title="Drift (all rows)", widgets=snap._widgets),
        group_widget(title=f"{quality_title} (labeled rows only)", widgets=quality_snap._widgets),
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


def prediction_drift(report_json: Mapping[str, Any], column: str) -> dict[str, Any]:
    """The drift of the prediction-drift column (``Outputs.drift_column``): method, score, threshold, drifted."""
    m = _value_drift_metrics(report_json)[column]
    score = float(m["score"])
    return {
        "column": column,
        "method": m["method"],
        "score": score,
        "threshold": float(m["threshold"]),
        "drifted": bool(score >= m["threshold"]),
    }


def quality(
    snap: Any, report_json: Mapping[str, Any], task: str = "binary"
) -> dict[str, dict[str, float | None]]:
    """Current (and reference) quality from Evidently's results, named as training names the task's
    metrics (:data:`QUALITY_METRICS`): binary accuracy/precision/recall/f1/roc_auc/log_loss, multiclass
    accuracy/precision_macro/recall_macro/f1_macro/roc_auc_ovr/log_loss (the last two only with per-class
    probabilities), regression rmse/mae/r2/mape."""
    names = QUALITY_METRICS[task]
    current: dict[str, float | None] = {}
    reference: dict[str, float | None] = {}
    for m in report_json.get("metrics", []):
        kind = m.get("config", {}).get("type", "").rsplit(":", 1)[-1]
        key = names.get(kind)
        if key is None or key in current:
            continue
        scale = 0.01 if kind in _PERCENT else 1.0
        current[key] = _scaled(_value(m.get("value")), scale)
        try:  # reference values are kept on the run context, not in Snapshot.dict()
            ref_result = snap.context.get_reference_metric_result(m["id"])
            reference[key] = _scaled(_value(ref_result), scale)
        except Exception:  # a missing reference value only drops that number, never the report
            reference[key] = None
    out: dict[str, dict[str, float | None]] = {"current": current}
    if any(v is not None for v in reference.values()):
        out["reference"] = reference
    return out


def _value(v: Any) -> float | None:
    """A metric's number: a plain value, ``{"mean": ..}`` (MAE/MAPE in the JSON) or a result object
    (``SingleValue.value``, ``MeanStdValue.mean.value``)."""
    if isinstance(v, Mapping):
        return _num(v.get("mean"))
    mean = getattr(v, "mean", None)
    if mean is not None and not callable(mean):  # MeanStdValue (a number's .mean is a method)
        return _num(getattr(mean, "value", mean))
    return _num(getattr(v, "value", v))


def _scaled(v: float | None, scale: float) -> float | None:
    return None if v is None else v * scale


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
