"""The pinned drift methods and the Evidently runs that apply them; reading Evidently's results back.

Why the methods are pinned: Evidently's automatic choice switches from statistical tests (p-values) at
<= 1,000 rows to distances above, and p-values shrink with sample size, so the same small shift is "no
drift" on a thousand rows and "drift" on a million. Every feature therefore gets an explicit method and
threshold, whatever the size:

- numeric: ``wasserstein`` (Wasserstein-1 distance divided by the reference standard deviation),
  threshold ``0.15`` = "the distribution moved by 15% of a standard deviation on average". It is
  scale-free and bin-free, and its sampling noise falls like 1/sqrt(n). Evidently's default of 0.1 lies
  inside that noise at 1k rows per side; 0.15 sits above the worst same-distribution score there, so
  per-column flags are stable from 1k rows up, while a real shift of the sample data still scores well
  above it (the noise and shift measurements are in benchmarks/README.md, "Drift-score noise").
  PSI was rejected for numbers because Evidently bins them with Sturges' rule on the combined data, so
  its bin count (and score) grows with the row count; KS/t-tests return p-values that shrink with n,
  which is exactly the size-dependence pinning avoids.
- categorical: ``jensenshannon`` (Jensen-Shannon distance of the category shares, natural log, range
  0..0.83), threshold ``0.1``. Symmetric, bounded, and a category that appears on one side only does
  not blow it up (PSI/KL need a zero-fill hack for that); 0.1 is about twice the worst same-distribution
  score at 1k rows per side.
- prediction drift: the same numeric method on the positive-class probability.

The result is meant for >= 1,000 rows per side (MIN_RELIABLE_ROWS); below that the noise approaches the
thresholds and the report says so. Column types come from the config, never from Evidently's inference.
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


# Pinned for every sample size (see the module docstring for why these two).
NUMERIC_DRIFT = DriftMethod("wasserstein", 0.15)
CATEGORICAL_DRIFT = DriftMethod("jensenshannon", 0.1)
PREDICTION_DRIFT = NUMERIC_DRIFT
# Below this many rows per side the distances' sampling noise gets close to the thresholds.
MIN_RELIABLE_ROWS = 1_000
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
    *,
    with_quality: bool,
) -> Any:
    """One Evidently run: pinned per-column drift, prediction drift, quality when labels exist."""
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
                per_column_threshold={c: method(kinds[c]).threshold for c in scored},
            )
        )
    items.append(ValueDrift(column=proba, method=PREDICTION_DRIFT.name, threshold=PREDICTION_DRIFT.threshold))
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
