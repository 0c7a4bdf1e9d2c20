"""What each kind of learning task means to the bundle: one home for its metrics, their direction, the
registered model's name and what the model outputs.

``dataset.task`` in the config is one of :data:`TASKS`. Training, the promotion gate, scoring and the
drift report read these facts from here (never from their own tables), so a regression data set is
judged on rmse with lower-is-better everywhere, and a binary one on roc_auc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskName = Literal["binary", "multiclass", "regression"]


@dataclass(frozen=True)
class TaskType:
    name: str
    # metrics ``evaluate`` reports for this task (the primary and guard metrics must be among them)
    metrics: tuple[str, ...]
    # the default primary metric (training.metric)
    default_metric: str
    # what the registered model is called by default: "{dataset}-<model_kind>"
    model_kind: str
    # Evidently preset family for the quality part of the drift report
    evidently_kind: Literal["classification", "regression"]
    # the model predicts class probabilities (predict_proba) besides the label
    probabilistic: bool

    @property
    def is_classification(self) -> bool:
        return self.evidently_kind == "classification"


# metrics where smaller is better; every other metric is higher-is-better
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "brier_score", "rmse", "mae", "mse", "mape", "median_ae"})

TASKS: dict[str, TaskType] = {
    "binary": TaskType(
        "binary",
        ("roc_auc", "f1", "precision", "recall", "accuracy", "log_loss"),
        "roc_auc",
        "classifier",
        "classification",
        True,
    ),
    "multiclass": TaskType(
        "multiclass",
        ("f1_macro", "accuracy", "log_loss", "precision_macro", "recall_macro", "roc_auc_ovr"),
        "f1_macro",
        "classifier",
        "classification",
        True,
    ),
    "regression": TaskType(
        "regression", ("rmse", "mae", "r2", "mape"), "rmse", "regressor", "regression", False
    ),
}


def task_type(name: str) -> TaskType:
    """The :class:`TaskType` called ``name``; ValueError naming the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}: use one of {sorted(TASKS)}") from None


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER
