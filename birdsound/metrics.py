"""Classification metrics shared by training and evaluation (pure numpy / scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def macro_ap(targets: np.ndarray, scores: np.ndarray) -> tuple[float, dict[int, float]]:
    """Mean average precision over classes that have at least one positive.

    Returns (macro AP, {class index: AP}).
    """
    per = {}
    for c in range(targets.shape[1]):
        if targets[:, c].any():
            per[c] = float(average_precision_score(targets[:, c], scores[:, c]))
    return (float(np.mean(list(per.values()))) if per else float("nan")), per


def macro_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC-AUC over classes with both positives and negatives."""
    vals = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])
            if 0 < targets[:, c].sum() < len(targets)]
    return float(np.mean(vals)) if vals else float("nan")


def topk_accuracy(true_idx: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the k highest scores."""
    if len(true_idx) == 0:
        return float("nan")
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([t in row for t, row in zip(true_idx, top)]))


def prf_at_threshold(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Micro precision, recall and F1 of ``scores >= threshold`` against binary targets."""
    pred = scores >= threshold
    tp = float(np.logical_and(pred, targets > 0).sum())
    fp = float(np.logical_and(pred, targets == 0).sum())
    fn = float(np.logical_and(~pred, targets > 0).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"threshold": threshold, "precision": p, "recall": r, "f1": f}


def recording_scores(window_scores: np.ndarray) -> np.ndarray:
    """Aggregate a recording's window probabilities ``[W, C]`` into one ``[C]`` score.

    The mean of the top quarter of windows per class: robust to the silent windows of a
    weakly labelled recording and to single-window false alarms.
    """
    w = np.sort(window_scores, axis=0)[::-1]
    k = max(1, int(np.ceil(len(w) / 4)))
    return w[:k].mean(axis=0)
