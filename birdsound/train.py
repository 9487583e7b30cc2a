"""Train the compact CNN on weakly labelled recordings, optionally distilling a teacher.

Pipeline: read the dataset (:mod:`birdsound.dataset`); decode every recording once at the
model rate and keep its mel *power* (float16); with ``teacher="birdnet"`` attach BirdNET's cached
outputs to every recording (:mod:`birdsound.teacher`); draw augmented batches
(:mod:`birdsound.augment`); fit with a loss of three parts:

* binary cross-entropy to the targets (weak label blended with the teacher's probabilities),
* logit distillation: cross-entropy between student and teacher sigmoids at a temperature,
* embedding distillation: cosine between a training-only projection of the student's embedding
  and the teacher's 1,024-d embedding.

Cross-validation by recording lives in :mod:`birdsound.crossval`; the head-only transfer
(:func:`train_head`) fits a new, calibrated linear layer on a frozen backbone in seconds.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import audio, crossval
from .augment import CANDIDATE_STEP_FRAMES, Sampler, SamplerConfig, crop, spec_augment
from .dataset import DatasetError, Recording, label_set, read_dataset, synth_noise
from .features import LOG_EPS, MelFrontEnd
from .metadata import SAMPLE_RATE_HZ, WINDOW_S, Metadata, ModelError
from .model import BirdNetLite, count_mflops, count_parameters, load_checkpoint, save_checkpoint
from .util import atomic_write

ACTIVE_QUANTILE = 0.35  # windows below this activity quantile of their recording are not bird windows
QUIET_QUANTILE = 0.05  # windows below this quantile (and below QUIET_MAX) are background candidates
QUIET_MAX = 0.6


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in metrics.json)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.02
    seed: int = 0
    teacher: str | None = None  # "birdnet" to distil BirdNET V2.4
    kd_weight: float = 1.0  # logit distillation
    kd_temperature: float = 2.0
    emb_weight: float = 0.3  # embedding distillation
    eval_every: int = 500
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    backbone: dict | None = None  # None: the v1 CNN; {"type": "mn", "depth": 12}: EfficientAT's MobileNetV3
    frontend: dict | None = None  # MelFrontEnd settings (None: defaults)
    pretrained: str | None = None  # EfficientAT mn04 weights to start the "mn" backbone from
    calibrate: bool = True  # with cross-validation: shift logits so bird-free audio stays quiet
    false_detections_target: float = 2.0  # per hour of bird-free audio at min_conf 0.25, what the shift aims at


def apply_recipe(cfg: TrainConfig, recipe: str) -> TrainConfig:
    """`cfg` with the fields named in a JSON object changed (``sampler`` holds SamplerConfig fields).

    Raises
    ------
    ValueError
        For JSON that does not parse or names unknown fields.
    """
    import dataclasses

    try:
        d = json.loads(recipe)
    except json.JSONDecodeError as e:
        raise ValueError(f"--recipe: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError("--recipe: a JSON object is needed")
    sampler = d.pop("sampler", {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    sfields = {f.name for f in dataclasses.fields(SamplerConfig)}
    bad = sorted(set(d) - fields) + sorted(f"sampler.{k}" for k in set(sampler) - sfields)
    if bad:
        raise ValueError(f"--recipe: unknown settings {', '.join(bad)}")
    return dataclasses.replace(cfg, **d, sampler=dataclasses.replace(cfg.sampler, **sampler))


@dataclass
class Prepared:
    """A dataset ready to train on: recordings with mel power, labels, bird-free material."""

    recs: list[Recording]
    labels: list[str]
    noise_powers: list[torch.Tensor]  # synthesized noise and bird-free files (mel power)
    negative_recs: list[Recording]  # bird-free files with teacher outputs (distillation)
    frontend: MelFrontEnd
    window_frames: int
    notes: list[str] = field(default_factory=list)
    cache_dir: str | None = None  # the teacher's cache
    window_s: float = WINDOW_S  # the model's window (window_frames cover slightly less: whole FFT frames)

    @property
    def frame_rate(self) -> float:
        return self.frontend.mel.sample_rate / self.frontend.hop


def activity(power: torch.Tensor, window_frames: int) -> np.ndarray:
    """Activity of every window start: mean log-energy above each bin's recording median."""
    logmel = torch.log(power.float() + LOG_EPS)
    rel = (logmel - logmel.median(dim=1, keepdim=True).values).clamp(min=0).mean(dim=0).numpy()
    if len(rel) < window_frames:
        return np.array([rel.mean()])
    c = np.concatenate([[0.0], np.cumsum(rel)])
    return (c[window_frames:] - c[:-window_frames]) / window_frames


