"""What the cross-validated false detections on BirdNET-empty validation windows are; prints JSON.

Usage: python scripts/cv_false_detections.py RUN_DIR [--data datasets/xc_train_manifest.csv]
       [--teacher-cache runs/teacher_cache]

RUN_DIR is a `birdsound train --folds K --teacher birdnet` output (metrics.json, cv_logits.npz). The
held-out logits of the windows in which BirdNET hears none of our species are matched back to their
recordings (same folds, same window rule as the cross-validation) and every window the student calls a
detection at the default min-conf is described, raw and with the calibration offset: the species named,
the recording's focal species, and what BirdNET hears there among all its 6,522 labels. A detection of a
bird BirdNET hears but which is not one of ours is an open-set error; one where BirdNET hears nothing is a
phantom.
"""

import argparse
import json
import os
import sys

import numpy as np

from birdsound import crossval
from birdsound.augment import OTHER_P
from birdsound.teacher import TEACHER_HOP_S, cache_path, load_cached, map_labels, sigmoid, teacher_labels
from birdsound.trainset import load_training_data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--data", default="datasets/xc_train_manifest.csv")
    ap.add_argument("--teacher-cache", default="runs/teacher_cache")
    a = ap.parse_args()
    metrics = json.load(open(os.path.join(a.run, "metrics.json")))
    arrays = np.load(os.path.join(a.run, "cv_logits.npz"))
    cv = metrics["cross_validation"]
    offset, k_folds, seed = cv["logit_offset"], cv["k"], metrics["config"]["seed"]
    prep = load_training_data(a.data, teacher="birdnet", cache_dir=a.teacher_cache,
                              frontend=metrics["config"].get("frontend"))
    if prep.labels != metrics["labels"]:
        sys.exit(f"{a.data}: labels differ from {a.run}/metrics.json")
    index = {lab: i for i, lab in enumerate(prep.labels)}
    theirs = teacher_labels()
    ours_in_theirs = set(map_labels(prep.labels, theirs).tolist())  # by scientific name, with synonyms
    cached = {}
    thr = crossval.threshold()
    report = {"run": a.run, "logit_offset": offset, "folds": []}
    for k, _, va in crossval.fold_splits(prep.recs, k_folds, seed):
        rows = []
        for r in va:
            starts = crossval.bird_free_windows(r, [index[lab] for lab in r.labels], prep.window_frames,
                                                prep.frame_rate, prep.window_s)
            rows += [(r, s) for s in starts]
        z = arrays[f"fold{k}_free_recordings_logits"].reshape(-1, len(prep.labels))
        if len(z) != len(rows):
            sys.exit(f"fold {k}: {len(z)} logged windows, {len(rows)} rebuilt; data or code changed since {a.run}")
        fold = {"fold": k, "windows": len(rows), "hours": len(rows) * prep.window_s / 3600}
        for name, b in (("raw", 0.0), ("calibrated", offset)):
            dets = []
            for (r, s), zz in zip(rows, z):
                for c in np.where(zz >= thr + b)[0]:
                    if r.path not in cached:
                        cached[r.path] = load_cached(cache_path(a.teacher_cache, r.path, TEACHER_HOP_S))
                    t = cached[r.path]
                    i = int(np.argmin(np.abs(t.starts_s - s / prep.frame_rate)))
                    p = sigmoid(t.logits[i].astype(np.float64))
                    top = int(np.argmax(p))
                    other = bool(p[top] >= OTHER_P and top not in ours_in_theirs)
                    dets.append({"file": os.path.basename(r.path), "start_s": round(s / prep.frame_rate, 2),
                                 "focal": r.labels[0], "named": prep.labels[c],
                                 "confidence": round(float(sigmoid(zz[c] - b)), 3),
                                 "birdnet_top": theirs[top], "birdnet_top_p": round(float(p[top]), 3),
                                 "birdnet_hears_other": other})
            fold[name] = {"detections": len(dets),
                          "per_hour": len(dets) / fold["hours"] if fold["hours"] else None,
                          "naming_focal_species": sum(d["named"] == d["focal"] for d in dets),
                          "where_birdnet_hears_a_label_not_ours": sum(d["birdnet_hears_other"] for d in dets),
                          "recordings": len({d["file"] for d in dets}), "list": dets}
        report["folds"].append(fold)
    for name in ("raw", "calibrated"):
        f = [fold[name] for fold in report["folds"]]
        report[name] = {key: sum(x[key] for x in f) for key in
                        ("detections", "naming_focal_species", "where_birdnet_hears_a_label_not_ours", "recordings")}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
