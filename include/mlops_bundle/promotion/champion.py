"""Moving the ``champion`` alias: ``gate`` (challenger vs champion, then promote or reject), ``rollback``
and ``champion_info``; the MLflow glue around the pure policy.

Both writers run inside ``promotion_lock`` and re-read the champion alias there, so two runs finishing
together never both promote against a stale champion. A decision is written to the decision ledger
(:mod:`mlops_bundle.promotion.ledger`) as an intent before any alias moves, and every attempt with the
same decision key completes that one decision: one record (:mod:`mlops_bundle.promotion.records`), one
audit record, one alias move, whatever retries, failed writes and killed workers do.

Aliases: ``champion`` (what scoring uses) and ``previous`` (the champion it replaced; the default
rollback target). Alias lookups go through ``tracking.alias_version`` (str versions, None when absent).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from mlops_bundle import tracking
from mlops_bundle.audit import record_decision
from mlops_bundle.config import BundleConfig
from mlops_bundle.promotion import ledger, lock
from mlops_bundle.promotion.lock import DEFAULT_LOCK_TIMEOUT_S
from mlops_bundle.promotion.policy import (
    MIN_JUSTIFICATION,
    NOOP,
    PROMOTE,
    ROLLBACK,
    GateError,
    GatePolicy,
    approval_rules,
    approval_verdict,
    decide,
)
from mlops_bundle.promotion.records import DECISION, EVALUATION, Decision, tag_metrics, write_record

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
MIN_ROLLBACK_REASON = 10


def _get_version(client: MlflowClient, model_name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, version)
    except MlflowException as exc:
        if tracking.error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise GateError(
                f"registered model {model_name!r} has no version {version}: check the version number "
                f"(MLflow UI -> Models -> {model_name}) or register the model first"
            ) from None
        raise


def _check_provenance(cfg: BundleConfig, client: MlflowClient, name: str, version: str) -> None:
    """Refuse to make a version the champion unless the bundle registered it (its provenance signature
    checks out against its model file); nothing is deserialized."""
    from mlops_bundle.provenance import ProvenanceError
    from mlops_bundle.training.loading import checked_version

    try:
        with checked_version(cfg, f"models:/{name}/{version}", client):
            pass
    except ProvenanceError as exc:
        raise GateError(f"cannot make version {version} the champion: {exc}") from None


def _normalize_version(version: str | int) -> str:
    text = str(version).strip()
    if not text.isdigit():
        raise GateError(f"model version must be a positive integer like '3', got {version!r}")
    return str(int(text))


def _require_text(value: str | None, what: str, minimum: int = 1) -> str:
    text = " ".join((value or "").split())
    if len(text) < minimum:
        need = "must not be empty" if minimum <= 1 else f"needs at least {minimum} characters"
        raise GateError(f"{what} {need} (got {value!r})")
    return text


def _as_metrics(raw: Any, uri: str) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise GateError(f"the scoring function returned {type(raw).__name__} for {uri}; expected a dict")
    out: dict[str, float] = {}
    for key, value in raw.items():
        with contextlib.suppress(TypeError, ValueError):
            out[str(key)] = float(value)
    return out


def _score_champion(
    score: Callable[[str], Mapping[str, float]], uri: str, version: str, force: bool
) -> tuple[dict[str, float], str | None]:
    """Champion metrics on the challenger's holdout; with force a scoring failure becomes a note."""
    try:
        return _as_metrics(score(uri), uri), None
    except Exception as exc:
        if not force:
            raise GateError(
                f"scoring the champion {uri} failed ({type(exc).__name__}: {exc}); the champion is "
                f"untouched. If it can no longer be scored on this holdout (e.g. the schema changed), "
                f"promote with force=True and a justification, or roll back"
            ) from exc
        return {}, f"champion version {version} could not be scored: {type(exc).__name__}: {exc}"


