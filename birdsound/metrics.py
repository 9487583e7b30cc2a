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


RECORDING_SCORES = ("top25", "top3", "max", "mean", "lme")


def recording_scores(window_scores: np.ndarray, method: str = "top25") -> np.ndarray:
    """Aggregate a recording's window probabilities ``[W, C]`` into one ``[C]`` score.

    ``top25``: mean of the top quarter of windows per class (robust to the silent windows of a
    weakly labelled recording and to single-window false alarms); ``top3``: mean of the three
    best windows; ``max``; ``mean``; ``lme``: log-mean-exp of the windows' logits (a soft maximum),
    back through the sigmoid.
    """
    w = np.sort(np.asarray(window_scores, dtype=np.float64), axis=0)[::-1]
    if method == "top25":
        return w[:max(1, int(np.ceil(len(w) / 4)))].mean(axis=0)
    if method == "top3":
        return w[:3].mean(axis=0)
    if method == "max":
        return w[0]
    if method == "mean":
        return w.mean(axis=0)
    if method == "lme":
        p = np.clip(w, 1e-6, 1 - 1e-6)
        logit = np.log(p / (1 - p))
        m = logit.max(axis=0)
        lme = m + np.log(np.mean(np.exp(logit - m), axis=0))
        return 1 / (1 + np.exp(-lme))
    raise ValueError(f"unknown recording score {method!r}; one of {', '.join(RECORDING_SCORES)}")


def window_hours(n_windows: int, window_s: float) -> float:
    """Hours of audio in `n_windows` windows of `window_s` seconds that do not overlap."""
    return n_windows * window_s / 3600.0


def rate_interval(n: int, hours: float, level: float = 0.95) -> tuple[float, float]:
    """The exact (Garwood) two-sided `level` confidence interval of a Poisson rate per hour, from `n` events
    in `hours`: how far a false-detection rate measured on little audio can be from the true one."""
    from scipy.stats import chi2

    if not hours:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    lo = chi2.ppf(a, 2 * n) / 2 if n else 0.0
    return float(lo / hours), float(chi2.ppf(1 - a, 2 * n + 2) / 2 / hours)


def false_detections(window_scores: np.ndarray, window_s: float, min_conf: float) -> dict:
    """Detections (window x species at or above `min_conf`) in windows known to hold none of the
    model's species, their rate per hour of audio (windows of `window_s` seconds, no overlap) and that
    rate's 95 % interval (:func:`rate_interval`)."""
    n = int((np.asarray(window_scores) >= min_conf).sum()) if len(window_scores) else 0
    return {**detection_rate(n, window_hours(len(window_scores), window_s)), "windows": int(len(window_scores))}


def detection_rate(n: int, hours: float) -> dict:
    """`n` detections in `hours` of audio: their rate per hour and its 95 % interval (:func:`rate_interval`)."""
    return {"detections": n, "hours": hours, "per_hour": n / hours if hours else float("nan"),
            "per_hour_95ci": rate_interval(n, hours)}
