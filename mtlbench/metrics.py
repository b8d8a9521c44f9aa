"""Test metrics in original target (hardness) units."""

from __future__ import annotations

from typing import Any

import numpy as np

WITHIN_APE = 8.0  # the paper's "share of test images within 8 % absolute percentage error"


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true, dtype=np.int64), np.clip(np.asarray(pred, dtype=np.int64), 0, num_classes - 1)), 1)
    return cm


def regression_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    err = pred - true
    ape = np.abs(err) / np.abs(true) * 100.0
    mse = float(np.mean(err ** 2))
    return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": float(np.mean(np.abs(err))),
            "mape": float(np.mean(ape)), "within8": float(np.mean(ape <= WITHIN_APE) * 100.0)}


def task_metrics(true_class: np.ndarray, pred_class: np.ndarray, true_target: np.ndarray, pred_target: np.ndarray,
                 num_classes: int) -> dict[str, Any]:
    """Accuracy (%), confusion matrix, MSE, RMSE, MAE, MAPE (%), share within 8 % APE (%)."""
    acc = float(np.mean(np.asarray(true_class) == np.asarray(pred_class)) * 100.0)
    out: dict[str, Any] = {"accuracy": acc}
    out.update(regression_metrics(true_target, pred_target))
    out["confusion"] = confusion_matrix(true_class, pred_class, num_classes).tolist()
    return out
