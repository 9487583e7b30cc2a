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
from collections import Counter

import numpy as np

from birdsound import crossval
from birdsound.dataset import read_dataset

TARGETS = {"recording_top1": 0.75, "recording_top5": 0.92, "window_macro_ap": 0.55}


def figures(arrays: dict, keep: np.ndarray | None = None) -> dict | None:
    """Top-1, top-5 (top-quarter score) and window macro AP (:func:`birdsound.crossval.ranking_metrics`) of a
    fold's held-out recordings (`arrays`, :func:`birdsound.crossval.fold_arrays`; `keep`: a mask over the
    recordings; None if it keeps none)."""
    rec = arrays["_window_recording"]
    idx = np.flatnonzero(np.ones(len(arrays["_recording_focal"]), bool) if keep is None else keep)
    if not len(idx):
        return None
    on = np.isin(rec, idx)
    kept = {"_window_recording": np.searchsorted(idx, rec[on]), "_recording_focal": arrays["_recording_focal"][idx],
            "_recording_targets": arrays["_recording_targets"][idx]}
    m = crossval.ranking_metrics(arrays["_window_logits"][on], kept)
    return {"recording_top1": m["recording_top1_top25"], "recording_top5": m["recording_top5_top25"],
            "window_macro_ap": m["window_macro_ap"], "n_recordings": int(len(idx))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("small", help="the run that learned from fewer recordings")
    ap.add_argument("full", help="the run that learned from all of them")
    args = ap.parse_args()
    m_small, z_small = crossval.read_cv_run(args.small)
    z_full = crossval.read_cv_run(args.full)[1]
    cfg = m_small["config"]
    share = cfg.get("train_share", 1.0)
    recs, _ = read_dataset(m_small["data"])
    out = {"small": args.small, "full": args.full, "train_share": share, "folds": []}
    k_folds = m_small["cross_validation"]["k"]
    for (k, tr, va), (_, thin, _) in zip(crossval.fold_splits(recs, k_folds, cfg["seed"]),
                                         crossval.fold_splits(recs, k_folds, cfg["seed"], share)):
        a_small, a_full = crossval.fold_arrays(z_small, k), crossval.fold_arrays(z_full, k)
        files = list(a_small["_recording_files"])
        assert files == list(a_full["_recording_files"]), "the runs held out other recordings"
        n_tr, n_thin = Counter(r.labels[0] for r in tr), Counter(r.labels[0] for r in thin)
        by_file = {r.path: r.labels[0] for r in va}
        thinned = np.array([n_thin[by_file[f]] < n_tr[by_file[f]] for f in files])
        row = {"training_recordings": [len(thin), len(tr)]}
        for part, mask in (("all", None), ("thinned_species", thinned), ("unthinned_species", ~thinned)):
            row[part] = {"small": figures(a_small, mask), "full": figures(a_full, mask)}
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
