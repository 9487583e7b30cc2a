"""Batch analysis: files -> chunks -> detections -> output files.

The unit of work is a *chunk*: a run of consecutive windows of one file (about ``CHUNK_S``
seconds of audio). How a file is cut into chunks depends only on the file, the model and
the options, never on how many workers run, so one thread, all cores (``workers``) and a
Dask cluster compute the same windows in the same batches and write byte-identical outputs.

A chunk that starts at window ``k0 > 0`` decodes from ``MARGIN_S`` before sample ``k0*hop``
(a point where the source and model sample grids meet, so resampled samples land exactly
where a continuous decode puts them) and drops that margin: the resampler has warmed up by
then. Memory per running chunk is one decoded block plus one batch, whatever the file length.

A file's duration is what decodes, not what its header says (MP3 headers are often a few
tenths of a second long; a WAV cut short by a power cut is analysed as far as its data goes,
with a warning naming both lengths).
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
from .stream import DEFAULT_BATCH, Windower, band_limit, hop_samples
from .util import atomic_write

CHUNK_S = 600.0  # audio per unit of parallel work
MARGIN_S = 0.5  # decoded before a chunk and dropped (resampler warm-up)
PLOT_MAX_S = 600.0  # audio drawn by --plot


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


@dataclass
class ChunkResult:
    """Detections of a chunk, and where the file's audio ended if this chunk reached its end."""

    detections: list[Detection]
    end_sample: int | None  # model-rate samples of the whole file, when its data ended in this chunk


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
    # a chunk other than the last must end (with margin and 1 s to spare) inside the file, and leave the
    # last chunk at least one window (its tail window is the file's last full window of audio)
    while (first + per) * hop + window + margin + sample_rate <= n_est:
        chunks.append(Chunk(path, len(chunks), first, per, per * hop / sample_rate, info.sample_rate))
        first += per
    chunks.append(Chunk(path, len(chunks), first, None, max(0.0, info.duration_s - first * hop / sample_rate),
                        info.sample_rate))
    return chunks


