"""The silence/recall trade-off of a calibration offset, from a cross-validation's held-out logits.
Prints JSON (not a test): for each logit offset, false detections per hour at min-conf 0.25 on the
teacher-empty windows of validation recordings and on bird-free files, and the recall where the
teacher hears the focal species; with ``--at-recall R`` (repeatable) also the false detections per hour
at the offset where that recall is reached, to compare two runs' silence at equal recall.

    python scripts/offset_tradeoff.py runs/v3/cv_logits.npz [--step 0.25] [--max 8] [--at-recall 0.245]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from birdsound.crossval import at_offset, offset_keeping


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", help="a cross-validation's cv_logits.npz, or the run directory that holds it")
    ap.add_argument("--step", type=float, default=0.25)
    ap.add_argument("--max", type=float, default=8.0)
    ap.add_argument("--at-recall", type=float, action="append", default=[],
                    help="Also report the false detections at the offset giving this recall (repeatable).")
    a = ap.parse_args()
    path = os.path.join(a.npz, "cv_logits.npz") if os.path.isdir(a.npz) else a.npz
    if not os.path.isfile(path):
        ap.error(f"{path}: no such file (a cross-validation's cv_logits.npz, or its run directory)")
    z = np.load(path)
    folds = sorted({k[4] for k in z.files if k.startswith("fold")})
    cat = lambda key: np.concatenate([z[f"fold{k}{key}"] for k in folds])  # noqa: E731
    rec, files, present = cat("_free_recordings_logits"), cat("_free_files_logits"), cat("_present_logits")
    hours = np.sum([z[f"fold{k}_free_hours_by_source"] for k in folds], axis=0)

    def row(b: float) -> dict:
        fd = lambda logits, h: at_offset(logits, h, present, b)["false_detections_per_hour"]  # noqa: E731
        return {"offset": round(float(b), 3),
                "fd_per_hour_validation_recordings": round(fd(rec, hours[0]), 2),
                "fd_per_hour_bird_free_files": round(fd(files, hours[1]), 2) if hours[1] else None,
                "fd_per_hour_all": round(fd(np.concatenate([rec, files]), hours.sum()), 2),
                "recall_at_default": round(at_offset(rec, hours[0], present, b)["recall_at_default"], 4)}

    out = {"hours": {"validation_recordings": float(hours[0]), "bird_free_files": float(hours[1])},
           "present_windows": int(len(present)), "curve": [row(b) for b in np.arange(0.0, a.max + 1e-9, a.step)]}
    if a.at_recall:
        out["at_recall"] = [{"recall": r, **row(offset_for_recall(present, r))} for r in a.at_recall]
    print(json.dumps(out, indent=1))


def offset_for_recall(present: np.ndarray, recall: float) -> float:
    """The largest logit offset at which at least `recall` of the windows where the bird is there are
    still detected at min-conf 0.25."""
    return offset_keeping(present, max(1, int(np.ceil(recall * len(present) - 1e-9))))


if __name__ == "__main__":
    main()
