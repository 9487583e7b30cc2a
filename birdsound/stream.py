"""Blocks of samples -> fixed windows with a hop, each with its exact start offset.

Window rule (shared by batch analysis and the live microphone, so their timestamps agree
by construction): with ``window`` and ``hop`` in samples of the model-rate signal of
length ``N``, window ``k`` covers samples ``[k*hop, k*hop + window)``. Windows are emitted
while they fit; after the input ends, one more window starting at the next ``k*hop`` is
emitted if samples after the last full window's end remain (or if the input was shorter
than one window). A window's start and end in seconds are ``k*hop / rate`` and
``min(k*hop + window, N) / rate``.

That last window has fewer than ``window`` samples of its own, so it is not scored as it
stands: the model normalises every mel bin by its median over the window, and zero padding
made any sound in a short remainder look loud (on british_birdsong_xc, 72 % of tail
detections were not the focal species, against 17 % in full windows). Its scores come from
the last full window of audio, samples ``[N - window, N)`` (16 % not focal; it overlaps the
previous window), and, for an input shorter than one window, from its samples looped
(:func:`fill_tail`). Timestamps keep the rule above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from . import audio

DEFAULT_BATCH = 32
JOIN_S_SAMPLES = 160  # length of the fade dip at each join of a looped tail (5 ms at 32 kHz)


def fill_tail(rest: np.ndarray, window: int, join: int = JOIN_S_SAMPLES) -> np.ndarray:
    """A full window made of the `rest` samples looped, with a short cosine dip at each join so the
    loop adds no clicks; all zeros stay zeros (digital silence in, digital silence out)."""
    rest = np.asarray(rest, dtype=np.float32)
    if len(rest) >= window:
        return rest[:window].copy()
    if len(rest) == 0:
        return np.zeros(window, np.float32)
    out = np.resize(rest, window).astype(np.float32)
    j = min(join, len(rest) // 4)
    if j >= 2:
        dip = (0.5 - 0.5 * np.cos(np.linspace(0, np.pi, j))).astype(np.float32)  # 0 -> 1
        for b in range(len(rest), window, len(rest)):  # a join at every multiple of len(rest)
            lo, hi = max(0, b - j), min(window, b + j)
            out[lo:b] *= dip[::-1][: b - lo]
            out[b:hi] *= dip[: hi - b]
    return out


@dataclass
class WindowBatch:
    """Windows ``[B, window]`` float32, their start sample and valid length (samples).

    A tail window (fewer than ``window`` samples of its own) comes with `alt`, the same windows
    in a second version; score both and keep the lower score (:meth:`combine`)."""

    windows: np.ndarray
    starts: np.ndarray  # int64 start sample of each window
    lengths: np.ndarray  # int64 number of real (not padded) samples in each window
    alt: np.ndarray | None = None

    def score(self, predict) -> np.ndarray:
        """``predict(windows)`` for every window, the tail's two versions combined."""
        p = predict(self.windows)
        return p if self.alt is None else np.minimum(p, predict(self.alt))


def hop_samples(window: int, overlap_s: float, sample_rate: int) -> int:
    """Hop in samples for a window of `window` samples and `overlap_s` seconds of overlap."""
    hop = window - int(round(overlap_s * sample_rate))
    if hop < 1:
        raise ValueError(f"overlap {overlap_s} s leaves no hop for a {window / sample_rate} s window")
    return hop


class Windower:
    """Incremental windowing of a sample stream; :meth:`push` blocks, then :meth:`flush`.

    Keeps at most one window, one hop and one block of samples in memory. `resumed` says that
    the stream continues one whose last window started one hop before this stream's sample 0
    (a chunk of a longer file), so the tail-window rule treats its end as covered. `offset` is
    added to every window start (a live stream restarted after a gap).
    """

    def __init__(self, window: int, hop: int, batch: int = DEFAULT_BATCH, resumed: bool = False, offset: int = 0):
        if not 0 < hop <= window:
            raise ValueError("hop must be in (0, window]")
        self.window, self.hop, self.batch = window, hop, batch
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # absolute sample index of buf[0]
        self.next_start = 0  # start sample of the next window to emit
        self.total = 0  # samples pushed so far
        self.emitted = 0
        self.covered = window - hop if resumed else 0  # end of the last emitted window
        self.offset = offset  # added to every start: the stream position of this windower's first sample

    def push(self, block: np.ndarray) -> Iterator[WindowBatch]:
        """Add samples; yield batches of every window now complete."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self.total += len(block)
        self.buf = np.concatenate([self.buf, block]) if len(self.buf) else block
        while True:
            off = self.next_start - self.buf_start
            avail = len(self.buf) - off
            if avail < self.window:
                break
            n = min(self.batch, 1 + (avail - self.window) // self.hop)
            view = np.lib.stride_tricks.sliding_window_view(self.buf[off:], self.window)[::self.hop][:n]
            starts = self.next_start + self.hop * np.arange(n, dtype=np.int64)
            self.next_start += n * self.hop
            self.emitted += n
            self.covered = int(starts[-1]) + self.window
            yield WindowBatch(np.array(view, dtype=np.float32), starts + self.offset,
                              np.full(n, self.window, dtype=np.int64))
        drop = self.next_start - self.hop - self.buf_start  # keep one hop more: the tail window may need it
        if drop > 0:
            self.buf = self.buf[drop:]
            self.buf_start += drop

    def flush(self) -> Iterator[WindowBatch]:
        """Emit the last, partial window if samples remain uncovered: its start and length follow the
        window rule; its samples are the remainder looped, `alt` the input's last full window."""
        if self.total > self.covered and self.next_start < self.total:
            rest = self.buf[self.next_start - self.buf_start:]
            looped = fill_tail(rest, self.window)[None]
            end_aligned = self.total - self.window - self.buf_start
            context = self.buf[end_aligned:][None].copy() if end_aligned >= 0 else None
            self.emitted += 1
            yield WindowBatch(looped, np.array([self.next_start + self.offset], dtype=np.int64),
                              np.array([len(rest)], dtype=np.int64), context)
            self.next_start += self.hop
        self.buf = np.zeros(0, dtype=np.float32)


def windows_from_blocks(blocks: Iterable[np.ndarray], window: int, hop: int,
                        batch: int = DEFAULT_BATCH) -> Iterator[WindowBatch]:
    """All window batches of a finite block stream, the padded last one included."""
    w = Windower(window, hop, batch)
    for b in blocks:
        yield from w.push(b)
    yield from w.flush()


def file_windows(path: str, sample_rate: int, window: int, hop: int, channel: int | None = None,
                 batch: int = DEFAULT_BATCH, block_s: float = audio.BLOCK_S) -> Iterator[WindowBatch]:
    """Window batches of an audio file decoded block by block at `sample_rate`."""
    return windows_from_blocks(audio.read_blocks(path, sample_rate, channel, block_s), window, hop, batch)


def band_limit(windows: np.ndarray, sample_rate: int, fmin: float | None, fmax: float | None) -> np.ndarray:
    """Zero the spectrum outside [fmin, fmax] Hz of each window (BirdNET's --fmin/--fmax)."""
    if not fmin and not fmax:
        return windows
    spec = np.fft.rfft(windows, axis=1)
    f = np.fft.rfftfreq(windows.shape[1], 1.0 / sample_rate)
    mask = np.ones_like(f, dtype=bool)
    if fmin:
        mask &= f >= fmin
    if fmax:
        mask &= f <= fmax
    spec[:, ~mask] = 0
    return np.fft.irfft(spec, n=windows.shape[1], axis=1).astype(np.float32)
