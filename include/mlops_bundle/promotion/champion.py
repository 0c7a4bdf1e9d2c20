"""Moving the ``champion`` alias: ``gate`` (challenger vs champion, then promote or reject), ``rollback``
and ``champion_info``; the MLflow glue around the pure policy.

Both writers run inside ``promotion_lock`` and re-read the champion alias there, so two runs finishing
together never both promote against a stale champion. Each call records exactly one decision
(:mod:`mlops_bundle.promotion.records`) and audits it.

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
from mlops_bundle.promotion import lock
from mlops_bundle.promotion.lock import DEFAULT_LOCK_TIMEOUT_S
from mlops_bundle.promotion.policy import (
    MIN_JUSTIFICATION,
    NOOP,
    PROMOTE,
    ROLLBACK,
    GateError,
    GatePolicy,
    decide,
)
from mlops_bundle.promotion.records import Decision, tag_metrics, write_record

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
) -> Decision:
    """Race-safe gate + promotion of one registered version; records exactly one decision per call.

    The challenger is scored before taking the lock (its metrics do not depend on the champion). Inside
    ``promotion_lock`` the champion alias is re-read, so a champion promoted meanwhile by another run is
    the one compared against; then ``decide``; on ``promote`` with ``apply`` the ``previous`` alias moves
    to the old champion and ``champion`` to the challenger. ``apply=False`` records the verdict with
    ``applied=False`` (before a human approval); the later ``apply=True`` call decides again.
    ``score(model_uri) -> metrics`` must evaluate on the challenger's holdout.
    """
    name = cfg.model_name
    policy = GatePolicy.from_config(cfg)
    actor = _require_text(actor, "actor (who or what runs the gate)")
    if force:
        justification = _require_text(justification, "force=True justification", MIN_JUSTIFICATION)
    version = _normalize_version(challenger_version)
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
    }

    with lock.promotion_lock(cfg, name, lock_timeout_s):
        current = tracking.alias_version(client, name, CHAMPION_ALIAS)
        # promoted_at is set by every applied promotion or rollback and never cleared (a noop record resets
        # gate.applied, so that tag cannot tell)
        if current == version and apply and "promoted_at" not in _get_version(client, name, version).tags:
            # an earlier attempt moved the aliases and died before recording its decision (worker lost,
            # tracking server gone): record the promotion it made, so the decision and the champion-changed
            # event are not lost to a "nothing changed"
            before = tracking.alias_version(client, name, PREVIOUS_ALIAS)
            decision = Decision(
                verdict=PROMOTE,
                reason=(
                    f"version {version} became the champion in an interrupted earlier attempt (aliases moved, "
                    "decision not recorded); recording that promotion now"
                ),
                challenger=challenger,
                champion=None if before is None else {"version": before, "metrics": {}},
                previous_champion=before,
                **common,
            )
            decision.applied = True
            write_record(client, decision, subject, before)
            record_decision(cfg, decision)  # audit trail; raises if it cannot be written
            return decision
        if current == version:
            decision = Decision(
                verdict=NOOP,
                reason=f"version {version} is already the champion; nothing changed",
                challenger=challenger,
                champion={"version": current, "metrics": challenger_metrics},
                previous_champion=current,
                **common,
            )
            write_record(client, decision, subject, None)
            record_decision(cfg, decision)  # audit trail; raises if it cannot be written
            return decision

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
        decision = Decision(
            verdict=verdict,
            reason=reason,
            challenger=challenger,
            champion=champion,
            previous_champion=current,
            **common,
        )
        if verdict == PROMOTE and apply:
            if current is not None:
                client.set_registered_model_alias(name, PREVIOUS_ALIAS, current)
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
            decision.applied = True
        write_record(client, decision, subject, current)
        record_decision(cfg, decision)  # audit trail; raises if it cannot be written
        return decision


def rollback(
    cfg: BundleConfig,
    client: MlflowClient,
    *,
    reason: str,
    actor: str,
    to_version: str | int | None = None,
    context: Mapping[str, Any] | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> Decision:
    """Point ``champion`` back to ``to_version`` (default: the ``previous`` alias), under the same lock.

    The replaced champion becomes ``previous``, so a rollback can itself be rolled back. Records a
    ``rollback`` decision on the target version's run and tags.
    """
    name = cfg.model_name
    reason = _require_text(reason, "rollback reason", MIN_ROLLBACK_REASON)
    actor = _require_text(actor, "actor (who or what runs the rollback)")
    with lock.promotion_lock(cfg, name, lock_timeout_s):
        current = tracking.alias_version(client, name, CHAMPION_ALIAS)
        if to_version is None:
            target = tracking.alias_version(client, name, PREVIOUS_ALIAS)
            if target is None:
                raise GateError(
                    f"no previous champion to roll back to for {name!r}; pass to_version=<version>"
                )
        else:
            target = _normalize_version(to_version)
        subject = _get_version(client, name, target)
        if target == current:
            raise GateError(f"version {target} of {name!r} already is the champion; nothing to roll back")
        old = _get_version(client, name, current) if current is not None else None
        client.set_registered_model_alias(name, CHAMPION_ALIAS, target)
        if current is not None:
            client.set_registered_model_alias(name, PREVIOUS_ALIAS, current)
        elif tracking.alias_version(client, name, PREVIOUS_ALIAS) == target:
            client.delete_registered_model_alias(name, PREVIOUS_ALIAS)
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
            applied=True,
            previous_champion=current,
        )
        write_record(client, decision, subject, current)
        record_decision(cfg, decision)  # audit trail; raises if it cannot be written
        return decision


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
