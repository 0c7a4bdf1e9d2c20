"""Gated, race-safe champion/challenger promotion with one decision record per call.

Why it is built this way:

* ``decide`` is a pure function of two metric dicts and a ``GatePolicy``; every rule lives there and is
  table-tested. It only ever answers ``"promote"`` or ``"reject"``.
* MLflow alias updates are last-writer-wins, so two training runs finishing together could both read
  "no champion" (or an old champion) and both promote; the worse one could win. ``gate`` and ``rollback``
  therefore run inside ``promotion_lock`` (a PostgreSQL advisory lock, or an ``fcntl.flock`` file lock next
  to a local tracking store) and re-read the champion alias inside the lock before deciding.
* Every decision (promoted, rejected, no-op, rollback) is written as JSON to the challenger's run
  (``decisions/<decided_at>-<decision_id>.json``) and summarised in ``gate.*`` model-version tags, so the
  registry itself answers "why is this the champion?".

Verdicts recorded by ``gate``/``rollback`` (``Decision.verdict``):

``promote``   the rules (or a justified ``force``) allow the challenger; ``Decision.applied`` says whether
              the aliases were changed (``apply=False`` computes the verdict before a human approval step)
``reject``    a rule failed; the champion is untouched
``noop``      the challenger already is the champion; nothing was scored or changed
``rollback``  ``rollback`` moved ``champion`` back to an earlier version

Aliases: ``champion`` (what scoring uses) and ``previous`` (the champion it replaced; the default
rollback target).

Rule details (``decide``):

* a missing or NaN primary/guard metric on the challenger is a ``GateError``: the gate cannot be evaluated.
* a champion without the primary metric is a ``GateError`` too (the safe option: never replace a champion
  we cannot compare against); ``force=True`` with a justification overrides it and the reason says so.
* a champion without a guard metric: that guard is skipped and the reason says so (older champions may
  predate a newly added guard; the primary comparison still protects the champion).
* improvement (challenger minus champion, sign-flipped for lower-is-better metrics) must be strictly
  > 0 AND >= ``min_improvement``: an exact tie is always rejected, a negative ``min_improvement`` does not
  let a worse model through.
* ``floor`` is the worst acceptable value: ``>= floor`` for higher-is-better metrics, ``<= floor`` (a
  ceiling) for lower-is-better ones (``LOWER_IS_BETTER``).
* a guard metric may drop (get worse) by at most its tolerance.
* comparisons allow ``EPSILON`` (1e-9) of float noise, so 0.80 -> 0.78 is a drop of exactly 0.02.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_bundle.audit import record_decision
from mlops_bundle.config import PROJECT_ROOT, BundleConfig
from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.locks import LockTimeout, LockUnavailable, advisory_key, file_lock, pg_advisory_lock
from mlops_bundle.uris import pg_dsn, redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

PROMOTE = "promote"
REJECT = "reject"
NOOP = "noop"
ROLLBACK = "rollback"
VERDICTS = (PROMOTE, REJECT, NOOP, ROLLBACK)

CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"

# metrics where smaller is better; everything else is higher-is-better
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "brier_score"})
EPSILON = 1e-9
MIN_JUSTIFICATION = 10
MIN_ROLLBACK_REASON = 10
# model-version tag values may hold 100k chars in MLflow 3.17, run tags 8k; keep tags readable
TAG_VALUE_MAX = 1000
DEFAULT_LOCK_TIMEOUT_S = 120.0
_POLL_S = 0.1


class GateError(ValueError):
    """The promotion gate cannot be evaluated or applied; the message names what is wrong and what to do."""


class PromotionLockTimeout(TimeoutError):
    """Another promotion of the same model held the promotion lock for longer than the timeout."""


# --------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class GatePolicy:
    """The thresholds a challenger must meet; built from ``promotion`` + ``training.metric`` config."""

    metric: str
    floor: float
    min_improvement: float = 0.0
    guard_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.metric:
            raise GateError("GatePolicy.metric is empty: set training.metric in the config (e.g. roc_auc)")
        bad = {k: v for k, v in self.guard_metrics.items() if not (v >= 0)}
        if bad:
            raise GateError(
                f"promotion.guard_metrics tolerances must be >= 0 (largest tolerated drop), got {bad}"
            )

    @classmethod
    def from_config(cls, cfg: BundleConfig) -> GatePolicy:
        """The policy the config declares: ``training.metric`` is the primary metric."""
        p = cfg.promotion
        return cls(
            metric=cfg.training.metric,
            floor=float(p.floor),
            min_improvement=float(p.min_improvement),
            guard_metrics={k: float(v) for k, v in p.guard_metrics.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe thresholds for the decision record."""
        return {
            "metric": self.metric,
            "floor": self.floor,
            "min_improvement": self.min_improvement,
            "guard_metrics": dict(self.guard_metrics),
            "lower_is_better": sorted(m for m in {self.metric, *self.guard_metrics} if m in LOWER_IS_BETTER),
        }


