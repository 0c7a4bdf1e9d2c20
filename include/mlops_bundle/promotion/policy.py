"""The promotion policy: ``GatePolicy`` and the pure ``decide`` (no MLflow, no I/O; table-tested).

``decide`` is a pure function of two metric dicts and a ``GatePolicy``; every rule lives here and it only
ever answers ``"promote"`` or ``"reject"``.

Rules:

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

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlops_bundle.task_types import LOWER_IS_BETTER

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

PROMOTE = "promote"
REJECT = "reject"
NOOP = "noop"
ROLLBACK = "rollback"
VERDICTS = (PROMOTE, REJECT, NOOP, ROLLBACK)

EPSILON = 1e-9
MIN_JUSTIFICATION = 10


class GateError(ValueError):
    """The promotion gate cannot be evaluated or applied; the message names what is wrong and what to do."""


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


def approval_rules(cfg: BundleConfig, forced: bool) -> tuple[bool, bool]:
    """(a human approval is needed, the approver must not be the triggering user) for one promotion.

    Four eyes: a forced promotion always waits for an approval by a second person; ``promotion.four_eyes``
    extends that to every promotion; ``promotion.require_approval`` asks for an approval by anyone.
    """
    p = cfg.promotion
    second_person = bool(forced or p.four_eyes)
    return bool(second_person or p.require_approval), second_person


def same_person(a: str | None, b: str | None) -> bool:
    """Whether two Airflow user names/ids name the same person (case and surrounding space ignored)."""
    return bool(a and b and a.strip().casefold() == b.strip().casefold())


def approval_verdict(
    verdict: str,
    reason: str,
    *,
    approval_needed: bool,
    second_person: bool,
    triggered_by: str | None,
    approved_by: str | None,
) -> tuple[str, str]:
    """A ``promote`` verdict stands only with the approval it needs; else ``reject`` saying why."""
    if verdict != PROMOTE or not approval_needed:
        return verdict, reason
    if not approved_by:
        return REJECT, (
            f"the gate would promote ({reason}), but a promotion needs a human approval and none was given "
            "(the pre-approval evaluation did not ask, e.g. the champion changed since); trigger train again"
        )
    if second_person and same_person(approved_by, triggered_by):
        return REJECT, (
            f"approved by {approved_by!r}, who triggered this run: this promotion needs a second person "
            "(four eyes); nothing was promoted"
        )
    return verdict, reason