def _finish(
    cfg: BundleConfig,
    client: MlflowClient,
    entry: dict[str, Any],
    book: ledger.Ledger,
) -> Decision:
    """Complete one decision from its intent: move the aliases (unless done), write the record, audit it.

    Every step is idempotent, so any attempt may run this again: the aliases are compared with the
    intent's target and the champion it expected to replace; the record's artifact path and tags follow
    from the decision; the audit append is once per decision id.
    """
    decision = Decision.from_dict(entry["decision"])
    move = entry.get("move")
    name, subject_version = decision.model_name, decision.challenger["version"]
    if move:
        current = tracking.alias_version(client, name, CHAMPION_ALIAS)
        if current == move["champion"]:
            applied = True  # an earlier attempt moved it (maybe without getting to the previous alias below)
            if (
                move.get("previous")
                and tracking.alias_version(client, name, PREVIOUS_ALIAS) != move["previous"]
            ):
                client.set_registered_model_alias(name, PREVIOUS_ALIAS, move["previous"])
        elif current == move.get("replaces"):
            if move.get("previous"):
                client.set_registered_model_alias(name, PREVIOUS_ALIAS, move["previous"])
            elif tracking.alias_version(client, name, PREVIOUS_ALIAS) == move["champion"]:
                client.delete_registered_model_alias(name, PREVIOUS_ALIAS)
            client.set_registered_model_alias(name, CHAMPION_ALIAS, move["champion"])
            applied = True
        else:
            # a later decision moved the champion between this decision's attempts
            applied = bool(entry.get("applied_at"))
            if not applied:
                decision.reason = (
                    f"{decision.reason} [not applied: the champion became version {current or '(none)'} by "
                    "another decision before this one could move it; trigger a new run to decide again]"
                )
        if applied:
            book.mark(decision.decision_id, "applied_at")
        decision.applied = applied
    subject = _get_version(client, name, subject_version)
    write_record(client, decision, subject, move.get("replaces") if move else None)
    record_decision(cfg, decision)  # audit trail, once per decision id; raises if it cannot be written
    book.mark(decision.decision_id, "completed_at")
    return decision


def _decide_once(
    cfg: BundleConfig,
    client: MlflowClient,
    decision_key: str | None,
    lock_timeout_s: float,
    make: Callable[[], tuple[Decision, dict[str, Any] | None]] | None,
) -> Decision:
    """Under the promotion lock: complete the stored intent of ``decision_key`` if there is one, else
    ``make()`` the decision and its alias move, write them as the intent, then complete them.

    Every decision is written to the ledger (it is also the log the alias watch checks the registry
    against). Without a key the decision gets a fresh id: each call decides anew (library use outside
    Airflow; a retry of such a call is not protected).
    """
    name = cfg.model_name
    book = ledger.ledger(cfg, name)
    with lock.promotion_lock(cfg, name, lock_timeout_s):
        if decision_key:
            did = ledger.decision_id(name, decision_key)
            stored = book.get(did)
            if stored is not None:
                return _finish(cfg, client, stored, book)
        if make is None:
            raise GateError(
                f"the intent of decision {decision_key!r} vanished from the decision ledger ({book.where()}); "
                "nothing was changed, trigger a new run"
            )
        decision, move = make()
        if decision_key:
            decision.decision_id = did
        entry = {"decision": decision.to_dict(), "move": move, "key": decision_key}
        book.create(decision.decision_id, entry)
        return _finish(cfg, client, entry, book)