def mel_power(path: str, frontend: MelFrontEnd, window_frames: int) -> torch.Tensor:
    """Float16 mel power ``[F, T]`` of a whole file at the front end's rate (at least one window long)."""
    sr = int(frontend.mel.sample_rate)
    x = audio.load(path, sr)
    need = (window_frames - 1) * frontend.hop + frontend.mel.n_fft
    if len(x) < need:
        x = np.pad(x, (0, need - len(x)))
    with torch.no_grad():
        return frontend.power_mel(torch.from_numpy(x)[None])[0].to(torch.float16)


def prepare(recs: list[Recording], frontend: MelFrontEnd, window_frames: int,
            desc: str = "decoding") -> tuple[list[Recording], list[str]]:
    """Decode, compute mel power and choose active/quiet windows; returns (readable recordings, errors)."""
    ok, errors = [], []
    for r in tqdm(recs, desc=desc, unit="file", leave=False):
        try:
            r.power = mel_power(r.path, frontend, window_frames)
        except audio.AudioError as e:
            errors.append(str(e))
            continue
        act = activity(r.power, window_frames)
        cand = np.arange(0, len(act), CANDIDATE_STEP_FRAMES)
        a = act[cand]
        r.starts = cand[a >= np.quantile(a, ACTIVE_QUANTILE)]
        r.quiet = cand[(a <= np.quantile(a, QUIET_QUANTILE)) & (a < QUIET_MAX)]
        ok.append(r)
    return ok, errors


def attach_teacher(recs: list[Recording], labels: list[str], frame_rate: float, cache_dir: str,
                   threads: int = 2) -> list[str]:
    """Give every recording its teacher targets (BirdNET, cached); returns notes for the user."""
    from . import teacher as tc

    outs, errors = tc.teacher_outputs([r.path for r in recs], cache_dir, threads=threads)
    mapping = tc.map_labels(labels, tc.teacher_labels())
    for r in recs:
        if r.path in outs:
            r.teacher = tc.targets_for(outs[r.path], mapping, frame_rate)
    notes = [f"teacher: {e}" for e in errors]
    missing = [lab for lab, m in zip(labels, mapping) if m < 0]
    if missing:
        notes.append(f"teacher: {len(missing)} of {len(labels)} species are not among BirdNET's labels "
                     f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): trained on their weak labels only")
    return notes


def default_cache_dir() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "birdsound", "teacher")


def load_training_data(data: str, sample_rate: int = SAMPLE_RATE_HZ, window_s: float = WINDOW_S,
                       teacher: str | None = None, negatives: list[str] = (), seed: int = 0,
                       cache_dir: str | None = None, frontend: dict | None = None) -> Prepared:
    """Read, decode and prepare DATA (and bird-free `negatives` folders/files) for training.

    Raises
    ------
    DatasetError
        When DATA has no readable recordings or fewer than two species.
    """
    recs, noise_files = read_dataset(data)
    labels = label_set(recs)
    if len(labels) < 2:
        raise DatasetError(f"{data}: only one species ({labels[0]}); a classifier needs at least two "
                           "(add species folders, or a 'noise' folder and a second species)")
    from .model import frontend_kwargs

    frontend = MelFrontEnd(sample_rate, **frontend_kwargs(frontend or {}))
    wf = frontend.frames(int(round(window_s * sample_rate)))
    recs, errors = prepare(recs, frontend, wf)
    notes = [f"skipped: {e}" for e in errors]
    if not recs:
        raise DatasetError(f"{data}: no readable recordings")
    neg_files = list(noise_files) + [p for p, _ in audio.find_audio_files(list(negatives))]
    neg_recs, errors = prepare([Recording(p, []) for p in neg_files], frontend, wf, desc="bird-free audio")
    notes += [f"skipped: {e}" for e in errors]
    prep = Prepared(recs, labels, [], neg_recs, frontend, wf, notes, cache_dir or default_cache_dir(), window_s)
    if teacher == "birdnet":
        prep.notes += attach_teacher(recs + neg_recs, labels, prep.frame_rate, prep.cache_dir)
    elif teacher:
        raise DatasetError(f"--teacher {teacher}: unknown teacher (birdnet is the one there is)")
    prep.noise_powers = noise_powers(synth_noise(seed, sample_rate), frontend, wf) + [r.power.float() for r in neg_recs]
    return prep


def noise_powers(waves: list[np.ndarray], frontend: MelFrontEnd, window_frames: int) -> list[torch.Tensor]:
    """Mel powers of waveforms, each tiled to at least two windows."""
    need = (window_frames + 2) * frontend.hop
    out = []
    with torch.no_grad():
        for w in waves:
            if len(w) < need:
                w = np.tile(w, int(np.ceil(need / len(w))) + 1)
            out.append(frontend.power_mel(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))[None])[0])
    return out


