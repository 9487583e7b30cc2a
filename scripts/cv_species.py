"""Which species a cross-validated recipe gets wrong, and for which; prints JSON.

Usage: python scripts/cv_species.py RUN_DIR

RUN_DIR is a `birdsound train --folds K` output (metrics.json, cv_logits.npz with the held-out windows'
identities, saved by runs since 2026-12-01). From the held-out window logits alone (no audio, no model):
per focal species, its recordings, how many the recording score (the run's chosen aggregation) puts first
and in the top five, its window AP (the folds' windows pooled; every label of a recording is a positive in
all its windows), and the species it is mistaken for; then the most frequent confusions over all species.
Worst species first.
"""

import argparse
import json
import sys
from collections import Counter

import numpy as np

from birdsound import crossval
from birdsound.metrics import macro_ap, recording_scores
from birdsound.teacher import sigmoid


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    a = ap.parse_args()
    try:
        metrics, z = crossval.read_cv_run(a.run)
    except FileNotFoundError as e:
        ap.error(str(e))
    cv, labels = metrics["cross_validation"], metrics["labels"]
    if "fold0_window_logits" not in z:
        sys.exit(f"{a.run}/cv_logits.npz: no held-out window identities (a run older than 2026-12-01); "
                 "rerun the cross-validation")
    method = cv["recording_score"]
    rows, targets, scores = [], [], []
    for k in range(cv["k"]):
        probs = sigmoid(z[f"fold{k}_window_logits"].astype(np.float64))
        rec, focal = z[f"fold{k}_window_recording"], z[f"fold{k}_recording_focal"]
        targets.append(z[f"fold{k}_recording_targets"][rec])
        scores.append(probs)
        for i in range(len(focal)):
            order = np.argsort(-recording_scores(probs[rec == i], method))
            rows.append({"focal": int(focal[i]), "rank": int(np.where(order == focal[i])[0][0]) + 1,
                         "first": int(order[0])})
    _, ap_per = macro_ap(np.concatenate(targets), np.concatenate(scores))
    species = []
    for c, lab in enumerate(labels):
        mine = [r for r in rows if r["focal"] == c]
        if not mine:
            continue
        wrong = Counter(labels[r["first"]] for r in mine if r["rank"] > 1)
        species.append({"species": lab, "recordings": len(mine), "top1": sum(r["rank"] == 1 for r in mine),
                        "top5": sum(r["rank"] <= 5 for r in mine), "window_ap_pooled": round(ap_per.get(c, np.nan), 3),
                        "mistaken_for": dict(wrong.most_common())})
    species.sort(key=lambda s: (s["top1"] / s["recordings"], s["window_ap_pooled"]))
    pairs = Counter((labels[r["focal"]], labels[r["first"]]) for r in rows if r["rank"] > 1)
    print(json.dumps({"run": a.run, "recording_score": method, "recordings": len(rows),
                      "top1": round(float(np.mean([r["rank"] == 1 for r in rows])), 4),
                      "top5": round(float(np.mean([r["rank"] <= 5 for r in rows])), 4),
                      "species": species,
                      "confusions": [{"focal": f, "named": n, "recordings": c} for (f, n), c in pairs.most_common(15)]},
                     indent=1))


if __name__ == "__main__":
    main()
