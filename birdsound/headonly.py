"""Head-only transfer: a new, calibrated linear layer on the frozen backbone of a trained model, fitted in
seconds on a user's own species (``birdsound train DATA --head-only --base MODEL``)."""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import crossval
from .augment import crop
from .dataset import Recording
from .metadata import Metadata
from .model import BirdNetLite, load_checkpoint, save_checkpoint
from .trainset import Prepared, load_training_data
from .util import atomic_write

@torch.no_grad()
def embed_crops(net: BirdNetLite, power: torch.Tensor, starts, window_frames: int) -> torch.Tensor:
    crops = torch.stack([crop(power, int(s), window_frames) for s in starts])
    return torch.cat([net.backbone(net.frontend.normalize(c)) for c in crops.split(128)])


def head_data(net: BirdNetLite, prep: Prepared, recs: list[Recording], per_rec: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of the active windows of `recs` (targets: their labels) and of bird-free windows."""
    rng = np.random.default_rng(seed)
    index = {lab: i for i, lab in enumerate(prep.labels)}
    wf, X, Y = prep.window_frames, [], []
    for r in recs:
        starts = r.starts if len(r.starts) <= per_rec else rng.choice(r.starts, per_rec, replace=False)
        e = embed_crops(net, r.power, starts, wf)
        y = torch.zeros(len(e), len(prep.labels))
        for lab in r.labels:
            y[:, index[lab]] = 1
        X.append(e)
        Y.append(y)
        if r.quiet is not None and len(r.quiet):
            X.append(embed_crops(net, r.power, r.quiet[:4], wf))
            Y.append(torch.zeros(len(X[-1]), len(prep.labels)))
    for p in prep.noise_powers:
        starts = rng.integers(0, max(1, p.shape[1] - wf), 16)
        X.append(embed_crops(net, p, starts, wf))
        Y.append(torch.zeros(16, len(prep.labels)))
    return torch.cat(X), torch.cat(Y)


def fit_head(X: torch.Tensor, Y: torch.Tensor, seed: int, epochs: int = 400) -> nn.Linear:
    """A linear layer on standardised embeddings (standardisation folded into its weights)."""
    torch.manual_seed(seed)
    head = nn.Linear(X.shape[1], Y.shape[1])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(head(Xn), Y).backward()
        opt.step()
    with torch.no_grad():
        out = nn.Linear(X.shape[1], Y.shape[1])
        out.weight.copy_(head.weight / sd)
        out.bias.copy_(head.bias - (head.weight * mu / sd).sum(1))
    return out


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Temperature T minimising the cross-entropy of ``sigmoid(logits / T)`` on held-out predictions."""
    best, best_t = math.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.5), np.log(20.0), 60)):
        loss = float(F.binary_cross_entropy_with_logits(logits / float(t), targets))
        if loss < best:
            best, best_t = loss, float(t)
    return best_t


def scaled(head: nn.Linear, temperature: float) -> nn.Linear:
    with torch.no_grad():
        head.weight.div_(temperature)
        head.bias.div_(temperature)
    return head


def train_head(data: str, base: str, out_dir: str, seed: int = 0, folds: int = 2, per_rec: int = 64,
               model_version: str | None = None, license: str = "same terms as the training recordings",
               log=tqdm.write) -> dict:
    """Train only a new classification head on the frozen backbone of `base` (transfer learning).

    The backbone's embeddings of each recording's active windows (and of background windows, as
    negatives) are computed once; a linear layer is fitted on them in seconds. Its confidence is
    calibrated: a temperature is fitted on the held-out predictions of `folds`-fold cross-validation
    by recording (at least 2) and folded into the layer.
    """
    from .modelcard import model_card

    t0 = time.time()
    base_net, base_meta = load_checkpoint(base)
    prep = load_training_data(data, base_meta.sample_rate, base_meta.window_s, seed=seed,
                              frontend=base_net.frontend.config())
    for n in prep.notes:
        log(n)
    report: dict = {"data": data, "base": base, "labels": prep.labels, "n_recordings": len(prep.recs),
                    "head_only": True}
    res, held_logits, held_targets = [], [], []
    backbone_cfg = base_meta.extra.get("backbone")
    for k, tr, va in crossval.fold_splits(prep.recs, max(2, folds), seed):
        X, Y = head_data(base_net, prep, tr, per_rec, seed)
        head = fit_head(X, Y, seed)
        Xv, Yv = head_data(base_net, prep, va, per_rec, seed + 1)
        with torch.no_grad():
            held_logits.append(head(Xv))
        held_targets.append(Yv)
        res.append(crossval.public(crossval.validate(assemble(base_net, head, prep.labels, backbone_cfg), prep, va)))
    temperature = fit_temperature(torch.cat(held_logits), torch.cat(held_targets))
    report["cross_validation"] = {"folds": res, "mean": crossval.mean_metrics(res)}
    report["calibration_temperature"] = temperature
    X, Y = head_data(base_net, prep, prep.recs, per_rec, seed)
    net = assemble(base_net, scaled(fit_head(X, Y, seed), temperature), prep.labels, backbone_cfg)
    meta = Metadata(prep.labels, base_meta.sample_rate, base_meta.window_s,
                    model_version or f"{base_meta.model_version}+head-{time.strftime('%Y%m%d')}", license,
                    {**base_meta.extra, "base_model": base_meta.model_version, "head_only": True,
                     "calibration_temperature": round(temperature, 4), "recording_score": "top25"})
    meta.extra.pop("teacher", None)
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint(net, meta, os.path.join(out_dir, "model.pt"))
    atomic_write(os.path.join(out_dir, "MODEL_CARD.md"), model_card(meta, net, prep.recs, report))
    report["wall_s"] = time.time() - t0
    atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(report, indent=1, default=float) + "\n")
    return report


def assemble(base_net: BirdNetLite, head: nn.Linear, labels: list[str], backbone: dict | None = None) -> BirdNetLite:
    """A model of `base_net`'s front end and backbone (of config `backbone`) with `head`."""
    net = BirdNetLite(len(labels), int(base_net.frontend.mel.sample_rate), frontend=base_net.frontend.config(),
                      backbone=backbone)
    net.frontend.load_state_dict(base_net.frontend.state_dict())
    net.backbone.load_state_dict(base_net.backbone.state_dict())
    net.head.load_state_dict(head.state_dict())
    return net.eval()