def make_meta(labels: list[str], net: BirdNetLite, version: str, license: str, extra: dict) -> Metadata:
    """Metadata of a trained model: the front end's settings travel with it."""
    sr = int(net.frontend.mel.sample_rate)
    window_s = extra.pop("window_s", WINDOW_S)
    ws = int(round(window_s * sr))
    return Metadata(labels, sr, window_s, version, license,
                    {"architecture": "MobileNetV3-style, mel front end inside", "frontend": net.frontend.config(),
                     "parameters": count_parameters(net), "mflops": round(count_mflops(net, ws), 2),
                     "output": "logits; exported files output sigmoid probabilities", **extra})


def distillation_losses(logits: torch.Tensor, emb: torch.Tensor | None, batch, proj: nn.Module | None,
                        temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit distillation, embedding distillation) losses of a batch; zeros where no teacher applies."""
    zero = logits.new_zeros(())
    kd = zero
    mask = batch.kd_mask.float()
    if mask.sum() > 0:
        t = temperature
        per = F.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(batch.kd / t), reduction="none")
        kd = (per * mask).sum() / mask.sum() * t * t
    el = zero
    if proj is not None and batch.emb_mask is not None and batch.emb_mask.any():
        cos = F.cosine_similarity(proj(emb[batch.emb_mask]), batch.emb[batch.emb_mask], dim=1)
        el = (1 - cos).mean()
    return kd, el


def fit(prep: Prepared, train_recs: list[Recording], cfg: TrainConfig, desc: str = "training",
        evaluate=None) -> tuple[BirdNetLite, dict]:
    """Train a fresh model on `train_recs` for ``cfg.steps``; `evaluate(net, step)` (optional) is called
    every ``cfg.eval_every`` steps and at the end, its results kept in the history."""
    torch.manual_seed(cfg.seed)
    sr = int(prep.frontend.mel.sample_rate)
    net = BirdNetLite(len(prep.labels), sr, frontend=prep.frontend.config(), backbone=cfg.backbone)
    if cfg.pretrained:
        from .model import load_pretrained
        load_pretrained(net.backbone, cfg.pretrained)
    sampler = Sampler(train_recs, prep.labels, prep.noise_powers, prep.window_frames, prep.frame_rate,
                      cfg.seed, cfg.sampler, prep.negative_recs)
    proj = nn.Linear(net.head.in_features, sampler.emb_dim) if sampler.teacher and cfg.emb_weight > 0 else None
    rng = random.Random(cfg.seed + 1)
    params = list(net.parameters()) + (list(proj.parameters()) if proj is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                pct_start=max(0.1, 3.0 / cfg.steps))
    history, running = [], None
    net.train()
    bar = tqdm(range(1, cfg.steps + 1), desc=desc, leave=False)
    for step in bar:
        b = sampler.batch(cfg.batch_size)
        emb = net.backbone(spec_augment(net.frontend.normalize(b.x), rng))
        logits = net.head(net.dropout(emb))
        loss = F.binary_cross_entropy_with_logits(logits, b.y)
        if sampler.teacher:
            kd, el = distillation_losses(logits, emb, b, proj, cfg.kd_temperature)
            loss = loss + cfg.kd_weight * kd + cfg.emb_weight * el
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if evaluate is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            net.eval()
            m = evaluate(net, step)
            net.train()
            history.append(m)
            bar.set_postfix(loss=f"{running:.4f}", **{k: f"{m[k]:.3f}" for k in ("window_macro_ap", "recording_top1") if k in m})
        elif step % 25 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    net.eval()
    return net, {"history": history, "final": history[-1] if history else {}, "final_loss": running}


def train(data: str, out_dir: str, cfg: TrainConfig | None = None, folds: int = 0, cv_only: bool = False,
          negatives: list[str] = (), val_negatives: list[str] = (), model_version: str | None = None,
          license: str = "same terms as the training recordings", cache_dir: str | None = None,
          log=tqdm.write) -> dict:
    """Train (optionally cross-validate first) and save ``model.pt``, ``metrics.json``, ``MODEL_CARD.md``."""
    from .modelcard import model_card

    cfg = cfg or TrainConfig()
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    prep = load_training_data(data, teacher=cfg.teacher, negatives=negatives, seed=cfg.seed, cache_dir=cache_dir,
                              frontend=cfg.frontend)
    for n in prep.notes:
        log(n)
    report: dict = {"data": data, "labels": prep.labels, "n_recordings": len(prep.recs), "config": asdict(cfg),
                    "negatives": list(negatives), "audio_s": float(sum(r.power.shape[1] for r in prep.recs) / prep.frame_rate)}
    score_method, offset = "top25", 0.0
    if folds >= 2:
        cv = cross_validate(prep, cfg, folds, val_negatives, log=log, arrays_path=os.path.join(out_dir, "cv_logits.npz"))
        report["cross_validation"] = cv
        score_method = cv["recording_score"]
        offset = cv["logit_offset"] if cfg.calibrate else 0.0
    os.makedirs(out_dir, exist_ok=True)
    if not cv_only:
        net, info = fit(prep, prep.recs, cfg, desc="final model")
        apply_offset(net, offset)
        version = model_version or time.strftime("birdsound-%Y%m%d")
        extra = {"recording_score": score_method, "logit_offset": round(offset, 4)}
        if cfg.backbone:
            extra["backbone"] = cfg.backbone
        if cfg.pretrained:
            extra["pretrained"] = "EfficientAT mn04 (AudioSet; Schmid, Koutini, Widmer 2023; MIT)"
        if cfg.teacher:
            from .teacher import TEACHER_NAME
            extra["teacher"] = TEACHER_NAME
        meta = make_meta(prep.labels, net, version, license, extra)
        save_checkpoint(net, meta, os.path.join(out_dir, "model.pt"))
        report["final_loss"] = info["final_loss"]
        atomic_write(os.path.join(out_dir, "MODEL_CARD.md"), model_card(meta, net, prep.recs, report))
    report["wall_s"] = time.time() - t0
    atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(report, indent=1, default=float) + "\n")
    return report


def cross_validate(prep: Prepared, cfg: TrainConfig, folds: int, val_negatives: list[str] = (), log=print,
                   arrays_path: str | None = None) -> dict:
    """K-fold cross-validation by recording of the recipe `cfg`; returns the report with the final
    step's metrics per fold, their mean, and the chosen recording aggregation."""
    neg = []
    if val_negatives:
        neg, errors = prepare([Recording(p, []) for p, _ in audio.find_audio_files(list(val_negatives))],
                              prep.frontend, prep.window_frames, desc="bird-free validation audio")
        if cfg.teacher:
            attach_teacher(neg, prep.labels, prep.frame_rate, prep.cache_dir)
    results = []
    for k, tr, va in crossval.fold_splits(prep.recs, folds, cfg.seed):
        def evaluate(net, step, va=va):
            m = crossval.validate(net, prep, va, neg)
            m["step"] = step
            return crossval.with_method(m, "top25")

        _, info = fit(prep, tr, replace(cfg, seed=cfg.seed + k), desc=f"fold {k + 1}/{folds}", evaluate=evaluate)
        results.append(info["final"])
        keys = crossval.METRIC_KEYS + ("step",)
        results[-1]["history"] = [{key: h[key] for key in keys if key in h} for h in info["history"]]
        fd = {src: round(v["per_hour"], 1) for src, v in info["final"]["false_detections"].items()}
        log(f"fold {k + 1}/{folds}: " + json.dumps({key: round(float(info["final"][key]), 4) for key in crossval.METRIC_KEYS})
            + f" false detections per hour by source {fd}")
    method = crossval.choose_method(results)
    offset, calibrated = crossval.calibrate(results, target_per_hour=cfg.false_detections_target)
    curve = crossval.offset_curve(results)
    if arrays_path:  # the held-out logits behind the calibration, for a later look at the trade-off
        os.makedirs(os.path.dirname(os.path.abspath(arrays_path)), exist_ok=True)
        np.savez_compressed(arrays_path, **{f"fold{k}{key}": f[key] for k, f in enumerate(results)
                                            for key in ("_bird_free_logits", "_present_logits", "_free_recordings_logits",
                                                                 "_free_files_logits", "_free_hours_by_source")},
                            bird_free_hours=np.array([f["_bird_free_hours"] for f in results]))
    for f, c in zip(results, calibrated):
        f["calibrated"] = c
    log(f"calibration: logit offset {offset:.3f} (cross-fitted per fold: "
        + "; ".join(f"offset {c['offset']:.2f}, {c['false_detections_per_hour']:.1f} false detections/h, recall "
                    f"{c['recall_at_default']:.3f}" for c in calibrated) + ")")
    results = [crossval.public(crossval.with_method(f, method)) for f in results]
    mean = crossval.mean_metrics([{k: v for k, v in f.items() if k != "history"} for f in results])
    for key in ("false_detections_per_hour", "recall_at_default"):
        mean[f"calibrated_{key}"] = float(np.mean([c[key] for c in calibrated]))
    return {"folds": results, "mean": mean, "recording_score": method, "k": folds, "logit_offset": offset,
            "false_detections_target": cfg.false_detections_target, "offset_curve": curve}


def apply_offset(net: BirdNetLite, offset: float) -> BirdNetLite:
    """Fold a calibration offset into the head: every logit minus `offset` (rankings unchanged)."""
    with torch.no_grad():
        net.head.bias -= offset
    return net


# ------------------------------------------------------------------ head-only transfer

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


__all__ = ["TrainConfig", "train", "train_head", "fit", "load_training_data", "DatasetError", "ModelError"]
