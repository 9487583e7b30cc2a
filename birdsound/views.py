"""Augmented views of training recordings, scored by the teacher on exactly that audio (consistent teaching).

The student's own augmentation (:mod:`birdsound.augment`) changes a window after the teacher has scored
the original, so a time-stretched or mixed window keeps targets the teacher never gave it. Here each
teacher window of a recording gets `n` views made from that recording (so a cross-validation fold never sees
another fold's audio): a speed change (resampled: pitch and tempo together), a smooth random equaliser,
another stretch of the same recording mixed in, coloured noise; the ``field`` style (:data:`STYLES`) adds
distance (high frequencies fade), reverberation and a stronger equaliser; the ``fieldx`` style mixes in a
stretch of *another* recording instead, one of the same group (its cross-validation fold: recordings always
trained on together), so the teacher labels two birds at once and still no fold hears another's audio; the
``nearmiss`` style changes the song itself (pitch by up to 9 semitones, half of them backwards), so that the
teacher's empty answers on them are bird-like sounds that are none of ours.
BirdNET scores every view; its outputs are cached beside the plain windows' (:mod:`birdsound.teacher`), and so
is the views' mel power at the model's rate (per front end); each view comes from its own seeded generator,
so both can be made again identically. Training-time only (the ``distill`` extra).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from . import audio
from . import teacher as tc
from .util import atomic_path

VIEW_VERSION = 1  # bump when make_view changes: cached teacher outputs of older views no longer apply
SPEED = (0.87, 1.15)  # playback speed factors
EQ_DB = 6.0  # equaliser gains within +-EQ_DB at 5 log-spaced knots from EQ_HZ[0] to EQ_HZ[1]
EQ_HZ = (150.0, 15000.0)
MIX_P, MIX_DB = 0.5, (-12.0, 0.0)  # chance and level (relative to the view) of another stretch mixed in
NOISE_P, NOISE_SNR_DB = 0.3, (0.0, 20.0)  # chance and signal-to-noise ratio of pink/brown noise
TILT_REF_HZ = 10000.0  # distance: high frequencies fade as tilt_db x (f / TILT_REF_HZ)^2 (air absorption)


@dataclass(frozen=True)
class ViewStyle:
    """How strongly views differ from the recording. ``v1`` (the default, K's views); ``field`` imitates other
    recordists and sites: a stronger equaliser, distance (high frequencies fade), reverberation, more noise."""

    seed: int  # first entry of every view's generator seed: views of two styles differ
    speed: tuple[float, float] = SPEED
    eq_db: float = EQ_DB
    mix_p: float = MIX_P
    noise_p: float = NOISE_P
    tilt_p: float = 0.0  # chance and range (dB at TILT_REF_HZ) of the distance fade
    tilt_db: tuple[float, float] = (0.0, 0.0)
    reverb_p: float = 0.0  # chance, reverberation time and level (wet relative to dry) of a synthetic room/forest
    rt60_s: tuple[float, float] = (0.15, 1.2)
    wet_db: tuple[float, float] = (-12.0, 0.0)
    mix_db: tuple[float, float] = MIX_DB
    eq_hz: tuple[float, float] = EQ_HZ  # the equaliser's lowest and highest knot
    noise_snr_db: tuple[float, float] = NOISE_SNR_DB
    cross: bool = False  # the mixed-in stretch comes from another recording of the group (attach_views' `groups`)
    reverse_p: float = 0.0  # chance the window is played backwards


FIELD = dict(eq_db=12.0, noise_p=0.4, tilt_p=0.6, tilt_db=(3.0, 24.0), reverb_p=0.5)
STYLES = {"v1": ViewStyle(VIEW_VERSION),
          "field": ViewStyle(1001, **FIELD),
          "fieldx": ViewStyle(2001, **FIELD, mix_p=0.7, mix_db=(-9.0, 3.0), cross=True),
          # far from the recording: pitch up or down by as much as 9 semitones (with tempo), half played
          # backwards; the teacher often hears none of ours in them: near misses to teach silence with
          "nearmiss": ViewStyle(3001, speed=(0.6, 1.7), reverse_p=0.5)}


def style_of(name: str) -> ViewStyle:
    """The view style called `name` (ValueError naming the known ones otherwise)."""
    if name not in STYLES:
        raise ValueError(f"view_style {name!r} is unknown (known: {', '.join(STYLES)})")
    return STYLES[name]


def view_rng(window: int, view: int, style: str = "v1") -> np.random.Generator:
    """The generator of view `view` of teacher window `window` of a recording (the same at every run)."""
    return np.random.default_rng([style_of(style).seed, window, view])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9


def _segment(x: np.ndarray, start: int, n: int) -> np.ndarray:
    """`n` samples of `x` from `start` (may be negative or run past the end: zeros there)."""
    out = np.zeros(n, np.float32)
    a, b = max(0, start), min(len(x), start + n)
    if b > a:
        out[a - start:b - start] = x[a:b]
    return out


def reverberate(v: np.ndarray, sr: int, rt60_s: float, wet_db: float, rng: np.random.Generator) -> np.ndarray:
    """`v` plus its echo in a synthetic space: exponentially decaying noise of reverberation time `rt60_s`,
    `wet_db` relative to `v`'s level; the same length."""
    from scipy.signal import fftconvolve

    t = np.arange(int(rt60_s * sr)) / sr
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60_s)  # -60 dB at rt60_s
    wet = fftconvolve(v, ir)[:len(v)]
    return (v + wet * (_rms(v) / _rms(wet) * 10 ** (wet_db / 20))).astype(np.float32)


