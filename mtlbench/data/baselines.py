"""Reference scores of a data set's test split: what no learning, and what perfect classification alone, score.

They put a run's figures in context: a regressor is only useful below the mean predictor's MAPE, and a model that
classifies perfectly but reads nothing inside a class cannot beat the class-mean oracle's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtlbench.data.table import ImageTable
from mtlbench.metrics import regression_metrics


@dataclass(frozen=True)
class ReferenceScores:
    chance_accuracy: float          # % : 100 / number of classes
    majority_accuracy: float        # % : always the training split's most frequent class
    mean_predictor_mape: float      # % : always the training split's mean target
    class_mean_oracle_mape: float   # % : the true class's training mean target


def reference_scores(table: ImageTable) -> ReferenceScores:
    """The test split's reference scores, from the training split's statistics."""
    train, test = table.split("train"), table.split("test")
    true = test["target"].to_numpy(float)
    majority = int(train["label"].value_counts().idxmax())
    class_means = train.groupby("label")["target"].mean()
    oracle = test["label"].map(class_means).fillna(train["target"].mean()).to_numpy(float)
    return ReferenceScores(
        chance_accuracy=100.0 / table.num_classes,
        majority_accuracy=float((test["label"] == majority).mean() * 100.0),
        mean_predictor_mape=regression_metrics(true, np.full_like(true, train["target"].mean()))["mape"],
        class_mean_oracle_mape=regression_metrics(true, oracle)["mape"])
