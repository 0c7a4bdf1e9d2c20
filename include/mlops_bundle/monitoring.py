"""Batch scoring, Evidently drift/quality reports and the guard that turns drift into a retrain.

Why it is built this way:

* **Pinned drift methods.** Evidently's automatic choice switches from statistical tests (p-values) at
  <= 1,000 rows to distances above, and p-values shrink with sample size, so the same small shift is
  "no drift" on a thousand rows and "drift" on a million. Every feature therefore gets an explicit method
  and threshold, whatever the size:

  - numeric: ``wasserstein`` (Wasserstein-1 distance divided by the reference standard deviation),
    threshold ``0.15`` = "the distribution moved by 15% of a standard deviation on average". It is
    scale-free and bin-free, and its sampling noise falls like ~1.7/sqrt(n): two same-distribution
    samples of the churn data scored 0.055 on average and at most 0.12 at 1k rows per side (15 seeds),
    <= 0.075 at 2k, <= 0.03 at 20k, ~0.01 at 100k. Evidently's default of 0.1 is inside that noise at
    1k rows, so 0.15 keeps per-column flags stable from 1k rows up, while a real shift (drift=0.2 on
    the sample moves tenure/charges/tickets by 0.17-0.29; drift=1.0 by 0.5-1.3) still registers.
    PSI was rejected for numbers because Evidently bins them with Sturges' rule on the combined data,
    so its bin count (and score) grows with the row count; KS/t-tests return p-values that shrink
    with n, which is exactly the size-dependence pinning avoids.
  - categorical: ``jensenshannon`` (Jensen-Shannon distance of the category shares, natural log, range
    0..0.83), threshold ``0.1``. Symmetric, bounded, and a category that appears on one side only does
    not blow it up (PSI/KL need a zero-fill hack for that). Noise on 3-4 categories: at most 0.047 at
    1k rows per side, 0.01 at 20k; a 0.1 threshold is twice the worst 1k-row noise.
  - prediction drift: the same numeric method on the positive-class probability.

  The result is meant for >= 1,000 rows per side; below that the noise approaches the thresholds and
  ``describe()`` says so.
* **Sampling.** Each side is sampled uniformly (seeded, so reruns give the same report) to
  ``monitoring.sample_cap`` rows: 1M rows cost ~44 s and 1 GB in Evidently, 100k a few seconds. At 100k
  rows the distances above are accurate to ~0.01, far below the thresholds, so sampling never changes
  a verdict that the full data would give.
* **Quality only with labels.** Classification quality needs the current period's labels, which
  usually arrive later than the batch. Without them the section is skipped and the result says why.
* **Retrain guard.** Drift may trigger retraining, but not on a batch that failed the data gate, not
  again within ``monitoring.cooldown_hours`` and not more than ``monitoring.max_retrains_per_day`` times
  per UTC day. The history of drift-triggered retrains is a small JSON file in the store.

Evidently (and scikit-learn) are imported inside the functions: importing Evidently costs ~4-9 s, which
must not be paid by DAG parsing or by code that only uses the guard.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_bundle.features import feature_kind, positive_class_index, predict_positive
from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.locks import file_lock

if TYPE_CHECKING:
    import pandas as pd

    from mlops_bundle.config import BundleConfig
    from mlops_bundle.storage import Storage


class MonitoringError(ValueError):
    """Monitoring cannot run on these inputs; the message names the column/file and what to do."""


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
HISTORY_KEEP = 500  # retrain history records kept (the guard only needs the last day)


# ------------------------------------------------------------------------------------------- sampling


def sample(df: pd.DataFrame, cap: int, seed: int = 0) -> pd.DataFrame:
    """At most ``cap`` rows, drawn uniformly without replacement; the same seed gives the same rows.

    Rows keep their original order (timestamps stay sorted). A frame that already fits is returned
    as is, without a copy, because copying a million-row frame costs memory for nothing.
    """
    if cap < 1:
        raise MonitoringError(f"sample cap must be >= 1, got {cap}")
    if len(df) <= cap:
        return df
    import numpy as np

    idx = np.random.default_rng(seed).choice(len(df), size=cap, replace=False)
    idx.sort()
    return df.iloc[idx]


# -------------------------------------------------------------------------------------------- scoring


def score_batch(
    model: Any,
    df: pd.DataFrame,
    cfg: BundleConfig,
    *,
    prediction_col: str = "prediction",
    proba_col: str = "prediction_proba",
    keep_features: bool = True,
    chunk_rows: int = 1_000_000,
) -> pd.DataFrame:
    """Score a batch with a fitted binary classifier: adds ``prediction`` (0/1 at ``features.THRESHOLD``)
    and ``prediction_proba`` (probability of the positive class).

    The id and timestamp columns are always kept (so scores can be joined back and audited); with
    ``keep_features`` the features (and the target, if present) are kept too, which is the frame
    ``build_report`` wants as "current". Scoring runs in chunks of ``chunk_rows`` so the model's
    intermediate matrices (one-hot encodings...) stay bounded on very big batches; each chunk costs a
    fixed preprocessing overhead (~40 ms for the churn pipeline), so chunks are large (1M rows: a
    1M-row batch is one call, as fast as calling ``predict_proba`` directly).
    """
    import numpy as np

    ds = cfg.dataset
    features = ds.feature_columns
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise MonitoringError(
            f"batch to score lacks columns {missing} that the champion was trained on; "
            f"check the batch against config {cfg.source or 'config/churn.yaml'} (dataset.columns)"
        )
    try:
        pos = positive_class_index(getattr(model, "classes_", []))
    except ValueError as exc:
        raise MonitoringError(str(exc)) from None
    X = df[features]
    proba = np.empty(len(df), dtype="float64")
    step = max(1, int(chunk_rows))
    for start in range(0, len(df), step):
        out = model.predict_proba(X.iloc[start : start + step])
        proba[start : start + step] = np.asarray(out)[:, pos]
    if len(proba) and not np.isfinite(proba).all():
        raise MonitoringError(
            f"the model returned {int((~np.isfinite(proba)).sum())} non-finite probabilities; "
            "check the batch for values the model's preprocessing cannot handle"
        )
    keys = [c for c in (ds.id_column, ds.timestamp_column) if c in df.columns]
    keep = keys + features + ([ds.target] if ds.target in df.columns else []) if keep_features else keys
    out_df = df.loc[:, keep]  # a new frame with the input's dtypes (category stays category)
    out_df[prediction_col] = predict_positive(proba)
    out_df[proba_col] = proba
    return out_df


# ------------------------------------------------------------------------------------------- reporting


@dataclass
class MonitoringResult:
    """What one monitoring run found. ``summary()`` is the JSON-safe part for XCom and logs."""

    dataset_drift: bool
    drift_share: float
    drift_share_threshold: float
    drifted_columns: list[str]
    column_scores: dict[str, dict[str, Any]]
    prediction_drift: dict[str, Any]
    quality: dict[str, dict[str, float | None]] | None
    quality_skipped_reason: str | None
    rows_reference: int
    rows_current: int
    sample_cap: int
    sampled: bool
    html: str = field(repr=False)
    json: dict[str, Any] = field(repr=False)
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The key numbers, JSON-safe (no HTML, no Evidently JSON): for XCom, asset extras, alerts."""
        return json_safe(
            {
                "dataset_drift": self.dataset_drift,
                "drift_share": self.drift_share,
                "drift_share_threshold": self.drift_share_threshold,
                "drifted_columns": self.drifted_columns,
                "column_scores": self.column_scores,
                "prediction_drift": self.prediction_drift,
                "quality": self.quality,
                "quality_skipped_reason": self.quality_skipped_reason,
                "rows_reference": self.rows_reference,
                "rows_current": self.rows_current,
                "rows_reference_used": min(self.rows_reference, self.sample_cap),
                "rows_current_used": min(self.rows_current, self.sample_cap),
                "sampled": self.sampled,
                "seconds": round(self.seconds, 3),
                "notes": self.notes,
            }
        )

    def describe(self) -> str:
        """A few lines for the task log: verdict, worst columns, prediction drift, quality."""
        n_cols = len(self.column_scores)
        verdict = "DRIFT" if self.dataset_drift else "no drift"
        cmp = ">=" if self.dataset_drift else "<"
        lines = [
            f"dataset drift: {verdict} - {len(self.drifted_columns)} of {n_cols} feature columns drifted, "
            f"share {self.drift_share:.2f} {cmp} threshold {self.drift_share_threshold:.2f}",
            f"rows: reference {self.rows_reference:,}, current {self.rows_current:,}"
            + (f" (each side sampled to at most {self.sample_cap:,})" if self.sampled else ""),
        ]
        ranked = sorted(
            self.column_scores.items(),
            key=lambda kv: (not kv[1]["drifted"], -(kv[1]["score"] if kv[1]["score"] is not None else 1e9)),
        )
        drifted = [(c, s) for c, s in ranked if s["drifted"]]
        if drifted:
            lines.append("drifted columns (score >= threshold):")
            lines.extend(f"  {c}: {_fmt_score(s)}" for c, s in drifted[:10])
        else:
            c, s = max(self.column_scores.items(), key=lambda kv: kv[1]["score"] or 0.0, default=("-", None))
            if s is not None:
                lines.append(f"closest to drifting: {c}: {_fmt_score(s)}")
        pdrift = self.prediction_drift
        lines.append(
            f"prediction drift: {'DRIFT' if pdrift['drifted'] else 'no drift'} - {pdrift['column']} "
            f"{_fmt_score(pdrift)}"
        )
        if self.quality is not None:
            for side in ("current", "reference"):
                vals = self.quality.get(side)
                if vals:
                    shown = ", ".join(f"{k} {v:.3f}" for k, v in vals.items() if v is not None)
                    lines.append(f"quality ({side}): {shown}")
        else:
            lines.append(f"quality: skipped - {self.quality_skipped_reason}")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.append(f"report built in {self.seconds:.1f} s")
        return "\n".join(lines)