def _fmt(value: float) -> str:
    """4 decimals at most, 2 at least: 0.7 -> '0.70', 0.81234 -> '0.8123'."""
    text = f"{value:.4f}".rstrip("0")
    decimals = len(text.split(".")[1]) if "." in text else 0
    return text + "0" * max(0, 2 - decimals)


def _delta(value: float) -> str:
    return f"{value:+.4f}"


def _better_by(metric: str, challenger: float, champion: float) -> float:
    """How much better the challenger is (positive = better), whatever the metric's direction."""
    return champion - challenger if metric in LOWER_IS_BETTER else challenger - champion


def _metric_value(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _require(metrics: Mapping[str, float], name: str, role: str) -> float:
    value = _metric_value(metrics, name)
    if value is None:
        raise GateError(
            f"{role} metrics have no usable {name!r} (got keys {sorted(metrics)}): the gate needs it; "
            f"make the scoring function return {name!r} or change the promotion policy"
        )
    return value


def _floor_rule(policy: GatePolicy, value: float) -> tuple[bool, str]:
    m = policy.metric
    if m in LOWER_IS_BETTER:
        ok = value <= policy.floor + EPSILON
        sign = "<=" if ok else ">"
        return ok, f"{m} {_fmt(value)} {sign} ceiling {_fmt(policy.floor)} (lower is better)"
    ok = value >= policy.floor - EPSILON
    return ok, f"{m} {_fmt(value)} {'>=' if ok else '<'} floor {_fmt(policy.floor)}"


def _improvement_rule(policy: GatePolicy, challenger: float, champion: float) -> tuple[bool, str]:
    m = policy.metric
    gain = _better_by(m, challenger, champion)
    ok = gain > EPSILON and gain >= policy.min_improvement - EPSILON
    if ok:
        return True, (
            f"{m} {_fmt(challenger)} beats champion {_fmt(champion)} by {_delta(gain)} "
            f"(>= min_improvement {_fmt(policy.min_improvement)})"
        )
    what = "ties" if abs(gain) <= EPSILON else "does not beat" if gain < 0 else "beats too little"
    return False, (
        f"{m} {_fmt(challenger)} {what} champion {_fmt(champion)} (improvement {_delta(gain)}; "
        f"needs > 0 and >= min_improvement {_fmt(policy.min_improvement)})"
    )


def _guard_rules(
    policy: GatePolicy, challenger: Mapping[str, float], champion: Mapping[str, float]
) -> tuple[list[str], list[str], list[str]]:
    """(failures, passes, skipped) of the guard metrics."""
    failures: list[str] = []
    passes: list[str] = []
    skipped: list[str] = []
    for name, tolerance in sorted(policy.guard_metrics.items()):
        ch = _require(challenger, name, "challenger")
        cp = _metric_value(champion, name)
        if cp is None:
            skipped.append(f"guard {name} skipped: champion has no {name}")
            continue
        drop = -_better_by(name, ch, cp)
        if drop > tolerance + EPSILON:
            failures.append(
                f"guard {name} got worse by {_fmt(drop)}: champion {_fmt(cp)} -> challenger {_fmt(ch)} "
                f"(tolerance {_fmt(tolerance)})"
            )
        else:
            passes.append(f"{name} {_fmt(ch)} vs champion {_fmt(cp)} (tolerance {_fmt(tolerance)})")
    return failures, passes, skipped


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    policy: GatePolicy,
    *,
    force: bool = False,
    justification: str | None = None,
) -> tuple[str, str]:
    """Pure gate: ``("promote" | "reject", human reason)``. Rules are in the module docstring.

    ``force=True`` promotes whatever the rules say but needs a justification of at least 10 characters;
    the reason then lists every rule it overrode, so a forced promotion is never silent.
    """
    if force and len((justification or "").strip()) < MIN_JUSTIFICATION:
        raise GateError(
            f"force=True needs a justification of at least {MIN_JUSTIFICATION} characters saying why the "
            f"gate is overridden (got {justification!r})"
        )
    value = _require(challenger, policy.metric, "challenger")
    for name in policy.guard_metrics:
        _require(challenger, name, "challenger")

    failures: list[str] = []
    notes: list[str] = []
    floor_ok, floor_text = _floor_rule(policy, value)
    if not floor_ok:
        failures.append(floor_text)

    passes: list[str] = []
    if champion is None:
        if floor_ok:
            passes.append(f"no champion yet: first model promoted ({floor_text})")
    else:
        champ_value = _metric_value(champion, policy.metric)
        if champ_value is None:
            if not force:
                raise GateError(
                    f"champion metrics have no usable {policy.metric!r} (got keys {sorted(champion)}), so "
                    f"the challenger cannot be compared; fix the scoring of the champion, or promote with "
                    f"force=True and a justification"
                )
            failures.append(f"champion has no {policy.metric}: no comparison possible")
        else:
            improved, text = _improvement_rule(policy, value, champ_value)
            (passes if improved else failures).append(text)
        g_fail, g_pass, g_skip = _guard_rules(policy, challenger, champion)
        failures.extend(g_fail)
        notes.extend(g_skip)
        if g_pass:
            passes.append("guards ok: " + ", ".join(g_pass))

    tail = f" [{'; '.join(notes)}]" if notes else ""
    if force:
        just = " ".join((justification or "").split())
        if failures:
            return (
                PROMOTE,
                f"FORCED promotion (justification: {just}) overriding: {'; '.join(failures)}{tail}",
            )
        return (
            PROMOTE,
            f"FORCED promotion (justification: {just}); no rules overridden: {'; '.join(passes)}{tail}",
        )
    if failures:
        return REJECT, "; ".join(failures) + tail
    return PROMOTE, "; ".join(passes) + tail