def gate(
    cfg: BundleConfig,
    client: MlflowClient,
    *,
    challenger_version: str | int,
    score: Callable[[str], Mapping[str, float]],
    actor: str,
    context: Mapping[str, Any] | None = None,
    force: bool = False,
    justification: str | None = None,
    apply: bool = True,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    decision_key: str | None = None,
    triggered_by: str | None = None,
    approved_by: str | None = None,
) -> Decision:
    """Race-safe gate + promotion of one registered version; one decision per ``decision_key``.

    The challenger is scored before taking the lock (its metrics do not depend on the champion). Inside
    ``promotion_lock`` the champion alias is re-read, so a champion promoted meanwhile by another run is
    the one compared against; then ``decide`` and the approval rules (``approval_verdict``: a promotion
    that needs an approval stands only with one, by a second person where four eyes apply); the decision
    and the alias move it implies are written to the decision ledger as an intent, then completed (on
    ``promote`` with ``apply`` the ``previous`` alias moves to the old champion and ``champion`` to the
    challenger). A retry with the same ``decision_key`` completes the stored decision instead of deciding
    again. ``apply=False`` records an *evaluation* (what the gate would do before a human approval;
    ``kind="evaluation"``), never a decision. ``score(model_uri) -> metrics`` must evaluate on the
    challenger's holdout.
    """
    name = cfg.model_name
    policy = GatePolicy.from_config(cfg)
    actor = _require_text(actor, "actor (who or what runs the gate)")
    if force:
        justification = _require_text(justification, "force=True justification", MIN_JUSTIFICATION)
    version = _normalize_version(challenger_version)
    if decision_key:
        stored = ledger.ledger(cfg, name).get(ledger.decision_id(name, decision_key))
        if stored is not None:  # a retry: no scoring, complete what was decided
            return _decide_once(cfg, client, decision_key, lock_timeout_s, None)
    subject = _get_version(client, name, version)
    challenger_uri = f"models:/{name}/{version}"
    try:
        challenger_metrics = _as_metrics(score(challenger_uri), challenger_uri)
    except GateError:
        raise
    except Exception as exc:
        raise GateError(
            f"scoring the challenger {challenger_uri} failed ({type(exc).__name__}: {exc}); nothing was "
            f"promoted"
        ) from exc
    challenger = {"version": version, "run_id": subject.run_id, "metrics": challenger_metrics}
    common = {
        "model_name": name,
        "policy": policy.to_dict(),
        "actor": actor,
        "context": dict(context or {}),
        "forced": force,
        "justification": justification,
        "kind": DECISION if apply else EVALUATION,
        "triggered_by": triggered_by,
        "approved_by": approved_by if apply else None,
    }

    def make() -> tuple[Decision, dict[str, Any] | None]:
        current = tracking.alias_version(client, name, CHAMPION_ALIAS)
        if current == version:
            decision = Decision(
                verdict=NOOP,
                reason=f"version {version} is already the champion; nothing changed",
                challenger=challenger,
                champion={"version": current, "metrics": challenger_metrics},
                previous_champion=current,
                **common,
            )
            return decision, None
        champion: dict[str, Any] | None = None
        note = None
        if current is not None:
            metrics, note = _score_champion(score, f"models:/{name}/{current}", current, force)
            champion = {"version": current, "metrics": metrics}
        verdict, reason = decide(
            challenger_metrics,
            None if champion is None else champion["metrics"],
            policy,
            force=force,
            justification=justification,
        )
        if current is not None:
            reason = f"vs champion version {current}: {reason}"
        if note:
            reason = f"{reason} [{note}]"
        if apply:
            needed, second_person = approval_rules(cfg, force)
            verdict, reason = approval_verdict(
                verdict,
                reason,
                approval_needed=needed,
                second_person=second_person,
                triggered_by=triggered_by,
                approved_by=approved_by,
            )
        else:
            reason = f"evaluation before approval, not a decision: {reason}"
        decision = Decision(
            verdict=verdict,
            reason=reason,
            challenger=challenger,
            champion=champion,
            previous_champion=current,
            **common,
        )
        move = None
        if verdict == PROMOTE and apply:
            _check_provenance(cfg, client, name, version)  # never make an unsigned version the champion
            move = {"champion": version, "previous": current, "replaces": current}
        return decision, move

    return _decide_once(cfg, client, decision_key, lock_timeout_s, make)


