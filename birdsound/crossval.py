"""Cross-validation by recording: folds, held-out metrics, false detections on bird-free audio,
and the choice of how window scores become one score per recording. The loop that trains each
fold is :func:`birdsound.train.cross_validate`.

A recording is never split: all its windows are in one fold. Every species' recordings are dealt
round-robin over the folds (same folds for the same seed, whatever the model).
"""

from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import torch

from .augment import crop
from .dataset import Recording
from .detect import DEFAULT_MIN_CONF
from .teacher import empty, on_grid, sigmoid
from .metrics import (RECORDING_SCORES, false_detections, macro_ap, macro_auc, recording_scores, topk_accuracy,
                      window_hours)

EVAL_HOP_S = 1.5  # hop of validation windows for window and recording metrics
FALSE_DETECTIONS_TARGET = 2.0  # per hour of bird-free audio at the default min_conf: what the offset aims at
RECALL_KEPT = 0.75  # ... but an offset never costs more than a quarter of the recall at the default min_conf
FREE_SOURCES = ("validation_recordings", "bird_free_files")  # where bird-free windows come from
PRESENT_P = 0.5  # teacher probability of the focal species that counts as "the bird is there" (recall)
METRIC_KEYS = ("recording_top1", "recording_top5", "window_macro_ap", "window_macro_auc",
               "false_detections_per_hour", "recall_at_default")