# ------------------------------------------------------------------------------------------- decision


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Decision:
    """One promotion decision, exactly as recorded (JSON artifact + ``gate.*`` version tags)."""

    model_name: str
    verdict: str
    reason: str
    # {"version": "3", "run_id": "...", "metrics": {...}}
    challenger: dict[str, Any]
    # the champion it was compared with: {"version": "2", "metrics": {...}} or None
    champion: dict[str, Any] | None
    policy: dict[str, Any]
    actor: str
    context: dict[str, Any] = field(default_factory=dict)
    forced: bool = False
    justification: str | None = None
    # True when this call changed the aliases
    applied: bool = False
    # the champion version before this decision (None: there was none)
    previous_champion: str | None = None
    decision_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    decided_at: str = field(default_factory=_utc_now)
    # run-relative artifact path of the JSON record (None: kept in the version tag gate.decision)
    artifact_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (what is written to the artifact and returned over XCom)."""
        return json_safe(dataclasses.asdict(self))

    @property
    def promoted(self) -> bool:
        return self.verdict == PROMOTE and self.applied


# ----------------------------------------------------------------------------------------------- lock


def lock_key(model_name: str) -> int:
    """The advisory-lock key of one model's promotions (stable on every host and Python version)."""
    return advisory_key(f"mlops-promotion:{model_name}")


