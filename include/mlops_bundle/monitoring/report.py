"""The drift/quality report of one batch against the champion's reference, and where reports are stored.

* **Sampling.** Each side is sampled uniformly (seeded, so reruns give the same report) to
  ``monitoring.sample_cap`` rows: Evidently's time and memory grow with the rows, while the pinned
  distances are already accurate far below their thresholds at the default cap, so sampling does not
  change a verdict the full data would give (measurements in benchmarks/README.md).
* **Quality only with labels.** Quality (Evidently's classification or regression preset, per
  ``dataset.task``) needs the current period's labels, which usually arrive later than the batch.
  Without them the section is skipped and the result says why; with labels on part of the rows,
  quality is computed on those rows as a section of its own. Its numbers carry the training metrics'
  names (``drift.QUALITY_METRICS``).
* **Per task.** Prediction drift is on the positive-class probability (binary), the predicted label
  (multiclass, categorical) or the predicted value (regression); see ``drift.Outputs``.
* **Layout.** ``<storage.reports_prefix>/<dataset>/<date>/`` holds report.html (Evidently's
  self-contained page), report.json (Evidently's results) and summary.json (our numbers), written in
  that order so a reader that finds the summary also finds the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_bundle import names
from mlops_bundle.features import PROBA_PREFIX, proba_column
from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.monitoring import drift
from mlops_bundle.monitoring.scoring import MonitoringError, class_proba_columns, sample
from mlops_bundle.task_types import task_type

if TYPE_CHECKING:
    import pandas as pd

    from mlops_bundle.config import BundleConfig
    from mlops_bundle.storage import Storage

# The files of one report and their media types (the only names the report pages serve).
REPORT_FILES: dict[str, str] = {
    "report.html": "text/html; charset=utf-8",
    "report.json": "application/json",
    "summary.json": "application/json",
}


@dataclass
class MonitoringResult:
    """What one monitoring run found. ``summary()`` is the JSON-safe part for XCom and logs."""

    dataset_drift: bool
    # "drift", "no_drift" or "insufficient_data" (fewer than monitoring.min_rows rows on a side)
    verdict: str
    # per feature where its threshold came from ("fixed", "floor", "calibrated") and the calibration
    thresholds: dict[str, Any]
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
    # dataset.task the report was built for (binary, multiclass, regression)
    task: str = "binary"

    def summary(self) -> dict[str, Any]:
        """The key numbers, JSON-safe (no HTML, no Evidently JSON): for XCom, asset extras, alerts."""
        return json_safe(
            {
                "task": self.task,
                "dataset_drift": self.dataset_drift,
                "verdict": self.verdict,
                "thresholds": self.thresholds,
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
        verdict = {"drift": "DRIFT", "no_drift": "no drift", "insufficient_data": "INSUFFICIENT DATA"}[
            self.verdict
        ]
        cmp = ">=" if self.drift_share >= self.drift_share_threshold else "<"
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
    calibration_cache: Any = None,
) -> MonitoringResult:
    """Compare the current scored batch with the champion's reference data using Evidently.

    reference: the champion's training sample with its predictions (features, target, prediction cols).
    current: the newly scored batch (features, prediction cols; the target when labels exist).
    Both as ``score_batch`` wrote them for ``dataset.task``; ``proba_col`` is read for binary only.
    labels_available: None infers it (target column present and not all null).
    calibration_cache: a ``CalibrationCache`` of this reference (thresholds computed once per batch size).
    """
    started = time.perf_counter()
    ds = cfg.dataset
    name = ds.name
    task = task_type(ds.task)
    features = ds.feature_columns
    outputs = drift.Outputs(task, prediction_col, proba_col if task.name == "binary" else None)
    _check_frame(current, "current batch", features, outputs, name, cfg)
    _check_frame(reference, "reference (champion training sample)", features, outputs, name, cfg)
    has_labels, skip_reason = _resolve_labels(current, reference, ds.target, labels_available)

    cap = cfg.monitoring.sample_cap
    ref = sample(reference, cap, seed)
    cur = sample(current, cap, seed + 1)
    sampled = len(ref) < len(reference) or len(cur) < len(current)

    kinds, notes = drift.feature_kinds(cfg)
    scored, forced, more_notes = drift.split_scorable(ref, cur, kinds)
    notes += more_notes
    smaller = min(len(ref), len(cur))
    insufficient = smaller < cfg.monitoring.min_rows
    if insufficient:
        notes.append(
            f"insufficient data: {smaller:,} rows on the smaller side, fewer than monitoring.min_rows "
            f"({cfg.monitoring.min_rows:,}); the verdict is not 'drift' whatever the scores, and no retrain"
        )
    limits = drift.thresholds(
        ref,
        len(cur),
        scored,
        kinds,
        outputs.drift_column,
        cfg,
        calibration_cache,
        prediction_kind=outputs.drift_kind,
    )
    raised = [c for c, o in limits.origin.items() if o == "calibrated"]
    if raised:
        notes.append(
            f"thresholds raised above the pinned ones for {len(raised)} column(s) by calibration on the "
            f"reference at {limits.calibration.get('current_rows', len(cur)):,} rows per batch "
            f"(same-distribution resamples; expected false-alarm rate "
            f"{limits.calibration.get('false_alarm_rate', 0.0):.1%})"
        )

    # 0.0/1.0 labels (a null once made the column float) must compare equal to 0/1 (classification only)
    if has_labels and task.is_classification:
        ref, cur = _integral_labels(ref, ds.target), _integral_labels(cur, ds.target)
    labeled_only = has_labels and bool(cur[ds.target].isna().any())
    lab = None
    if labeled_only:
        lab = cur[cur[ds.target].notna()]
        lab = _integral_labels(lab, ds.target) if task.is_classification else lab
    undefined: dict[str, set[str]] = {}
    if has_labels and task.name == "multiclass":
        outputs, undefined, why, skip = _multiclass_quality(
            ref, cur if lab is None else lab, ds.target, features, outputs
        )
        notes.extend(why)
        if skip:
            has_labels, labeled_only, lab, skip_reason = False, False, None, skip
    if lab is not None:
        notes.append(
            f"{len(cur) - len(lab):,} of {len(cur):,} current rows lack '{ds.target}'; "
            "quality is computed on the labeled rows only"
        )
    snap = drift.run_drift(
        ref,
        cur,
        cfg,
        scored,
        kinds,
        outputs,
        limits,
        with_quality=has_labels and not labeled_only,
    )
    quality_snap = None
    if lab is not None:
        quality_snap = drift.run_quality_only(ref, lab, cfg, kinds, outputs)

    report_json = json.loads(snap.json())
    column_scores = drift.column_scores(report_json, scored, kinds)
    column_scores.update(forced)
    drifted = [c for c in features if c in column_scores and column_scores[c]["drifted"]]
    share = len(drifted) / len(column_scores) if column_scores else 0.0
    threshold = cfg.monitoring.drift_share_threshold

    quality = None
    if has_labels:
        qsnap = quality_snap or snap
        qjson = json.loads(qsnap.json()) if quality_snap is not None else report_json
        quality = drift.quality(qsnap, qjson, task.name)
        for side, names_ in undefined.items():
            for metric in names_ & set(quality.get(side, {})):
                quality[side][metric] = None
        if quality_snap is not None:
            report_json["quality_labeled_rows"] = qjson
        if task.name == "regression":
            _mape_like_training(quality, ref, cur if lab is None else lab, ds.target, notes)

    drifting = bool(column_scores) and share >= threshold
    return MonitoringResult(
        dataset_drift=drifting and not insufficient,
        verdict="insufficient_data" if insufficient else ("drift" if drifting else "no_drift"),
        thresholds={"origin": limits.origin, "calibration": limits.calibration},
        drift_share=share,
        drift_share_threshold=threshold,
        drifted_columns=drifted,
        column_scores=column_scores,
        prediction_drift=drift.prediction_drift(report_json, outputs.drift_column),
        quality=quality,
        quality_skipped_reason=skip_reason,
        rows_reference=len(reference),
        rows_current=len(current),
        sample_cap=cap,
        sampled=sampled,
        html=drift.render_html(
            snap, quality_snap, "Classification quality" if task.is_classification else "Regression quality"
        ),
        json=report_json,
        seconds=time.perf_counter() - started,
        notes=notes,
        task=task.name,
    )


def _multiclass_quality(
    ref: pd.DataFrame, cur: pd.DataFrame, target: str, features: Sequence[str], outputs: drift.Outputs
) -> tuple[drift.Outputs, dict[str, set[str]], list[str], str | None]:
    """Multiclass: what Evidently gets for quality. Returns (outputs, {side: metrics reported as None},
    notes, reason to skip quality or None).

    Evidently names a probability column by the label's text and derives the predicted label from the
    probabilities, so each stored ``proba__<label>`` column is renamed to its label's text
    (``Outputs.class_probas``). Its per-class sections fail when a class has no labeled rows on a side,
    so then the small preset is used, and roc_auc_ovr (undefined without a class's rows) is not
    reported; labels that are no class of the model make roc_auc_ovr and log_loss differ from
    training's, so those are not reported either. Without probabilities Evidently computes binary
    metrics when a side has two labels: quality is then skipped rather than misreported.
    """
    pred = outputs.prediction
    cols = class_proba_columns(ref)
    problem = None
    if not cols:
        problem = f"the reference has no per-class probability columns ({PROBA_PREFIX}<label>)"
    elif class_proba_columns(cur) != cols:
        problem = "the reference and the current batch have different per-class probability columns"
    seen: dict[str, str] = {}
    for frame in (ref, cur):
        for value in (*frame[target].dropna().unique(), *frame[pred].dropna().unique()):
            seen[proba_column(value)] = str(value)
    mapping = {c: seen.get(c, c[len(PROBA_PREFIX) :]) for c in cols}
    clash = sorted(set(mapping.values()) & {*features, pred, target})
    if problem is None and clash:
        problem = f"class labels {clash} are also column names (Evidently names probabilities by label)"
    if problem is not None:
        few = [
            side
            for side, frame in (("reference", ref), ("current", cur))
            if len(set(frame[target].dropna()) | set(frame[pred])) < 3
        ]
        if few:
            return (
                outputs,
                {},
                [],
                (
                    f"{problem}, and the {few[0]} labels and predictions hold fewer than 3 classes: "
                    "quality from the labels alone would be binary, not multiclass; rescore with score_batch"
                ),
            )
        return (
            outputs.with_class_probas({}, per_class=False),
            {},
            [f"{problem}; roc_auc_ovr and log_loss are not computed"],
            None,
        )
    undefined: dict[str, set[str]] = {}
    notes: list[str] = []
    for side, frame in (("reference", ref), ("current", cur)):
        present = {proba_column(v): str(v) for v in frame[target].dropna().unique()}
        absent = [mapping[c] for c in cols if c not in present]
        unknown = sorted(text for col, text in present.items() if col not in mapping)
        if absent:
            undefined.setdefault(side, set()).add("roc_auc_ovr")
            notes.append(
                f"classes {absent} have no rows in the {side} labels: roc_auc_ovr ({side}) is not defined "
                "and the per-class sections are left out"
            )
        if unknown:
            undefined.setdefault(side, set()).update({"roc_auc_ovr", "log_loss"})
            notes.append(
                f"labels {unknown} in the {side} '{target}' are not classes of the model: roc_auc_ovr and "
                f"log_loss ({side}) are not reported"
            )
    return outputs.with_class_probas(mapping, per_class=not notes), undefined, notes, None


def _mape_like_training(
    quality: dict[str, dict[str, float | None]],
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    target: str,
    notes: list[str],
) -> None:
    """Evidently's MAPE divides by max(target, eps), training's (scikit-learn) by max(|target|, eps): equal
    when every target is positive. Where a side has a target <= 0 its mape is dropped, not misreported."""
    for side, frame in (("current", cur), ("reference", ref)):
        values = quality.get(side)
        if values and values.get("mape") is not None and not bool((frame[target].dropna() > 0).all()):
            values["mape"] = None
            notes.append(f"mape ({side}) not reported: '{target}' has values <= 0 there")


def _check_frame(
    df: pd.DataFrame,
    what: str,
    features: Sequence[str],
    outputs: drift.Outputs,
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
    kind = {"binary": "label", "multiclass": "label", "regression": "value"}[outputs.task.name]
    needed = ([(outputs.proba, "probability")] if outputs.proba else []) + [(outputs.prediction, kind)]
    for col, role in needed:
        if col not in df.columns:
            raise MonitoringError(
                f"{what} lacks the prediction {role} column {col!r} (dataset.task "
                f"{outputs.task.name!r}); score it with mlops_bundle.monitoring.score_batch(champion, df, cfg) first"
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


# ------------------------------------------------------------------------------------- stored reports


def reports_prefix(cfg: BundleConfig, date: str) -> str:
    """The folder of one day's report of the configured data set."""
    return f"{cfg.storage.reports_prefix}/{cfg.dataset.name}/{date}"


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


def report_key(cfg: BundleConfig, dataset: str, date: str, name: str) -> str:
    """The storage key of one report file of any data set (names and dates must be valid already)."""
    from mlops_bundle.storage import join

    return join(cfg.storage.reports_prefix, dataset, date, name)


def report_dates(store: Storage, cfg: BundleConfig, dataset: str) -> list[str]:
    """The dates of ``dataset`` that hold a report.html, newest first."""
    from mlops_bundle.storage import join

    prefix = join(cfg.storage.reports_prefix, dataset)
    dates = set()
    for obj in store.list(prefix):
        parts = obj.key[len(prefix) :].strip("/").split("/")
        if len(parts) == 2 and parts[1] == "report.html" and names.DATE_RE.match(parts[0]):
            dates.add(parts[0])
    return sorted(dates, reverse=True)
