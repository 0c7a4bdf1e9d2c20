"""How the bundle reads a data set's columns as model inputs and outputs: one home for the rules that
training, the promotion gate and monitoring must apply identically.

- feature kinds: int/float columns are numeric; category/string/bool are categorical; datetime features
  are dropped (see :func:`feature_types`);
- the positive class of a binary target and the decision threshold on its probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

NUMERIC_DTYPES = frozenset({"int", "float"})
CATEGORICAL_DTYPES = frozenset({"category", "string", "bool"})
# A binary target's positive class ("churned = 1"), in the spellings a fitted model may carry it
POSITIVE_LABELS = (1, True, "1")
# The probability of the positive class at or above which a row is predicted positive
THRESHOLD = 0.5


def feature_kind(dtype: str) -> str | None:
    """``"numeric"``, ``"categorical"`` or None (not used as a model input) for a configured dtype."""
    if dtype in NUMERIC_DTYPES:
        return "numeric"
    if dtype in CATEGORICAL_DTYPES:
        return "categorical"
    return None


def feature_types(cfg: BundleConfig) -> tuple[list[str], list[str], list[str]]:
    """(numeric, categorical, dropped) feature columns, from the configured dtypes.

    int/float -> numeric; category/string/bool -> categorical (one-hot). datetime features are dropped:
    a raw timestamp does not generalise across a time split (every holdout timestamp lies outside the
    training range), so a data set that needs calendar features should declare them as their own
    columns (day of week, age in days, ...) upstream.
    """
    numeric, categorical, dropped = [], [], []
    for name in cfg.dataset.feature_columns:
        kind = feature_kind(cfg.dataset.column(name).dtype)
        {"numeric": numeric, "categorical": categorical}.get(kind, dropped).append(name)
    return numeric, categorical, dropped


def positive_class_index(classes: Sequence[Any]) -> int:
    """Column of ``predict_proba`` that holds the positive class.

    The class spelled 1/True/"1" if the model has it, else the second of two classes (sklearn sorts
    them, so that is the "larger" label); -1 (the last column) when the model exposes no classes.
    ValueError for a model that is not a binary classifier.
    """
    classes = list(classes)
    if not classes:
        return -1
    if len(classes) != 2:
        raise ValueError(f"expected a binary classifier, the model has classes {classes}")
    for positive in POSITIVE_LABELS:
        if positive in classes:
            return classes.index(positive)
    return 1


def predict_positive(proba: Any) -> Any:
    """0/1 predictions (int64) from positive-class probabilities, at :data:`THRESHOLD`."""
    import numpy as np

    return (np.asarray(proba) >= THRESHOLD).astype("int64")
