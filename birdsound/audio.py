"""Decode audio files, mix down to mono and resample, block by block.

Everything here reads in blocks so memory does not grow with file length. Every failure
becomes an :class:`AudioError` whose message starts with the file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from .util import quiet_stderr

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".opus")
MIN_SAMPLE_RATE_HZ = 8000
MAX_SAMPLE_RATE_HZ = 192000
BLOCK_S = 30.0  # seconds of source audio decoded per block


class AudioError(Exception):
    """A file that cannot be used as audio; the message names the file."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: rate, channels, frames and duration. `claimed_frames` is what a WAV
    header promises when its data is shorter (a recording cut short), else None. For compressed
    formats `frames` is the header's estimate; the decoder's count can be slightly lower."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    claimed_frames: int | None = None

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


def info(path: str) -> AudioInfo:
    """Probe `path` without decoding it.

    Raises
    ------
    AudioError
        When the file is missing, unreadable, empty or not audio.
    """
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with quiet_stderr():  # the MP3 decoder prints notes about what it could not parse
            i = sf.info(path)
    except sf.LibsndfileError:
        raise AudioError(f"{path}: not an audio file (no wav, flac, ogg or mp3 audio found in it)") from None
    except (RuntimeError, OSError) as e:
        raise AudioError(f"{path}: not a readable audio file ({_short(e)})") from None
    if i.frames <= 0:
        raise AudioError(f"{path}: holds no audio samples")
    if not MIN_SAMPLE_RATE_HZ <= i.samplerate <= MAX_SAMPLE_RATE_HZ:
        raise AudioError(
            f"{path}: sample rate {i.samplerate} Hz is outside "
            f"{MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz"
        )
    claimed = wav_header_frames(path) if i.format in ("WAV", "WAVEX") else None
    return AudioInfo(path, int(i.samplerate), int(i.channels), int(i.frames),
                     claimed if claimed and claimed > i.frames else None)


def wav_header_frames(path: str) -> int | None:
    """Frames a RIFF WAV header's data chunk promises (None when it cannot say: RF64, no data chunk)."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = None
            while True:
                ch = f.read(8)
                if len(ch) < 8:
                    return None
                cid, size = ch[:4], struct.unpack("<I", ch[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size)
                    block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
                    f.seek(size % 2, 1)
                elif cid == b"data":
                    return size // block_align if block_align else None
                else:
                    f.seek(size + size % 2, 1)
    except OSError:
        return None


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__


def to_mono(block: np.ndarray, channel: int | None = None) -> np.ndarray:
    """Mix a ``[frames, channels]`` block down to mono, or pick one channel (0-based)."""
    if block.ndim == 1:
        return block
    if block.shape[1] == 1:
        return block[:, 0]
    if channel is not None:
        return block[:, channel]
    return block.mean(axis=1)


def read_blocks(
    path: str,
    sample_rate: int,
    channel: int | None = None,
    block_s: float = BLOCK_S,
    start_frame: int = 0,
    stop_frame: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield float32 mono blocks of `path` resampled to `sample_rate`.

    Parameters
    ----------
    path : audio file
    sample_rate : output rate in Hz
    channel : 0-based channel to keep; None mixes all channels down
    block_s : seconds of source audio decoded per block
    start_frame, stop_frame : source frames to read (default: all)

    The resampler is streaming (soxr), so block edges leave no clicks; the total number
    of output samples is ``round(frames * sample_rate / source_rate)``.
    """
    meta = info(path)
    if channel is not None and not 0 <= channel < meta.channels:
        raise AudioError(f"{path}: --channel {channel + 1} out of range, file has {meta.channels}")
    stop = meta.frames if stop_frame is None else min(stop_frame, meta.frames)
    block_frames = max(1, int(block_s * meta.sample_rate))
    resampler = None
    if meta.sample_rate != sample_rate:
        resampler = soxr.ResampleStream(meta.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    if start_frame >= stop:
        return
    try:
        with quiet_stderr():
            f = sf.SoundFile(path)
        with f:
            if start_frame:
                f.seek(start_frame)
            pos = start_frame
            while pos < stop:
                n = min(block_frames, stop - pos)
                block = f.read(n, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                pos += len(block)
                last = pos >= stop or len(block) < n
                mono = np.ascontiguousarray(to_mono(block, channel), dtype=np.float32)
                if not np.isfinite(mono).all():
                    bad = int(np.argmax(~np.isfinite(mono))) + pos - len(block)
                    raise AudioError(f"{path}: NaN or Inf samples (first at {bad / meta.sample_rate:.3f} s)")
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=last)
                if len(mono):
                    yield mono
                if last:
                    break
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise AudioError(f"{path}: decoding failed ({_short(e)})") from None


def decoded_duration(path: str) -> float:
    """Seconds of audio that really decode (compressed formats' headers can promise more)."""
    meta = info(path)
    n = sum(len(b) for b in read_blocks(path, meta.sample_rate, None))
    return n / meta.sample_rate


def load(path: str, sample_rate: int, channel: int | None = None) -> np.ndarray:
    """Read a whole file as float32 mono at `sample_rate` (for short files and training)."""
    blocks = list(read_blocks(path, sample_rate, channel))
    if not blocks:
        raise AudioError(f"{path}: holds no audio samples")
    return np.concatenate(blocks)


def find_audio_files(paths: list[str]) -> list[tuple[str, str]]:
    """Expand files and folders (recursively) into ``(file, root)`` pairs, sorted.

    `root` is the folder given on the command line (or the file's own folder), so that
    outputs can mirror the input tree relative to it. Paths that do not exist are returned
    as they are so the caller can report them.
    """
    found: list[tuple[str, str]] = []
    for p in paths:
        if os.path.isdir(p):
            for dirpath, _, names in os.walk(p):
                for name in sorted(names):
                    if name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith("."):
                        found.append((os.path.join(dirpath, name), p))
        else:
            found.append((p, os.path.dirname(p) or "."))
    return sorted(set(found))
