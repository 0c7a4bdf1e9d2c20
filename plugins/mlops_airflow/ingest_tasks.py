"""Task bodies of the ingest DAG: Airflow context in, library call, small JSON-safe value out."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow import runtime

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

log = logging.getLogger(__name__)


def _allowed_source(cfg: BundleConfig, requested: str | None) -> str | None:
    """The canonical URI of a `source` override, checked against ingest.allowed_sources before any store
    is built or listed; fail without retry (the message names the allowlist, never the requested path)."""
    from mlops_bundle import ingest

    if not requested:
        return None
    try:
        return ingest.check_source(cfg, requested)
    except ingest.SourceNotAllowed as exc:
        raise AirflowFailException(str(exc)) from None


def discover(params: dict, logical_date, run_after) -> dict[str, Any]:
    """List the landing files of the run's batch; fail fast (no retry) when there are none.

    A `source` override is checked against the allowlist first: whoever may trigger the DAG sets it.
    """
    from mlops_bundle import ingest

    cfg = runtime.bundle_config()
    source_uri = _allowed_source(cfg, params.get("source"))
    try:
        date = runtime.batch_date(params.get("date"), logical_date, run_after)
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    source = runtime.storage(cfg, source_uri)
    prefix = "" if source_uri else ingest.landing_prefix(cfg, date)
    try:
        files = ingest.discover(source, prefix, cfg.ingest.file_patterns)
    except ingest.NoLandingFiles as exc:
        raise AirflowFailException(f"{cfg.dataset.name}/{date}: {exc}") from None
    log.info("batch %s/%s: %d file(s) under %s", cfg.dataset.name, date, len(files), source.uri(prefix))
    return {
        "dataset": cfg.dataset.name,
        "date": date,
        "source": source_uri,
        "prefix": prefix,
        "files": [{"key": f.key, "size": f.size} for f in files],
    }


def validate_and_stage(
    batch: dict, run_id: str, try_number: int | None, ti: Any = None, *, publish: bool = True
) -> dict[str, Any]:
    """Read, coerce, fingerprint, GX-check and stage (or quarantine) the discovered batch.

    The rule for what reaches training (README, "From validated batch to training"): a batch whose
    content no run has handed to training yet is published: the manifest records this run as its
    publisher and the task succeeds, which emits the ``validated_data`` event. A batch identical to what
    another run already published changes nothing, so the task ends *skipped* (no event, no train run)
    with the reason in the log, the XCom ``skip_reason`` and the audit record ``ingest.unchanged``. A retry
    of the publishing run publishes again (its first attempt may have died before the event was sent);
    content staged but never published (a backfill that held training) is published by the next ingest.
    ``publish=False`` (the backfill DAG) stages without publishing.
    """
    from mlops_bundle import ingest
    from mlops_bundle.storage import ObjectInfo

    cfg = runtime.bundle_config()
    me = f"{ti.dag_id}/{run_id}" if ti is not None else run_id
    # defence in depth: the hand-over from discover_files is re-checked, not trusted
    source_uri = _allowed_source(cfg, batch.get("source"))
    try:
        date = ingest.parse_date(batch["date"])
        prefix = "" if source_uri else ingest.landing_prefix(cfg, date)
        ingest.check_keys(prefix, [f["key"] for f in batch["files"]])
    except ValueError as exc:
        raise AirflowFailException(str(exc)) from None
    store = runtime.storage(cfg)
    source = runtime.storage(cfg, source_uri) if source_uri else store
    try:
        result = ingest.ingest_batch(
            cfg,
            date,
            store,
            source=source,
            source_prefix=prefix,
            files=[ObjectInfo(f["key"], f["size"]) for f in batch["files"]],
            attempt=runtime.attempt_label(run_id, try_number),
            staged_by=me,
        )
    except ingest.BatchRejected as exc:
        # bad data does not get better by retrying: fail now, with the whole explanation
        raise AirflowFailException(str(exc)) from None
    if result.data_docs_url:
        log.info("Data Docs: %s", result.data_docs_url)
    if result.unchanged and result.published_by not in (None, me):
        _unchanged(cfg, result, me, ti)
    if publish:
        ingest.mark_published(store, cfg, result.date, result.fingerprint, me)
    return result.to_xcom()


def _unchanged(cfg: BundleConfig, result: Any, me: str, ti: Any) -> None:
    """Record why an identical re-ingest publishes nothing, then end the task skipped (no asset event)."""
    from mlops_bundle.audit import record_event

    reason = (
        f"batch {result.dataset}/{result.date} is identical to the staged partition (fingerprint "
        f"{result.fingerprint[:19]}...), which {result.published_by} already handed to training: nothing "
        "new to train on, no validated_data event"
    )
    record_event(
        cfg,
        "ingest.unchanged",
        actor="ingest",
        subject=f"{result.dataset}/{result.date}",
        payload={
            "run": me,
            "published_by": result.published_by,
            "staged_by": result.staged_by,
            "fingerprint": result.fingerprint,
        },
        once=f"ingest.unchanged/{result.dataset}/{result.date}/{result.fingerprint}/{me}",
    )
    raise runtime.skip(ti, reason)
