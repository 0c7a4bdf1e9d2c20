"""How the bundle reads a data set's columns as model inputs and outputs: one home for the rules that
training, the promotion gate and monitoring must apply identically.

- feature kinds: int/float columns are numeric; category/string/bool are categorical; datetime features
  are dropped (see :func:`feature_types`);
- the positive class of a binary target and the decision threshold on its probability;
- the names of the scores (``prediction``, ``prediction_proba``, ``proba__<class>``), reserved for them
  (:data:`RESERVED_COLUMNS`, :data:`PROBA_PREFIX`: a data set column may not take them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig

NUMERIC_DTYPES = frozenset({"int", "float"})
CATEGORICAL_DTYPES = frozenset({"category", "string", "bool"})
# A binary target's positive class ("churned = 1"), in the spellings a fitted model may carry it
POSITIVE_LABELS = (1, True, "1")
# The probability of the positive class at or above which a row is predicted positive
THRESHOLD = 0.5
# The scores score_batch adds: binary prediction/prediction_proba, multiclass prediction + proba__<class>
PREDICTION_COLUMN = "prediction"
PROBA_COLUMN = "prediction_proba"
RESERVED_COLUMNS = frozenset({PREDICTION_COLUMN, PROBA_COLUMN})
# multiclass: the probability of class <label> is stored as column proba__<label> (see proba_column)
PROBA_PREFIX = "proba__"
_UNSAFE = re.compile(r"[^0-9A-Za-z_.-]")


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


def safe_name(text: str, unsafe: re.Pattern[str] = _UNSAFE) -> str:
    """``text`` when no character matches ``unsafe``; else every such character replaced by ``_`` plus
    ``_`` and 8 hex digits of the SHA-256 of the original text, so two texts that sanitise alike
    ("a b", "a/b") still get different names (only a text spelled exactly like another's hashed form can
    collide: :func:`proba_collisions` finds that)."""
    if not unsafe.search(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{unsafe.sub('_', text)}_{digest}"


def proba_column(label: Any) -> str:
    """The column a multiclass model's probability of class ``label`` is stored in: ``proba__<label>``
    when the label's text is all ``[A-Za-z0-9_.-]`` (class 2 -> ``proba__2``), else the sanitised text
    plus a hash of the label ("high risk" -> ``proba__high_risk_<8 hex>``, "高" -> ``proba___<8 hex>``):
    a safe column, file and MLflow name whatever the label, and a different one per label."""
    return PROBA_PREFIX + safe_name(str(label))


def proba_collisions(labels: Iterable[Any]) -> dict[str, list[str]]:
    """{probability column: the label texts that share it} for the labels whose columns collide (empty
    when every label gets its own column)."""
    by_name: dict[str, list[str]] = {}
    for label in labels:
        by_name.setdefault(proba_column(label), []).append(str(label))
    return {name: texts for name, texts in by_name.items() if len(texts) > 1}
