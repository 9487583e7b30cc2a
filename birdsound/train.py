"""Train the compact CNN on weakly labelled recordings, with cross-validation by recording.

Pipeline: decode every recording once at the model rate and keep its mel *power*
(float16); sample training windows from the active stretches of each recording
(class-balanced); augment in the power domain (mixing two species, background noise at a
random SNR, gain, band-limiting), then log-mel normalisation and SpecAugment masks.
Windows without birds (synthesized noise, the quietest stretches of recordings, a user's
``noise`` folder) are trained as all-negative targets, so the model stays quiet on them.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import audio
from .features import HOP_SAMPLES, LOG_EPS, n_frames
from .metrics import macro_ap, macro_auc, recording_scores, topk_accuracy
from .model import (EMBED_DIM, SAMPLE_RATE_HZ, WINDOW_S, BirdNetLite, Metadata,
                    count_mflops, count_parameters, load_checkpoint, save_checkpoint)

NOISE_FOLDERS = {"noise", "background", "other", "non-bird", "nonbird"}
CANDIDATE_STEP_FRAMES = 8  # spacing of candidate training windows (0.16 s)
ACTIVE_QUANTILE = 0.35  # windows below this activity quantile of their recording are not bird windows
QUIET_QUANTILE = 0.05  # windows below this quantile (and below QUIET_MAX) are background candidates
QUIET_MAX = 0.6
EVAL_HOP_S = 1.5
SYNTH_NOISE_S = 40.0


@dataclass
class Recording:
    path: str
    labels: list[str]
    info: dict = field(default_factory=dict)
    power: torch.Tensor | None = None  # [F, T] float16 mel power
    starts: np.ndarray | None = None  # active window start frames
    quiet: np.ndarray | None = None  # quiet window start frames


def read_dataset(data: str) -> tuple[list[Recording], list[str]]:
    """Recordings and background files from a species-folder tree or a manifest CSV.

    Folder layout (BirdNET-Analyzer's): ``DATA/<Scientific name>_<Common name>/*.wav``; a
    folder named ``noise``/``background``/``other`` holds recordings without birds.
    Manifest: CSV with columns ``path`` (relative to the CSV) and ``species``; extra columns
    (xc_id, recordist, license) are kept for the model card. Returns (recordings, noise files).
    """
    if os.path.isfile(data):
        base = os.path.dirname(os.path.abspath(data))
        recs, noise = [], []
        with open(data, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "species"} <= set(reader.fieldnames):
                raise ValueError(f"{data}: manifest needs columns 'path' and 'species'")
            for row in reader:
                p = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
                sp = row["species"].strip()
                if sp.lower() in NOISE_FOLDERS or not sp:
                    noise.append(p)
                else:
                    recs.append(Recording(p, [s.strip() for s in sp.split(";")], dict(row)))
        return recs, noise
    if not os.path.isdir(data):
        raise ValueError(f"{data}: no such folder or manifest")
    recs, noise = [], []
    for sub in sorted(os.listdir(data)):
        full = os.path.join(data, sub)
        if not os.path.isdir(full):
            continue
        files = [f for f, _ in audio.find_audio_files([full])]
        if sub.lower() in NOISE_FOLDERS:
            noise += files
        else:
            recs += [Recording(f, [sub]) for f in files]
    if not recs:
        raise ValueError(f"{data}: no species folders with audio files found")
    return recs, noise


def activity(power: torch.Tensor, window_frames: int) -> np.ndarray:
    """Activity of every window start: mean log-energy above each bin's recording median."""
    logmel = torch.log(power.float() + LOG_EPS)
    rel = (logmel - logmel.median(dim=1, keepdim=True).values).clamp(min=0).mean(dim=0).numpy()
    if len(rel) < window_frames:
        return np.array([rel.mean()])
    c = np.concatenate([[0.0], np.cumsum(rel)])
    return (c[window_frames:] - c[:-window_frames]) / window_frames


def prepare(recs: list[Recording], frontend: nn.Module, window_frames: int, desc: str = "decoding") -> list[Recording]:
    """Decode, compute mel power and choose active/quiet windows; drops unreadable files."""
    ok = []
    for r in tqdm(recs, desc=desc, unit="file", leave=False):
        try:
            x = audio.load(r.path, SAMPLE_RATE_HZ)
        except audio.AudioError as e:
            tqdm.write(f"skipped: {e}")
            continue
        if len(x) < window_frames * HOP_SAMPLES + 1024:
            x = np.pad(x, (0, window_frames * HOP_SAMPLES + 1024 - len(x)))
        with torch.no_grad():
            r.power = frontend.power_mel(torch.from_numpy(x)[None])[0].to(torch.float16)
        act = activity(r.power, window_frames)
        cand = np.arange(0, len(act), CANDIDATE_STEP_FRAMES)
        a = act[cand]
        r.starts = cand[a >= np.quantile(a, ACTIVE_QUANTILE)]
        r.quiet = cand[(a <= np.quantile(a, QUIET_QUANTILE)) & (a < QUIET_MAX)]
        ok.append(r)
    return ok


def synth_noise(seed: int, sample_rate: int = SAMPLE_RATE_HZ) -> list[np.ndarray]:
    """Waveforms without birds: white, pink, brown, gusty wind, rain clicks, mains hum, near-silence."""
    rng = np.random.default_rng(seed)
    n = int(SYNTH_NOISE_S * sample_rate)
    white = rng.standard_normal(n)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / sample_rate), 10.0)
    pink = np.fft.irfft(spec / np.sqrt(f), n)
    brown = np.fft.irfft(spec / f, n)
    gust = np.interp(np.arange(n), np.linspace(0, n, 40), rng.uniform(0.1, 1.0, 40))
    wind = brown * gust
    rain = np.zeros(n)
    idx = rng.integers(0, n - 64, 4000)
    for i in idx:
        rain[i:i + 64] += rng.standard_normal(64) * np.exp(-np.arange(64) / 8) * rng.uniform(0.2, 1)
    t = np.arange(n) / sample_rate
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8)) + 0.05 * white
    quiet = 1e-4 * white
    out = []
    for w in (white, pink, brown, wind, rain, hum, quiet):
        w = w / (np.abs(w).max() + 1e-9) * 0.3
        out.append(w.astype(np.float32))
    return out


