"""Train the compact CNN on weakly labelled recordings, optionally distilling a teacher.

Pipeline: read the dataset (:mod:`birdsound.dataset`); decode every recording once at the
model rate and keep its mel *power* (float16); with ``teacher="birdnet"`` attach BirdNET's cached
outputs to every recording (:mod:`birdsound.teacher`); draw augmented batches
(:mod:`birdsound.augment`); fit with a loss of three parts, and a fourth on request:

* binary cross-entropy to the targets (weak label blended with the teacher's probabilities),
* logit distillation: cross-entropy between student and teacher sigmoids at a temperature,
* embedding distillation: cosine between a training-only projection of the student's embedding
  and the teacher's 1,024-d embedding;
* with ``student_of``, distillation of an ensemble of our own trained models: the mean of their logits on
  the student's own (augmented) input, each fold from the runs' models of that same fold.

Data preparation lives in :mod:`birdsound.trainset`, validation metrics and calibration in
:mod:`birdsound.crossval`; the head-only transfer in :mod:`birdsound.headonly`.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import audio, crossval, trainstate
from .augment import Sampler, SamplerConfig, spec_augment
from .dataset import DatasetError, Recording
from .metadata import WINDOW_S, Metadata, ModelError
from .model import BirdNetLite, count_mflops, count_parameters, save_checkpoint
from .util import atomic_write, remove
from .trainset import Prepared, attach_teacher, load_training_data, prepare


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in metrics.json)."""

    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.02
    seed: int = 0
    fit_seed: int = 0  # added to the seed of each fit's weights, sampling and order only; the folds and the data
    #                    stay those of `seed`, so runs that differ in it are members of one ensemble
    teacher: str | None = None  # "birdnet" to distil BirdNET V2.4
    kd_weight: float = 1.0  # logit distillation
    kd_temperature: float = 2.0
    emb_weight: float = 0.3  # embedding distillation
    aux_weight: float = 0.0  # all-class distillation: the teacher's logits of every label not of ours that it
    #                          hears in the training audio (other birds, speech, ...), through a training-only head
    eval_every: int = 500
    views: int = 0  # augmented views per teacher window, scored by the teacher (birdsound.views; drawn with
    #                 sampler.view_p and sampler.view_negative_p)
    view_style: str = "v1"  # how they differ from the recording: "v1", "field", "fieldx", "nearmiss" (birdsound.views.STYLES)
    ema_decay: float = 0.0  # > 0: train on, but evaluate and keep, an exponential moving average of the weights
    #                         (and batch-norm statistics); the last step's own weights are scored beside it
    student_of: list[str] | None = None  # cross-validated runs (same data, seed and folds) whose mean logits are
    #                                      distilled too: a fold from each run's model of that fold, the final
    #                                      model from each run's model.pt (its calibration offset taken out)
    student_weight: float = 1.0  # weight of that distillation (soft cross-entropy at kd_temperature)
    init_from: str | None = None  # a cross-validated run whose matching model (fold or final) starts each fit
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    backbone: dict | None = None  # None: the v1 CNN; {"type": "mn", "depth": 12}: EfficientAT's MobileNetV3
    frontend: dict | None = None  # MelFrontEnd settings (None: defaults)
    pretrained: str | None = None  # EfficientAT mn04 weights to start the "mn" backbone from
    train_share: float = 1.0  # < 1: each cross-validation fold learns from this share of its training recordings
    #                           (per species, at least one; the held-out recordings stay the same): a learning curve
    calibrate: bool = True  # with cross-validation: shift logits so bird-free audio stays quiet
    false_detections_target: float = crossval.FALSE_DETECTIONS_TARGET  # per hour of bird-free audio at min_conf 0.25


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
    out = dataclasses.replace(cfg, **d, sampler=dataclasses.replace(cfg.sampler, **sampler))
    if not 0 < out.train_share <= 1:
        raise ValueError(f"--recipe: train_share must be in (0, 1], got {out.train_share}")
    from .views import style_of
    try:
        style_of(out.view_style)
    except ValueError as e:
        raise ValueError(f"--recipe: {e}") from None
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


