"""The alias watch: ``champion`` and ``previous`` must be what the last decision set, or they are put back.

Anyone with write access to the registry can move an alias without the gate, the lock or the audit trail.
``watch`` (run on a schedule by the ``registry_watch`` DAG, in every deployment mode) compares both aliases
with the decision ledger (:mod:`mlops_bundle.promotion.ledger`, the log of every decision the bundle
made), under the promotion lock so it never sees a decision half-way:

* the aliases match the last applied decision: nothing to do;
* they match a decision whose attempt died after moving them (an intent without ``applied_at``): pending,
  its retry completes it; nothing to do;
* anything else: an alias no decision set. The aliases are restored to the last decided state, an audit
  record ``registry.alias_restored`` names what was found and what was restored, and the result says so
  (the DAG task then fails with that message, and logs one ERROR line a notifier can hook).

A model with no decision in the ledger yet (a deployment from before the ledger) is left alone unless its
champion lacks the gate's own record (``gate.applied`` on the version), which is reported, not restored:
there is no decided state to restore.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_bundle import tracking
from mlops_bundle.audit import record_event
from mlops_bundle.config import BundleConfig
from mlops_bundle.promotion import ledger, lock
from mlops_bundle.promotion.lock import DEFAULT_LOCK_TIMEOUT_S

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION, PREVIOUS = "champion", "previous"
OK, PENDING, RESTORED, UNDECIDED = "ok", "pending", "restored", "undecided"


@dataclass
class WatchResult:
    """What the watch found: ``status`` is ok, pending, restored or undecided (reported, not restored)."""

    model: str
    status: str
    found: dict[str, str | None]
    expected: dict[str, str | None] = field(default_factory=dict)
    decision_id: str | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def tampered(self) -> bool:
        return self.status in (RESTORED, UNDECIDED)


def _aliases(client: MlflowClient, name: str) -> dict[str, str | None]:
    return {a: tracking.alias_version(client, name, a) for a in (CHAMPION, PREVIOUS)}


def _expected(entry: dict[str, Any], found_previous: str | None) -> dict[str, str | None]:
    move = entry["move"]
    previous = move.get("previous")
    if previous is None and found_previous != move["champion"]:
        previous = found_previous  # that decision left `previous` alone (there was no old champion)
    return {CHAMPION: move["champion"], PREVIOUS: previous}


def _restore(client: MlflowClient, name: str, expected: dict[str, str | None]) -> None:
    for alias in (PREVIOUS, CHAMPION):
        version = expected[alias]
        if version is None:
            if tracking.alias_version(client, name, alias) is not None:
                client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)


def watch(
    cfg: BundleConfig,
    client: MlflowClient,
    *,
    restore: bool = True,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> WatchResult:
    """Check (and by default restore) the aliases of ``cfg.model_name`` against the decision ledger."""
    name = cfg.model_name
    book = ledger.ledger(cfg, name)
    with lock.promotion_lock(cfg, name, lock_timeout_s):
        found = _aliases(client, name)
        entries = book.entries()
        last = ledger.latest_applied(entries)
        if last is None:
            return _undecided(cfg, client, name, found)
        expected = _expected(last, found[PREVIOUS])
        decision_id = last["decision"]["decision_id"]
        if found == expected:
            return WatchResult(name, OK, found, expected, decision_id, "aliases match the last decision")
        for entry in ledger.pending(entries):
            if found[CHAMPION] == entry["move"]["champion"]:
                return WatchResult(
                    name,
                    PENDING,
                    found,
                    _expected(entry, found[PREVIOUS]),
                    entry["decision"]["decision_id"],
                    "the champion was moved by a decision whose attempt has not finished; its retry completes it",
                )
        message = (
            f"ALIAS TAMPERED on {name}: found champion={found[CHAMPION]} previous={found[PREVIOUS]}, but the "
            f"last decision ({decision_id}, {last['decision']['verdict']} at {last.get('applied_at')}) set "
            f"champion={expected[CHAMPION]} previous={expected[PREVIOUS]}; no decision moved them (someone wrote "
            "to the registry directly)"
        )
        if restore:
            _restore(client, name, expected)
            message += "; restored to the decided aliases"
        result = WatchResult(name, RESTORED if restore else UNDECIDED, found, expected, decision_id, message)
        record_event(
            cfg, "registry.alias_restored" if restore else "registry.alias_tampered",
            actor="alias-watch", subject=f"{name}/{found[CHAMPION]}", payload=result.to_dict(),
        )  # fmt: skip
        return result


def _undecided(
    cfg: BundleConfig, client: MlflowClient, name: str, found: dict[str, str | None]
) -> WatchResult:
    """No decision in the ledger: a champion the gate never recorded is reported (nothing to restore)."""
    if found[CHAMPION] is None:
        return WatchResult(name, OK, found, {}, None, "no champion and no decision yet")
    tags = client.get_model_version(name, found[CHAMPION]).tags or {}
    if tags.get("gate.applied") == "true":
        return WatchResult(
            name,
            OK,
            found,
            {},
            tags.get("gate.decision_id"),
            "champion set by a decision recorded before the ledger existed",
        )
    message = (
        f"ALIAS TAMPERED on {name}: champion={found[CHAMPION]} was not set by any decision (no ledger entry, no "
        "gate record on the version) and there is no decided champion to restore; roll back to a version the "
        "gate promoted (rollback DAG with to_version)"
    )
    result = WatchResult(name, UNDECIDED, found, {}, None, message)
    record_event(
        cfg,
        "registry.alias_tampered",
        actor="alias-watch",
        subject=f"{name}/{found[CHAMPION]}",
        payload=result.to_dict(),
    )
    return result