def _crop(power: torch.Tensor, start: int, window_frames: int) -> torch.Tensor:
    c = power[:, start:start + window_frames].float()
    if c.shape[1] < window_frames:
        c = nn.functional.pad(c, (0, window_frames - c.shape[1]))
    return c


def _level(p: torch.Tensor) -> torch.Tensor:
    return p.sum(dim=0).median() + 1e-10


class Sampler:
    """Draws augmented training batches of mel power crops and multi-label targets."""

    def __init__(self, recs: list[Recording], labels: list[str], noise_powers: list[torch.Tensor],
                 window_frames: int, seed: int, bg_share: float = 0.15, mix_p: float = 0.35,
                 noise_p: float = 0.5, snr_db: tuple[float, float] = (-3.0, 25.0)):
        self.labels = labels
        self.index = {l: i for i, l in enumerate(labels)}
        self.by_species: dict[int, list[Recording]] = {}
        for r in recs:
            if len(r.starts):
                self.by_species.setdefault(self.index[r.labels[0]], []).append(r)
        self.species = sorted(self.by_species)
        self.quiet = [(r.power, r.quiet) for r in recs if r.quiet is not None and len(r.quiet)]
        self.noise_powers = noise_powers
        self.wf = window_frames
        self.rng = random.Random(seed)
        self.bg_share, self.mix_p, self.noise_p, self.snr_db = bg_share, mix_p, noise_p, snr_db

    def _species_window(self, c: int | None = None) -> tuple[torch.Tensor, int]:
        c = self.rng.choice(self.species) if c is None else c
        r = self.rng.choice(self.by_species[c])
        s = int(self.rng.choice(r.starts)) + self.rng.randint(0, CANDIDATE_STEP_FRAMES - 1)
        s = min(s, max(0, r.power.shape[1] - self.wf))
        return _crop(r.power, s, self.wf), c

    def _background(self) -> torch.Tensor:
        if self.quiet and self.rng.random() < 0.5:
            p, starts = self.rng.choice(self.quiet)
            return _crop(p, int(self.rng.choice(starts)), self.wf)
        p = self.rng.choice(self.noise_powers)
        return _crop(p, self.rng.randint(0, p.shape[1] - self.wf), self.wf)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], torch.zeros(size, len(self.labels))
        for i in range(size):
            if self.rng.random() < self.bg_share:
                x = self._background()
            else:
                x, c = self._species_window()
                ys[i, c] = 1.0
                if self.rng.random() < self.mix_p and len(self.species) > 1:
                    c2 = self.rng.choice([s for s in self.species if s != c])
                    x2, _ = self._species_window(c2)
                    x = x + x2 * (_level(x) / _level(x2)) * 10 ** (self.rng.uniform(-10, 3) / 10)
                    ys[i, c2] = 1.0
                if self.rng.random() < self.noise_p:
                    n = self._background()
                    snr_db = self.rng.uniform(*self.snr_db)
                    x = x + n * (x.mean() / (n.mean() + 1e-10)) * 10 ** (-snr_db / 10)
            x = x * 10 ** (self.rng.uniform(-30, 10) / 10)
            if self.rng.random() < 0.2:  # band-limit: a low or high cut
                k = self.rng.randint(4, 20)
                if self.rng.random() < 0.5:
                    x[:k] *= 1e-3
                else:
                    x[-k:] *= 1e-3
            xs.append(x)
        return torch.stack(xs), ys