def soft_bce(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid cross-entropy of student to teacher logits, both softened by `temperature` (x T^2), over the
    entries where `mask` (float 0/1, optional) is 1."""
    t = temperature
    per = F.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(teacher_logits / t), reduction="none")
    return per.mean() * t * t if mask is None else (per * mask).sum() / mask.sum() * t * t


def distillation_losses(logits: torch.Tensor, emb: torch.Tensor | None, batch, proj: nn.Module | None,
                        temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit distillation, embedding distillation) losses of a batch; zeros where no teacher applies."""
    zero = logits.new_zeros(())
    kd = zero
    mask = batch.kd_mask.float()
    if mask.sum() > 0:
        kd = soft_bce(logits, batch.kd, temperature, mask)
    el = zero
    if proj is not None and batch.emb_mask is not None and batch.emb_mask.any():
        cos = F.cosine_similarity(proj(emb[batch.emb_mask]), batch.emb[batch.emb_mask], dim=1)
        el = (1 - cos).mean()
    return kd, el


def raw_final_model(run: str) -> tuple[BirdNetLite, Metadata, dict]:
    """A training run's ``model.pt`` with the calibration offset its ``metrics.json`` says was folded into it
    taken out (raw logits), its metadata and that report."""
    from .model import load_checkpoint

    net, meta = load_checkpoint(os.path.join(run, "model.pt"))
    with open(os.path.join(run, "metrics.json"), encoding="utf-8") as f:
        report = json.load(f)
    cv = report.get("cross_validation")
    if cv and report.get("config", {}).get("calibrate", True):
        apply_offset(net, -float(cv["logit_offset"]))
    return net, meta, report


def run_model(run: str, prep: Prepared, fold: int | None = None, held_out: list[str] | None = None) -> BirdNetLite:
    """The raw-logit model of the cross-validated training run `run` matching a fit: its ``fold<fold+1>.pt``
    (checked to have held out `held_out`) or, with `fold` None, its ``model.pt`` with its calibration offset
    taken out (:func:`raw_final_model`). For ``student_of`` and ``init_from``.

    Raises
    ------
    ValueError
        Naming the run and what does not match (missing file, labels, front end, held-out recordings).
    """
    from .model import load_checkpoint

    names = ("model.pt", "metrics.json") if fold is None else (f"fold{fold + 1}.pt",)
    missing = [n for n in names if not os.path.exists(os.path.join(run, n))]
    if missing:
        raise ValueError(f"{run}: no {', '.join(missing)} (a cross-validated training run is needed)")
    path = os.path.join(run, names[0])
    net, meta = raw_final_model(run)[:2] if fold is None else load_checkpoint(path)
    if meta.labels != prep.labels:
        raise ValueError(f"{path}: other labels than the training data")
    if net.frontend.config() != prep.frontend.config():
        raise ValueError(f"{path}: another mel front end than this run's")
    if held_out is not None and sorted(meta.extra.get("cv_held_out_recordings", [])) != sorted(held_out):
        raise ValueError(f"{path}: held out other recordings than fold {fold + 1} here (same data, --folds and "
                         "--seed are needed)")
    return net.eval()


def fit_models(prep: Prepared, cfg: TrainConfig, fold: int | None = None,
               held_out: list[str] | None = None) -> tuple[list[BirdNetLite], dict | None]:
    """The ``student_of`` teachers and the ``init_from`` start weights of one fit (fold `fold`, or the final
    model with `fold` None)."""
    teachers = [run_model(r, prep, fold, held_out) for r in (cfg.student_of or [])]
    init = None
    if cfg.init_from:
        init = run_model(cfg.init_from, prep, fold, held_out).state_dict()
        ours = new_net(prep, cfg).state_dict()
        if {k: v.shape for k, v in init.items()} != {k: v.shape for k, v in ours.items()}:
            raise ValueError(f"init_from {cfg.init_from}: another network than this recipe's (backbone differs)")
    return teachers, init


def new_net(prep: Prepared, cfg: TrainConfig) -> BirdNetLite:
    """An untrained model for the dataset `prep` and the recipe `cfg`."""
    sr = int(prep.frontend.mel.sample_rate)
    return BirdNetLite(len(prep.labels), sr, frontend=prep.frontend.config(), backbone=cfg.backbone)


def warmup_share(steps: int) -> float:
    """The one-cycle schedule's share of rising steps: 10 %, at least 3 steps, and short of all of them (a
    run of 1-3 steps has a falling phase too, which OneCycleLR needs)."""
    return min(max(0.1, 3.0 / steps), 1 - 0.5 / steps)


def fit(prep: Prepared, train_recs: list[Recording], cfg: TrainConfig, desc: str = "training",
        evaluate=None, progress: bool = True, log=None, teachers: list[BirdNetLite] = (),
        init: dict | None = None, state: str | None = None) -> tuple[BirdNetLite, dict]:
    """Train a model on `train_recs` for ``cfg.steps``, fresh or from the weights `init`; `evaluate(net, step)`
    (optional) is called every ``cfg.eval_every`` steps and at the end, its results kept in the history.
    Without a progress bar, `log` (optional) gets a line at those steps. `teachers` (models of the same front
    end) see the student's input; their mean logits are distilled with weight ``cfg.student_weight``.
    With `state` (a file path) the whole training state is saved there at those steps, and a fit that finds
    it continues from it (:mod:`birdsound.trainstate`)."""
    seed = cfg.seed + cfg.fit_seed
    torch.manual_seed(seed)
    net = new_net(prep, cfg)
    if init is not None:
        net.load_state_dict(init)
    elif cfg.pretrained:
        from .model import load_pretrained
        load_pretrained(net.backbone, cfg.pretrained)
    sampler = Sampler(train_recs, prep.labels, prep.noise_powers, prep.window_frames, prep.frame_rate,
                      seed, cfg.sampler, prep.negative_recs, aux=cfg.aux_weight > 0)
    proj = nn.Linear(net.head.in_features, sampler.emb_dim) if sampler.teacher and cfg.emb_weight > 0 else None
    aux_head = nn.Linear(net.head.in_features, len(sampler.aux)) if sampler.aux is not None and len(sampler.aux) else None
    rng = random.Random(seed + 1)
    params = list(net.parameters()) + [p for m in (proj, aux_head) if m is not None for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                pct_start=warmup_share(cfg.steps))
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
    kept = (lambda: ema.module) if ema is not None else (lambda: net)  # the model evaluated and returned
    history, running, done = [], None, 0
    parts = {k: v for k, v in {"net": net, "opt": opt, "sched": sched, "proj": proj, "aux_head": aux_head,
                                "ema": ema}.items() if v is not None}
    rngs = {"loop": rng, "sampler": sampler.rng}
    fp = trainstate.fingerprint(asdict(cfg), desc, [r.path for r in train_recs], init is not None)
    if state is not None and os.path.exists(state):
        done, history, running = trainstate.restore(state, fp, parts, rngs)
        if log is not None:
            log(f"{desc}: resumed at step {done}/{cfg.steps}")
    net.train()
    bar = tqdm(range(done + 1, cfg.steps + 1), desc=desc, leave=False, initial=done, total=cfg.steps,
               **({} if progress else {"disable": True}))
    for step in bar:
        b = sampler.batch(cfg.batch_size)
        z = spec_augment(net.frontend.normalize(b.x), rng)
        emb = net.backbone(z)
        logits = net.head(net.dropout(emb))
        loss = F.binary_cross_entropy_with_logits(logits, b.y)
        if teachers:
            with torch.no_grad():
                mean = torch.stack([t.head(t.backbone(z)) for t in teachers]).mean(0)
            loss = loss + cfg.student_weight * soft_bce(logits, mean, cfg.kd_temperature)
        if sampler.teacher:
            kd, el = distillation_losses(logits, emb, b, proj, cfg.kd_temperature)
            loss = loss + cfg.kd_weight * kd + cfg.emb_weight * el
            if aux_head is not None and b.aux_mask.any():
                loss = loss + cfg.aux_weight * soft_bce(aux_head(emb[b.aux_mask]), b.aux[b.aux_mask], cfg.kd_temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(net)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            m = {}
            if evaluate is not None:
                net.eval()
                m = evaluate(kept().eval(), step)
                if ema is not None and step == cfg.steps:  # the last step's own weights, for comparison
                    raw = evaluate(net, step)
                    m["raw_weights"] = {k: raw[k] for k in crossval.METRIC_KEYS if k in raw}
                net.train()
                history.append(m)
            shown = {k: f"{m[k]:.3f}" for k in ("recording_top1", "window_macro_ap") if k in m}
            bar.set_postfix(loss=f"{running:.4f}", **shown)
            if log is not None:
                log(f"{desc}: step {step}/{cfg.steps}, loss {running:.4f}" + "".join(f", {k} {v}" for k, v in shown.items()))
            if state is not None:
                trainstate.save(state, fp, step, parts, rngs, history, running)
        elif step % 25 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    return kept().eval(), {"history": history, "final": history[-1] if history else {}, "final_loss": running}


def train(data: str, out_dir: str, cfg: TrainConfig | None = None, folds: int = 0, cv_only: bool = False,
          negatives: list[str] = (), val_negatives: list[str] = (), model_version: str | None = None,
          license: str = "same terms as the training recordings", cache_dir: str | None = None,
          log=tqdm.write, jobs: int = 1, cv_from: str | None = None, resume: bool = False) -> dict:
    """Train (optionally cross-validate first) and save ``model.pt``, ``metrics.json``, ``MODEL_CARD.md``;
    with cross-validation also each fold's model (``fold<k>.pt``, uncalibrated, its held-out recordings
    in its metadata) and the held-out logits (``cv_logits.npz``).

    With `jobs` > 1 the folds and the final model are fitted side by side in that many processes of one
    thread each (the final model does not depend on the folds: their calibration is applied to it after).
    `cv_from` names the ``metrics.json`` of a finished cross-validation (``cv_only``) of the same recipe and
    data: only the final model is fitted, calibrated and scored as that cross-validation chose.
    Every fit saves its training state in ``<out_dir>/training_state/`` at each evaluation; `resume`
    continues an interrupted run of the same command from there (the folder is removed at the end).
    """
    from .modelcard import model_card

    cfg = cfg or TrainConfig()
    if cv_from and (folds or cv_only):
        raise ValueError("--cv-from reuses a finished cross-validation: drop --folds and --cv-only")
    if cfg.train_share < 1 and not (folds and cv_only):
        raise ValueError(f"--recipe: train_share {cfg.train_share} thins the folds of a learning curve: it needs "
                         "--folds and --cv-only (a final model always learns from every recording)")
    if cfg.init_from and cfg.pretrained:
        raise ValueError(f"--recipe: init_from {cfg.init_from} and pretrained {cfg.pretrained} both name start weights")
    states = trainstate.state_dir(out_dir)
    if resume and not os.path.isdir(states):
        raise ValueError(f"--resume: {out_dir} holds no interrupted run to continue ({states} is missing)")
    if not resume and os.path.isdir(states):
        raise ValueError(f"{out_dir} holds an interrupted run ({states}): add --resume to continue it, or delete "
                         "that folder to start afresh")
    run = {"data": os.path.abspath(data), "config": asdict(cfg), "folds": folds, "cv_only": cv_only,
           "cv_from": cv_from and os.path.abspath(cv_from), "negatives": [os.path.abspath(p) for p in negatives],
           "val_negatives": [os.path.abspath(p) for p in val_negatives]}
    if resume:
        trainstate.check_run(out_dir, run)
    if cv_from:  # the recipe before the data are read; the data once they are
        reused_cross_validation(cv_from, {"config": asdict(cfg)})
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    prep = load_training_data(data, teacher=cfg.teacher, negatives=negatives, seed=cfg.seed, cache_dir=cache_dir,
                              frontend=cfg.frontend, views=cfg.views, view_style=cfg.view_style, folds=folds,
                              held_out=val_negatives if folds >= 2 else ())
    for n in prep.notes:
        log(n)
    report: dict = {"data": data, "labels": prep.labels, "n_recordings": len(prep.recs), "config": asdict(cfg),
                    "negatives": list(negatives), "audio_s": float(sum(r.power.shape[1] for r in prep.recs) / prep.frame_rate)}
    score_method, offset = "top25", 0.0
    if cv_from:
        report["cross_validation"] = reused_cross_validation(cv_from, report)
        report["cv_from"] = cv_from
        score_method = report["cross_validation"]["recording_score"]
        offset = report["cross_validation"]["logit_offset"] if cfg.calibrate else 0.0
    specs = cv_fits(prep, cfg, folds, val_negatives) if folds >= 2 else []
    if not cv_only:
        teachers, init = fit_models(prep, cfg)
        specs.append(FitSpec(prep.recs, cfg, "final model", teachers=teachers, init=init))
    specs = [replace(s, state=trainstate.state_path(out_dir, s.desc)) for s in specs]
    trainstate.start_run(out_dir, run)
    if resume:
        log(f"resuming from {states}: " + ", ".join(
            f"{s.desc} {'saved' if os.path.exists(s.state) else 'not started'}" for s in specs))
    fitted = run_fits(prep, specs, jobs, log=log)
    if folds >= 2:
        cv = cv_report([info for _, info in fitted[:folds]], cfg, log=log,
                       arrays_path=os.path.join(out_dir, "cv_logits.npz"))
        report["cross_validation"] = cv
        score_method = cv["recording_score"]
        offset = cv["logit_offset"] if cfg.calibrate else 0.0
    os.makedirs(out_dir, exist_ok=True)
    version = model_version or time.strftime("birdsound-%Y%m%d")

    def meta_of(net: BirdNetLite, version: str, extra: dict) -> Metadata:
        if cfg.backbone:
            extra["backbone"] = cfg.backbone
        if cfg.pretrained:
            extra["pretrained"] = "EfficientAT mn04 (AudioSet; Schmid, Koutini, Widmer 2023; MIT)"
        if cfg.teacher:
            from .teacher import TEACHER_NAME
            extra["teacher"] = TEACHER_NAME
        return make_meta(prep.labels, net, version, license, extra)

    for k, ((net, _), spec) in enumerate(zip(fitted[:folds] if folds >= 2 else [], specs)):
        held_out = sorted({r.path for r in prep.recs} - {r.path for r in spec.recs})
        save_checkpoint(net, meta_of(net, f"{version}-fold{k + 1}", {"cv_fold": f"{k + 1}/{folds}",
                                                                    "cv_held_out_recordings": held_out}),
                        os.path.join(out_dir, f"fold{k + 1}.pt"))
    if not cv_only:
        net, info = fitted[-1]
        apply_offset(net, offset)
        meta = meta_of(net, version, {"recording_score": score_method, "logit_offset": round(offset, 4)})
        save_checkpoint(net, meta, os.path.join(out_dir, "model.pt"))
        report["final_loss"] = info["final_loss"]
        atomic_write(os.path.join(out_dir, "MODEL_CARD.md"), model_card(meta, net, prep.recs, report))
    report["wall_s"] = time.time() - t0
    atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(report, indent=1, default=float) + "\n")
    if os.path.isdir(states):
        remove(states)
    return report


def reused_cross_validation(path: str, report: dict) -> dict:
    """The cross-validation in the training report `path` (a ``metrics.json``), checked to be of the same
    recipe, labels, recordings and bird-free audio as the run `report` describes (as far as it does).

    Raises
    ------
    ValueError
        Naming `path` and what differs.
    """
    try:
        with open(path) as f:
            prior = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--cv-from {path}: not a readable training report ({e})") from None
    if not isinstance(prior, dict) or not isinstance(prior.get("cross_validation"), dict):
        raise ValueError(f"--cv-from {path}: holds no cross-validation (train with --folds K --cv-only first)")
    ours = json.loads(json.dumps(report, default=float))
    cfg_a, cfg_b = prior.get("config") or {}, ours["config"]
    changed = sorted(k for k in set(cfg_a) | set(cfg_b) if cfg_a.get(k) != cfg_b.get(k))
    if changed:
        raise ValueError(f"--cv-from {path}: cross-validated another recipe ({', '.join(changed)} differ)")
    for key in ("labels", "n_recordings", "negatives"):
        if key in ours and prior.get(key) != ours[key]:
            raise ValueError(f"--cv-from {path}: cross-validated other {key.replace('n_', '')}")
    if "audio_s" in ours and abs(float(prior.get("audio_s", -1)) - ours["audio_s"]) > 0.01:
        raise ValueError(f"--cv-from {path}: cross-validated other audio ({prior.get('audio_s')} s, "
                         f"now {ours['audio_s']:.2f} s)")
    return prior["cross_validation"]


@dataclass
class FitSpec:
    """One model to fit: its training recordings, recipe, progress label and validation callback."""

    recs: list[Recording]
    cfg: TrainConfig
    desc: str
    evaluate: object = None  # evaluate(net, step) -> dict, or None
    teachers: list = field(default_factory=list)  # models whose mean logits are distilled (cfg.student_of)
    init: dict | None = None  # start weights (cfg.init_from)
    state: str | None = None  # training state file: saved at every evaluation, continued from if present


def cv_fits(prep: Prepared, cfg: TrainConfig, folds: int, val_negatives: list[str] = ()) -> list[FitSpec]:
    """The fits of a k-fold cross-validation by recording of the recipe `cfg`, each validated on its
    held-out recordings and on the bird-free files `val_negatives`."""
    neg = []
    if val_negatives:
        neg, errors = prepare([Recording(p, []) for p, _ in audio.find_audio_files(list(val_negatives))],
                              prep.frontend, prep.window_frames, desc="bird-free validation audio")
        if cfg.teacher:
            attach_teacher(neg, prep.labels, prep.frame_rate, prep.cache_dir)
    specs = []
    for k, tr, va in crossval.fold_splits(prep.recs, folds, cfg.seed, cfg.train_share):
        def evaluate(net, step, va=va):
            m = crossval.validate(net, prep, va, neg)
            m["step"] = step
            return crossval.with_method(m, "top25")

        teachers, init = fit_models(prep, cfg, k, sorted(r.path for r in va))
        desc = f"fold {k + 1}/{folds}"
        if cfg.train_share < 1:
            desc += f" (learns from {len(tr)} of its {len(prep.recs) - len(va)} training recordings)"
        specs.append(FitSpec(tr, replace(cfg, seed=cfg.seed + k), desc, evaluate, teachers, init))
    return specs


_FORKED: list = []  # (prep, specs, progress line sink) of the running run_fits, read by its forked workers


def _fit_forked(i: int) -> tuple[dict, dict]:
    """Worker: fit spec `i` on one thread; the weights come back as numpy arrays."""
    torch.set_num_threads(1)
    prep, specs, log = _FORKED
    s = specs[i]
    net, info = fit(prep, s.recs, s.cfg, s.desc, s.evaluate, progress=False, log=log, teachers=s.teachers, init=s.init,
                    state=s.state)
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}, info


