"""From window probabilities to detections: sensitivity, thresholds, species lists,
top-n, merging and confirmation. Pure functions and small state machines; no I/O but
reading the user's species/threshold files.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace

import numpy as np

DEFAULT_MIN_CONF = 0.25
DEFAULT_SENSITIVITY = 1.0


@dataclass(frozen=True)
class Detection:
    start_s: float
    end_s: float
    label: str
    confidence: float

    @property
    def scientific(self) -> str:
        return self.label.split("_", 1)[0]

    @property
    def common(self) -> str:
        parts = self.label.split("_", 1)
        return parts[1] if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class DetectOptions:
    min_conf: float = DEFAULT_MIN_CONF
    sensitivity: float = DEFAULT_SENSITIVITY
    top_n: int | None = None
    include: frozenset[int] | None = None  # label indices allowed (None: all)
    exclude: frozenset[int] = frozenset()
    thresholds: dict[int, float] = field(default_factory=dict)  # per-label min confidence


class SpeciesListError(ValueError):
    """A species, threshold or option file that cannot be used; names the file and line."""


def apply_sensitivity(probs: np.ndarray, sensitivity: float) -> np.ndarray:
    """BirdNET's sensitivity: ``sigmoid(s * logit(p))`` with ``s = clip(2 - sensitivity, 0.5, 1.5)``.

    Higher `sensitivity` (up to 1.5) flattens the sigmoid and raises low scores.
    """
    if sensitivity == 1.0:
        return probs
    s = float(np.clip(2.0 - sensitivity, 0.5, 1.5))
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-s * np.log(p / (1 - p))))


def label_matcher(labels: list[str]) -> dict[str, int]:
    """Lower-case lookup: full label, scientific name and common name -> label index."""
    m: dict[str, int] = {}
    for i, l in enumerate(labels):
        m[l.lower()] = i
        parts = l.split("_", 1)
        m.setdefault(parts[0].strip().lower(), i)
        if len(parts) > 1:
            m.setdefault(parts[1].strip().lower(), i)
    return m


def closest_label(name: str, labels: list[str]) -> str | None:
    """The label whose full, scientific or common name is closest to `name` (difflib), if any is close."""
    import difflib

    keys = label_matcher(labels)
    hit = difflib.get_close_matches(name.strip().lower(), list(keys), n=1, cutoff=0.6)
    return labels[keys[hit[0]]] if hit else None


def _unknown_error(path: str, unknown: list[tuple[int, str]], labels: list[str]) -> SpeciesListError:
    parts = []
    for lineno, name in unknown:
        near = closest_label(name, labels)
        parts.append(f"line {lineno} '{name}'" + (f" (did you mean '{near}'?)" if near else " (nothing close)"))
    return SpeciesListError(f"{path}: {len(unknown)} unknown species, not among the model's {len(labels)} labels: "
                            + "; ".join(parts) + " (see 'birdsound info --labels')")


def load_species_list(path: str, labels: list[str]) -> frozenset[int]:
    """Label indices named in a file: one scientific name, common name or full label per line.
    Every unknown name is reported (with the closest label) in one error."""
    match = label_matcher(labels)
    out, unknown = set(), []
    for lineno, line in enumerate(_read_lines(path), 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        idx = match.get(name.lower())
        if idx is None:
            unknown.append((lineno, name))
        else:
            out.add(idx)
    if unknown:
        raise _unknown_error(path, unknown, labels)
    return frozenset(out)


def load_thresholds(path: str, labels: list[str]) -> dict[int, float]:
    """Per-species thresholds from a CSV ``name,threshold`` (header optional)."""
    match = label_matcher(labels)
    out, unknown = {}, []
    rows = list(csv.reader(_read_lines(path)))
    for lineno, row in enumerate(rows, 1):
        if not row or not row[0].strip() or row[0].strip().startswith("#"):
            continue
        if len(row) < 2:
            raise SpeciesListError(f"{path} line {lineno}: expected 'name,threshold'")
        try:
            t = float(row[1])
        except ValueError:
            if lineno == 1:
                continue  # header
            raise SpeciesListError(f"{path} line {lineno}: threshold '{row[1].strip()}' is not a number") from None
        if not 0.0 <= t <= 1.0:
            raise SpeciesListError(f"{path} line {lineno}: threshold {t} outside 0-1")
        idx = match.get(row[0].strip().lower())
        if idx is None:
            unknown.append((lineno, row[0].strip()))
        else:
            out[idx] = t
    if unknown:
        raise _unknown_error(path, unknown, labels)
    return out


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read().splitlines()
    except OSError as e:
        raise SpeciesListError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise SpeciesListError(f"{path}: not a UTF-8 text file") from None


def select(probs: np.ndarray, opts: DetectOptions) -> list[list[tuple[int, float]]]:
    """Per window, the (label index, confidence) pairs that pass every rule, best first."""
    p = apply_sensitivity(probs, opts.sensitivity)
    thr = np.full(p.shape[1], opts.min_conf, dtype=np.float64)
    for i, t in opts.thresholds.items():
        thr[i] = t
    allowed = np.ones(p.shape[1], dtype=bool)
    if opts.include is not None:
        allowed[:] = False
        allowed[list(opts.include)] = True
    if opts.exclude:
        allowed[list(opts.exclude)] = False
    hit = (p >= thr) & allowed
    out = []
    for row, h in zip(p, hit):
        idx = np.flatnonzero(h)
        idx = idx[np.argsort(-row[idx], kind="stable")]
        if opts.top_n:
            idx = idx[:opts.top_n]
        out.append([(int(i), float(row[i])) for i in idx])
    return out


def detect(starts_s: np.ndarray, ends_s: np.ndarray, probs: np.ndarray, labels: list[str],
           opts: DetectOptions) -> list[Detection]:
    """Detections of a block of windows, ordered by time then confidence."""
    dets = []
    for s, e, picks in zip(starts_s, ends_s, select(probs, opts)):
        dets += [Detection(float(s), float(e), labels[i], c) for i, c in picks]
    return dets


def merge_consecutive(dets: list[Detection]) -> list[Detection]:
    """Join adjacent or overlapping detections of one species into one event (max confidence)."""
    open_: dict[str, Detection] = {}
    out: list[Detection] = []
    for d in sorted(dets, key=lambda d: (d.start_s, d.label)):
        cur = open_.get(d.label)
        if cur is not None and d.start_s <= cur.end_s + 1e-9:
            open_[d.label] = replace(cur, end_s=max(cur.end_s, d.end_s), confidence=max(cur.confidence, d.confidence))
        else:
            if cur is not None:
                out.append(cur)
            open_[d.label] = d
    out += open_.values()
    return sorted(out, key=lambda d: (d.start_s, -d.confidence))


class Confirmer:
    """Confirmation (N hits within T s) and per-species cooldown, for streaming use.

    :meth:`feed` takes one window's detections in time order and returns those confirmed now:
    a species is reported once it has `min_hits` detections whose starts lie within
    `within_s` seconds, and then not again until `cooldown_s` seconds after its last report.
    """

    def __init__(self, min_hits: int = 1, within_s: float = 0.0, cooldown_s: float = 0.0):
        self.min_hits, self.within_s, self.cooldown_s = max(1, min_hits), within_s, cooldown_s
        self.hits: dict[str, list[float]] = {}
        self.last_report: dict[str, float] = {}

    def feed(self, dets: list[Detection]) -> list[Detection]:
        out = []
        for d in dets:
            h = [t for t in self.hits.get(d.label, []) if d.start_s - t <= self.within_s] + [d.start_s]
            self.hits[d.label] = h
            if len(h) < self.min_hits:
                continue
            last = self.last_report.get(d.label)
            if last is not None and d.start_s - last < self.cooldown_s:
                continue
            self.last_report[d.label] = d.start_s
            out.append(d)
        return out
