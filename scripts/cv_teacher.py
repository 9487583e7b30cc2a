"""The teacher's own figures on a cross-validation's held-out windows: the ceiling a distilled student aims at;
prints JSON.

Usage: python scripts/cv_teacher.py RUN_DIR [--cache runs/teacher_cache]

RUN_DIR is a `birdsound train --folds K --teacher birdnet` output (metrics.json, cv_logits.npz with the held-out
windows' identities). For every held-out window the cached BirdNET window that starts nearest to it (the teacher
pass's 1 s hop; both 3 s long) gives BirdNET's probabilities for our labels; these are scored exactly as the
student's, by the same function (:func:`birdsound.crossval.ranking_metrics`): per fold and their mean, recording
top-1/top-5 with each recording score, window macro AP and ROC-AUC against the weak labels.
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


def nearest_rows(teacher_starts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Row of `teacher_starts` (sorted) nearest to each of `starts`."""
    i = np.clip(np.searchsorted(teacher_starts, starts), 1, max(1, len(teacher_starts) - 1))
    left = teacher_starts[np.maximum(i - 1, 0)]
    right = teacher_starts[np.minimum(i, len(teacher_starts) - 1)]
    return np.where(np.abs(starts - left) <= np.abs(right - starts), np.maximum(i - 1, 0),
                    np.minimum(i, len(teacher_starts) - 1))


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
    teacher, student = [], []
    for k in range(metrics["cross_validation"]["k"]):
        arrays = crossval.fold_arrays(z, k)
        rec, start = arrays["_window_recording"], arrays["_window_start_s"]
        logits = np.zeros(arrays["_window_logits"].shape)  # BirdNET's logits of our labels, window by window
        for i, path in enumerate(arrays["_recording_files"]):
            f = tc.cache_path(a.cache, str(path), tc.TEACHER_HOP_S)
            if not os.path.isfile(f):
                sys.exit(f"{path}: no teacher output in {a.cache} (run python -m birdsound.teacher first)")
            out = tc.load_cached(f)
            logits[rec == i] = out.logits[nearest_rows(out.starts_s, start[rec == i])][:, mapping]
        teacher.append(crossval.ranking_metrics(logits, arrays))
        student.append(crossval.ranking_metrics(arrays["_window_logits"], arrays))
    figures = lambda folds: {"folds": folds, "mean": crossval.mean_metrics(folds)}  # noqa: E731
    print(json.dumps({"run": a.run, "student_recording_score": metrics["cross_validation"]["recording_score"],
                      "teacher": figures(teacher), "student": figures(student)}, indent=1, default=float))

if __name__ == "__main__":
    main()