def run_fits(prep: Prepared, specs: list[FitSpec], jobs: int = 1, log=print) -> list[tuple[BirdNetLite, dict]]:
    """Fit every spec; with `jobs` > 1 in that many forked processes side by side. (net, info) per spec."""
    t0 = time.time()
    if jobs <= 1 or len(specs) <= 1:
        out = []
        for s in specs:
            out.append(fit(prep, s.recs, s.cfg, s.desc, s.evaluate, teachers=s.teachers, init=s.init, state=s.state))
            log(f"{s.desc}: fitted ({time.time() - t0:.0f} s){_held_out(out[-1][1])}")
        return out
    import concurrent.futures
    import multiprocessing
    import threading

    if "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError("--jobs above 1 needs processes started by fork (Linux, macOS); use --jobs 1")
    ctx = multiprocessing.get_context("fork")
    lines = ctx.SimpleQueue()  # the workers' progress lines, logged here in the parent

    def relay():
        while (m := lines.get()) is not None:
            log(m)

    relay_thread = threading.Thread(target=relay, daemon=True)
    relay_thread.start()
    _FORKED[:] = [prep, specs, lines.put]
    out, workers = [], min(jobs, len(specs))
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, ctx) as pool:
            for s, (state, info) in zip(specs, pool.map(_fit_forked, range(len(specs)))):
                net = new_net(prep, s.cfg)
                net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
                out.append((net.eval(), info))
                log(f"{s.desc}: fitted ({time.time() - t0:.0f} s, {workers} processes){_held_out(info)}")
    finally:
        _FORKED.clear()
        lines.put(None)
        relay_thread.join()
    return out


