"""Labelled datasets: species folders or a manifest CSV -> recordings with their labels.

Shared by ``train``, ``evaluate``, ``export`` (calibration) and the teacher, so none of them
imports another to read a dataset. Nothing here decodes audio or imports torch.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import audio
from .util import file_sha256

NOISE_FOLDERS = {"noise", "background", "other", "non-bird", "nonbird"}
SYNTH_NOISE_S = 40.0


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the folder, file or row."""


@dataclass
class Recording:
    """One labelled recording; `power`, `starts`, `quiet` and `teacher` are filled by training."""

    path: str
    labels: list[str]
    info: dict = field(default_factory=dict)
    power: Any = None  # [F, T] float16 mel power (torch tensor)
    starts: Any = None  # active window start frames
    quiet: Any = None  # quiet window start frames
    teacher: Any = None  # TeacherTargets of this recording, when distilling
    views: Any = None  # ViewSet: augmented views scored by the teacher (birdsound.views), when asked for


def check_label(label: str, where: str) -> None:
    """A species label must be ``Scientific name_Common name`` (BirdNET's form)."""
    sci, _, common = label.partition("_")
    if not sci.strip() or not common.strip() or len(sci.split()) < 2:
        raise DatasetError(f"{where}: '{label}' is not a species label of the form "
                           "'Scientific name_Common name' (e.g. 'Parus major_Great Tit')")


def read_dataset(data: str) -> tuple[list[Recording], list[str]]:
    """Recordings and background files from a species-folder tree or a manifest CSV.

    Folder layout (BirdNET-Analyzer's): ``DATA/<Scientific name>_<Common name>/*.wav``; a
    folder named ``noise``/``background``/``other`` holds recordings without birds.
    Manifest: CSV with columns ``path`` (relative to the CSV) and ``species`` (several joined
    by ``;``); extra columns (xc_id, recordist, license) are kept for the model card.
    Returns (recordings, noise files).

    Raises
    ------
    DatasetError
        For a missing folder, a manifest without its columns or listing a file twice, a folder or
        species not named ``Scientific name_Common name``, or no recordings at all.
    """
    if os.path.isfile(data):
        return _read_manifest(data)
    if not os.path.isdir(data):
        raise DatasetError(f"{data}: no such folder or manifest")
    recs, noise = [], []
    for sub in sorted(os.listdir(data)):
        full = os.path.join(data, sub)
        if not os.path.isdir(full):
            continue
        files = [f for f, _ in audio.find_audio_files([full])]
        if sub.lower() in NOISE_FOLDERS:
            noise += files
        elif files:
            check_label(sub, full)
            recs += [Recording(f, [sub]) for f in files]
    if not recs:
        raise DatasetError(f"{data}: no species folders with audio files found "
                           "(expected DATA/<Scientific name>_<Common name>/*.wav)")
    return recs, noise


def _read_manifest(path: str) -> tuple[list[Recording], list[str]]:
    base = os.path.dirname(os.path.abspath(path))
    recs, noise, first_line = [], [], {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "species"} <= set(reader.fieldnames):
                raise DatasetError(f"{path}: manifest needs columns 'path' and 'species'")
            for lineno, row in enumerate(reader, 2):
                p = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
                if (seen := first_line.setdefault(os.path.normpath(p), lineno)) != lineno:
                    # two rows of one file could fall in two folds: a recording validated on itself
                    raise DatasetError(f"{path} line {lineno}: {row['path']} is listed again (line {seen}): list a "
                                       "recording once, its species joined by ';'")
                sp = (row["species"] or "").strip()
                if sp.lower() in NOISE_FOLDERS or not sp:
                    noise.append(p)
                    continue
                labels = [s.strip() for s in sp.split(";") if s.strip()]
                for lab in labels:
                    check_label(lab, f"{path} line {lineno}")
                recs.append(Recording(p, labels, dict(row)))
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 CSV manifest") from None
    if not recs:
        raise DatasetError(f"{path}: manifest lists no recordings")
    return recs, noise


def check_distinct(recs: list[Recording], bird_free: list[str] = (), held_out: list[str] = ()) -> None:
    """Refuse the same bytes twice where it would mislead training or its validation: two recordings
    (cross-validation by recording would put one in training and its copy in validation), a `bird_free`
    file that is a recording (taught both as its species and as silence), a `held_out` bird-free file that
    is trained on (its false detections would be measured on training audio). Unreadable files pass
    (they are skipped later, with their reason).

    Raises
    ------
    DatasetError
        Naming both files.
    """
    def digests(paths):
        for p in paths:
            try:
                yield p, file_sha256(p)
            except OSError:
                continue

    first: dict[str, str] = {}
    for path, digest in digests([r.path for r in recs]):
        if (other := first.setdefault(digest, path)) != path:
            raise DatasetError(f"{path}: the same audio as {other} (a copy could be validated on itself): keep "
                               "one, with all its species joined by ';' in a manifest")
    free = list(digests(bird_free))
    for path, digest in free:
        if digest in first:
            raise DatasetError(f"{path}: bird-free audio with the same bytes as the recording {first[digest]} "
                               "(it would be taught both as its species and as silence): remove it from the "
                               "bird-free audio")
    trained = {**{d: p for p, d in free}, **first}
    for path, digest in digests(held_out):
        if digest in trained:
            raise DatasetError(f"{path}: held-out bird-free audio with the same bytes as {trained[digest]}, which is "
                               "trained on (its false detections would be measured on training audio)")


def label_set(recs: list[Recording]) -> list[str]:
    """Sorted labels of `recs`."""
    return sorted({lab for r in recs for lab in r.labels})


def synth_noise(seed: int, sample_rate: int) -> list[np.ndarray]:
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
    for i in rng.integers(0, n - 64, 4000):
        rain[i:i + 64] += rng.standard_normal(64) * np.exp(-np.arange(64) / 8) * rng.uniform(0.2, 1)
    t = np.arange(n) / sample_rate
    hum = sum(np.sin(2 * np.pi * 50 * k * t) / k for k in range(1, 8)) + 0.05 * white
    quiet = 1e-4 * white
    out = []
    for w in (white, pink, brown, wind, rain, hum, quiet):
        out.append((w / (np.abs(w).max() + 1e-9) * 0.3).astype(np.float32))
    return out
