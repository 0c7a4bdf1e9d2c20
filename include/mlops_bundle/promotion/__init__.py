"""Gated, race-safe champion/challenger promotion with one decision record per call.

One module per concern; everything public is importable from here (``from mlops_bundle.promotion import
gate``), which is what callers use:

* :mod:`~mlops_bundle.promotion.policy`: ``GatePolicy`` and the pure ``decide`` (every rule, no I/O);
* :mod:`~mlops_bundle.promotion.lock`: ``promotion_lock``, which serializes one model's promotions across
  processes and hosts (MLflow alias writes are last-writer-wins);
* :mod:`~mlops_bundle.promotion.ledger`: the decision ledger; a decision is written there as an intent
  before any alias moves, so a retry completes it instead of deciding again;
* :mod:`~mlops_bundle.promotion.records`: the ``Decision`` record, written as a JSON artifact on the
  subject version's run plus ``gate.*`` version tags;
* :mod:`~mlops_bundle.promotion.watch`: the alias watch, which restores ``champion``/``previous`` when
  something other than a decision moved them;
* :mod:`~mlops_bundle.promotion.champion`: ``gate``, ``rollback`` and ``champion_info``, the MLflow glue
  that re-reads the champion inside the lock, decides, moves the aliases and records the decision.

To replace a piece in a test, patch the module that defines it (``promotion.lock.promotion_lock``), not
this package: the other modules look names up there.

Verdicts recorded by ``gate``/``rollback`` (``Decision.verdict``):

``promote``   the rules (or a justified ``force``, approved by a second person) allow the challenger;
              ``Decision.applied`` says whether the aliases were changed (``apply=False`` records an
              evaluation, ``kind="evaluation"``, before a human approval step: not a decision)
``reject``    a rule failed; the champion is untouched
``noop``      the challenger already is the champion; nothing was scored or changed
``rollback``  ``rollback`` moved ``champion`` back to an earlier version

Aliases: ``champion`` (what scoring uses) and ``previous`` (the champion it replaced; the default
rollback target).
"""

from __future__ import annotations

from mlops_bundle.promotion.champion import (
    CHAMPION_ALIAS,
    MIN_ROLLBACK_REASON,
    PREVIOUS_ALIAS,
    champion_info,
    gate,
    rollback,
)
from mlops_bundle.promotion.ledger import decision_id
from mlops_bundle.promotion.lock import (
    DEFAULT_LOCK_TIMEOUT_S,
    PromotionLockTimeout,
    lock_description,
    lock_key,
    promotion_lock,
)
from mlops_bundle.promotion.policy import (
    EPSILON,
    LOWER_IS_BETTER,
    MIN_JUSTIFICATION,
    NOOP,
    PROMOTE,
    REJECT,
    ROLLBACK,
    VERDICTS,
    GateError,
    GatePolicy,
    approval_rules,
    approval_verdict,
    decide,
    same_person,
)
from mlops_bundle.promotion.records import DECISION, EVALUATION, TAG_VALUE_MAX, Decision
from mlops_bundle.promotion.watch import WatchResult, watch

__all__ = [
    "CHAMPION_ALIAS",
    "DECISION",
    "EVALUATION",
    "DEFAULT_LOCK_TIMEOUT_S",
    "EPSILON",
    "LOWER_IS_BETTER",
    "MIN_JUSTIFICATION",
    "MIN_ROLLBACK_REASON",
    "NOOP",
    "PREVIOUS_ALIAS",
    "PROMOTE",
    "REJECT",
    "ROLLBACK",
    "TAG_VALUE_MAX",
    "VERDICTS",
    "WatchResult",
    "Decision",
    "GateError",
    "GatePolicy",
    "PromotionLockTimeout",
    "approval_rules",
    "approval_verdict",
    "champion_info",
    "decide",
    "decision_id",
    "gate",
    "lock_description",
    "lock_key",
    "promotion_lock",
    "rollback",
    "same_person",
    "watch",
]