def spec_augment(logmel: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Two frequency masks (<= 8 bins) and two time masks (<= 20 frames), filled with 0."""
    x = logmel.clone()
    b, _, f, t = x.shape
    for i in range(b):
        for _ in range(2):
            w = rng.randint(0, 8)
            s = rng.randint(0, f - w)
            x[i, :, s:s + w] = 0
            w = rng.randint(0, 20)
            s = rng.randint(0, t - w)
            x[i, :, :, s:s + w] = 0
    return x


def eval_windows(rec: Recording, window_frames: int, hop_frames: int) -> torch.Tensor:
    T = rec.power.shape[1]
    starts = list(range(0, max(1, T - window_frames + 1), hop_frames))
    return torch.stack([_crop(rec.power, s, window_frames) for s in starts])


@torch.no_grad()
def validate(net: BirdNetLite, recs: list[Recording], labels: list[str], window_frames: int) -> dict:
    """Window macro AP / ROC-AUC and recording-level top-1/top-5 on held-out recordings."""
    net.eval()
    index = {l: i for i, l in enumerate(labels)}
    hop = int(round(EVAL_HOP_S * SAMPLE_RATE_HZ / HOP_SAMPLES))
    all_t, all_s, rec_true, rec_scores = [], [], [], []
    for r in recs:
        probs = torch.cat([torch.sigmoid(net.forward_mel(w)) for w in eval_windows(r, window_frames, hop).split(64)])
        t = np.zeros((len(probs), len(labels)), dtype=np.float32)
        for l in r.labels:
            t[:, index[l]] = 1
        all_t.append(t)
        all_s.append(probs.numpy())
        rec_true.append(index[r.labels[0]])
        rec_scores.append(recording_scores(probs.numpy()))
    T, S = np.concatenate(all_t), np.concatenate(all_s)
    mAP, _ = macro_ap(T, S)
    R = np.stack(rec_scores)
    net.train()
    return {"window_macro_ap": mAP, "window_macro_auc": macro_auc(T, S),
            "recording_top1": topk_accuracy(np.array(rec_true), R, 1),
            "recording_top5": topk_accuracy(np.array(rec_true), R, 5),
            "n_recordings": len(recs), "n_windows": int(len(T))}


def fit(train_recs: list[Recording], val_recs: list[Recording], labels: list[str],
        noise_powers: list[torch.Tensor], steps: int, seed: int, batch_size: int = 64,
        lr: float = 3e-3, eval_every: int = 250, patience: int = 6, desc: str = "training",
        **sampler_kw) -> tuple[BirdNetLite, dict]:
    """Train a fresh model; with validation recordings keep the best checkpoint (macro AP)."""
    torch.manual_seed(seed)
    net = BirdNetLite(len(labels))
    wf = n_frames(int(WINDOW_S * SAMPLE_RATE_HZ))
    sampler = Sampler(train_recs, labels, noise_powers, wf, seed, **sampler_kw)
    rng = random.Random(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.02)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 3.0 / steps))
    loss_fn = nn.BCEWithLogitsLoss()
    best, best_state, history, bad = -1.0, None, [], 0
    net.train()
    bar = tqdm(range(1, steps + 1), desc=desc, leave=False)
    running = None
    for step in bar:
        x, y = sampler.batch(batch_size)
        logmel = spec_augment(net.frontend.normalize(x), rng)
        logits = net.head(net.dropout(net.backbone(logmel)))
        loss = loss_fn(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if val_recs and (step % eval_every == 0 or step == steps):
            m = validate(net, val_recs, labels, wf)
            m["step"] = step
            history.append(m)
            bar.set_postfix(loss=f"{running:.4f}", mAP=f"{m['window_macro_ap']:.3f}", top1=f"{m['recording_top1']:.2f}")
            score = m["window_macro_ap"] + m["recording_top1"]
            if score > best:
                best, best_state, bad = score, copy.deepcopy(net.state_dict()), 0
            else:
                bad += 1
                if bad >= patience:
                    break
        elif step % 25 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    best_m = max(history, key=lambda m: m["window_macro_ap"] + m["recording_top1"]) if history else {}
    return net, {"history": history, "best": best_m, "final_loss": running}


def assign_folds(recs: list[Recording], k: int, seed: int) -> list[int]:
    """Fold of every recording: each species' recordings are dealt round-robin over the folds."""
    rng = random.Random(seed)
    folds = [0] * len(recs)
    by: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        by.setdefault(r.labels[0], []).append(i)
    for sp in sorted(by):
        idx = by[sp]
        rng.shuffle(idx)
        off = rng.randrange(k)
        for j, i in enumerate(idx):
            folds[i] = (off + j) % k
    return folds


def fold_splits(recs: list[Recording], folds: int, seed: int):
    """Yield (k, training recordings, validation recordings) for each of `folds` folds by recording."""
    fa = assign_folds(recs, folds, seed)
    for k in range(folds):
        yield k, [r for r, f in zip(recs, fa) if f != k], [r for r, f in zip(recs, fa) if f == k]


def load_training_data(data: str, frontend: nn.Module, window_frames: int, seed: int):
    """Read, decode and prepare DATA; returns (recordings, labels, background mel powers)."""
    recs, noise_files = read_dataset(data)
    labels = sorted({l for r in recs for l in r.labels})
    recs = prepare(recs, frontend, window_frames)
    if not recs:
        raise ValueError(f"{data}: no readable recordings")
    return recs, labels, noise_powers_for(noise_files, frontend, seed)


def noise_powers_for(noise_files: list[str], frontend: nn.Module, seed: int) -> list[torch.Tensor]:
    waves = synth_noise(seed)
    for p in noise_files:
        try:
            waves.append(audio.load(p, SAMPLE_RATE_HZ))
        except audio.AudioError as e:
            tqdm.write(f"skipped: {e}")
    wf = n_frames(int(WINDOW_S * SAMPLE_RATE_HZ))
    out = []
    with torch.no_grad():
        for w in waves:
            if len(w) < (wf + 2) * HOP_SAMPLES:
                w = np.tile(w, int(np.ceil((wf + 2) * HOP_SAMPLES / len(w))) + 1)
            out.append(frontend.power_mel(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None])[0])
    return out