def _held_out(info: dict) -> str:
    """A fit's last held-out figures for its 'fitted' line (as soon as it is done, not after every fold)."""
    m = info.get("final") or {}
    shown = [f"{k} {m[k]:.3f}" for k in ("recording_top1", "recording_top5", "window_macro_ap") if k in m]
    return (": held out (top-quarter score) " + ", ".join(shown)) if shown else ""


def cv_report(infos: list[dict], cfg: TrainConfig, log=print, arrays_path: str | None = None) -> dict:
    """The cross-validation report of the fitted folds' `infos`: the final step's metrics per fold, their
    mean, the chosen recording aggregation and the calibration offset."""
    results = []
    folds = len(infos)
    for k, info in enumerate(infos):
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
        np.savez_compressed(arrays_path, **{f"fold{k}{key}": v for k, f in enumerate(results)
                                            for key, v in f.items() if key.startswith("_")})
    for f, c in zip(results, calibrated):
        f["calibrated"] = c
    log(f"calibration: logit offset {offset:.3f} (cross-fitted per fold: "
        + "; ".join(f"offset {c['offset']:.2f}, {c['false_detections_per_hour']:.1f} false detections/h, recall "
                    f"{c['recall_at_default']:.3f}" for c in calibrated) + ")")
    results = [crossval.public(crossval.with_method(f, method)) for f in results]
    mean = crossval.mean_metrics([{k: v for k, v in f.items() if k != "history"} for f in results])
    for key in ("false_detections_per_hour", "recall_at_default"):
        mean[f"calibrated_{key}"] = float(np.mean([c[key] for c in calibrated]))
    if all("raw_weights" in f for f in results):  # ema_decay: the moving average beside the last step's weights
        mean["raw_weights"] = crossval.mean_metrics([f["raw_weights"] for f in results])
        avg = {"recording_top1": mean["recording_top1_top25"], "recording_top5": mean["recording_top5_top25"],
               "window_macro_ap": mean["window_macro_ap"]}
        log("weights' moving average against the last step's own weights (top-quarter score): " + ", ".join(
            f"{k} {avg[k]:.3f} / {mean['raw_weights'][k]:.3f}" for k in avg))
    return {"folds": results, "mean": mean, "recording_score": method, "k": folds, "logit_offset": offset,
            "false_detections_target": cfg.false_detections_target, "offset_curve": curve}


def apply_offset(net: BirdNetLite, offset: float) -> BirdNetLite:
    """Fold a calibration offset into the head: every logit minus `offset` (rankings unchanged)."""
    with torch.no_grad():
        net.head.bias -= offset
    return net


__all__ = ["TrainConfig", "FitSpec", "train", "fit", "cv_fits", "run_fits", "cv_report", "reused_cross_validation", "DatasetError", "ModelError"]
