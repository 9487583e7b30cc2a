"""Training batches: sampling windows of prepared recordings, their targets, and augmentation.

Everything happens on mel *power* crops (computed once per recording): mixing two species,
adding background (real bird-free windows, synthesized noise, a user's ``noise`` folder) at a
random SNR, gain and band-limiting; then log-mel normalisation and SpecAugment masks.

With a teacher (:mod:`birdsound.teacher`), a window's target blends the recording's weak label
with the teacher's probabilities for our species; species windows are drawn where the teacher
hears the focal species, and windows where it hears none of our species are negatives. Mixing
two windows mixes their targets the same way (union: the maximum) and their teacher logits and
embeddings (maximum, energy-weighted mean).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .dataset import Recording
from .teacher import empty

CANDIDATE_STEP_FRAMES = 8  # spacing of candidate training windows of recordings without a teacher
POS_P = 0.2  # teacher probability of the focal species that makes a window a species window
OTHER_P = 0.2  # teacher probability of a label not of ours (another bird, speech) that makes a window "heard"
JITTER_S = 0.5  # student crops start up to this far from their teacher window's start
AUX_P = 0.1  # a teacher label not of ours that reaches this probability somewhere in the training audio is
#              distilled too (all-class distillation, with ``aux=True``)


@dataclass
class SamplerConfig:
    """How batches are drawn and augmented."""

    bg_share: float = 0.25  # share of all-negative windows in a batch
    mix_p: float = 0.35  # chance a species window gets a second species mixed in
    noise_p: float = 0.5  # chance a species window gets background added
    snr_db: tuple[float, float] = (-3.0, 25.0)
    hard_weight: float = 0.5  # target = hard_weight * weak label + (1 - hard_weight) * teacher
    real_negative_share: float = 0.5  # of negatives: teacher-empty real windows (when a teacher is used)
    other_share: float = 0.0  # of those: windows where the teacher hears something not of ours (other birds,
    #                           speech; other_max >= OTHER_P), the open-set errors; 0: drawn like any other
    stretch_p: float = 0.0  # chance of a time stretch by up to +-stretch (tempo of song differs between birds)
    stretch: float = 0.15
    shift_p: float = 0.0  # chance of shifting the mel bins by up to +-shift_bins (pitch differs a little)
    shift_bins: int = 2
    eq_p: float = 0.0  # chance of a smooth random equaliser of up to +-eq_db (microphones and distance)
    eq_db: float = 6.0
    view_p: float = 0.0  # chance a species window is one of its recording's augmented views, with the teacher's
    #                      targets on exactly that audio (needs views: birdsound.views)
    view_negative_p: float = 0.0  # chance a teacher-empty real negative is one of its recording's views in which
    #                               the teacher hears none of our species (so augmented audio is not a bird cue)


@dataclass
class Batch:
    """Mel power crops ``[B, F, T]`` and what they are trained towards."""

    x: torch.Tensor
    y: torch.Tensor  # [B, C] targets in [0, 1]
    kd: torch.Tensor  # [B, C] teacher logits (0 where kd_mask is False)
    kd_mask: torch.Tensor  # [B, C] bool
    emb: torch.Tensor | None  # [B, D] teacher embeddings
    emb_mask: torch.Tensor | None  # [B] bool
    aux: torch.Tensor | None = None  # [B, K] teacher logits of the other labels it hears (``Sampler.aux``)
    aux_mask: torch.Tensor | None = None  # [B] bool


def crop(power: torch.Tensor, start: int, window_frames: int) -> torch.Tensor:
    """``[F, window_frames]`` float32 crop of a mel power, zero-padded past the end."""
    c = power[:, start:start + window_frames].float()
    if c.shape[1] < window_frames:
        c = nn.functional.pad(c, (0, window_frames - c.shape[1]))
    return c


def level(p: torch.Tensor) -> torch.Tensor:
    """A robust loudness of a crop (median frame power)."""
    return p.sum(dim=0).median() + 1e-10


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


@dataclass
class _Item:
    """One sampled window before batching."""

    x: torch.Tensor
    y: np.ndarray
    kd: np.ndarray | None  # teacher logits, NaN where unknown
    emb: np.ndarray | None
    aux: np.ndarray | None = None  # teacher logits of the labels in Sampler.aux


class Sampler:
    """Draws augmented training batches of mel power crops and their targets.

    Parameters
    ----------
    recs : prepared recordings (``power``, ``starts``, ``quiet``; ``teacher`` when distilling)
    labels : the model's labels (targets' columns)
    noise_powers : mel powers of bird-free audio (synthesized noise, noise folders, speech)
    window_frames : frames of one model window
    frame_rate : frames per second of the mel power
    aux : also give the teacher's logits of every label not of ours that it hears (probability >= AUX_P)
        somewhere in `recs` and `negative_recs` (their teacher columns: ``self.aux``)
    """

    def __init__(self, recs: list[Recording], labels: list[str], noise_powers: list[torch.Tensor],
                 window_frames: int, frame_rate: float, seed: int, cfg: SamplerConfig | None = None,
                 negative_recs: list[Recording] = (), aux: bool = False):
        self.cfg = cfg or SamplerConfig()
        self.labels = labels
        self.n = len(labels)
        self.index = {lab: i for i, lab in enumerate(labels)}
        self.wf, self.fps = window_frames, frame_rate
        self.rng = random.Random(seed)
        self.noise_powers = noise_powers
        self.jitter = int(JITTER_S * frame_rate)
        self.teacher = any(r.teacher is not None for r in recs)
        self.emb_dim = next((r.teacher.emb.shape[1] for r in recs if r.teacher is not None), 0)
        # species pools: species -> list of (recording, candidate start frames, teacher row of each or -1)
        self.pos: dict[int, list[tuple[Recording, np.ndarray, np.ndarray]]] = {}
        for r in recs:
            c = self.index[r.labels[0]]
            cand = self._positive_candidates(r, c)
            if cand is not None:
                self.pos.setdefault(c, []).append((r, *cand))
        self.species = sorted(self.pos)
        self.quiet = [(r.power, r.quiet) for r in recs if r.quiet is not None and len(r.quiet)]
        # teacher-empty windows of every recording (and of bird-free files run through the teacher)
        # (not of recordings of a species the teacher lacks: its silence there is no evidence)
        self.negatives = [(r, np.flatnonzero(empty(r.teacher, [self.index[lab] for lab in r.labels])))
                          for r in list(recs) + list(negative_recs) if r.teacher is not None]
        self.negatives = [(r, j) for r, j in self.negatives if len(j)]
        self.other_negatives = [(r, j[r.teacher.other_max[j] >= OTHER_P]) for r, j in self.negatives]
        self.other_negatives = [(r, j) for r, j in self.other_negatives if len(j)]
        self.aux = self._aux_columns(list(recs) + list(negative_recs)) if aux and self.teacher else None
        # views (birdsound.views) where the teacher hears the recording's focal species
        self.view_pos = {r.path: np.flatnonzero(r.views.targets.probs[:, self.index[r.labels[0]]] >= POS_P)
                         for r in recs if r.views is not None}
        # ... and views in which it hears none of ours (a recording's teacher-empty views)
        self.view_neg = {r.path: np.flatnonzero(empty(r.views.targets, [self.index[lab] for lab in r.labels]))
                         for r in recs if r.views is not None} if self.cfg.view_negative_p else {}

    @staticmethod
    def _aux_columns(recs: list[Recording]) -> np.ndarray:
        """Teacher columns, not of our labels, that reach AUX_P in some window of `recs`."""
        ts = [r.teacher for r in recs if r.teacher is not None and r.teacher.all_logits is not None]
        if not ts:
            return np.zeros(0, np.int64)
        top = np.max([t.all_logits.max(axis=0).astype(np.float32) for t in ts], axis=0)
        heard = top >= np.log(AUX_P / (1 - AUX_P))
        heard[ts[0].ours] = False
        return np.flatnonzero(heard)

    def _positive_candidates(self, r: Recording, c: int):
        t = r.teacher
        if t is not None and not np.isnan(t.probs[:, c]).all():
            rows = np.flatnonzero(t.probs[:, c] >= POS_P)
            if len(rows):
                return t.frames[rows], rows
        if r.starts is not None and len(r.starts):  # no teacher, or it never hears the focal bird: weak label
            return r.starts, np.full(len(r.starts), -1)
        return None

    # ------------------------------------------------------------ single windows
    def _targets(self, t, row: int, hard: np.ndarray) -> _Item:
        """The targets of window `row` of the teacher targets `t` (an item without its crop ``x``)."""
        if t is None or row < 0:
            return _Item(None, hard, None, None)
        soft = t.probs[row].copy()
        unknown = np.isnan(soft)
        soft[unknown] = hard[unknown]
        w = self.cfg.hard_weight
        aux = None
        if self.aux is not None and t.all_logits is not None:
            aux = t.all_logits[row, self.aux].astype(np.float32)
        return _Item(None, w * hard + (1 - w) * soft, t.logits[row], t.emb[row].astype(np.float32), aux)

    def _at(self, r: Recording, start: int) -> torch.Tensor:
        cfg = self.cfg
        if cfg.stretch_p and self.rng.random() < cfg.stretch_p:  # crop more or fewer frames, resample to wf
            n = int(round(self.wf * (1 + self.rng.uniform(-cfg.stretch, cfg.stretch))))
            start = int(np.clip(start - (n - self.wf) // 2, 0, max(0, r.power.shape[1] - n)))
            c = crop(r.power, start, n)
            return nn.functional.interpolate(c[None], size=self.wf, mode="linear", align_corners=False)[0]
        start = int(np.clip(start, 0, max(0, r.power.shape[1] - self.wf)))
        return crop(r.power, start, self.wf)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        """Pitch shift by whole mel bins and a smooth random equaliser, in the power domain."""
        cfg = self.cfg
        if cfg.shift_p and self.rng.random() < cfg.shift_p:
            k = self.rng.randint(-cfg.shift_bins, cfg.shift_bins)
            if k > 0:
                x = torch.cat([x[:1].expand(k, -1), x[:-k]])
            elif k < 0:
                x = torch.cat([x[-k:], x[-1:].expand(-k, -1)])
        if cfg.eq_p and self.rng.random() < cfg.eq_p:
            knots = torch.tensor([self.rng.uniform(-cfg.eq_db, cfg.eq_db) for _ in range(5)])
            curve = nn.functional.interpolate(knots[None, None], size=x.shape[0], mode="linear", align_corners=True)[0, 0]
            x = x * (10 ** (curve / 10))[:, None]
        return x

    def _view(self, r: Recording, p: float, rows: dict, hard: np.ndarray) -> _Item | None:
        """With chance `p`, one of `r`'s augmented views among ``rows[r.path]``, with the teacher's targets on
        exactly that audio; None when not drawn (or `r` has no such view)."""
        if not p or r.views is None or self.rng.random() >= p:
            return None
        cand = rows.get(r.path)
        if cand is None or not len(cand):
            return None
        j = int(self.rng.choice(cand))
        it = self._targets(r.views.targets, j, hard)
        it.x = r.views.power[j].float()
        return it

    def species_window(self, c: int | None = None) -> tuple[_Item, int]:
        c = self.rng.choice(self.species) if c is None else c
        r, starts, rows = self.rng.choice(self.pos[c])
        hard = np.zeros(self.n, np.float32)
        for lab in r.labels:
            hard[self.index[lab]] = 1.0
        it = self._view(r, self.cfg.view_p, self.view_pos, hard)  # a view in which the teacher hears the focal bird
        if it is not None:
            return it, c
        k = self.rng.randrange(len(starts))
        jitter = self.rng.randint(-self.jitter, self.jitter) if rows[k] >= 0 else self.rng.randint(0, CANDIDATE_STEP_FRAMES - 1)
        it = self._targets(r.teacher, int(rows[k]), hard)
        it.x = self._at(r, int(starts[k]) + jitter)
        return it, c

    def negative_window(self) -> _Item:
        """A window without any of our species: teacher-empty real audio, a quiet stretch, or noise."""
        zero = np.zeros(self.n, np.float32)
        u = self.rng.random()
        if self.negatives and u < self.cfg.real_negative_share:
            pool = self.negatives
            if self.cfg.other_share and self.other_negatives and self.rng.random() < self.cfg.other_share:
                pool = self.other_negatives
            r, rows = self.rng.choice(pool)
            it = self._view(r, self.cfg.view_negative_p, self.view_neg, zero)  # ... in which it hears none of ours
            if it is not None:
                return it
            j = int(self.rng.choice(rows))
            it = self._targets(r.teacher, j, zero)
            it.x = self._at(r, int(r.teacher.frames[j]) + self.rng.randint(-self.jitter, self.jitter))
            return it
        if self.quiet and self.rng.random() < 0.3:
            p, starts = self.rng.choice(self.quiet)
            return _Item(crop(p, int(self.rng.choice(starts)), self.wf), zero, None, None)
        p = self.rng.choice(self.noise_powers)
        return _Item(crop(p, self.rng.randint(0, max(0, p.shape[1] - self.wf)), self.wf), zero, None, None)

    # ------------------------------------------------------------ mixing
    @staticmethod
    def _mix(a: _Item, b: _Item, gain: float) -> _Item:
        """``a + gain * b`` with targets mixed the same way: union (max) of targets and teacher
        logits, embeddings weighted by each part's share of the energy."""
        x = a.x + b.x * gain
        y = np.maximum(a.y, b.y)
        kd = None if a.kd is None or b.kd is None else np.fmax(a.kd, b.kd)
        if a.kd is not None and b.kd is None:
            kd = a.kd  # background without a teacher (synthesized noise): the teacher of `a` still holds
        aux = a.aux if b.aux is None else (b.aux if a.aux is None else np.maximum(a.aux, b.aux))
        if a.kd is None and b.kd is not None:
            aux = None  # teacher-less foreground (a quiet stretch, noise): what it holds is unknown
        emb = a.emb
        if a.emb is not None and b.emb is not None:
            ea, eb = float(a.x.sum()), float(b.x.sum()) * gain
            w = eb / (ea + eb + 1e-12)
            emb = (1 - w) * a.emb + w * b.emb
        return _Item(x, y, kd, emb, aux)

    def batch(self, size: int) -> Batch:
        cfg, items = self.cfg, []
        for _ in range(size):
            if self.rng.random() < cfg.bg_share or not self.species:
                it = self.negative_window()
            else:
                it, c = self.species_window()
                if self.rng.random() < cfg.mix_p and len(self.species) > 1:
                    it2, _ = self.species_window(self.rng.choice([s for s in self.species if s != c]))
                    gain = float(level(it.x) / level(it2.x)) * 10 ** (self.rng.uniform(-10, 3) / 10)
                    it = self._mix(it, it2, gain)
                if self.rng.random() < cfg.noise_p:
                    n = self.negative_window()
                    snr_db = self.rng.uniform(*cfg.snr_db)
                    gain = float(it.x.mean() / (n.x.mean() + 1e-10)) * 10 ** (-snr_db / 10)
                    it = self._mix(it, n, gain)
            it.x = self._colour(it.x) * 10 ** (self.rng.uniform(-30, 10) / 10)
            if self.rng.random() < 0.2:  # band-limit: a low or high cut
                k = self.rng.randint(4, 20)
                if self.rng.random() < 0.5:
                    it.x[:k] *= 1e-3
                else:
                    it.x[-k:] *= 1e-3
            items.append(it)
        kd = np.zeros((size, self.n), np.float32)
        kd_mask = np.zeros((size, self.n), bool)
        for i, it in enumerate(items):
            if it.kd is not None:
                ok = ~np.isnan(it.kd)
                kd[i, ok] = it.kd[ok]
                kd_mask[i] = ok
        emb = emb_mask = None
        if self.teacher:
            emb = torch.zeros(size, self.emb_dim)
            emb_mask = torch.zeros(size, dtype=torch.bool)
            for i, it in enumerate(items):
                if it.emb is not None:
                    emb[i] = torch.from_numpy(it.emb)
                    emb_mask[i] = True
        aux = aux_mask = None
        if self.aux is not None:
            aux = torch.zeros(size, len(self.aux))
            aux_mask = torch.tensor([it.aux is not None for it in items])
            for i, it in enumerate(items):
                if it.aux is not None:
                    aux[i] = torch.from_numpy(it.aux)
        return Batch(torch.stack([it.x for it in items]), torch.from_numpy(np.stack([it.y for it in items])),
                     torch.from_numpy(kd), torch.from_numpy(kd_mask), emb, emb_mask, aux, aux_mask)