def model_card(meta: Metadata, net: BirdNetLite, recs: list[Recording], report: dict) -> str:
    """Markdown model card: data, attributions, architecture, metrics, licence terms."""
    ws = meta.window_samples
    lines = [f"# birdsound model {meta.model_version}", "",
             f"- Species: {len(meta.labels)}; sample rate {meta.sample_rate} Hz; window {meta.window_s} s",
             f"- Parameters: {count_parameters(net):,}; {count_mflops(net, ws):.1f} MFLOPs per window",
             f"- Licence of the weights: {meta.license}", ""]
    cv = report.get("cross_validation")
    if cv:
        lines += ["## Cross-validated metrics (split by recording)", "",
                  "| metric | mean | per fold |", "|---|---|---|"]
        for k in ("recording_top1", "recording_top5", "window_macro_ap", "window_macro_auc"):
            vals = [f[k] for f in cv["folds"]]
            lines.append(f"| {k} | {np.mean(vals):.3f} | {', '.join(f'{v:.3f}' for v in vals)} |")
        lines.append("")
    lines += ["## Species", ""] + [f"- {l}" for l in meta.labels] + ["", "## Training recordings", "",
              "| file | species | xeno-canto | recordist | licence |", "|---|---|---|---|---|"]
    for r in recs:
        i = r.info
        xc = i.get("xc_id", "")
        url = f"xeno-canto.org/{xc[2:]}" if xc.upper().startswith("XC") else ""
        lines.append(f"| {os.path.basename(r.path)} | {r.labels[0]} | {xc} {url} | {i.get('recordist', '')} | {i.get('license', '')} |")
    return "\n".join(lines) + "\n"