def make_view(x: np.ndarray, sr: int, start_s: float, rng: np.random.Generator,
              window_s: float = tc.TEACHER_WINDOW_S, style: str = "v1",
              others: list[np.ndarray] = ()) -> np.ndarray:
    """A changed copy of the `window_s` of mono `x` (rate `sr`) starting at `start_s`: ``float32 [window]``;
    a ``cross`` style mixes in a stretch of one of `others` (other recordings at rate `sr`) where there are any."""
    import soxr

    st = style_of(style)
    n = int(round(window_s * sr))
    speed = rng.uniform(*st.speed)
    m = int(round(n * speed))  # played `speed` times faster: m source samples fill the window
    centre = int(round((start_s + window_s / 2) * sr))
    v = soxr.resample(_segment(x, centre - m // 2, m), sr * speed, sr)
    v = _segment(v.astype(np.float32), 0, n)
    if st.reverse_p and rng.random() < st.reverse_p:  # (a style without it draws nothing here)
        v = np.ascontiguousarray(v[::-1])
    if rng.random() < st.mix_p:  # another stretch of the same recording (or of another one), quieter
        src = others[int(rng.integers(len(others)))] if st.cross and len(others) else x
        other = _segment(src, int(rng.integers(0, max(1, len(src) - n + 1))), n)
        if _rms(other) > 1e-6:
            v = v + other * (_rms(v) / _rms(other) * 10 ** (rng.uniform(*st.mix_db) / 20))
    # a step a style leaves out draws nothing: v1's views stay those made before there were styles
    if st.reverb_p and rng.random() < st.reverb_p:
        v = reverberate(v, sr, rng.uniform(*st.rt60_s), rng.uniform(*st.wet_db), rng)
    spec = np.fft.rfft(v)
    freqs = np.fft.rfftfreq(n, 1 / sr)
    knots_hz = np.geomspace(*st.eq_hz, 5)
    gain_db = np.interp(np.log(np.maximum(freqs, 1.0)), np.log(knots_hz), rng.uniform(-st.eq_db, st.eq_db, 5))
    if st.tilt_p and rng.random() < st.tilt_p:
        gain_db = gain_db - rng.uniform(*st.tilt_db) * (freqs / TILT_REF_HZ) ** 2
    spec *= 10 ** (np.maximum(gain_db, -80.0) / 20)
    if rng.random() < st.noise_p:
        slope = rng.choice([0.5, 1.0])  # pink (1/f) or brown (1/f^2) power
        noise = np.fft.rfft(rng.standard_normal(n)) / np.maximum(freqs, 20.0) ** slope
        noise = np.fft.irfft(noise, n)
        spec += np.fft.rfft(noise * (_rms(v) / _rms(noise) * 10 ** (-rng.uniform(*st.noise_snr_db) / 20)))
    return np.fft.irfft(spec, n).astype(np.float32)


def views_of(x: np.ndarray, sr: int, starts_s: np.ndarray, n: int, first: int = 0, style: str = "v1",
             others: list[np.ndarray] = ()) -> np.ndarray:
    """Views `first` .. `n` - 1 of every window of a recording: ``[len(starts_s) * (n - first), window]``,
    window-major (view j of window w at row ``w * (n - first) + j - first``)."""
    return np.stack([make_view(x, sr, float(s), view_rng(w, j, style), style=style, others=others)
                     for w, s in enumerate(starts_s) for j in range(first, n)])


def cache_file(cache_dir: str, path: str, n: int, suffix: str = "", style: str = "v1", group: str = "") -> str:
    """The cache of BirdNET's outputs on the `n` views of each window of `path` (with `suffix`, e.g. a mel key:
    another array of the same views); a ``cross`` style's views also depend on the recordings of `path`'s
    group (:func:`group_keys`)."""
    style_of(style)
    tag = f"v{VIEW_VERSION}" + ("" if style == "v1" else f"_{style}")  # every style's files change with make_view
    tag += f"_g{group}" if group else ""
    return os.path.join(cache_dir, f"{tc.content_key(path, tc.TEACHER_HOP_S)}_views{n}_{tag}{suffix}.npz")


def interleave(fewer: np.ndarray, more: np.ndarray, n_windows: int) -> np.ndarray:
    """Window-major rows of views 0..m-1 (`fewer`) and m..n-1 (`more`) of each window as one window-major array
    of views 0..n-1."""
    a, b = fewer.reshape(n_windows, -1, *fewer.shape[1:]), more.reshape(n_windows, -1, *more.shape[1:])
    return np.concatenate([a, b], axis=1).reshape(-1, *fewer.shape[1:])


def cached_fewer(cache_dir: str, path: str, n: int, suffix: str = "", style: str = "v1",
                 group: str = "") -> tuple[int, str | None]:
    """The largest m < n whose views of `path` are cached (the file with `suffix`, e.g. a mel key), and that
    file: views are made from per-view seeds, so views 0..m-1 of a run with n views are those same views."""
    for m in range(n - 1, 0, -1):
        f = cache_file(cache_dir, path, m, suffix, style, group)
        if os.path.exists(f):
            return m, f
    return 0, None


def group_keys(paths: list[str], groups: list[int] | None) -> list[str]:
    """For each recording, a key of the recordings of its group (the same for all of them; changes when a
    member does), or "" for all where there are no `groups`."""
    if groups is None:
        return [""] * len(paths)
    members: dict[int, list[str]] = {}
    for p, g in zip(paths, groups):
        members.setdefault(g, []).append(tc.content_key(p, 0.0))
    keys = {g: hashlib.sha256(json.dumps(sorted(m)).encode()).hexdigest()[:10] for g, m in members.items()}
    return [keys[g] for g in groups]


@dataclass
class ViewSet:
    """A recording's views as the student sees them: mel power crops ``[V, F, window_frames]`` (float16) and
    the teacher's targets on each (rows as in :func:`views_of`)."""

    power: torch.Tensor
    targets: tc.TeacherTargets


def attach_views(recs: list, labels: list[str], frontend, window_frames: int, cache_dir: str, n: int,
                 threads: int = 2, style: str = "v1", groups: list[int] | None = None) -> list[str]:
    """Give every recording with teacher windows `n` views per teacher window (``r.views``); returns notes.

    BirdNET's outputs on the views and the views' mel power at this front end are cached beside the
    teacher's plain outputs; where either is missing the recording is decoded and its views made once. A
    cache of fewer views of the recording (a run with fewer) gives its views; only the others are made.
    A ``cross`` style mixes in other recordings of the same group (`groups`: one number per recording; one
    group of all without).
    """
    import soxr
    from tqdm import tqdm

    cross = style_of(style).cross
    groups = (groups if groups is not None else [0] * len(recs)) if cross else None
    gkeys = group_keys([r.path for r in recs], groups)
    decoded: dict[str, np.ndarray | audio.AudioError] = {}

    def load(path: str) -> np.ndarray | audio.AudioError:
        """The recording at the teacher's rate, or why it cannot be decoded; a cross style keeps it (its
        recordings are also the other recordings' mates), so each is decoded once."""
        if path in decoded:
            return decoded[path]
        try:
            x = audio.load(path, tc.TEACHER_RATE_HZ)
        except audio.AudioError as e:
            x = e
        if cross:
            decoded[path] = x
        return x

    mapping = tc.map_labels(labels, tc.teacher_labels())
    sr = int(frontend.mel.sample_rate)
    fe = frontend.config()
    mel_key = hashlib.sha256(json.dumps([sr, window_frames, fe["n_fft"], fe["hop"], fe["n_mels"], fe["fmin_hz"],
                                         fe["fmax_hz"]]).encode()).hexdigest()[:12]
    net, notes = None, []
    with torch.no_grad():
        for i, r in tqdm([(i, r) for i, r in enumerate(recs) if r.teacher is not None and len(r.teacher.starts_s)],
                         desc="augmented views", unit="file", leave=False, disable=None):
            g = gkeys[i]
            f = cache_file(cache_dir, r.path, n, style=style, group=g)
            f_mel = cache_file(cache_dir, r.path, n, f"_mel{mel_key}", style, g)
            out = tc.load_cached(f) if os.path.exists(f) else None
            power = None
            if os.path.exists(f_mel):
                with np.load(f_mel) as z:
                    power = torch.from_numpy(z["power"])
            if out is None or power is None:
                x = load(r.path)
                if isinstance(x, audio.AudioError):
                    notes.append(f"teacher views: {x}")
                    continue
                starts = r.teacher.starts_s
                # views cached by a run with fewer of them are reused: only the others are made and scored
                m_out, f_out = cached_fewer(cache_dir, r.path, n, style=style, group=g) if out is None else (n, None)
                m_mel, f_old_mel = (cached_fewer(cache_dir, r.path, n, f"_mel{mel_key}", style, g) if power is None
                                    else (n, None))
                first = min(m_out, m_mel)
                mates = sorted((q.path for j, q in enumerate(recs) if cross and j != i and groups[j] == groups[i]),
                               key=lambda q: tc.content_key(q, 0.0))  # an order that does not depend on the list's
                others = [o for o in map(load, mates) if not isinstance(o, audio.AudioError)]
                v = views_of(x, tc.TEACHER_RATE_HZ, starts, n, first, style, others)
                v = v.reshape(len(starts), n - first, -1)  # [w, j, t]
                if out is None:  # BirdNET on the views end to end: one window each
                    net = net or tc.BirdNet(threads)
                    o = net.run(v[:, m_out - first:].reshape(-1), hop_s=tc.TEACHER_WINDOW_S)
                    k = len(starts) * (n - m_out)
                    logits, emb = o.logits[:k], o.embeddings[:k]
                    if f_out:
                        old = tc.load_cached(f_out)
                        logits = interleave(old.logits, logits, len(starts))
                        emb = interleave(old.embeddings, emb, len(starts))
                    out = tc.TeacherOutput(np.repeat(starts, n).astype(np.float32), logits, emb)
                    tc.save_cached(f, out)
                if power is None:
                    v = np.stack([soxr.resample(w, tc.TEACHER_RATE_HZ, sr)
                                  for w in v[:, m_mel - first:].reshape(-1, v.shape[-1])]).astype(np.float32)
                    power = torch.cat([frontend.power_mel(torch.from_numpy(b))
                                       for b in np.array_split(v, max(1, len(v) // 64))])[:, :, :window_frames]
                    if power.shape[2] < window_frames:
                        power = torch.nn.functional.pad(power, (0, window_frames - power.shape[2]))
                    power = power.to(torch.float16)
                    if f_old_mel:
                        with np.load(f_old_mel) as z:
                            power = torch.from_numpy(interleave(z["power"], power.numpy(), len(starts)))
                    with atomic_path(f_mel, ".npz") as tmp:
                        np.savez(tmp, power=power.numpy())
            r.views = ViewSet(power, tc.targets_for(out, mapping, sr / frontend.hop))
    return notes