def _fmt_score(s: Mapping[str, Any]) -> str:
    if s.get("score") is None:
        return f"{s.get('reason', 'not scored')}"
    return f"{s['method']} {s['score']:.3f} (threshold {s['threshold']:.2f})"


def build_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    cfg: BundleConfig,
    *,
    prediction_col: str = "prediction",
    proba_col: str = "prediction_proba",
    labels_available: bool | None = None,
    seed: int = 0,
) -> MonitoringResult:
    """Compare the current scored batch with the champion's reference data using Evidently.

    reference: the champion's training sample with its predictions (features, target, prediction cols).
    current: the newly scored batch (features, prediction cols; the target when labels exist).
    labels_available: None infers it (target column present and not all null).
    """
    started = time.perf_counter()
    ds = cfg.dataset
    name = ds.name
    features = ds.feature_columns
    _check_frame(current, "current batch", features, prediction_col, proba_col, name, cfg)
    _check_frame(
        reference, "reference (champion training sample)", features, prediction_col, proba_col, name, cfg
    )
    has_labels, skip_reason = _resolve_labels(current, reference, ds.target, labels_available)

    cap = cfg.monitoring.sample_cap
    ref = sample(reference, cap, seed)
    cur = sample(current, cap, seed + 1)
    sampled = len(ref) < len(reference) or len(cur) < len(current)

    kinds, notes = _feature_kinds(cfg)
    scored, forced, more_notes = _split_scorable(ref, cur, kinds)
    notes += more_notes
    if min(len(ref), len(cur)) < MIN_RELIABLE_ROWS:
        notes.append(
            f"only {min(len(ref), len(cur)):,} rows on the smaller side; below {MIN_RELIABLE_ROWS:,} rows "
            "the drift distances' sampling noise approaches the thresholds"
        )

    if has_labels:  # 0.0/1.0 labels (a null once made the column float) must compare equal to 0/1
        ref, cur = _integral_labels(ref, ds.target), _integral_labels(cur, ds.target)
    labeled_only = has_labels and bool(cur[ds.target].isna().any())
    snap = _run_evidently(
        ref, cur, cfg, scored, kinds, prediction_col, proba_col, with_quality=has_labels and not labeled_only
    )
    quality_snap = None
    if labeled_only:
        lab = _integral_labels(cur[cur[ds.target].notna()], ds.target)
        notes.append(
            f"{len(cur) - len(lab):,} of {len(cur):,} current rows lack '{ds.target}'; "
            "quality is computed on the labeled rows only"
        )
        quality_snap = _run_quality_only(ref, lab, cfg, kinds, prediction_col, proba_col)

    report_json = json.loads(snap.json())
    column_scores = _column_scores(report_json, scored, kinds)
    column_scores.update(forced)
    drifted = [c for c in features if c in column_scores and column_scores[c]["drifted"]]
    share = len(drifted) / len(column_scores) if column_scores else 0.0
    threshold = cfg.monitoring.drift_share_threshold
    pred = _prediction_drift(report_json, proba_col)

    quality = None
    if has_labels:
        qsnap = quality_snap or snap
        qjson = json.loads(qsnap.json()) if quality_snap is not None else report_json
        quality = _quality(qsnap, qjson)
        if quality_snap is not None:
            report_json["quality_labeled_rows"] = qjson
    html = _render_html(snap, quality_snap)

    return MonitoringResult(
        dataset_drift=bool(column_scores) and share >= threshold,
        drift_share=share,
        drift_share_threshold=threshold,
        drifted_columns=drifted,
        column_scores=column_scores,
        prediction_drift=pred,
        quality=quality,
        quality_skipped_reason=skip_reason,
        rows_reference=len(reference),
        rows_current=len(current),
        sample_cap=cap,
        sampled=sampled,
        html=html,
        json=report_json,
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def _check_frame(
    df: pd.DataFrame,
    what: str,
    features: Sequence[str],
    prediction_col: str,
    proba_col: str,
    dataset: str,
    cfg: BundleConfig,
) -> None:
    """Fail early, naming the columns, instead of deep inside Evidently."""
    if len(df) == 0:
        raise MonitoringError(
            f"no rows to monitor for {dataset}: the {what} is empty; "
            "check that the batch date has validated, scored data"
        )
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise MonitoringError(
            f"{what} lacks columns {missing} that the champion was trained on "
            f"(dataset.columns in {cfg.source or 'the config'}); fix the upstream export or retrain"
        )
    if proba_col not in df.columns:
        raise MonitoringError(
            f"{what} lacks the prediction probability column {proba_col!r}; score it with "
            "mlops_bundle.monitoring.score_batch(champion, df, cfg) first"
        )
    if prediction_col not in df.columns:
        raise MonitoringError(
            f"{what} lacks the prediction label column {prediction_col!r}; score it with "
            "mlops_bundle.monitoring.score_batch(champion, df, cfg) first"
        )


def _resolve_labels(
    current: pd.DataFrame, reference: pd.DataFrame, target: str, labels_available: bool | None
) -> tuple[bool, str | None]:
    """Whether classification quality can be computed, and if not, why (for the result and the log)."""
    present = target in current.columns
    any_label = present and bool(current[target].notna().any())
    if labels_available is None:
        labels_available = any_label
        if not labels_available:
            why = "is not in the current batch" if not present else "is empty (all null) in the current batch"
            return False, (
                f"no labels for the current period: target '{target}' {why}; "
                "quality is computed once labels arrive (rerun with the labeled batch)"
            )
    if not labels_available:
        return False, "labels_available=False: the caller said the current period has no labels yet"
    if not any_label:
        raise MonitoringError(
            f"labels_available=True but the current batch has no values in target column '{target}'; "
            "pass labels_available=None to infer it, or join the labels first"
        )
    if target not in reference.columns or not reference[target].notna().any():
        raise MonitoringError(
            f"reference (champion training sample) lacks target column '{target}'; "
            "the reference must be the training data with its labels"
        )
    return True, None


def _integral_labels(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """Labels read back as floats (a null forced the column to float) -> int, so 1.0 matches prediction 1.

    scikit-learn (inside Evidently) refuses float labels next to integer predictions ("a mix of binary
    and continuous targets").
    """
    col = df[target]
    if col.dtype.kind == "f" and col.notna().all() and bool((col == col.round()).all()):
        return df.assign(**{target: col.astype("int64")})
    return df


def _feature_kinds(cfg: BundleConfig) -> tuple[dict[str, str], list[str]]:
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


def _split_scorable(
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


def _run_evidently(
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
                per_column_method={c: _method(kinds[c]).name for c in scored},
                per_column_threshold={c: _method(kinds[c]).threshold for c in scored},
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


def _run_quality_only(
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


def _method(kind: str) -> DriftMethod:
    return NUMERIC_DRIFT if kind == "numerical" else CATEGORICAL_DRIFT


def _value_drift_metrics(report_json: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Evidently's ValueDrift results keyed by column (config holds the method/threshold we pinned)."""
    out = {}
    for m in report_json.get("metrics", []):
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith(":ValueDrift"):
            out[cfg["column"]] = {"method": cfg["method"], "threshold": cfg["threshold"], "score": m["value"]}
    return out


def _column_scores(
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


def _prediction_drift(report_json: Mapping[str, Any], proba_col: str) -> dict[str, Any]:
    m = _value_drift_metrics(report_json)[proba_col]
    score = float(m["score"])
    return {
        "column": proba_col,
        "method": m["method"],
        "score": score,
        "threshold": float(m["threshold"]),
        "drifted": bool(score >= m["threshold"]),
    }


def _quality(snap: Any, report_json: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
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


def _render_html(snap: Any, quality_snap: Any | None) -> str:
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


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def write_report(store: Storage, prefix: str, result: MonitoringResult) -> dict[str, str]:
    """Write report.html, report.json (Evidently's output) and summary.json under ``prefix``.

    The summary is written last, so a reader that finds summary.json also finds the report it summarises.
    Returns {"html": uri, "json": uri, "summary": uri}.
    """
    from mlops_bundle.storage import join

    prefix = prefix.strip("/")
    if not prefix:
        raise MonitoringError("write_report needs a prefix such as 'reports/<dataset>/<date>'")
    uris = {
        "html": store.write_bytes(join(prefix, "report.html"), result.html.encode("utf-8")),
        "json": store.write_bytes(
            join(prefix, "report.json"), json.dumps(json_safe(result.json), indent=1).encode("utf-8")
        ),
    }
    summary = result.summary() | {"report_html": uris["html"], "report_json": uris["json"]}
    uris["summary"] = store.write_bytes(
        join(prefix, "summary.json"), json.dumps(summary, indent=2, sort_keys=True).encode("utf-8")
    )
    return uris


# ---------------------------------------------------------------------------------------- retrain guard


def _parse_at(value: Any, where: str) -> dt.datetime:
    """An aware UTC datetime from an ISO string or datetime; naive values are taken as UTC."""
    if isinstance(value, dt.datetime):
        ts = value
    else:
        try:
            ts = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise MonitoringError(
                f"{where} has no valid ISO timestamp in 'at' (got {value!r}); "
                "fix or remove that record from the retrain history file"
            ) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return ts.astimezone(dt.UTC)


def should_trigger_retrain(
    result_summary: Mapping[str, Any] | MonitoringResult,
    history: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    cfg: BundleConfig,
    *,
    data_gx_success: bool,
) -> tuple[bool, str]:
    """Decide whether this drift verdict may trigger a retrain; the reason names the deciding rule.

    Rules in order: no dataset drift -> no; batch failed the data gate -> no (a broken batch is not a new
    distribution); the last drift-triggered retrain is younger than ``cooldown_hours`` -> no (the new
    champion needs time to be judged); ``max_retrains_per_day`` already reached in this UTC day -> no;
    otherwise yes. ``history`` holds previous drift-triggered retrains as ``{"at": iso, ...}``.
    """
    summary = result_summary.summary() if isinstance(result_summary, MonitoringResult) else result_summary
    mon = cfg.monitoring
    share = float(summary.get("drift_share", 0.0))
    threshold = float(summary.get("drift_share_threshold", mon.drift_share_threshold))
    if not summary.get("dataset_drift"):
        return False, f"no dataset drift: drift share {share:.2f} < threshold {threshold:.2f}"
    if not data_gx_success:
        return False, (
            f"dataset drift (share {share:.2f} >= {threshold:.2f}) but the batch failed the data quality "
            "gate (GX): fix the data, do not retrain on it"
        )
    now = _parse_at(now, "now")
    times = sorted(_parse_at(r.get("at"), f"retrain history record #{i}") for i, r in enumerate(history))
    if times:
        age_h = (now - times[-1]).total_seconds() / 3600
        if age_h < mon.cooldown_hours:
            return False, (
                f"cooldown: last drift-triggered retrain at {times[-1].isoformat()} was {age_h:.1f} h ago "
                f"< cooldown_hours {mon.cooldown_hours:g}"
            )
    today = sum(1 for t in times if t.date() == now.date())
    if today >= mon.max_retrains_per_day:
        return False, (
            f"max retrains per day reached: {today} drift-triggered retrains on {now.date().isoformat()} "
            f"(UTC) >= max_retrains_per_day {mon.max_retrains_per_day}"
        )
    last = f"last one {((now - times[-1]).total_seconds() / 3600):.1f} h ago" if times else "first trigger"
    return True, (
        f"dataset drift: share {share:.2f} >= threshold {threshold:.2f}; {last} "
        f"(cooldown {mon.cooldown_hours:g} h); retrain {today + 1} of {mon.max_retrains_per_day} today (UTC)"
    )


def history_key(cfg: BundleConfig) -> str:
    """Where the drift-triggered retrain history of a data set lives in the store."""
    return f"{cfg.storage.monitoring_prefix}/{cfg.dataset.name}/retrain_history.json"


def load_history(store: Storage, key: str) -> list[dict[str, Any]]:
    """The retrain history records (oldest first); a missing file means no retrains yet."""
    if not store.exists(key):
        return []
    raw = store.read_bytes(key)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MonitoringError(
            f"retrain history {store.uri(key)} is not valid JSON ({exc}); fix it or delete it "
            "(deleting resets the cooldown and the daily count)"
        ) from None
    records = data.get("records") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise MonitoringError(
            f"retrain history {store.uri(key)} must be {{'records': [{{'at': iso, ...}}, ...]}}; "
            "fix it or delete it"
        )
    return records


@contextlib.contextmanager
def _history_lock(store: Storage, key: str) -> Iterator[None]:
    """An exclusive file lock beside a local history file; a no-op for object stores.

    Object stores have no cheap lock here; there the read-modify-write can lose a record if two
    monitor runs of the same data set append in the same instant. The monitor DAG runs one active
    run per data set (max_active_runs=1), which makes that window practically empty.
    """
    path = store.local_path(key)
    if path is None:
        yield
        return
    with file_lock(Path(path).with_name(Path(path).name + ".lock")):
        yield


def append_history(store: Storage, key: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append one record (needs an ISO ``at``) and return the new history.

    Read-modify-write under a file lock for local stores (concurrent appends are not lost); the write
    itself is atomic on both backends, so a reader never sees half a file. Keeps the last HISTORY_KEEP
    records.
    """
    rec = json_safe(dict(record))
    rec["at"] = _parse_at(rec.get("at"), "record to append").isoformat()
    with _history_lock(store, key):
        records = load_history(store, key)
        records.append(rec)
        records = records[-HISTORY_KEEP:]
        store.write_bytes(key, json.dumps({"records": records}, indent=1).encode("utf-8"))
    return records


# ------------------------------------------------------------------------------------------- reference

REFERENCE_ARTIFACT_DIR = "reference"
REFERENCE_FILE = "reference.parquet"


def log_reference(cfg: BundleConfig, client: Any, run_id: str, model: Any, train: pd.DataFrame) -> str:
    """Record the drift reference of a model at training time: a sample of its training data (capped at
    monitoring.sample_cap rows) scored by the model itself, as an artifact of its MLflow run.

    Monitoring later compares new batches with the reference of whichever version is champion, so the
    reference follows the champion (a rollback brings its own reference back). Returns the artifact path.
    """
    import tempfile
    from pathlib import Path

    ref = score_batch(model, sample(train, cfg.monitoring.sample_cap, seed=cfg.training.seed), cfg)
    with tempfile.TemporaryDirectory(prefix="mlops-reference-") as tmp:
        path = Path(tmp) / REFERENCE_FILE
        ref.to_parquet(path, index=False)
        client.log_artifact(run_id, str(path), REFERENCE_ARTIFACT_DIR)
    return f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}"


def load_reference(client: Any, run_id: str) -> pd.DataFrame:
    """The reference recorded by log_reference for the run that produced a model version."""
    import tempfile

    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="mlops-reference-") as tmp:
        try:
            local = client.download_artifacts(run_id, f"{REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}", tmp)
        except Exception as exc:
            raise MonitoringError(
                f"MLflow run {run_id} has no drift reference ({REFERENCE_ARTIFACT_DIR}/{REFERENCE_FILE}): the "
                "champion was trained before references were recorded; retrain it with the train DAG"
            ) from exc
        return pd.read_parquet(local)


# ----------------------------------------------------------------------------------- monitoring runs


def predictions_key(cfg: BundleConfig, date: str) -> str:
    """Where a day's scores live: next to the validated partition, one object per day (rerun = replace)."""
    return f"{cfg.storage.predictions_prefix}/{cfg.dataset.name}/ds={date}/predictions.parquet"


def reports_prefix(cfg: BundleConfig, date: str) -> str:
    return f"{cfg.storage.reports_prefix}/{cfg.dataset.name}/{date}"


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
    shows whether the model, the data or the pipeline changed. Returns the MLflow run id.
    """
    name = cfg.monitoring_experiment_name
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = f"{cfg.artifact_root}/{name}" if cfg.artifact_root else None
        try:
            exp_id = client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by another worker
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=f"monitor-{date}", tags={"date": date, **tags})
    metrics: dict[str, float] = {
        "drift_share": float(summary["drift_share"]),
        "dataset_drift": float(bool(summary["dataset_drift"])),
        "prediction_drift_score": float(summary["prediction_drift"].get("score") or 0.0),
        "rows_reference": float(summary["rows_reference"]),
        "rows_current": float(summary["rows_current"]),
    }
    for col, score in summary["column_scores"].items():
        if score.get("score") is not None:
            metrics[f"drift.{col}"] = float(score["score"])
    for side, values in (summary.get("quality") or {}).items():
        for k, v in (values or {}).items():
            if v is not None:
                metrics[f"quality.{side}.{k}"] = float(v)
    metrics.update({k: float(v) for k, v in operations.items()})
    from mlflow.entities import Metric

    stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])
    client.log_dict(run.info.run_id, dict(summary), "summary.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
