"""Batch analysis: files -> chunks -> detections -> output files.

The unit of work is a *chunk*: a run of consecutive windows of one file (about ``CHUNK_S``
seconds of audio). How a file is cut into chunks depends only on the file, the model and
the options, never on how many workers run, so one thread, all cores (``workers``) and a
Dask cluster compute the same windows in the same batches and write byte-identical outputs.

A chunk that starts at window ``k0 > 0`` decodes from ``MARGIN_S`` before sample ``k0*hop``
(a point where the source and model sample grids meet, so resampled samples land exactly
where a continuous decode puts them) and drops that margin: the resampler has warmed up by
then. Memory per running chunk is one decoded block plus one batch, whatever the file length.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from . import audio, outputs
from .detect import DetectOptions, Detection, detect, merge_consecutive
from .runtime import Classifier
from .stream import DEFAULT_BATCH, Windower, band_limit, file_windows, hop_samples

CHUNK_S = 600.0  # audio per unit of parallel work
MARGIN_S = 0.5  # decoded before a chunk and dropped (resampler warm-up)


@dataclass(frozen=True)
class AnalyzeOptions:
    overlap_s: float = 0.0
    channel: int | None = None  # 0-based; None mixes down
    fmin_hz: float | None = None
    fmax_hz: float | None = None
    merge: bool = False
    batch: int = DEFAULT_BATCH
    detect: DetectOptions = field(default_factory=DetectOptions)


@dataclass(frozen=True)
class Chunk:
    """Windows ``first .. first + count - 1`` of `path`; ``count`` None runs to the end of the file."""

    path: str
    index: int
    first: int
    count: int | None
    duration_s: float  # audio seconds this chunk accounts for (progress)
    source_rate: int  # the file's sample rate (Hz)


def plan_chunks(path: str, info: audio.AudioInfo, sample_rate: int, window: int, hop: int,
                chunk_s: float | None = None) -> list[Chunk]:
    """Cut a file into chunks of about `chunk_s` (default ``CHUNK_S``) seconds whose starts lie on
    both sample grids."""
    chunk_s = chunk_s or CHUNK_S
    align = sample_rate // math.gcd(sample_rate, info.sample_rate)  # model samples per whole source step
    step = align // math.gcd(align, hop)  # windows per aligned unit
    per = max(step, int(round(chunk_s * sample_rate / hop)) // step * step)
    margin = _margin(sample_rate, info.sample_rate)
    n_est = info.frames * sample_rate // info.sample_rate
    chunks: list[Chunk] = []
    first = 0
    # a chunk other than the last must end (with margin and 1 s to spare) inside the file
    while (first + per - 1) * hop + window + margin + sample_rate <= n_est:
        chunks.append(Chunk(path, len(chunks), first, per, per * hop / sample_rate, info.sample_rate))
        first += per
    chunks.append(Chunk(path, len(chunks), first, None, max(0.0, info.duration_s - first * hop / sample_rate),
                        info.sample_rate))
    return chunks


def _margin(sample_rate: int, source_rate: int) -> int:
    align = sample_rate // math.gcd(sample_rate, source_rate)
    return -(-int(MARGIN_S * sample_rate) // align) * align


def chunk_windows(chunk: Chunk, sample_rate: int, window: int, hop: int, channel: int | None = None,
                  batch: int = DEFAULT_BATCH) -> Iterator:
    """Window batches of one chunk, with start offsets in samples of the whole file."""
    offset = chunk.first * hop
    start_frame = skip = 0
    stop_frame = None
    if chunk.first or chunk.count is not None:
        src_rate = chunk.source_rate
        margin = _margin(sample_rate, src_rate)
        if chunk.first:
            skip = margin
            start_frame = (offset - skip) * src_rate // sample_rate
        if chunk.count is not None:
            end = (chunk.first + chunk.count - 1) * hop + window + margin
            stop_frame = -(-end * src_rate // sample_rate) + 1
    w = Windower(window, hop, batch, resumed=chunk.first > 0)
    left = chunk.count
    for block in audio.read_blocks(chunk.path, sample_rate, channel, start_frame=start_frame, stop_frame=stop_frame):
        if skip:
            block, skip = block[skip:], max(0, skip - len(block))
        for wb in w.push(block):
            if left is not None:
                wb = _head(wb, left)
                left -= len(wb.starts)
            if len(wb.starts):
                wb.starts = wb.starts + offset
                yield wb
            if left == 0:
                return
    if left is None:
        for wb in w.flush():
            wb.starts = wb.starts + offset
            yield wb


def _head(wb, n: int):
    if len(wb.starts) <= n:
        return wb
    return type(wb)(wb.windows[:n], wb.starts[:n], wb.lengths[:n])


def analyze_chunk(model: Classifier, chunk: Chunk, opts: AnalyzeOptions) -> list[Detection]:
    """Detections of one chunk (times in seconds of the whole file, window rule of
    :mod:`birdsound.stream`). Raises :class:`birdsound.audio.AudioError` for unreadable audio."""
    meta = model.meta
    sr, win = meta.sample_rate, meta.window_samples
    hop = hop_samples(win, opts.overlap_s, sr)
    dets: list[Detection] = []
    for wb in chunk_windows(chunk, sr, win, hop, opts.channel, opts.batch):
        probs = model.predict(band_limit(wb.windows, sr, opts.fmin_hz, opts.fmax_hz))
        dets += detect(wb.starts / sr, (wb.starts + wb.lengths) / sr, probs, meta.labels, opts.detect)
    return dets


def file_result(path: str, info: audio.AudioInfo, chunk_dets: list[list[Detection]], opts: AnalyzeOptions,
                sample_rate: int) -> outputs.FileResult:
    """Join a file's chunk detections (in chunk order) into its result."""
    dets = [d for ds in chunk_dets for d in ds]
    if opts.merge:
        dets = merge_consecutive(dets)
    return outputs.FileResult(path, info.duration_s, dets, low_freq_hz=opts.fmin_hz or 0.0,
                              high_freq_hz=opts.fmax_hz or min(15000.0, sample_rate / 2))


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


