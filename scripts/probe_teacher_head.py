"""Would BirdNET's own classifier help a student name species it saw in one or two recordings? Prints JSON.

BirdNET V2.4's logits are a linear function of its 1,024-d embedding (``model/GLOBAL_AVG_POOL/Mean``); that
head is recovered here by least squares from the teacher cache. For each fold of a cross-validated run, a
ridge regression maps the fold model's embedding to BirdNET's on the fold's training windows; BirdNET's head
on the mapped embedding of the held-out windows gives a second set of logits, scored like the run's own
(window macro AP, recording top-1/top-5) alone and averaged with the run's logits. No training, no BirdNET run.

    python scripts/probe_teacher_head.py models/members/birdsound-xc69-h [--ridge 10]
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
import torch

from birdsound import crossval, teacher as tc
from birdsound.model import load_checkpoint
from birdsound.trainset import load_training_data
from birdsound.augment import crop


def teacher_head(cache_dir: str) -> tuple[np.ndarray, np.ndarray, float]:
    """BirdNET's head ``(W [1024, 6522], b [6522])`` fitted to every cached (embedding, logits) pair, and the
    largest absolute residual (float16 rounding if the head is linear)."""
    E, L = [], []
    for p in sorted(glob.glob(os.path.join(cache_dir, "*_hop1000_v1.npz"))):  # the plain windows' files
        o = tc.load_cached(p)
        E.append(o.embeddings.astype(np.float64))
        L.append(o.logits.astype(np.float64))
    E, L = np.concatenate(E), np.concatenate(L)
    X = np.c_[E, np.ones(len(E))]
    Wb, *_ = np.linalg.lstsq(X, L, rcond=None)
    return Wb[:-1], Wb[-1], float(np.abs(X @ Wb - L).max())


@torch.no_grad()
def embeddings(net, power: torch.Tensor, starts, wf: int) -> np.ndarray:
    crops = torch.stack([crop(power, int(s), wf) for s in starts]).float()
    return torch.cat([net.backbone(net.frontend.normalize(c)) for c in crops.split(128)]).numpy().astype(np.float64)


def ridge(X: np.ndarray, Y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    mx, my = X.mean(0), Y.mean(0)
    Xc = X - mx
    A = np.linalg.solve(Xc.T @ Xc + lam * len(X) * np.eye(X.shape[1]), Xc.T @ (Y - my))
    return A, my - mx @ A


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="datasets/xc_train_manifest.csv")
    ap.add_argument("--cache", default="runs/teacher_cache")
    ap.add_argument("--ridge", type=float, action="append", default=[])
    a = ap.parse_args()
    W, b, resid = teacher_head(a.cache)
    metrics, z = crossval.read_cv_run(a.run)
    frontend = load_checkpoint(os.path.join(a.run, "fold1.pt"))[0].frontend.config()
    prep = load_training_data(a.data, teacher="birdnet", cache_dir=a.cache, frontend=frontend)
    mapping = tc.map_labels(prep.labels, tc.teacher_labels())
    assert (mapping >= 0).all()
    W69, b69 = W[:, mapping], b[mapping]
    wf, fps = prep.window_frames, prep.frame_rate
    hop = int(round(crossval.EVAL_HOP_S * fps))
    by_path = {r.path: r for r in prep.recs}
    out = {"run": a.run, "head_max_residual": resid, "folds": []}
    lams = a.ridge or [1e-3, 1e-2, 1e-1]
    for k in range(int(metrics["cross_validation"]["k"])):
        net, meta = load_checkpoint(os.path.join(a.run, f"fold{k + 1}.pt"))
        net.eval()
        held = set(meta.extra["cv_held_out_recordings"])
        arrays = crossval.fold_arrays(z, k)
        train = [r for r in prep.recs if r.path not in held]
        Xs, Yt = [], []
        for r in train:
            t = r.teacher
            ok = t.frames <= r.power.shape[1] - wf
            Xs.append(embeddings(net, r.power, t.frames[ok], wf))
            Yt.append(np.asarray(t.emb, dtype=np.float64)[ok])
        Xs, Yt = np.concatenate(Xs), np.concatenate(Yt)
        Xv = np.concatenate([embeddings(net, by_path[p].power, crossval.full_window_starts(by_path[p].power, wf, hop), wf)
                             for p in arrays["_recording_files"]])
        assert len(Xv) == len(arrays["_window_logits"])
        own = arrays["_window_logits"].astype(np.float64)
        fold = {"fold": k + 1, "train_windows": len(Xs), "own": pick(crossval.ranking_metrics(own, arrays))}
        for lam in lams:
            A, c = ridge(Xs, Yt, lam)
            Ev = Xv @ A + c
            th = Ev @ W69 + b69
            fold[f"ridge{lam}"] = {"teacher_head": pick(crossval.ranking_metrics(th, arrays)),
                                   "mean_with_own": pick(crossval.ranking_metrics((th + own) / 2, arrays))}
        out["folds"].append(fold)
        print(json.dumps(fold), flush=True)
    print(json.dumps(out, indent=1))


def pick(m: dict) -> dict:
    return {k: round(m[k], 4) for k in ("window_macro_ap", "recording_top1_top25", "recording_top5_top25")}


if __name__ == "__main__":
    main()
