"""Compare two cross-validations of one recipe that differ only in how many training recordings each fold
learned from (``train_share``): recording top-1/top-5 (top-quarter score) and window macro AP, over all held-out
recordings and split by whether the fold thinned the species' training recordings, and the log-linear
extrapolation of each figure to the number of training recordings a target needs.

    python scripts/learning_curve.py runs/LC50 models/members/birdsound-xc69-h

Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np

from birdsound import crossval
from birdsound.dataset import read_dataset
from birdsound.metrics import macro_ap, recording_scores, topk_accuracy
from birdsound.teacher import sigmoid

TARGETS = {"recording_top1": 0.75, "recording_top5": 0.92, "window_macro_ap": 0.55}


def figures(arrays: dict, k: int, keep: np.ndarray | None = None) -> dict | None:
    """Top-1, top-5 (top-quarter score) and window macro AP of fold `k`'s held-out recordings (`keep`: a mask
    over them; None if it keeps none)."""
    w, rec = arrays[f"fold{k}_window_logits"], arrays[f"fold{k}_window_recording"]
    focal, targets = arrays[f"fold{k}_recording_focal"], arrays[f"fold{k}_recording_targets"]
    keep = np.ones(len(focal), bool) if keep is None else keep
    probs = sigmoid(w.astype(np.float64))
    idx = np.flatnonzero(keep)
    if not len(idx):
        return None
    R = np.stack([recording_scores(probs[rec == i], "top25") for i in idx])
    on = np.isin(rec, idx)
    ap, _ = macro_ap(targets[rec[on]].astype(np.float64), probs[on])
    return {"recording_top1": topk_accuracy(focal[idx], R, 1), "recording_top5": topk_accuracy(focal[idx], R, 5),
            "window_macro_ap": ap, "n_recordings": int(len(idx))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("small", help="the run that learned from fewer recordings")
    ap.add_argument("full", help="the run that learned from all of them")
    args = ap.parse_args()
    runs = {}
    for name, run in (("small", args.small), ("full", args.full)):
        metrics, arrays = crossval.read_cv_run(run)
        runs[name] = (metrics, arrays)
    m_small, a_small = runs["small"]
    m_full, a_full = runs["full"]
    cfg = m_small["config"]
    recs, _ = read_dataset(m_small["data"])
    out = {"small": args.small, "full": args.full, "train_share": cfg.get("train_share", 1.0), "folds": []}
    k_folds, share = m_small["cross_validation"]["k"], cfg.get("train_share", 1.0)
    for (k, tr, va), (_, thin, _) in zip(crossval.fold_splits(recs, k_folds, cfg["seed"]),
                                         crossval.fold_splits(recs, k_folds, cfg["seed"], share)):
        files = list(a_small[f"fold{k}_recording_files"])
        assert files == list(a_full[f"fold{k}_recording_files"]), "the runs held out other recordings"
        n_tr = {sp: sum(r.labels[0] == sp for r in tr) for sp in {r.labels[0] for r in tr}}
        n_thin = {sp: sum(r.labels[0] == sp for r in thin) for sp in n_tr}
        by_file = {r.path: r.labels[0] for r in va}
        thinned = np.array([n_thin.get(by_file[f], 0) < n_tr.get(by_file[f], 0) for f in files])
        row = {"training_recordings": [len(thin), len(tr)]}
        for part, mask in (("all", None), ("thinned_species", thinned), ("unthinned_species", ~thinned)):
            row[part] = {"small": figures(a_small, k, mask), "full": figures(a_full, k, mask)}
        out["folds"].append(row)
    n_small = np.mean([f["training_recordings"][0] for f in out["folds"]])
    n_full = np.mean([f["training_recordings"][1] for f in out["folds"]])
    out["mean"], out["extrapolation"] = {}, {}
    for part in ("all", "thinned_species", "unthinned_species"):
        got = {run: [f[part][run] for f in out["folds"] if f[part][run]] for run in ("small", "full")}
        out["mean"][part] = {run: {key: round(float(np.mean([g[key] for g in got[run]])), 4)
                                   for key in ("recording_top1", "recording_top5", "window_macro_ap")}
                             for run in got if got[run]}
    doublings = math.log2(n_full / n_small)
    for key, target in (TARGETS.items() if doublings > 0 else ()):
        lo, hi = out["mean"]["all"]["small"][key], out["mean"]["all"]["full"][key]
        per_doubling = (hi - lo) / doublings
        need = (target - hi) / per_doubling if per_doubling > 0 else math.inf
        out["extrapolation"][key] = {"gain_per_doubling": round(per_doubling, 4), "target": target,
                                     "doublings_needed": round(need, 2) if math.isfinite(need) else None,
                                     "training_recordings_needed": round(n_full * 2 ** need) if math.isfinite(need) else None}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