def _margin(sample_rate: int, source_rate: int) -> int:
    align = sample_rate // math.gcd(sample_rate, source_rate)
    return -(-int(MARGIN_S * sample_rate) // align) * align


class _Ended:
    """Set by :func:`chunk_windows` when the file's data ended inside the chunk: the sample count."""

    def __init__(self):
        self.end_sample: int | None = None


def chunk_windows(chunk: Chunk, sample_rate: int, window: int, hop: int, channel: int | None = None,
                  batch: int = DEFAULT_BATCH, ended: _Ended | None = None) -> Iterator:
    """Window batches of one chunk, with start offsets in samples of the whole file.

    When the file's data ends before the chunk's planned windows (a header that promised more),
    the chunk ends the file: its tail window is emitted and `ended` gets the file's sample count.
    """
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
    # the data ended: at the file's end (last chunk), or early (the header promised more)
    for wb in w.flush():
        wb.starts = wb.starts + offset
        yield wb
    if ended is not None:
        ended.end_sample = offset + w.total


def _head(wb, n: int):
    if len(wb.starts) <= n:
        return wb
    return type(wb)(wb.windows[:n], wb.starts[:n], wb.lengths[:n])


def analyze_chunk(model: Classifier, chunk: Chunk, opts: AnalyzeOptions) -> ChunkResult:
    """Detections of one chunk (times in seconds of the whole file, window rule of
    :mod:`birdsound.stream`). Raises :class:`birdsound.audio.AudioError` for unreadable audio."""
    meta = model.meta
    sr, win = meta.sample_rate, meta.window_samples
    hop = hop_samples(win, opts.overlap_s, sr)
    dets: list[Detection] = []
    ended = _Ended()
    for wb in chunk_windows(chunk, sr, win, hop, opts.channel, opts.batch, ended):
        probs = wb.score(lambda w: model.predict(band_limit(w, sr, opts.fmin_hz, opts.fmax_hz)))
        dets += detect(wb.starts / sr, (wb.starts + wb.lengths) / sr, probs, meta.labels, opts.detect)
    return ChunkResult(dets, ended.end_sample)


def file_result(path: str, chunk_results: list[ChunkResult], opts: AnalyzeOptions,
                meta) -> outputs.FileResult:
    """Join a file's chunk results (in chunk order) into its result; its duration is what decoded."""
    dets = [d for c in chunk_results for d in c.detections]
    if opts.merge:
        dets = merge_consecutive(dets)
    end = next(c.end_sample for c in chunk_results if c.end_sample is not None)
    return outputs.FileResult(path, end / meta.sample_rate, dets, low_freq_hz=opts.fmin_hz or 0.0,
                              high_freq_hz=opts.fmax_hz or meta.fmax_hz)


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


class OutputCollision(ValueError):
    """Two inputs would write the same output file; the message names both."""


def plan_outputs(inputs: list[tuple[str, str]], out_dir: str | None,
                 rtypes: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Output file of every input and result type, distinct for every input.

    Files of one folder that differ only in extension (``x.wav``, ``x.flac``) keep their extension
    in the output name (``x.wav.birdsound.results.csv``). Raises :class:`OutputCollision` when two
    inputs from different folders would still share an output (they mirror to the same place).
    """
    def names(path, root, keep_ext):
        return {r: outputs.output_path(path, root, out_dir, r, keep_ext) for r in rtypes}

    plan = {p: names(p, root, False) for p, root in inputs}
    by_target: dict[str, list[str]] = {}
    for p, outs in plan.items():
        for target in outs.values():
            by_target.setdefault(target, []).append(p)
    clashing = {p for ps in by_target.values() if len(ps) > 1 for p in ps}
    for p, root in inputs:
        if p in clashing:
            plan[p] = names(p, root, True)
    seen: dict[str, str] = {}
    for p, outs in plan.items():
        for target in outs.values():
            if target in seen:
                raise OutputCollision(f"{seen[target]} and {p} would both write {target}; "
                                      "analyse them into separate -o folders")
            seen[target] = p
    return plan


# ---------------------------------------------------------------- executors

class LocalExecutor:
    """Chunks on `workers` threads of this process (model calls release the GIL)."""

    def __init__(self, model: Classifier, opts: AnalyzeOptions, workers: int):
        self.model, self.opts = model, opts
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), thread_name_prefix="birdsound")

    def submit(self, chunk: Chunk):
        return self.pool.submit(analyze_chunk, self.model, chunk, self.opts)

    def as_completed(self, futures):
        return concurrent.futures.as_completed(futures)

    def lost(self, e: Exception) -> bool:
        """Whether `e` says the task's worker died (never, in this process)."""
        return False

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


@functools.lru_cache(maxsize=4)
def _worker_model(path: str) -> Classifier:
    from .runtime import load_model

    return load_model(path, threads=1)


def _dask_chunk(model_path: str, chunk: Chunk, opts: AnalyzeOptions) -> ChunkResult:
    return analyze_chunk(_worker_model(model_path), chunk, opts)


class DaskExecutor:
    """Chunks as tasks on a Dask cluster (`address`, ``local`` for a LocalCluster of `workers`
    single-threaded processes, or a ``Client``). Workers load the model from its path once each;
    a task whose worker dies is rerun elsewhere by Dask, then once more alone by :func:`run`, and
    reported failed after that."""

    def __init__(self, model: Classifier, opts: AnalyzeOptions, address, workers: int):
        try:
            from dask.distributed import Client, KilledWorker, LocalCluster, as_completed
        except ImportError:
            raise ValueError("--dask needs dask.distributed: pip install 'birdsound[scale]'") from None
        self._as_completed, self._killed, self.address, self.opts, self.cluster = \
            as_completed, KilledWorker, address, opts, None
        try:
            if address == "local":
                self.cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                            dashboard_address=None)
                self.client = Client(self.cluster)
            elif isinstance(address, str):
                self.client = Client(address, timeout="10s")
            else:  # an existing Client (tests, notebooks)
                self.client = address
        except OSError as e:
            raise ValueError(f"--dask {address}: cannot reach the scheduler ({e})") from None
        self.model_path = os.path.abspath(model.path)

    def submit(self, chunk: Chunk):
        return self.client.submit(_dask_chunk, self.model_path, chunk, self.opts, pure=False)

    def as_completed(self, futures):
        return self._as_completed(futures)

    def lost(self, e: Exception) -> bool:
        """Whether `e` says the task's workers died under it (perhaps killed by another task)."""
        return isinstance(e, self._killed)

    def close(self) -> None:
        if isinstance(self.address, str):
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# ---------------------------------------------------------------- the run

@dataclass
class FileJob:
    """One input file on its way through the run."""

    path: str
    root: str
    outputs: dict[str, str]
    info: audio.AudioInfo | None = None
    chunks: list[Chunk] = field(default_factory=list)
    results: list[ChunkResult | None] = field(default_factory=list)
    error: str | None = None
    result: outputs.FileResult | None = None

    @property
    def done(self) -> bool:
        return self.error is None and bool(self.results) and all(r is not None for r in self.results)


def _error_line(path: str, e: Exception) -> str:
    if isinstance(e, (audio.AudioError, ValueError)):
        return str(e) if str(e).startswith(path) else f"{path}: {e}"
    first = str(e).splitlines()[0] if str(e) else ""
    return f"{path}: analysis failed ({type(e).__name__}: {first})"  # a lost worker, a crashed task


def run(model: Classifier, inputs: list[tuple[str, str]], out_dir: str | None, rtypes: tuple[str, ...],
        opts: AnalyzeOptions, combine: bool = False, skip_existing: bool = False, plot: bool = False,
        report: Callable[[str], None] = print, progress_bar: bool = True, workers: int = 1,
        dask=None) -> RunSummary:
    """Analyse `inputs` ``(file, root)`` and write outputs; failures are reported and skipped.

    Every input gets its own output files (:func:`plan_outputs`; raises :class:`OutputCollision`
    before any work when that cannot be). With `combine`, one combined file per result type is
    written too, from every input's result: with `skip_existing`, inputs whose outputs exist are
    not analysed again and their results are read back from those outputs. Chunks run on
    `workers` threads, or on a Dask cluster (`dask`: an address, ``"local"`` or a ``Client``).
    """
    from tqdm import tqdm

    t0 = time.time()
    summary = RunSummary()
    plan = plan_outputs(inputs, out_dir, rtypes)
    jobs = [FileJob(p, root, plan[p]) for p, root in inputs]
    todo = _plan_jobs(jobs, model, opts, skip_existing, summary)
    bar = tqdm(total=round(sum(j.info.duration_s for j in todo), 1), unit="s", desc="analysing",
               disable=not progress_bar,
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]")
    say = bar.write if progress_bar else report
    for j in jobs:
        if j.error:
            say(f"error: {j.error}")
    executor = DaskExecutor(model, opts, dask, workers) if dask is not None else LocalExecutor(model, opts, workers)
    meta = model.meta.to_dict()

    def collect(fut, j: FileJob, c: Chunk, retry: list | None) -> None:
        if j.error:
            return
        try:
            j.results[c.index] = fut.result()
        except Exception as e:  # noqa: BLE001 - every failure of a file is one line; the batch goes on
            if retry is not None and executor.lost(e):
                retry.append((j, c))
                return
            j.error = _error_line(j.path, e)
            say(f"error: {j.error}")
            return
        if j.done:
            _finish(j, model, opts, meta, plot, say, summary)

    try:
        futures = {executor.submit(c): (j, c) for j in todo for c in j.chunks}
        lost: list[tuple[FileJob, Chunk]] = []
        for fut in executor.as_completed(list(futures)):
            j, c = futures[fut]
            bar.update(c.duration_s)
            collect(fut, j, c, lost)
        # A worker that dies takes the tasks queued on it along, also those of other files: a chunk
        # lost that way runs once more, alone, so that only a chunk that kills workers itself fails.
        for j, c in lost:
            if not j.error:
                collect(executor.submit(c), j, c, None)  # waits for it: one at a time
    finally:
        executor.close()
        bar.close()
    summary.failed = [j.error for j in jobs if j.error]
    if combine:
        _write_combined(jobs, model, out_dir, rtypes, meta, say)
    summary.wall_s = time.time() - t0
    return summary


def _plan_jobs(jobs: list[FileJob], model: Classifier, opts: AnalyzeOptions, skip_existing: bool,
               summary: RunSummary) -> list[FileJob]:
    """Probe every input and cut it into chunks; returns the jobs to analyse."""
    sr, win = model.meta.sample_rate, model.meta.window_samples
    hop = hop_samples(win, opts.overlap_s, sr)
    todo = []
    for j in jobs:
        if skip_existing and all(os.path.exists(p) for p in j.outputs.values()):
            summary.skipped += 1
            continue
        try:
            j.info = audio.info(j.path)
            j.chunks = plan_chunks(j.path, j.info, sr, win, hop)
            j.results = [None] * len(j.chunks)
            todo.append(j)
        except audio.AudioError as e:
            j.error = str(e)
    return todo


def _finish(j: FileJob, model: Classifier, opts: AnalyzeOptions, meta: dict, plot: bool, say, summary) -> None:
    """Write a finished file's outputs (and plot); warn when its data ended before its header said."""
    res = j.result = file_result(j.path, j.results, opts, model.meta)
    if j.info.claimed_frames and j.info.claimed_frames > j.info.frames:
        say(f"warning: {j.path}: the header promises {j.info.claimed_frames / j.info.sample_rate:.3f} s of audio, "
            f"the data holds {j.info.duration_s:.3f} s (file cut short?); analysed what is there")
    summary.files += 1
    summary.audio_s += res.duration_s
    summary.detections += len(res.detections)
    for rtype, p in j.outputs.items():
        atomic_write(p, outputs.render(rtype, [res], meta))
    if plot:
        _plot(model, res, j.outputs, opts, say)


def _write_combined(jobs: list[FileJob], model: Classifier, out_dir: str | None, rtypes, meta: dict, say) -> None:
    """One combined output per result type, in input order, each file's times offset by the
    durations before it. Inputs skipped as done are read back from their own outputs."""
    combined, offset = [], 0.0
    for j in jobs:
        res = j.result
        if res is None and j.error is None:  # skipped: its outputs exist
            try:
                res = outputs.read_result(j.outputs, model.labels)
                res.path = res.path or j.path
                if res.duration_s is None:
                    res.duration_s = audio.decoded_duration(j.path)
            except (OSError, ValueError, KeyError, audio.AudioError) as e:
                say(f"warning: {j.path}: its existing outputs could not be read back for the combined file ({e})")
                continue
        if res is None:
            continue
        res.offset_s = offset
        offset += res.duration_s
        combined.append(res)
    if not combined:
        return
    folder = out_dir or os.path.dirname(jobs[0].path) or "."
    for rtype in rtypes:
        atomic_write(os.path.join(folder, outputs.COMBINED_NAME[rtype]), outputs.render(rtype, combined, meta))


def _plot(model: Classifier, res: outputs.FileResult, outs: dict[str, str], opts: AnalyzeOptions, say) -> None:
    any_out = next(iter(outs.values()))
    png = outputs.plot_path(any_out)
    try:
        sr = model.meta.sample_rate
        x = first_seconds(res.path, sr, PLOT_MAX_S, opts.channel)
        outputs.plot(x, sr, res.detections, png, title=os.path.basename(res.path),
                     fmax_hz=model.meta.fmax_hz)
    except Exception as e:  # noqa: BLE001 - a plot must never lose the tables
        say(f"warning: {res.path}: plot failed ({e})")


def first_seconds(path: str, sample_rate: int, seconds: float, channel: int | None = None) -> np.ndarray:
    """The first `seconds` of a file, mono at `sample_rate`."""
    blocks, n = [], 0
    for b in audio.read_blocks(path, sample_rate, channel):
        blocks.append(b)
        n += len(b)
        if n >= seconds * sample_rate:
            break
    return np.concatenate(blocks)[: int(seconds * sample_rate)]
