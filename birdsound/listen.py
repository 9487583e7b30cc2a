"""Live microphone: sounddevice callback -> bounded queue -> the same windows, model and
detection rules as ``analyze`` -> printed lines, SQLite log and WAV clips.

The PortAudio callback only copies samples into a bounded queue; scoring runs on the
caller's thread. Samples that do not fit the queue are dropped and counted, never silently
lost: the block after a drop carries the gap's length, the windower is restarted after it and
stream offsets advance by it, so every timestamp stays true to the wall clock. PortAudio's
input-overflow flags are counted too. sounddevice is imported here only, so batch analysis
works without PortAudio.
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import soundfile as sf
import soxr

from .detect import Confirmer, DetectOptions, Detection, detect
from .runtime import Classifier
from .stream import Windower, hop_samples
from .util import atomic_path

BUFFER_S = 120.0  # audio the queue may hold while scoring catches up
BLOCK_S = 0.1
STALL_S = 10.0  # no audio for this long from an open stream is a device error
POLL_S = 0.2  # the loop looks at the stop flag at least this often


class LiveError(Exception):
    """A device problem, in one line for the user."""


def _sd():
    try:
        import sounddevice as sd
    except OSError as e:
        raise LiveError(f"PortAudio library not found ({e}); install it: apt-get install libportaudio2") from None
    except ImportError:
        raise LiveError("sounddevice is not installed: pip install sounddevice") from None
    return sd


def list_devices() -> list[dict]:
    """Input devices: index, name, channels, default sample rate."""
    sd = _sd()
    return [{"index": i, "name": d["name"], "channels": d["max_input_channels"],
             "default_samplerate": d["default_samplerate"]}
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def resolve_device(device: str | None) -> tuple[int | str | None, dict]:
    sd = _sd()
    if not list_devices():
        raise LiveError("no audio input device found (no sound card or microphone connected)")
    if device in (None, "", "default"):
        device = None
    dev: int | str | None = int(device) if device is not None and device.isdigit() else device
    try:
        info = sd.query_devices(dev, "input")
    except (ValueError, sd.PortAudioError) as e:
        raise LiveError(f"--device {device}: {str(e).splitlines()[0]} (see 'birdsound devices')") from None
    return dev, info


@dataclass
class LiveOptions:
    """How a live session reports: confirmation, cooldown, log, clips, duration."""

    overlap_s: float = 0.0
    duration_s: float | None = None  # seconds of audio, then stop
    min_hits: int = 1
    within_s: float = 0.0
    cooldown_s: float = 0.0
    log_path: str | None = None
    clips_dir: str | None = None
    pre_roll_s: float = 1.0
    post_roll_s: float = 1.0


@dataclass
class LiveSummary:
    audio_s: float = 0.0
    detections: int = 0
    overflows: int = 0
    dropped_samples: int = 0
    gaps: int = 0
    error: str | None = None
    lines: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"listened {self.audio_s:.1f} s, {self.detections} detections, {self.overflows} input overflows, "
                f"{self.dropped_samples} dropped samples" + (f" in {self.gaps} gaps" if self.gaps else ""))


class DetectionLog:
    """Append-only SQLite log (WAL mode; each row committed, so it survives a kill)."""

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            self.db = sqlite3.connect(path, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("""CREATE TABLE IF NOT EXISTS detections (
                id INTEGER PRIMARY KEY, start_utc TEXT, end_utc TEXT, stream_start_s REAL, stream_end_s REAL,
                scientific_name TEXT, common_name TEXT, confidence REAL, device TEXT, model_version TEXT,
                clip TEXT)""")
            if "clip" not in [r[1] for r in self.db.execute("PRAGMA table_info(detections)")]:
                self.db.execute("ALTER TABLE detections ADD COLUMN clip TEXT")  # a log from before clips were named
            self.db.commit()
        except (OSError, sqlite3.Error) as e:
            raise LiveError(f"--log {path}: cannot open the detection log ({e})") from None
        self.lock = threading.Lock()

    def add(self, d: Detection, t0: float, device: str, version: str, clip: str | None = None) -> None:
        def iso(s):
            return dt.datetime.fromtimestamp(t0 + s, dt.timezone.utc).isoformat(timespec="milliseconds")

        with self.lock:
            self.db.execute("INSERT INTO detections (start_utc, end_utc, stream_start_s, stream_end_s, scientific_name,"
                            " common_name, confidence, device, model_version, clip) VALUES (?,?,?,?,?,?,?,?,?,?)",
                            (iso(d.start_s), iso(d.end_s), d.start_s, d.end_s, d.scientific, d.common, d.confidence,
                             device, version, clip))
            self.db.commit()

    def close(self) -> None:
        with self.lock:
            self.db.close()


class History:
    """The last `capacity` samples with their absolute offsets (for clips with pre-roll)."""

    def __init__(self, capacity: int):
        self.buf = np.zeros(capacity, np.float32)
        self.end = 0  # absolute index one past the newest sample

    def push(self, x: np.ndarray) -> None:
        x = x[-len(self.buf):]
        self.buf = np.concatenate([self.buf[len(x):], x])
        self.end += len(x)

    def skip(self, n: int) -> None:
        """A gap of `n` samples: they are not there (silence in clips)."""
        self.push(np.zeros(min(n, len(self.buf)), np.float32))
        self.end += max(0, n - len(self.buf))

    def get(self, start: int, stop: int) -> np.ndarray:
        first = self.end - len(self.buf)
        start, stop = max(start, first, 0), min(stop, self.end)
        return self.buf[start - first:stop - first].copy()


def clip_name(d: Detection, t0: float) -> str:
    """File name of a detection's clip: local wall-clock start, stream offset, species, confidence
    (unique across sessions, whose offsets all start at 0)."""
    when = dt.datetime.fromtimestamp(t0 + d.start_s).strftime("%Y%m%d-%H%M%S")
    return f"{when}_{d.start_s:09.2f}s_{d.scientific.replace(' ', '_')}_{d.confidence:.2f}.wav"


class Capture:
    """The PortAudio side: a callback that copies blocks into a bounded queue. A block that does
    not fit is dropped and counted; the next block that fits carries the gap before it."""

    def __init__(self, rate: int, limit_in: int | None, capacity_s: float = BUFFER_S):
        self.q: queue.Queue = queue.Queue()
        self.cap = int(capacity_s * rate)
        self.limit_in = limit_in
        self.lock = threading.Lock()  # queued/received/dropped change on both threads
        self.queued = self.received = self.overflows = self.dropped = self.pending_gap = 0
        self.finished = threading.Event()  # PortAudio ended the stream (duration reached, or the device went away)

    def callback(self, indata, frames, time_info, status) -> None:  # PortAudio thread: copy only
        x = indata[:, 0]
        with self.lock:
            if status.input_overflow:
                self.overflows += 1
            if self.limit_in is not None:
                x = x[:max(0, self.limit_in - self.received)]
            self.received += len(x)
            if self.queued + len(x) > self.cap:
                self.dropped += len(x)
                self.pending_gap += len(x)
            elif len(x):
                self.queued += len(x)
                self.q.put((self.pending_gap, x.copy()))
                self.pending_gap = 0
            done = self.limit_in is not None and self.received >= self.limit_in
        if done:
            raise _sd().CallbackStop

    def get(self, timeout: float) -> tuple[int, np.ndarray]:
        gap, x = self.q.get(timeout=timeout)
        with self.lock:
            self.queued -= len(x)
        return gap, x

    @property
    def reached_limit(self) -> bool:
        return self.limit_in is not None and self.received >= self.limit_in


class LiveSession:
    """Scoring side of a live run: blocks in (with the gap before each), confirmed detections out
    (printed, logged, clipped). Usable without a device: :meth:`feed` then :meth:`finish`."""

    def __init__(self, model: Classifier, opts: DetectOptions, live: LiveOptions, rate: int, device_name: str = "",
                 echo: Callable[[str], None] = print, echo_err: Callable[[str], None] = lambda m: None):
        self.model, self.opts, self.live, self.rate = model, opts, live, rate
        self.sr = model.meta.sample_rate
        self.win = model.meta.window_samples
        self.hop = hop_samples(self.win, live.overlap_s, self.sr)
        self.echo, self.echo_err, self.device_name = echo, echo_err, device_name
        self.summary = LiveSummary()
        self.confirm = Confirmer(live.min_hits, live.within_s, live.cooldown_s)
        self.history = History(int((live.pre_roll_s + live.post_roll_s + model.meta.window_s + 5) * self.sr))
        self.pending: list[Detection] = []
        self.position = 0  # model-rate samples of stream time so far (gaps included)
        self.windower = Windower(self.win, self.hop, batch=8)
        self.resampler = self._new_resampler()
        self.log = None
        self.t0 = time.time()
        self.listeners: list[Callable[[Detection], None]] = []  # confirmed detections (e.g. the web dashboard)
        self.taps: list[Callable[[np.ndarray], None]] = []  # model-rate audio as it arrives (its spectrogram)
        if live.clips_dir:
            os.makedirs(live.clips_dir, exist_ok=True)
        if live.log_path:
            self.log = DetectionLog(live.log_path)

    def _new_resampler(self):
        return soxr.ResampleStream(self.rate, self.sr, 1, dtype="float32") if self.rate != self.sr else None

    def start_clock(self) -> None:
        """Stream time 0 is now (wall clock)."""
        self.t0 = time.time()

    def feed(self, x: np.ndarray, gap: int = 0) -> None:
        """Score a block of input-rate samples that follows a gap of `gap` lost input samples."""
        if gap:
            self._gap(gap)
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        self._push(x)

    def clip_for(self, d: Detection) -> str:
        return clip_name(d, self.t0)

    def _push(self, x: np.ndarray) -> None:
        for tap in self.taps:
            tap(x)
        self.history.push(x)
        self.position += len(x)
        self.summary.audio_s += len(x) / self.sr
        self._score(self.windower.push(x))
        if self.live.clips_dir:
            self._write_clips(final=False)

    def _gap(self, gap: int) -> None:
        """Lost samples: score what came before, then restart the windows after the gap so that stream
        offsets (and wall-clock times) stay true."""
        self._end_segment()
        n = int(round(gap * self.sr / self.rate))
        self.history.skip(n)
        self.position += n
        self.summary.gaps += 1
        self.summary.audio_s += n / self.sr
        self.echo_err(f"warning: {gap / self.rate:.2f} s of audio dropped at {self.position / self.sr - n / self.sr:.1f} s "
                      "(scoring fell behind); offsets after it stay true")
        self.windower = Windower(self.win, self.hop, batch=8, offset=self.position)
        self.resampler = self._new_resampler()

    def _end_segment(self) -> None:
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                self._push(tail)
        self._score(self.windower.flush())

    def _score(self, batches) -> None:
        for wb in batches:
            probs = wb.score(self.model.predict)
            self._report(detect(wb.starts / self.sr, (wb.starts + wb.lengths) / self.sr, probs, self.model.labels,
                                self.opts))

    def _report(self, dets: list[Detection]) -> None:
        for d in self.confirm.feed(dets):
            clock = dt.datetime.fromtimestamp(self.t0 + d.start_s).strftime("%H:%M:%S")
            line = f"{clock}  {d.start_s:8.1f}s  {d.label}  {d.confidence:.3f}"
            self.summary.lines.append(line)
            self.summary.detections += 1
            self.echo(line)
            if self.live.clips_dir:  # pending before the log names it: a reader of the log can wait for it
                self.pending.append(d)
            if self.log:
                self.log.add(d, self.t0, self.device_name, self.model.meta.model_version,
                             self.clip_for(d) if self.live.clips_dir else None)
            for listener in self.listeners:
                listener(d)

    def _write_clips(self, final: bool) -> None:
        for d in list(self.pending):
            stop = int(round((d.end_s + self.live.post_roll_s) * self.sr))
            if self.history.end >= stop or final:
                x = self.history.get(int(round((d.start_s - self.live.pre_roll_s) * self.sr)), stop)
                with atomic_path(os.path.join(self.live.clips_dir, self.clip_for(d)), ".wav") as tmp:
                    sf.write(tmp, x, self.sr, subtype="PCM_16", format="WAV")
                self.pending.remove(d)

    def finish(self) -> LiveSummary:
        """Score the last partial window, write pending clips, close the log."""
        try:
            self._end_segment()
            if self.live.clips_dir:
                self._write_clips(final=True)
        finally:
            if self.log:
                self.log.close()
        return self.summary


def open_stream(sd, dev, info, rate: int, capture: Capture, device: str | None):
    try:
        return sd.InputStream(device=dev, channels=1, samplerate=rate, dtype="float32",
                              blocksize=int(BLOCK_S * rate), callback=capture.callback,
                              finished_callback=capture.finished.set)
    except Exception as e:
        raise LiveError(f"--device {device or info['name']}: cannot open input ({str(e).splitlines()[0]})") from None


def input_rate(sd, dev, info, sample_rate: int) -> int:
    """The model's rate when the device takes it, else the device's default (resampled with soxr)."""
    try:
        sd.check_input_settings(device=dev, channels=1, samplerate=sample_rate, dtype="float32")
        return sample_rate
    except Exception:
        return int(info["default_samplerate"])


class _StopOnSignals:
    """Ctrl-C and SIGTERM set `stop` while active (main thread only); the old handlers come back after."""

    def __init__(self, stop: threading.Event):
        self.stop, self.old = stop, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self.old[s] = signal.signal(s, lambda *_: self.stop.set())
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


def run_loop(session: LiveSession, capture: Capture, stream, stop: threading.Event) -> None:
    """Feed the session until the duration is reached, a stop is asked for (Ctrl-C, SIGTERM, the
    caller), or the device ends or stalls; sets ``session.summary.error`` for device trouble."""
    sd = _sd()
    summary = session.summary
    try:
        with stream:
            session.start_clock()
            last_audio = time.monotonic()
            while not stop.is_set():
                try:
                    gap, x = capture.get(timeout=POLL_S)
                except queue.Empty:
                    if capture.finished.is_set() or not stream.active:
                        break
                    if time.monotonic() - last_audio > STALL_S:
                        summary.error = f"no audio from '{session.device_name}' for {STALL_S:.0f} s"
                        break
                    continue
                last_audio = time.monotonic()
                session.feed(x, gap)
            if not stop.is_set():  # the stream ended by itself: score what it queued
                while True:
                    try:
                        gap, x = capture.get(timeout=0)
                    except queue.Empty:
                        break
                    session.feed(x, gap)
        if not (summary.error or stop.is_set() or capture.reached_limit):
            summary.error = (f"input device '{session.device_name}' stopped delivering audio after "
                             f"{summary.audio_s:.1f} s (unplugged, or its sound server stopped)")
    except sd.PortAudioError as e:
        summary.error = f"audio device stopped: {str(e).splitlines()[0]}"


def listen(model: Classifier, opts: DetectOptions, device: str | None = None, live: LiveOptions | None = None,
           echo: Callable[[str], None] = print, echo_err: Callable[[str], None] = lambda m: None,
           stop_event: threading.Event | None = None,
           on_session: Callable[[LiveSession], None] | None = None) -> LiveSummary:
    """Record and report until `live.duration_s` seconds of audio, Ctrl-C/SIGTERM (within
    ``POLL_S``), `stop_event`, or a device error. `on_session` sees the session before audio flows."""
    live = live or LiveOptions()
    sd = _sd()
    dev, info = resolve_device(device)
    rate = input_rate(sd, dev, info, model.meta.sample_rate)
    capture = Capture(rate, int(round(live.duration_s * rate)) if live.duration_s else None)
    stop = stop_event or threading.Event()
    session = LiveSession(model, opts, live, rate, str(info["name"]), echo, echo_err)
    try:
        stream = open_stream(sd, dev, info, rate, capture, device)
        if on_session:
            on_session(session)
        echo_err(f"listening on '{session.device_name}' at {rate} Hz "
                 f"({'until ' + str(live.duration_s) + ' s of audio, or ' if live.duration_s else ''}Ctrl-C stops)")
        with _StopOnSignals(stop):
            run_loop(session, capture, stream, stop)
    finally:
        summary = session.finish()
    summary.overflows, summary.dropped_samples = capture.overflows, capture.dropped
    if summary.error:
        saved = ", ".join(x for x in (f"log {live.log_path}" if live.log_path else "",
                                      f"clips in {live.clips_dir}" if live.clips_dir else "") if x)
        summary.error += f"; the {summary.detections} detections so far are saved" + (f" ({saved})" if saved else "")
    return summary
