"""Task bodies of the backfill DAG: ingest a date range with training held, then one train run on it.

Why a DAG of its own rather than N ingest runs: every ingest run that succeeds publishes a
``validated_data`` event, and each event may start a train run on a partial window (14 days loaded at
once gave 9 train runs, 7 failing on too few rows). The backfill's tasks call the same ingest code but
have no outlets, so nothing reaches training until the whole range is in; then one train run is
triggered on exactly that window (asset events would not queue a run for a paused train DAG anyway).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow import runtime

log = logging.getLogger(__name__)

# the longest range one backfill run takes (a year of daily batches); longer: several runs
MAX_DAYS = 366


def plan(params: dict) -> list[str]:
    """The dates of the range, oldest first; fail (no retry) on a bad or too long range."""
    from mlops_bundle.names import parse_date

    try:
        start, end = parse_date(params.get("start_date")), parse_date(params.get("end_date"))
    except ValueError as exc:
        raise AirflowFailException(f"start_date/end_date: {exc}") from None
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    days = (last - first).days + 1
    if days < 1:
        raise AirflowFailException(f"start_date {start} is after end_date {end}: swap them")
    if days > MAX_DAYS:
        raise AirflowFailException(
            f"{start}..{end} is {days} days; one backfill takes at most {MAX_DAYS}: split the range"
        )
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(days)]


def ingest_day(date: str, run_id: str, try_number: int | None, ti: Any = None) -> dict[str, Any]:
    """One day of the range through the ingest DAG's own code (discover, GX gate, stage or quarantine)."""
    from mlops_airflow import ingest_tasks

    batch = ingest_tasks.discover({"date": date}, None, None)
    # staged, not published: summarize hands the whole range to one train run
    return ingest_tasks.validate_and_stage(batch, run_id, try_number, ti, publish=False)


def summarize(dates: list[str], params: dict, dag_run: Any, ti: Any = None) -> dict[str, Any]:
    """Which days of the range are validated now, which are not, and the conf of the one train run.

    The staging partitions are the truth (a day's task may have been skipped as unchanged: its partition
    is there all the same). Days without one are named with the reason to look for (their task's log).
    Recorded as the audit event ``backfill.summary``; skips the training trigger when nothing is
    validated or training was not asked for.
    """
    from mlops_bundle.audit import record_event
    from mlops_bundle.ingest import mark_published, read_manifest, validated_dates

    cfg = runtime.bundle_config()
    store = runtime.storage(cfg)
    present = set(validated_dates(store, cfg))
    validated = [d for d in dates if d in present]
    missing = [d for d in dates if d not in present]
    summary = {
        "dataset": cfg.dataset.name,
        "start_date": dates[0],
        "end_date": dates[-1],
        "days": len(dates),
        "validated": validated,
        "missing": missing,
        "train": bool(params.get("train", True)),
    }
    if missing:
        log.warning(
            "%d day(s) of %s..%s have no validated partition (no landing files, or quarantined: see the "
            "ingest_day log of each): %s",
            len(missing),
            dates[0],
            dates[-1],
            ", ".join(missing),
        )
    record_event(
        cfg,
        "backfill.summary",
        actor=_actor(dag_run),
        subject=f"{cfg.dataset.name}/{dates[0]}..{dates[-1]}",
        payload={**summary, "run_id": dag_run.run_id},
        once=f"backfill.summary/{dag_run.dag_id}/{dag_run.run_id}",
    )
    if not summary["train"]:
        raise runtime.skip(ti, "train=false: the range is ingested, training was not asked for")
    if not validated:
        raise runtime.skip(ti, f"no day of {dates[0]}..{dates[-1]} is validated: nothing to train on")
    # the one train run about to start covers these days: they are handed to training (an ingest of the
    # same content later publishes nothing new); held days (train=false) stay unpublished
    me = f"{dag_run.dag_id}/{dag_run.run_id}"
    for day in validated:
        manifest = read_manifest(store, cfg, day) or {}
        mark_published(store, cfg, day, manifest.get("fingerprint", ""), me)
    # the window is the whole range (train's window ends at end_date and spans window_days days)
    return {"end_date": dates[-1], "window_days": len(dates)}


def _actor(dag_run: Any) -> str:
    from mlops_airflow.train_tasks import actor

    return actor(dag_run)