def train(data: str, out_dir: str, steps: int = 3000, seed: int = 0, folds: int = 0,
          cv_only: bool = False, batch_size: int = 64, model_version: str | None = None,
          license: str = "same terms as the training recordings") -> dict:
    """Train (optionally cross-validate first) and save ``model.pt``, ``metrics.json``, ``MODEL_CARD.md``."""
    t0 = time.time()
    torch.manual_seed(seed)
    wf = n_frames(int(WINDOW_S * SAMPLE_RATE_HZ))
    recs, labels, noise_p = load_training_data(data, BirdNetLite(1).frontend, wf, seed)
    report: dict = {"data": data, "labels": labels, "n_recordings": len(recs), "steps": steps, "seed": seed,
                    "audio_s": float(sum(r.power.shape[1] for r in recs) * HOP_SAMPLES / SAMPLE_RATE_HZ)}
    if folds >= 2:
        fold_metrics = []
        for k, tr, va in fold_splits(recs, folds, seed):
            _, info = fit(tr, va, labels, noise_p, steps, seed + k, batch_size, desc=f"fold {k + 1}/{folds}")
            fold_metrics.append(info["best"])
            tqdm.write(f"fold {k + 1}/{folds}: " + json.dumps({a: round(b, 4) for a, b in info["best"].items()}))
        report["cross_validation"] = {"folds": fold_metrics, "mean": {
            key: float(np.mean([m[key] for m in fold_metrics]))
            for key in ("recording_top1", "recording_top5", "window_macro_ap", "window_macro_auc", "step")}}
    os.makedirs(out_dir, exist_ok=True)
    if not cv_only:
        net, info = fit(recs, [], labels, noise_p, steps, seed, batch_size, desc="final model")
        version = model_version or time.strftime("birdsound-%Y%m%d")
        meta = Metadata(labels, SAMPLE_RATE_HZ, WINDOW_S, version, license,
                        {"architecture": "MobileNetV3-style, mel front end inside",
                         "parameters": count_parameters(net), "mflops": round(count_mflops(net, int(WINDOW_S * SAMPLE_RATE_HZ)), 2),
                         "output": "logits; exported files output sigmoid probabilities"})
        save_checkpoint(net, meta, os.path.join(out_dir, "model.pt"))
        report["final_loss"] = info["final_loss"]
        with open(os.path.join(out_dir, "MODEL_CARD.md"), "w", encoding="utf-8") as f:
            f.write(model_card(meta, net, recs, report))
    report["wall_s"] = time.time() - t0
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


@torch.no_grad()
def _embed_crops(net: BirdNetLite, power: torch.Tensor, starts, window_frames: int) -> torch.Tensor:
    crops = torch.stack([_crop(power, int(s), window_frames) for s in starts])
    return torch.cat([net.backbone(net.frontend.normalize(c)) for c in crops.split(128)])