# ---------------------------------------------------------------- executors
# An executor is (submit(chunk) -> future, as_completed(futures) -> iterator, close()).

def local_executor(model: Classifier, opts: AnalyzeOptions, workers: int):
    """Chunks on `workers` threads of this process (model calls release the GIL)."""
    pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="birdsound")
    return (lambda c: pool.submit(analyze_chunk, model, c, opts), concurrent.futures.as_completed,
            lambda: pool.shutdown(cancel_futures=True))


@functools.lru_cache(maxsize=4)
def _worker_model(path: str) -> Classifier:
    from .runtime import load_model

    return load_model(path, threads=1)


def _dask_chunk(model_path: str, chunk: Chunk, opts: AnalyzeOptions) -> list[Detection]:
    return analyze_chunk(_worker_model(model_path), chunk, opts)


def dask_executor(model: Classifier, opts: AnalyzeOptions, address: str, workers: int):
    """Chunks as tasks on a Dask cluster (`address`, or ``local`` for a LocalCluster of
    `workers` single-threaded processes). Workers load the model from its path once each;
    a task whose worker dies is rerun elsewhere by Dask, and reported failed after that."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError("--dask needs dask.distributed: pip install 'birdsound[scale]'") from None
    cluster = None
    try:
        if address == "local":
            cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            client = Client(cluster)
        elif isinstance(address, str):
            client = Client(address, timeout="10s")
        else:  # an existing Client (tests, notebooks)
            client = address
    except OSError as e:
        raise ValueError(f"--dask {address}: cannot reach the scheduler ({e})") from None
    path = os.path.abspath(model.path)

    def close() -> None:
        if isinstance(address, str):
            client.close()
        if cluster is not None:
            cluster.close()

    return (lambda c: client.submit(_dask_chunk, path, c, opts, pure=False), as_completed, close)


def run(model: Classifier, inputs: list[tuple[str, str]], out_dir: str | None, rtypes: tuple[str, ...],
        opts: AnalyzeOptions, combine: bool = False, skip_existing: bool = False, plot: bool = False,
        report: Callable[[str], None] = print, progress_bar: bool = True, workers: int = 1,
        dask=None) -> RunSummary:
    """Analyse `inputs` ``(file, root)`` and write outputs; failures are reported and skipped.

    Chunks run on `workers` threads, or on a Dask cluster when `dask` is an address, ``"local"``
    or a ``Client``; outputs do not depend on which.
    """
    from tqdm import tqdm

    t0 = time.time()
    summary = RunSummary()
    sr, win = model.meta.sample_rate, model.meta.window_samples
    hop = hop_samples(win, opts.overlap_s, sr)
    failed: dict[int, str] = {}
    plans: dict[int, tuple[str, str, audio.AudioInfo, list[Chunk]]] = {}
    for i, (path, root) in enumerate(inputs):
        if skip_existing and not combine:
            if all(os.path.exists(p) for p in outputs_for(path, root, out_dir, rtypes).values()):
                summary.skipped += 1
                continue
        try:
            info = audio.info(path)
            plans[i] = (path, root, info, plan_chunks(path, info, sr, win, hop))
        except audio.AudioError as e:
            failed[i] = str(e)
    bar = tqdm(total=round(sum(p[2].duration_s for p in plans.values()), 1), unit="s", desc="analysing",
               disable=not progress_bar,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]")
    say = bar.write if progress_bar else report
    for i in sorted(failed):
        summary.failed.append(failed[i])
        say(f"error: {failed[i]}")
    submit, as_completed, close = (dask_executor(model, opts, dask, workers) if dask is not None
                                   else local_executor(model, opts, workers))
    results: dict[int, outputs.FileResult] = {}
    meta = model.meta.to_dict()
    try:
        futures = {}
        for i, (_, _, _, chunks) in plans.items():
            for c in chunks:
                futures[submit(c)] = (i, c)
        pending = {i: len(p[3]) for i, p in plans.items()}
        got: dict[int, list] = {i: [None] * len(p[3]) for i, p in plans.items()}
        for fut in as_completed(list(futures)):
            i, c = futures[fut]
            bar.update(c.duration_s)
            path, root, info, _ = plans[i]
            if i in failed:
                continue
            try:
                got[i][c.index] = fut.result()
            except (audio.AudioError, ValueError) as e:
                failed[i] = str(e) if str(e).startswith(path) else f"{path}: {e}"
            except Exception as e:  # a lost worker, a crashed task: the file fails, the batch goes on
                failed[i] = f"{path}: analysis failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            if i in failed:
                summary.failed.append(failed[i])
                say(f"error: {failed[i]}")
                continue
            pending[i] -= 1
            if pending[i] == 0:
                res = results[i] = file_result(path, info, got.pop(i), opts, sr)
                summary.files += 1
                summary.audio_s += res.duration_s
                summary.detections += len(res.detections)
                if not combine:
                    for rtype, p in outputs_for(path, root, out_dir, rtypes).items():
                        outputs.atomic_write(p, outputs.render(rtype, [res], meta))
                if plot:
                    _plot(model, res, root, out_dir, report)
    finally:
        close()
        bar.close()
    if combine and results:
        combined, offset = [], 0.0
        for i in sorted(results):
            results[i].offset_s = offset
            offset += results[i].duration_s
            combined.append(results[i])
        folder = out_dir or os.path.dirname(inputs[0][0]) or "."
        for rtype in rtypes:
            outputs.atomic_write(os.path.join(folder, outputs.COMBINED_NAME[rtype]),
                                 outputs.render(rtype, combined, meta))
    summary.wall_s = time.time() - t0
    return summary


def _plot(model: Classifier, res: outputs.FileResult, root: str, out_dir: str | None,
          report: Callable[[str], None]) -> None:
    png = os.path.splitext(outputs.output_path(res.path, root, out_dir, "csv"))[0]
    png = png[: -len(".results")] + ".png" if png.endswith(".results") else png + ".png"
    try:
        outputs.plot(res.path, model.meta.sample_rate, res.detections, png)
    except Exception as e:  # a plot must never lose the tables
        report(f"warning: {res.path}: plot failed ({e})")


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
