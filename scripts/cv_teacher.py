"""The teacher's own figures on a cross-validation's held-out windows: the ceiling a distilled student aims at;
prints JSON.

Usage: python scripts/cv_teacher.py RUN_DIR [--cache runs/teacher_cache]

RUN_DIR is a `birdsound train --folds K --teacher birdnet` output (metrics.json, cv_logits.npz with the held-out
windows' identities). For every held-out window the cached BirdNET window that starts nearest to it (the teacher
pass's 1 s hop; both 3 s long) gives BirdNET's probabilities for our labels; these are scored exactly as the
student's: recording top-1/top-5 with each recording score, window macro AP and ROC-AUC against the weak labels.
Needs the teacher cache of that run (no audio, no BirdNET run). BirdNET has probably seen these xeno-canto
recordings in its own training, so its figures here are flattered.
"""

import argparse
import json
import os
import sys

import numpy as np

from birdsound import crossval
from birdsound import teacher as tc
from birdsound.metrics import RECORDING_SCORES, macro_ap, macro_auc, recording_scores, topk_accuracy


def nearest_rows(teacher_starts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row of `teacher_starts` (sorted) nearest to each of `starts`."""
    i = np.clip(np.searchsorted(teacher_starts, starts), 1, max(1, len(teacher_starts) - 1))
    left = teacher_starts[np.maximum(i - 1, 0)]
    right = teacher_starts[np.minimum(i, len(teacher_starts) - 1)]
    return np.where(np.abs(starts - left) <= np.abs(right - starts), np.maximum(i - 1, 0),
                    np.minimum(i, len(teacher_starts) - 1))


def scores(windows: list[tuple[np.ndarray, np.ndarray]], focal: np.ndarray) -> dict:
    """Figures of per-recording window probabilities ``[(probs [W, C], targets [C])]``."""
    out = {}
    for method in RECORDING_SCORES:
        rec = np.stack([recording_scores(p, method) for p, _ in windows])
        out[method] = {"recording_top1": round(topk_accuracy(focal, rec, 1), 4),
                       "recording_top5": round(topk_accuracy(focal, rec, 5), 4)}
    t = np.concatenate([np.repeat(y[None], len(p), 0) for p, y in windows])
    p = np.concatenate([p for p, _ in windows])
    return {"by_recording_score": out, "window_macro_ap": round(macro_ap(t, p)[0], 4),
            "window_macro_auc": round(macro_auc(t, p), 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--cache", default="runs/teacher_cache", help="the run's teacher cache (birdsound train --teacher-cache)")
    a = ap.parse_args()
    try:
        metrics, z = crossval.read_cv_run(a.run)
    except FileNotFoundError as e:
        ap.error(str(e))
    if "fold0_window_logits" not in z:
        sys.exit(f"{a.run}/cv_logits.npz: no held-out window identities (a run older than 2026-12-01)")
    labels = metrics["labels"]
    mapping = tc.map_labels(labels, tc.teacher_labels())
    if (mapping < 0).any():
        sys.exit(f"{a.run}: {int((mapping < 0).sum())} labels not among BirdNET's; the teacher cannot be scored on them")
    teacher, student, focal = [], [], []
    for k in range(metrics["cross_validation"]["k"]):
        rec, start = z[f"fold{k}_window_recording"], z[f"fold{k}_window_start_s"]
        logits = z[f"fold{k}_window_logits"].astype(np.float64)
        for i, path in enumerate(z[f"fold{k}_recording_files"]):
            f = tc.cache_path(a.cache, str(path), tc.TEACHER_HOP_S)
            if not os.path.isfile(f):
                sys.exit(f"{path}: no teacher output in {a.cache} (run python -m birdsound.teacher first)")
            out = tc.load_cached(f)
            rows = nearest_rows(out.starts_s, start[rec == i])
            y = z[f"fold{k}_recording_targets"][i]
            teacher.append((tc.sigmoid(out.logits[rows][:, mapping].astype(np.float64)), y))
            student.append((tc.sigmoid(logits[rec == i]), y))
            focal.append(int(z[f"fold{k}_recording_focal"][i]))
    focal = np.array(focal)
    print(json.dumps({"run": a.run, "recordings": len(focal), "windows": int(sum(len(p) for p, _ in teacher)),
                      "student_recording_score": metrics["cross_validation"]["recording_score"],
                      "teacher": scores(teacher, focal), "student": scores(student, focal)}, indent=1))


if __name__ == "__main__":
    main()