def rollback(
    cfg: BundleConfig,
    client: MlflowClient,
    *,
    reason: str,
    actor: str,
    to_version: str | int | None = None,
    context: Mapping[str, Any] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    decision_key: str | None = None,
    triggered_by: str | None = None,
) -> Decision:
    """Point ``champion`` back to ``to_version`` (default: the ``previous`` alias), under the same lock.

    The target is fixed once, when the intent is written (``to_version``, else the ``previous`` alias read
    then); a retry with the same ``decision_key`` uses that stored target and never reads ``previous``
    again (which by then names the version this rollback removed). The replaced champion becomes
    ``previous``, so a rollback can itself be undone, but only on purpose: a default rollback of a champion
    that a rollback set is refused (it would restore the version that rollback removed, e.g. a second
    click or a second concurrent run); pass ``to_version`` for that. Records a ``rollback`` decision on
    the target version's run and tags.
    """
    name = cfg.model_name
    reason = _require_text(reason, "rollback reason", MIN_ROLLBACK_REASON)
    actor = _require_text(actor, "actor (who or what runs the rollback)")
    wanted = None if to_version is None else _normalize_version(to_version)

    def make() -> tuple[Decision, dict[str, Any] | None]:
        current = tracking.alias_version(client, name, CHAMPION_ALIAS)
        old = _get_version(client, name, current) if current is not None else None
        if wanted is None:
            target = tracking.alias_version(client, name, PREVIOUS_ALIAS)
            if target is None:
                raise GateError(
                    f"no previous champion to roll back to for {name!r}; pass to_version=<version>"
                )
            tags = (old.tags or {}) if old is not None else {}
            if tags.get("gate.verdict") == ROLLBACK and tags.get("gate.applied") == "true":
                raise GateError(
                    f"the champion of {name!r} (version {current}) was set by rollback "
                    f"{tags.get('gate.decision_id')} at {tags.get('gate.decided_at')}; rolling back again "
                    f"would restore version {target}, which that rollback removed. If that is what you "
                    f"want, pass to_version={target}"
                )
        else:
            target = wanted
        subject = _get_version(client, name, target)
        if target == current:
            raise GateError(f"version {target} of {name!r} already is the champion; nothing to roll back")
        _check_provenance(cfg, client, name, target)
        decision = Decision(
            model_name=name,
            verdict=ROLLBACK,
            reason=f"rolled back from version {current or '(none)'} to version {target}: {reason}",
            challenger={"version": target, "run_id": subject.run_id, "metrics": tag_metrics(subject)},
            champion=None if old is None else {"version": current, "metrics": tag_metrics(old)},
            policy=GatePolicy.from_config(cfg).to_dict(),
            actor=actor,
            context=dict(context or {}),
            justification=reason,
            previous_champion=current,
            triggered_by=triggered_by,
        )
        return decision, {"champion": target, "previous": current, "replaces": current}

    return _decide_once(cfg, client, decision_key, lock_timeout_s, make)


def champion_info(cfg: BundleConfig, client: MlflowClient) -> dict[str, Any] | None:
    """The current champion for summaries and UIs; None when there is none yet.

    Metrics come from the ``gate.metrics`` tag (what the gate compared on), else from the training run.
    """
    name = cfg.model_name
    version = tracking.alias_version(client, name, CHAMPION_ALIAS)
    if version is None:
        return None
    mv = client.get_model_version(name, version)
    metrics = tag_metrics(mv)
    if not metrics and mv.run_id:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):
            metrics = dict(client.get_run(mv.run_id).data.metrics)
    tags = mv.tags or {}
    return {
        "model": name,
        "version": version,
        "run_id": mv.run_id,
        "metrics": metrics,
        "aliases": sorted(mv.aliases or []),
        "previous": tracking.alias_version(client, name, PREVIOUS_ALIAS),
        "promoted_at": tags.get("promoted_at"),
        "decision_id": tags.get("gate.decision_id"),
        "reason": tags.get("gate.reason"),
    }
