"""Do a run's fold models fire on augmented views of bird-free audio more than on the plain audio?

For each fold model (``RUN/fold<k>.pt``, from ``birdsound train --folds`` or ``--cv-only``) and its held-out
recordings: the windows in which BirdNET hears none of our species (teacher cache), plain and as their augmented
views (:mod:`birdsound.views`, cached by a run with ``views`` N); prints JSON with the share of each whose highest
species probability (uncalibrated) reaches 0.25, and the mean of that highest probability. Needs the ``distill``
extra and a teacher cache that holds the views.

    python scripts/probe_view_false_detections.py runs/J runs/K --views 2
"""

from __future__ import annotations

import argparse
import os
import json

import numpy as np
import torch

from birdsound.crossval import window_probs
from birdsound.detect import DEFAULT_MIN_CONF
from birdsound.model import load_checkpoint
from birdsound.teacher import empty
from birdsound.trainset import load_training_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders holding fold1.pt, fold2.pt, ...")
    ap.add_argument("--data", default="datasets/xc_train_manifest.csv")
    ap.add_argument("--teacher-cache", default="runs/teacher_cache")
    ap.add_argument("--views", type=int, default=2, help="views per teacher window, as the run that cached them")
    ap.add_argument("--folds", type=int, default=2)
    a = ap.parse_args()
    missing = [f"{run}/fold{k}.pt" for run in a.runs for k in range(1, a.folds + 1)
               if not os.path.isfile(f"{run}/fold{k}.pt")]
    if missing:
        ap.error(f"{missing[0]}: no such fold model (a cross-validated run folder is needed)")
    torch.set_num_threads(2)
    prep = load_training_data(a.data, teacher="birdnet", cache_dir=a.teacher_cache, views=a.views)
    index = {lab: i for i, lab in enumerate(prep.labels)}
    out = {}
    for run in a.runs:
        for k in range(1, a.folds + 1):
            net, meta = load_checkpoint(f"{run}/fold{k}.pt")
            net.eval()
            held = set(meta.extra["cv_held_out_recordings"])
            plain, views = [], []
            with torch.no_grad():
                for r in prep.recs:
                    if r.path not in held or r.teacher is None or r.views is None:
                        continue
                    cols = [index[lab] for lab in r.labels]
                    if len(e := np.flatnonzero(empty(r.teacher, cols))):
                        plain.append(window_probs(net, r.power, r.teacher.frames[e], prep.window_frames).max(1))
                    if len(ev := np.flatnonzero(empty(r.views.targets, cols))):
                        views.append(torch.sigmoid(net.forward_mel(r.views.power[ev].float())).max(1).values.numpy())
            out[f"{run}/fold{k}"] = {name: {"windows": int(len(v)), "fire": round(float(np.mean(v >= DEFAULT_MIN_CONF)), 3),
                                            "mean_max_p": round(float(v.mean()), 3)}
                                     for name, v in (("plain", np.concatenate(plain)), ("views", np.concatenate(views)))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
