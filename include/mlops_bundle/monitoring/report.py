"""The drift/quality report of one batch against the champion's reference, and where reports are stored.

* **Sampling.** Each side is sampled uniformly (seeded, so reruns give the same report) to
  ``monitoring.sample_cap`` rows: Evidently's time and memory grow with the rows, while the pinned
  distances are already accurate far below their thresholds at the default cap, so sampling does not
  change a verdict the full data would give (measurements in benchmarks/README.md).
* **Quality only with labels.** Classification quality needs the current period's labels, which
  usually arrive later than the batch. Without them the section is skipped and the result says why;
  with labels on part of the rows, quality is computed on those rows as a section of its own.
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
from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.monitoring import drift
from mlops_bundle.monitoring.scoring import MonitoringError, sample

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

    def summary(self) -> dict[str, Any]:
        """The key numbers, JSON-safe (no HTML, no Evidently JSON): for XCom, asset extras, alerts."""
        return json_safe(
            {
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
    labels_available: None infers it (target column present and not all null).
    calibration_cache: a ``CalibrationCache`` of this reference (thresholds computed once per batch size).
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
    limits = drift.thresholds(ref, len(cur), scored, kinds, proba_col, cfg, calibration_cache)
    raised = [c for c, o in limits.origin.items() if o == "calibrated"]
    if raised:
        notes.append(
            f"thresholds raised above the pinned ones for {len(raised)} column(s) by calibration on the "
            f"reference at {limits.calibration.get('current_rows', len(cur)):,} rows per batch "
            f"(same-distribution resamples; expected false-alarm rate "
            f"{limits.calibration.get('false_alarm_rate', 0.0):.1%})"
        )

    if has_labels:  # 0.0/1.0 labels (a null once made the column float) must compare equal to 0/1
        ref, cur = _integral_labels(ref, ds.target), _integral_labels(cur, ds.target)
    labeled_only = has_labels and bool(cur[ds.target].isna().any())
    snap = drift.run_drift(
        ref,
        cur,
        cfg,
        scored,
        kinds,
        prediction_col,
        proba_col,
        limits,
        with_quality=has_labels and not labeled_only,
    )
    quality_snap = None
    if labeled_only:
        lab = _integral_labels(cur[cur[ds.target].notna()], ds.target)
        notes.append(
            f"{len(cur) - len(lab):,} of {len(cur):,} current rows lack '{ds.target}'; "
            "quality is computed on the labeled rows only"
        )
        quality_snap = drift.run_quality_only(ref, lab, cfg, kinds, prediction_col, proba_col)

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
        quality = drift.quality(qsnap, qjson)
        if quality_snap is not None:
            report_json["quality_labeled_rows"] = qjson

    drifting = bool(column_scores) and share >= threshold
    return MonitoringResult(
        dataset_drift=drifting and not insufficient,
        verdict="insufficient_data" if insufficient else ("drift" if drifting else "no_drift"),
        thresholds={"origin": limits.origin, "calibration": limits.calibration},
        drift_share=share,
        drift_share_threshold=threshold,
        drifted_columns=drifted,
        column_scores=column_scores,
        prediction_drift=drift.prediction_drift(report_json, proba_col),
        quality=quality,
        quality_skipped_reason=skip_reason,
        rows_reference=len(reference),
        rows_current=len(current),
        sample_cap=cap,
        sampled=sampled,
        html=drift.render_html(snap, quality_snap),
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
    for col, kind in ((proba_col, "probability"), (prediction_col, "label")):
        if col not in df.columns:
            raise MonitoringError(
                f"{what} lacks the prediction {kind} column {col!r}; score it with "
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


def report_datasets(store: Storage, cfg: BundleConfig) -> list[str]:
    """The data sets that have at least one report, sorted."""
    prefix = cfg.storage.reports_prefix
    found = set()
    for obj in store.list(prefix):
        parts = obj.key[len(prefix) :].strip("/").split("/")
        if len(parts) > 1 and names.DATASET_NAME_RE.match(parts[0]):
            found.add(parts[0])
    return sorted(found)


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