def _head_data(net: BirdNetLite, recs: list[Recording], labels: list[str], noise_powers: list[torch.Tensor],
               window_frames: int, per_rec: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    index = {l: i for i, l in enumerate(labels)}
    X, Y = [], []
    for r in recs:
        starts = r.starts if len(r.starts) <= per_rec else rng.choice(r.starts, per_rec, replace=False)
        e = _embed_crops(net, r.power, starts, window_frames)
        y = torch.zeros(len(e), len(labels))
        for l in r.labels:
            y[:, index[l]] = 1
        X.append(e)
        Y.append(y)
        if r.quiet is not None and len(r.quiet):
            X.append(_embed_crops(net, r.power, r.quiet[:4], window_frames))
            Y.append(torch.zeros(len(X[-1]), len(labels)))
    for p in noise_powers:
        starts = rng.integers(0, p.shape[1] - window_frames, 16)
        X.append(_embed_crops(net, p, starts, window_frames))
        Y.append(torch.zeros(16, len(labels)))
    return torch.cat(X), torch.cat(Y)


def _fit_head(X: torch.Tensor, Y: torch.Tensor, seed: int, epochs: int = 400) -> nn.Linear:
    torch.manual_seed(seed)
    head = nn.Linear(X.shape[1], Y.shape[1])
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Xn = (X - mu) / sd
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        opt.zero_grad()
        loss = loss_fn(head(Xn), Y)
        loss.backward()
        opt.step()
    with torch.no_grad():  # fold the standardisation into the layer
        w = head.weight / sd
        b = head.bias - (head.weight * mu / sd).sum(1)
        out = nn.Linear(X.shape[1], Y.shape[1])
        out.weight.copy_(w)
        out.bias.copy_(b)
    return out


def train_head(data: str, base: str, out_dir: str, seed: int = 0, folds: int = 0, per_rec: int = 64,
               model_version: str | None = None, license: str = "same terms as the training recordings") -> dict:
    """Train only a new classification head on the frozen backbone of `base` (transfer learning).

    The backbone's embeddings of each recording's active windows (and of background windows, as
    negatives) are computed once; a linear layer is fitted on them in seconds.
    """
    t0 = time.time()
    base_net, base_meta = load_checkpoint(base)
    wf = n_frames(base_meta.window_samples)
    recs, labels, noise_p = load_training_data(data, base_net.frontend, wf, seed)
    report: dict = {"data": data, "base": base, "labels": labels, "n_recordings": len(recs), "head_only": True}
    if folds >= 2:
        res = []
        for k, tr, va in fold_splits(recs, folds, seed):
            X, Y = _head_data(base_net, tr, labels, noise_p, wf, per_rec, seed)
            net = _assemble(base_net, _fit_head(X, Y, seed), labels)
            res.append(validate(net, va, labels, wf))
        report["cross_validation"] = {"folds": res, "mean": {
            key: float(np.mean([m[key] for m in res])) for key in ("recording_top1", "recording_top5", "window_macro_ap")}}
    X, Y = _head_data(base_net, recs, labels, noise_p, wf, per_rec, seed)
    net = _assemble(base_net, _fit_head(X, Y, seed), labels)
    meta = Metadata(labels, base_meta.sample_rate, base_meta.window_s,
                    model_version or f"{base_meta.model_version}+head-{time.strftime('%Y%m%d')}", license,
                    {**base_meta.extra, "base_model": base_meta.model_version, "head_only": True})
    os.makedirs(out_dir, exist_ok=True)
    save_checkpoint(net, meta, os.path.join(out_dir, "model.pt"))
    report["wall_s"] = time.time() - t0
    with open(os.path.join(out_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return report


def _assemble(base_net: BirdNetLite, head: nn.Linear, labels: list[str]) -> BirdNetLite:
    net = BirdNetLite(len(labels), base_net.frontend.mel.sample_rate)
    net.frontend.load_state_dict(base_net.frontend.state_dict())
    net.backbone.load_state_dict(base_net.backbone.state_dict())
    net.head.load_state_dict(head.state_dict())
    return net.eval()
