"""Task body of the registry_watch DAG: the alias watch of the library, failing the task on tampering."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow import runtime

log = logging.getLogger(__name__)


def check_aliases() -> dict[str, Any]:
    """Check champion/previous against the decision ledger; restore and fail when no decision set them."""
    from mlops_bundle import promotion, tracking

    cfg = runtime.bundle_config()
    result = promotion.watch(cfg, tracking.client(cfg))
    if result.tampered:
        log.error("%s", result.message)  # the line a notifier can hook: "ALIAS TAMPERED on <model>"
        raise AirflowFailException(result.message)
    log.info("%s: %s (champion %s)", result.model, result.message, result.found["champion"])
    return result.to_dict()