def _lock_dir(cfg: BundleConfig) -> Path:
    """Where file locks live: ``file://`` lock_uri, else the SQLite tracking DB's folder, else var/locks."""
    lock_uri = cfg.promotion.lock_uri
    if lock_uri.startswith("file://"):
        return Path(lock_uri[len("file://") :])
    tracking = cfg.tracking_uri
    if tracking.startswith("sqlite:///"):
        return Path(tracking[len("sqlite:///") :]).resolve().parent
    return PROJECT_ROOT / "var" / "locks"


def _safe_name(model_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", model_name)


def lock_description(cfg: BundleConfig, model_name: str) -> str:
    """Which lock ``promotion_lock`` would take (for logs and docs)."""
    dsn = pg_dsn(cfg.promotion.lock_uri) or pg_dsn(cfg.tracking_uri)
    if dsn:
        return f"postgres advisory lock {lock_key(model_name)} on {redact(dsn)}"
    return f"file lock {_lock_dir(cfg) / f'promotion-{_safe_name(model_name)}.lock'}"


@contextlib.contextmanager
def promotion_lock(
    cfg: BundleConfig, model_name: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Serialize promotions of one model across processes and hosts.

    Why: MLflow alias writes are last-writer-wins, so "read champion, compare, set alias" must not
    interleave. Order of choice: ``promotion.lock_uri`` if it is ``postgresql://`` (advisory lock on a
    dedicated connection), else a ``postgresql://`` tracking URI (same, on the tracking DB), else an
    ``fcntl.flock`` file ``promotion-<model>.lock`` in the ``file://`` lock_uri folder, the SQLite tracking
    DB's folder or ``var/locks`` (only safe when every worker shares that disk). Raises
    ``PromotionLockTimeout`` after ``timeout_s``.
    """
    lock_uri = cfg.promotion.lock_uri
    if lock_uri and not (pg_dsn(lock_uri) or lock_uri.startswith("file://")):
        raise GateError(
            f"promotion.lock_uri {redact(lock_uri)!r} is not supported: use a postgresql:// URI (advisory "
            f"lock), a file:// folder on a disk all workers share, or leave it empty"
        )
    dsn = pg_dsn(lock_uri) or pg_dsn(cfg.tracking_uri)
    busy = f"another promotion of {model_name!r} has held the lock for {timeout_s:g} s"
    try:
        if dsn:
            lock = pg_advisory_lock(
                dsn, lock_key(model_name), timeout_s=timeout_s, application_name="mlops-promotion-lock"
            )
        else:
            path = _lock_dir(cfg) / f"promotion-{_safe_name(model_name)}.lock"
            hint = (
                "A file lock is released when its process exits; if that process hangs, stop it "
                "(see `fuser` on the lock file)."
            )
            lock = file_lock(path, timeout_s=timeout_s, hint=hint)
        with lock:
            yield
    except LockTimeout as exc:
        raise PromotionLockTimeout(
            f"{busy} ({exc}); wait for it to finish and retry, or pass a longer timeout"
        ) from None
    except LockUnavailable as exc:
        raise GateError(
            f"{exc}; check promotion.lock_uri (or the postgresql:// tracking URI) and that PostgreSQL is reachable"
        ) from exc


# --------------------------------------------------------------------------------------- mlflow glue


def _is_missing(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


def _alias_version(client: MlflowClient, model_name: str, alias: str) -> str | None:
    """The version an alias points to, as str (a DB store returns int, the REST server str)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as exc:
        if _is_missing(exc):
            return None
        raise
    version = registered.aliases.get(alias)
    return None if version is None else str(version)


def _get_version(client: MlflowClient, model_name: str, version: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, version)
    except MlflowException as exc:
        if _is_missing(exc):
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


def _tag_metrics(mv: Any) -> dict[str, float]:
    raw = (mv.tags or {}).get("gate.metrics")
    if not raw:
        return {}
    with contextlib.suppress(ValueError, TypeError):
        return {str(k): float(v) for k, v in json.loads(raw).items() if v is not None}
    return {}


def _truncate(text: str, limit: int = TAG_VALUE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _artifact_name(decision: Decision) -> str:
    stamp = decision.decided_at.replace("+00:00", "Z").replace(":", "").replace("-", "")
    return f"decisions/{stamp}-{decision.decision_id}.json"


def _record(client: MlflowClient, decision: Decision, subject: Any, demoted: str | None) -> None:
    """Write the decision: JSON artifact on the subject version's run + ``gate.*`` tags (+ alias history).

    Why both: the artifact is the complete, immutable record; tags make the latest verdict visible in the
    registry UI and searchable.
    """
    name, version = decision.model_name, str(subject.version)
    if subject.run_id:
        decision.artifact_path = _artifact_name(decision)
    payload = json.dumps(decision.to_dict(), indent=2, sort_keys=True)
    if subject.run_id:
        client.log_text(subject.run_id, payload, decision.artifact_path)
    else:  # a version registered without a run: keep the record on the version itself
        client.set_model_version_tag(name, version, "gate.decision", payload)
    tags = {
        "gate.verdict": decision.verdict,
        "gate.reason": _truncate(decision.reason),
        "gate.decision_id": decision.decision_id,
        "gate.decided_at": decision.decided_at,
        "gate.actor": _truncate(decision.actor, 250),
        "gate.forced": str(decision.forced).lower(),
        "gate.applied": str(decision.applied).lower(),
    }
    metrics = decision.challenger.get("metrics") or {}
    if metrics and decision.verdict in (PROMOTE, REJECT):
        tags["gate.metrics"] = json.dumps(json_safe(metrics), sort_keys=True)
    if decision.applied:
        tags["promoted_at"] = decision.decided_at
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.applied and demoted:
        client.set_model_version_tag(name, demoted, "demoted_at", decision.decided_at)
        client.set_model_version_tag(name, demoted, "superseded_by", version)


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

    with promotion_lock(cfg, name, lock_timeout_s):
        current = _alias_version(client, name, CHAMPION_ALIAS)
        # promoted_at is set by every applied promotion or rollback and never cleared (a noop record resets
        # gate.applied, so that tag cannot tell)
        if current == version and apply and "promoted_at" not in _get_version(client, name, version).tags:
            # an earlier attempt moved the aliases and died before recording its decision (worker lost,
            # tracking server gone): record the promotion it made, so the decision and the champion-changed
            # event are not lost to a "nothing changed"
            before = _alias_version(client, name, PREVIOUS_ALIAS)
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
            _record(client, decision, subject, before)
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
            _record(client, decision, subject, None)
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
        _record(client, decision, subject, current)
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
    with promotion_lock(cfg, name, lock_timeout_s):
        current = _alias_version(client, name, CHAMPION_ALIAS)
        if to_version is None:
            target = _alias_version(client, name, PREVIOUS_ALIAS)
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
        elif _alias_version(client, name, PREVIOUS_ALIAS) == target:
            client.delete_registered_model_alias(name, PREVIOUS_ALIAS)
        decision = Decision(
            model_name=name,
            verdict=ROLLBACK,
            reason=f"rolled back from version {current or '(none)'} to version {target}: {reason}",
            challenger={"version": target, "run_id": subject.run_id, "metrics": _tag_metrics(subject)},
            champion=None if old is None else {"version": current, "metrics": _tag_metrics(old)},
            policy=GatePolicy.from_config(cfg).to_dict(),
            actor=actor,
            context=dict(context or {}),
            justification=reason,
            applied=True,
            previous_champion=current,
        )
        _record(client, decision, subject, current)
        record_decision(cfg, decision)  # audit trail; raises if it cannot be written
        return decision


def champion_info(cfg: BundleConfig, client: MlflowClient) -> dict[str, Any] | None:
    """The current champion for summaries and UIs; None when there is none yet.

    Metrics come from the ``gate.metrics`` tag (what the gate compared on), else from the training run.
    """
    name = cfg.model_name
    version = _alias_version(client, name, CHAMPION_ALIAS)
    if version is None:
        return None
    mv = client.get_model_version(name, version)
    metrics = _tag_metrics(mv)
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
        "previous": _alias_version(client, name, PREVIOUS_ALIAS),
        "promoted_at": tags.get("promoted_at"),
        "decision_id": tags.get("gate.decision_id"),
        "reason": tags.get("gate.reason"),
    }
