"""What the cross-validated false detections on BirdNET-empty validation windows are; prints JSON.

Usage: python scripts/cv_false_detections.py RUN_DIR [--data datasets/xc_train_manifest.csv]
       [--teacher-cache runs/teacher_cache]

RUN_DIR is a `birdsound train --folds K --teacher birdnet` output (metrics.json, cv_logits.npz). The
held-out logits of the windows in which BirdNET hears none of our species are matched back to their
recordings (by the identities saved beside them; for runs older than that, rebuilt from the data with the
same folds and window rule) and every window the student calls a
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
from birdsound.metadata import WINDOW_S
from birdsound.teacher import TEACHER_HOP_S, cache_path, load_cached, map_labels, sigmoid, teacher_labels
from birdsound.trainset import load_training_data

IDS = "_free_recordings_recording"  # saved by runs since the held-out windows keep their identity


def held_out_rows(a, metrics: dict, arrays) -> list[list[tuple[str, str, float]]]:
    """Per fold, (file, focal species, start in s) of each BirdNET-empty validation window, in the order of
    its logits: saved beside them by newer runs; rebuilt for older ones from the data, the folds and the
    window rule (loads every recording)."""
    cv, labels = metrics["cross_validation"], metrics["labels"]
    if f"fold0{IDS}" in arrays:
        out = []
        for k in range(cv["k"]):
            files, focal = arrays[f"fold{k}_recording_files"], arrays[f"fold{k}_recording_focal"]
            out.append([(str(files[i]), labels[focal[i]], float(s))
                        for i, s in zip(arrays[f"fold{k}{IDS}"], arrays[f"fold{k}_free_recordings_start_s"])])
        return out
    prep = load_training_data(a.data, teacher="birdnet", cache_dir=a.teacher_cache,
                              frontend=metrics["config"].get("frontend"))
    if prep.labels != labels:
        sys.exit(f"{a.data}: labels differ from {a.run}/metrics.json")
    index = {lab: i for i, lab in enumerate(labels)}
    out = []
    for _, _, va in crossval.fold_splits(prep.recs, cv["k"], metrics["config"]["seed"]):
        out.append([(r.path, r.labels[0], s / prep.frame_rate) for r in va
                    for s in crossval.bird_free_windows(r, [index[lab] for lab in r.labels], prep.window_frames,
                                                        prep.frame_rate, prep.window_s)])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--data", default="datasets/xc_train_manifest.csv")
    ap.add_argument("--teacher-cache", default="runs/teacher_cache")
    a = ap.parse_args()
    try:
        metrics, arrays = crossval.read_cv_run(a.run)
    except FileNotFoundError as e:
        ap.error(str(e))
    cv = metrics["cross_validation"]
    offset, labels = cv["logit_offset"], metrics["labels"]
    theirs = teacher_labels()
    ours_in_theirs = set(map_labels(labels, theirs).tolist())  # by scientific name, with synonyms
    cached = {}
    thr = crossval.threshold()
    report = {"run": a.run, "logit_offset": offset, "folds": []}
    for k, rows in enumerate(held_out_rows(a, metrics, arrays)):
        z = arrays[f"fold{k}_free_recordings_logits"].reshape(-1, len(labels))
        if len(z) != len(rows):
            sys.exit(f"fold {k}: {len(z)} logged windows, {len(rows)} rebuilt; data or code changed since {a.run}")
        fold = {"fold": k, "windows": len(rows), "hours": len(rows) * WINDOW_S / 3600}
        for name, b in (("raw", 0.0), ("calibrated", offset)):
            dets = []
            for (path, focal, start_s), zz in zip(rows, z):
                for c in np.where(zz >= thr + b)[0]:
                    if path not in cached:
                        cached[path] = load_cached(cache_path(a.teacher_cache, path, TEACHER_HOP_S))
                    t = cached[path]
                    i = int(np.argmin(np.abs(t.starts_s - start_s)))
                    p = sigmoid(t.logits[i].astype(np.float64))
                    top = int(np.argmax(p))
                    other = bool(p[top] >= OTHER_P and top not in ours_in_theirs)
                    dets.append({"file": os.path.basename(path), "start_s": round(start_s, 2),
                                 "focal": focal, "named": labels[c],
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
