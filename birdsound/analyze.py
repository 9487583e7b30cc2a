"""Batch analysis: one audio file -> detections, and a folder run -> output files.

This is the spine every front end reuses: ``analyze_file`` for one file (block-wise, so
memory stays flat with file length), ``run`` for many files with outputs, skip-existing,
per-file error isolation and a summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import audio, outputs
from .detect import DetectOptions, Detection, detect, merge_consecutive
from .model import Classifier
from .stream import DEFAULT_BATCH, band_limit, file_windows, hop_samples


@dataclass(frozen=True)
class AnalyzeOptions:
    overlap_s: float = 0.0
    channel: int | None = None  # 0-based; None mixes down
    fmin_hz: float | None = None
    fmax_hz: float | None = None
    merge: bool = False
    batch: int = DEFAULT_BATCH
    detect: DetectOptions = field(default_factory=DetectOptions)


def analyze_file(model: Classifier, path: str, opts: AnalyzeOptions,
                 progress: Callable[[float], None] | None = None) -> outputs.FileResult:
    """Detections of one file. Times follow the window rule of :mod:`birdsound.stream`:
    start = k*hop / rate, end = min(k*hop + window, N) / rate, with N the number of
    model-rate samples; in samples of the original file at rate R that is
    ``round(start * R)`` (exact whenever hop * R / rate is an integer).

    Raises :class:`birdsound.audio.AudioError` for unreadable audio.
    """
    meta = model.meta
    sr, win = meta.sample_rate, meta.window_samples
    hop = hop_samples(win, opts.overlap_s, sr)
    info = audio.info(path)
    dets: list[Detection] = []
    for wb in file_windows(path, sr, win, hop, opts.channel, opts.batch):
        x = band_limit(wb.windows, sr, opts.fmin_hz, opts.fmax_hz)
        probs = model.predict(x)
        starts = wb.starts / sr
        ends = (wb.starts + wb.lengths) / sr
        dets += detect(starts, ends, probs, meta.labels, opts.detect)
        if progress:
            progress(float(min(len(wb.starts) * hop, wb.lengths.sum()) / sr))
    if opts.merge:
        dets = merge_consecutive(dets)
    return outputs.FileResult(path, info.duration_s, dets,
                              low_freq_hz=opts.fmin_hz or 0.0,
                              high_freq_hz=opts.fmax_hz or min(15000.0, sr / 2))


@dataclass
class RunSummary:
    files: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)  # one message per failed file
    audio_s: float = 0.0
    detections: int = 0
    wall_s: float = 0.0

    def line(self) -> str:
        speed = self.audio_s / self.wall_s if self.wall_s > 0 else 0.0
        return (f"{self.files} files analysed ({self.skipped} skipped), {self.audio_s / 3600:.3f} h of audio, "
                f"{self.detections} detections, {len(self.failed)} errors, {speed:.0f}x real time")


def outputs_for(path: str, root: str, out_dir: str | None, rtypes: tuple[str, ...]) -> dict[str, str]:
    return {r: outputs.output_path(path, root, out_dir, r) for r in rtypes}


def run(model: Classifier, inputs: list[tuple[str, str]], out_dir: str | None, rtypes: tuple[str, ...],
        opts: AnalyzeOptions, combine: bool = False, skip_existing: bool = False, plot: bool = False,
        report: Callable[[str], None] = print, progress_bar: bool = True) -> RunSummary:
    """Analyse `inputs` ``(file, root)`` and write outputs; failures are reported and skipped."""
    from tqdm import tqdm

    t0 = time.time()
    summary = RunSummary()
    todo = []
    total_s = 0.0
    for path, root in inputs:
        if skip_existing and not combine:
            outs = outputs_for(path, root, out_dir, rtypes)
            if all(os.path.exists(p) for p in outs.values()):
                summary.skipped += 1
                continue
        try:
            total_s += audio.info(path).duration_s
        except audio.AudioError:
            pass  # reported when analysed
        todo.append((path, root))
    combined: list[outputs.FileResult] = []
    meta = model.meta.to_dict()
    bar = tqdm(total=round(total_s, 1), unit="s", desc="analysing", disable=not progress_bar,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]")
    offset = 0.0
    for path, root in todo:
        try:
            res = analyze_file(model, path, opts, progress=lambda s: bar.update(s))
        except (audio.AudioError, ValueError) as e:
            msg = str(e) if str(e).startswith(path) else f"{path}: {e}"
            summary.failed.append(msg)
            bar.write(f"error: {msg}") if progress_bar else report(f"error: {msg}")
            continue
        summary.files += 1
        summary.audio_s += res.duration_s
        summary.detections += len(res.detections)
        if combine:
            res.offset_s = offset
            offset += res.duration_s
            combined.append(res)
        else:
            for rtype, p in outputs_for(path, root, out_dir, rtypes).items():
                outputs.atomic_write(p, outputs.render(rtype, [res], meta))
        if plot:
            png = os.path.splitext(outputs.output_path(path, root, out_dir, "csv"))[0]
            png = png[: -len(".results")] + ".png" if png.endswith(".results") else png + ".png"
            try:
                outputs.plot(path, model.meta.sample_rate, res.detections, png)
            except Exception as e:  # a plot must never lose the tables
                report(f"warning: {path}: plot failed ({e})")
    bar.close()
    if combine and combined:
        folder = out_dir or os.path.dirname(inputs[0][0]) or "."
        for rtype in rtypes:
            outputs.atomic_write(os.path.join(folder, outputs.COMBINED_NAME[rtype]),
                                 outputs.render(rtype, combined, meta))
    summary.wall_s = time.time() - t0
    return summary


def probabilities(model: Classifier, path: str, overlap_s: float = 0.0,
                  channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All window start times (s) and probabilities ``[W, n_labels]`` of a file (for evaluation)."""
    sr, win = model.meta.sample_rate, model.meta.window_samples
    hop = hop_samples(win, overlap_s, sr)
    starts, probs = [], []
    for wb in file_windows(path, sr, win, hop, channel):
        starts.append(wb.starts / sr)
        probs.append(model.predict(wb.windows))
    return np.concatenate(starts), np.concatenate(probs)