def read_cv_run(run: str, also: tuple[str, ...] = ()) -> tuple[dict, dict[str, np.ndarray]]:
    """A cross-validated run folder's ``metrics.json`` and its folds' held-out arrays (``cv_logits.npz``),
    after checking that these and the files `also` are there.

    Raises
    ------
    FileNotFoundError
        One line naming the run and the files it lacks.
    """
    missing = [f for f in ("metrics.json", "cv_logits.npz") + tuple(also) if not os.path.isfile(os.path.join(run, f))]
    if missing:
        raise FileNotFoundError(f"{run}: not a cross-validated training run (no {', '.join(missing)})")
    with open(os.path.join(run, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with np.load(os.path.join(run, "cv_logits.npz")) as z:
        return metrics, {key: z[key] for key in z.files}


def by_species(recs: list[Recording]) -> dict[str, list[int]]:
    """The indices of `recs` by focal species (the first label), in order."""
    by: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        by.setdefault(r.labels[0], []).append(i)
    return by


def assign_folds(recs: list[Recording], k: int, seed: int) -> list[int]:
    """Fold of every recording: each species' recordings are dealt round-robin over the folds."""
    rng = random.Random(seed)
    folds = [0] * len(recs)
    by = by_species(recs)
    for sp in sorted(by):
        idx = by[sp]
        rng.shuffle(idx)
        off = rng.randrange(k)
        for j, i in enumerate(idx):
            folds[i] = (off + j) % k
    return folds


def fold_splits(recs: list[Recording], folds: int, seed: int, train_share: float = 1.0):
    """Yield (k, training recordings, validation recordings) for each of `folds` folds by recording; with
    `train_share` < 1 the training side is thinned (:func:`thin_recordings`), the validation side never."""
    fa = assign_folds(recs, folds, seed)
    for k in range(folds):
        train = thin_recordings([r for r, f in zip(recs, fa) if f != k], train_share, seed + 1000 + k)
        yield k, train, [r for r, f in zip(recs, fa) if f == k]


def thin_recordings(recs: list[Recording], share: float, seed: int) -> list[Recording]:
    """A share of `recs` drawn by species: ``ceil(share * n)`` of each species' n recordings, at least one,
    the same ones for the same seed (a learning curve holds the validation folds fixed and thins the training
    side only)."""
    if not 0 < share <= 1:
        raise ValueError(f"train_share must be in (0, 1], got {share}")
    if share == 1:
        return list(recs)
    rng = random.Random(seed)
    by = by_species(recs)
    keep: set[int] = set()
    for sp in sorted(by):
        idx = sorted(by[sp], key=lambda i: recs[i].path)
        rng.shuffle(idx)
        keep.update(idx[:max(1, math.ceil(share * len(idx)))])
    return [r for i, r in enumerate(recs) if i in keep]


@torch.no_grad()
def window_probs(net, power: torch.Tensor, starts, window_frames: int) -> np.ndarray:
    """Sigmoid scores ``[len(starts), C]`` of the windows of a mel power starting at `starts` (frames)."""
    crops = torch.stack([crop(power, int(s), window_frames) for s in starts])
    return torch.cat([torch.sigmoid(net.forward_mel(c)) for c in crops.split(64)]).numpy()


def full_window_starts(power: torch.Tensor, window_frames: int, hop_frames: int) -> list[int]:
    return list(range(0, max(1, power.shape[1] - window_frames + 1), hop_frames))


def bird_free_windows(r: Recording, columns: list[int], window_frames: int, frame_rate: float,
                      hop_s: float) -> list[int]:
    """Start frames of the default-setting windows (hop = window) of `r` in which the teacher hears
    none of our species (its window at the same start scores every one of them below NEG_P); none where
    the teacher lacks one of `r`'s species (label indices `columns`)."""
    t = r.teacher
    if t is None:
        return []
    hop = int(round(hop_s * frame_rate))
    free = {int(f) for f in t.frames[empty(t, columns) & on_grid(t.frames, hop)]}
    return [s for s in full_window_starts(r.power, window_frames, hop) if s in free]


def validate(net, prep, recs: list[Recording], negatives: list[Recording] = ()) -> dict:
    """Held-out metrics of `net` on `recs`: window macro AP / ROC-AUC (every label of a recording
    is a positive in all its windows: weak labels), recording top-1/top-5 for every method of
    :data:`birdsound.metrics.RECORDING_SCORES`, and false detections per hour at the default
    ``min_conf`` on bird-free audio (teacher-empty windows of `recs`, and `negatives`)."""
    net.eval()
    labels = prep.labels
    index = {lab: i for i, lab in enumerate(labels)}
    wf, fps = prep.window_frames, prep.frame_rate
    hop = int(round(EVAL_HOP_S * fps))
    window_s = prep.window_s  # default settings: windows of the model's length, no overlap
    starts, per_rec = [], []
    for r in recs:
        starts.append(full_window_starts(r.power, wf, hop))
        per_rec.append(window_probs(net, r.power, starts[-1], wf))
    y = np.array([index[r.labels[0]] for r in recs])
    # false detections at default settings: windows of window_s, no overlap
    free_starts = [bird_free_windows(r, [index[lab] for lab in r.labels], wf, fps, window_s) for r in recs]
    free = [window_probs(net, r.power, s, wf) for r, s in zip(recs, free_starts) if s]
    neg = [window_probs(net, r.power, s, wf) for r in negatives if (s := bird_free_windows(r, [], wf, fps, window_s))]
    # what a logit offset (calibration) needs: every bird-free logit by source (see bird_free), and the focal
    # logit where the bird is there
    hours = [window_hours(sum(len(f) for f in src), window_s) for src in (free, neg)]
    out = {"_free_recordings_logits": logit(np.concatenate(free).ravel()) if free else np.zeros(0),
           "_free_files_logits": logit(np.concatenate(neg).ravel()) if neg else np.zeros(0),
           "_free_hours_by_source": np.array(hours)}
    present = [logit(window_probs(net, r.power, s, wf)[:, index[r.labels[0]]]) for r in recs
               if (s := present_windows(r, index[r.labels[0]], wf, fps, window_s))]
    out["_present_logits"] = np.concatenate(present) if present else np.zeros(0)
    # which window is which, so that a later look (scripts/cv_*.py) needs neither the audio nor the folds
    out.update(held_out_windows(recs, labels, y, starts, np.concatenate(per_rec), free_starts, fps))
    return {**metrics_of(out, window_s), **out}


def fold_arrays(held_out: dict, k: int) -> dict:
    """Fold `k`'s held-out arrays (the ``_`` keys of :func:`validate`) from a run's ``cv_logits.npz``
    (:func:`read_cv_run`), where they are stored as ``fold<k>_...``."""
    return {key[len(f"fold{k}"):]: v for key, v in held_out.items() if key.startswith(f"fold{k}_")}


def ranking_metrics(window_logits: np.ndarray, arrays: dict) -> dict:
    """Window macro AP and ROC-AUC against the weak labels, and recording top-1/top-5 with every recording
    score, of held-out window logits ``[W, C]`` on the windows that `arrays` (held-out arrays) identify."""
    S = sigmoid(np.asarray(window_logits, dtype=np.float64))
    rec, y = arrays["_window_recording"], arrays["_recording_focal"]
    T = arrays["_recording_targets"][rec]
    out = {"window_macro_ap": macro_ap(T, S)[0], "window_macro_auc": macro_auc(T, S),
           "n_recordings": len(y), "n_windows": int(len(S))}
    per_rec = [S[rec == i] for i in range(len(y))]
    for method in RECORDING_SCORES:
        R = np.stack([recording_scores(p, method) for p in per_rec])
        out[f"recording_top1_{method}"] = topk_accuracy(y, R, 1)
        out[f"recording_top5_{method}"] = topk_accuracy(y, R, 5)
    return out


def metrics_of(arrays: dict, window_s: float) -> dict:
    """The held-out metrics of :func:`validate` from its held-out arrays alone (the ``_`` keys it returns and
    ``cv_logits.npz`` keeps), so that models can be scored on windows already scored, e.g. an ensemble on the
    mean of its members' logits."""
    out = ranking_metrics(arrays["_window_logits"], arrays)
    T = arrays["_recording_targets"]
    # false detections at the default min_conf (windows of window_s), by source (bird-free files only where
    # there were any)
    fd = {}
    for src, key in zip(FREE_SOURCES, ("_free_recordings_logits", "_free_files_logits")):
        if len(arrays[key]) or src == FREE_SOURCES[0]:
            free = sigmoid(arrays[key].reshape(-1, T.shape[1]))
            fd[src] = false_detections(free, window_s, DEFAULT_MIN_CONF)
    hours = sum(v["hours"] for v in fd.values())
    out["false_detections"] = fd
    out["false_detections_per_hour"] = sum(v["detections"] for v in fd.values()) / hours if hours else float("nan")
    out["recall_at_default"] = at_offset(np.zeros(0), 0.0, arrays["_present_logits"], 0.0)["recall_at_default"]
    return out


def held_out_windows(recs: list[Recording], labels: list[str], focal: np.ndarray, starts: list[list[int]],
                     probs: np.ndarray, free_starts: list[list[int]], frame_rate: float) -> dict:
    """The held-out windows of :func:`validate` with their identity: every evaluation window's logits
    ``[N, C]`` (float32) with its recording (an index into ``_recording_files``) and start (s), the same
    identity for the bird-free windows behind ``_free_recordings_logits`` (row-major ``[M, C]``), and each
    recording's file, focal species (label index) and labels (``[R, C]``, 0/1)."""
    def ids(per_rec: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        rec = np.repeat(np.arange(len(per_rec), dtype=np.int32), [len(s) for s in per_rec])
        return rec, (np.array([x for s in per_rec for x in s], dtype=np.float64) / frame_rate).astype(np.float32)

    window_rec, window_start = ids(starts)
    free_rec, free_start = ids(free_starts)
    return {"_window_logits": logit(probs).astype(np.float32), "_window_recording": window_rec,
            "_window_start_s": window_start, "_free_recordings_recording": free_rec,
            "_free_recordings_start_s": free_start, "_recording_files": np.array([r.path for r in recs]),
            "_recording_focal": focal.astype(np.int32),
            "_recording_targets": np.array([[lab in r.labels for lab in labels] for r in recs], dtype=np.uint8)}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def threshold(min_conf: float = DEFAULT_MIN_CONF) -> float:
    """`min_conf` as a logit: a window is a detection where its logit is at least this."""
    return float(logit(np.array([min_conf]))[0])


def bird_free(folds: list[dict]) -> tuple[np.ndarray, float]:
    """Every bird-free logit of `folds` (both sources of FREE_SOURCES) and the hours of audio they cover."""
    z = np.concatenate([f[key] for f in folds for key in ("_free_recordings_logits", "_free_files_logits")])
    return z, float(sum(f["_free_hours_by_source"].sum() for f in folds))


def at_offset(bird_free_logits: np.ndarray, hours: float, present_logits: np.ndarray, offset: float,
              min_conf: float = DEFAULT_MIN_CONF) -> dict:
    """False detections per hour of bird-free audio and recall where the bird is there, at `min_conf`, with
    every logit lowered by `offset`."""
    thr = threshold(min_conf) + offset
    return {"false_detections_per_hour": float((bird_free_logits >= thr).sum() / hours) if hours else float("nan"),
            "recall_at_default": float(np.mean(present_logits >= thr)) if len(present_logits) else float("nan")}


def present_windows(r: Recording, c: int, window_frames: int, frame_rate: float, hop_s: float) -> list[int]:
    """Start frames of default-setting windows of `r` in which the teacher hears its focal species
    (probability >= PRESENT_P): where a detection is expected."""
    t = r.teacher
    if t is None or np.isnan(t.probs[:, c]).all():
        return []
    there = {int(f) for f, p in zip(t.frames, t.probs[:, c]) if p >= PRESENT_P}
    hop = int(round(hop_s * frame_rate))
    return [s for s in full_window_starts(r.power, window_frames, hop) if s in there]


def offset_for(bird_free_logits: np.ndarray, hours: float, min_conf: float = DEFAULT_MIN_CONF,
               target_per_hour: float = FALSE_DETECTIONS_TARGET) -> float:
    """The smallest logit offset b >= 0 such that ``sigmoid(logit - b) >= min_conf`` holds for at most
    ``target_per_hour * hours`` of the bird-free logits (false detections at default settings)."""
    z = np.sort(np.asarray(bird_free_logits))[::-1]
    allowed = int(np.floor(target_per_hour * hours))
    if len(z) <= allowed:
        return 0.0
    return float(max(0.0, z[allowed] - threshold(min_conf) + 1e-4))


def recall_capped(offset: float, present_logits: np.ndarray, min_conf: float = DEFAULT_MIN_CONF,
                  kept: float = RECALL_KEPT) -> float:
    """`offset`, lowered as little as needed for the recall where the bird is there to stay at least `kept` of
    the recall without an offset: silence bought with all of the recall makes a detector that hears nothing."""
    if not len(present_logits) or offset <= 0:
        return offset
    need = int(np.ceil(kept * np.sum(np.asarray(present_logits) >= threshold(min_conf)) - 1e-9))  # must stay detections
    return float(min(offset, max(0.0, offset_keeping(present_logits, need, min_conf)))) if need else offset


def offset_keeping(present_logits: np.ndarray, n: int, min_conf: float = DEFAULT_MIN_CONF) -> float:
    """The largest logit offset (may be negative) at which the `n` (>= 1) highest of `present_logits` are still
    detections at `min_conf` (as :func:`at_offset` compares: ``logit >= threshold + offset``, exactly)."""
    z, thr = float(np.sort(np.asarray(present_logits))[::-1][n - 1]), threshold(min_conf)
    b = z - thr
    while thr + b > z:  # z - thr can round up: step down to where the window still counts
        b = float(np.nextafter(b, -np.inf))
    return b


def offset_curve(folds: list[dict], offsets=np.arange(0.0, 8.01, 0.5), min_conf: float = DEFAULT_MIN_CONF) -> list[dict]:
    """False detections per hour and recall at `min_conf` for fixed logit offsets, over all folds' held-out
    windows: the trade-off an offset makes."""
    z, hours = bird_free(folds)
    present = np.concatenate([f["_present_logits"] for f in folds])
    return [{"offset": float(b), **at_offset(z, hours, present, b, min_conf)} for b in offsets]


def calibrate(folds: list[dict], min_conf: float = DEFAULT_MIN_CONF,
              target_per_hour: float = FALSE_DETECTIONS_TARGET, kept: float = RECALL_KEPT) -> tuple[float, list[dict]]:
    """Cross-fitted logit offsets: each fold's offset is chosen on the other folds' bird-free windows (at most
    `target_per_hour` false detections, keeping at least `kept` of the recall: :func:`recall_capped`) and
    judged on its own (false detections per hour and recall where the teacher hears the focal species).
    Returns (the offset chosen on all folds, for the final model; each fold's calibrated figures). An offset
    changes no ranking: top-1, top-5 and AP stay as they are."""
    def choose(group: list[dict]) -> float:
        b = offset_for(*bird_free(group), min_conf, target_per_hour)
        return recall_capped(b, np.concatenate([g["_present_logits"] for g in group]), min_conf, kept)

    out = []
    for k, f in enumerate(folds):
        b = choose([g for j, g in enumerate(folds) if j != k])
        out.append({"offset": round(b, 4), **at_offset(*bird_free([f]), f["_present_logits"], b, min_conf)})
    return choose(folds), out


def public(m: dict) -> dict:
    """Metrics without the arrays that :func:`calibrate` needs (keys starting with '_')."""
    return {k: v for k, v in m.items() if not k.startswith("_")}


def with_method(m: dict, method: str) -> dict:
    """Metrics with the plain recording_top1/top5 keys set from one aggregation `method`."""
    return {**m, "recording_top1": m[f"recording_top1_{method}"], "recording_top5": m[f"recording_top5_{method}"]}


def mean_metrics(folds: list[dict]) -> dict:
    keys = [k for k, v in folds[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: float(np.mean([f[k] for f in folds])) for k in keys}


def choose_method(folds: list[dict]) -> str:
    """The recording aggregation with the best mean top-1 (then top-5) over folds."""
    return max(RECORDING_SCORES, key=lambda m: (np.mean([f[f"recording_top1_{m}"] for f in folds]),
                                                np.mean([f[f"recording_top5_{m}"] for f in folds])))
