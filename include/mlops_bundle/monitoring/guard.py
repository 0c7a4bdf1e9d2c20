"""The guard that turns drift into a retrain, and the history it keeps of drift-triggered retrains.

Drift may trigger retraining, but not again within ``monitoring.cooldown_hours`` (the new champion needs
time to be judged) and not more than ``monitoring.max_retrains_per_day`` times per UTC day. Only
validated partitions are monitored, so a batch the data gate (GX) rejected never reaches the guard.

The history of drift-triggered retrains is a small JSON file in the store. ``decide_retrain`` reads it,
decides and appends under one lock, and records the caller's decision key (the run): a run starts at most
one drift-triggered retrain, so a retried or cleared task never emits a second one or slips past the
cooldown. The price: an attempt that recorded the retrain and then died before its event was emitted
leaves a reason in the log and no retrain (trigger train by hand).

A record is written ``"status": "pending"``; the train run that consumes the drift event marks it
``"started"`` (:func:`mark_started`). Only started retrains count against the cooldown and the daily
maximum: a retrain that never starts (train paused, the run never created) does not use them up, so
a later drift verdict may trigger again. A pending trigger holds the next one back for ``PENDING_GRACE``
(one hour) while its run may still be starting, so repeated monitor runs cannot queue a retrain each.
Records from before this rule have no status and count as started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.locks import file_lock
from mlops_bundle.monitoring.report import MonitoringResult
from mlops_bundle.monitoring.scoring import MonitoringError

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig
    from mlops_bundle.storage import Storage

HISTORY_KEEP = 500  # retrain history records kept (the guard only needs the last day)
PENDING, STARTED = "pending", "started"
# A pending trigger younger than this holds the next one back (its train run may still be starting: repeated
# monitor runs must not queue a retrain each); older and still not started, it no longer counts at all.
PENDING_GRACE = dt.timedelta(hours=1)
# What a history record keeps of the day's drift result (besides when, and the decision key).
RECORD_FIELDS = ("date", "drift_share", "drifted_columns", "champion_version", "report_html")


@dataclass(frozen=True)
class RetrainVerdict:
    """Whether drift starts a retrain; ``reason`` names the deciding rule, ``record`` is what was logged."""

    retrain: bool
    reason: str
    record: dict[str, Any] = field(default_factory=dict)


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
) -> tuple[bool, str]:
    """Decide whether this drift verdict may trigger a retrain; the reason names the deciding rule.

    Rules in order: too few rows -> no; no dataset drift -> no; the last drift-triggered retrain that
    started is younger than ``cooldown_hours`` -> no; ``max_retrains_per_day`` started retrains already in
    this UTC day -> no; otherwise yes. ``history`` holds previous drift triggers as ``{"at": iso,
    "status": "pending"|"started", "started_at": iso}``; pending ones (never started) do not count.
    """
    summary = result_summary.summary() if isinstance(result_summary, MonitoringResult) else result_summary
    mon = cfg.monitoring
    share = float(summary.get("drift_share", 0.0))
    threshold = float(summary.get("drift_share_threshold", mon.drift_share_threshold))
    if summary.get("verdict") == "insufficient_data":
        return False, (
            f"insufficient data: fewer than monitoring.min_rows ({mon.min_rows}) rows on a side, "
            "so the drift verdict cannot be trusted"
        )
    if not summary.get("dataset_drift"):
        return False, f"no dataset drift: drift share {share:.2f} < threshold {threshold:.2f}"
    now = _parse_at(now, "now")
    waiting = [
        _parse_at(r.get("at"), f"retrain history record #{i}")
        for i, r in enumerate(history)
        if r.get("status") == PENDING
    ]
    waiting = [t for t in waiting if now - PENDING_GRACE <= t <= now]
    if waiting:
        return False, (
            f"a drift-triggered retrain from {max(waiting).isoformat()} has not started yet: waiting up to "
            f"{PENDING_GRACE.total_seconds() / 3600:g} h for it before triggering again"
        )
    times = sorted(
        _parse_at(r.get("started_at") or r.get("at"), f"retrain history record #{i}")
        for i, r in enumerate(history)
        if r.get("status", STARTED) == STARTED
    )
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


def decide_retrain(
    cfg: BundleConfig,
    store: Storage,
    result: Mapping[str, Any],
    now: dt.datetime,
    *,
    decision_key: str | None = None,
) -> RetrainVerdict:
    """Apply the guard to a day's drift result and, when it says yes, record the retrain in the history.

    ``result`` is the day's report summary (``dataset_drift``, ``drift_share``... plus the
    RECORD_FIELDS). ``decision_key`` identifies one decision across retries (e.g. the orchestrator's run
    id): when the history already holds a record with that key, this run has decided already and the
    answer is no, so clearing or retrying the task never starts a second retrain (nor bypasses the
    cooldown). The reason says so and names the earlier record.
    """
    key = history_key(cfg)
    with _history_lock(store, key):
        history = load_history(store, key)
        if decision_key is not None:
            for rec in reversed(history):
                if rec.get("decision_key") == decision_key:
                    return RetrainVerdict(
                        False,
                        f"this run already started a drift-triggered retrain at {rec.get('at')} "
                        f"({rec.get('reason', 'drift')}); a retry or a cleared task does not start another "
                        "(trigger train by hand if that retrain never ran)",
                    )
        go, reason = should_trigger_retrain(result, history, now, cfg)
        if not go:
            return RetrainVerdict(False, reason)
        record = json_safe(
            {
                "at": _parse_at(now, "now").isoformat(),
                **{f: result.get(f) for f in RECORD_FIELDS},
                "reason": reason,
                "decision_key": decision_key,
                "status": PENDING,
            }
        )
        _write_history(store, key, [*history, record])
    return RetrainVerdict(True, reason, record)


def mark_started(
    cfg: BundleConfig, store: Storage, decision_keys: Sequence[str], train_run: str, now: dt.datetime
) -> list[str]:
    """Mark the drift triggers with these decision keys (the monitor runs whose events a train run
    consumed) as started by ``train_run``; from then on they count against the cooldown. Idempotent:
    a retry keeps the first start. Returns the keys marked now (unknown keys are ignored)."""
    wanted = set(decision_keys)
    if not wanted:
        return []
    key = history_key(cfg)
    with _history_lock(store, key):
        history = load_history(store, key)
        marked = []
        for rec in history:
            if rec.get("decision_key") in wanted and rec.get("status") == PENDING:
                rec.update(status=STARTED, started_at=_parse_at(now, "now").isoformat(), train_run=train_run)
                marked.append(rec["decision_key"])
        if marked:
            _write_history(store, key, history)
    return marked


# --------------------------------------------------------------------------------------------- history


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


def _write_history(store: Storage, key: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last HISTORY_KEEP records; the write is atomic on both backends (no half files)."""
    records = records[-HISTORY_KEEP:]
    store.write_bytes(key, json.dumps({"records": records}, indent=1).encode("utf-8"))
    return records


def append_history(store: Storage, key: str, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append one record (needs an ISO ``at``) and return the new history.

    Read-modify-write under a file lock for local stores, so concurrent appends are not lost.
    """
    rec = json_safe(dict(record))
    rec["at"] = _parse_at(rec.get("at"), "record to append").isoformat()
    with _history_lock(store, key):
        return _write_history(store, key, [*load_history(store, key), rec])
