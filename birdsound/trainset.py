"""Training data: decode every recording once at the model rate and keep its mel *power* (float16),
pick its candidate windows (active ones for species, quiet ones for background), attach the teacher's
cached outputs (:mod:`birdsound.teacher`) and gather bird-free material (synthesized noise, negative files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from . import audio
from .augment import CANDIDATE_STEP_FRAMES
from .dataset import DatasetError, Recording, check_distinct, label_set, read_dataset, synth_noise
from .features import LOG_EPS, MelFrontEnd
from .metadata import SAMPLE_RATE_HZ, WINDOW_S

ACTIVE_QUANTILE = 0.35  # windows below this activity quantile of their recording are not bird windows
QUIET_QUANTILE = 0.05  # windows below this quantile (and below QUIET_MAX) are background candidates
QUIET_MAX = 0.6


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
                       cache_dir: str | None = None, frontend: dict | None = None, views: int = 0,
                       held_out: list[str] = (), view_style: str = "v1", folds: int = 0) -> Prepared:
    """Read, decode and prepare DATA (and bird-free `negatives` folders/files) for training; with a teacher
    and `views`, also that many augmented views per teacher window of each recording (:mod:`birdsound.views`)
    in `view_style` (a style that mixes recordings mixes only those of one of the `folds` cross-validation folds).
    `held_out` names the bird-free files the folds are validated on, only to check none is trained on.

    Raises
    ------
    DatasetError
        When DATA has no readable recordings, fewer than two species, one recording twice, or a recording
        among the bird-free audio (or training audio among the `held_out` files).
    """
    recs, noise_files = read_dataset(data)
    neg_files = list(noise_files) + [p for p, _ in audio.find_audio_files(list(negatives))]
    check_distinct(recs, neg_files, [p for p, _ in audio.find_audio_files(list(held_out))])
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
    neg_recs, errors = prepare([Recording(p, []) for p in neg_files], frontend, wf, desc="bird-free audio")
    notes += [f"skipped: {e}" for e in errors]
    prep = Prepared(recs, labels, [], neg_recs, frontend, wf, notes, cache_dir or default_cache_dir(), window_s)
    if teacher == "birdnet":
        prep.notes += attach_teacher(recs + neg_recs, labels, prep.frame_rate, prep.cache_dir)
        if views:
            from .crossval import assign_folds
            from .views import attach_views
            groups = assign_folds(recs, folds, seed) if folds >= 2 else None
            prep.notes += attach_views(recs, labels, frontend, wf, prep.cache_dir, views, style=view_style,
                                       groups=groups)
    elif teacher:
        raise DatasetError(f"--teacher {teacher}: unknown teacher (birdnet is the one there is)")
    elif views:
        raise DatasetError("augmented views are scored by the teacher: they need --teacher birdnet")
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
