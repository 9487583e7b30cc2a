"""Live microphone: sounddevice callback -> bounded buffer -> the same windows, model and
detection rules as ``analyze`` -> printed lines, SQLite log and WAV clips.

The PortAudio callback only copies samples into a bounded queue; scoring runs on the
caller's thread. Samples that do not fit the queue are counted as dropped, never silently
lost; PortAudio's input-overflow flags are counted too. sounddevice is imported here only,
so batch analysis works without PortAudio.
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

BUFFER_S = 120.0  # audio the queue may hold while scoring catches up
BLOCK_S = 0.1
STALL_S = 10.0  # no audio for this long from an open stream is a device error


class LiveError(Exception):
    """A device problem, in one line for the user."""


def _sd():
    try:
        import sounddevice as sd
    except OSError as e:
        raise LiveError(f"PortAudio library not found ({e}); install it: apt-get install libportaudio2") from None
    except ImportError:
        raise LiveError("sounddevice is not installed: pip install 'birdsound[live]'") from None
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
    dev: int | str | None = int(device) if device is not None and device.isdigit() else device
    try:
        info = sd.query_devices(dev, "input")
    except (ValueError, sd.PortAudioError) as e:
        raise LiveError(f"--device {device}: {str(e).splitlines()[0]} (see 'birdsound devices')") from None
    return dev, info


@dataclass
class LiveSummary:
    audio_s: float = 0.0
    detections: int = 0
    overflows: int = 0
    dropped_samples: int = 0
    error: str | None = None
    lines: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"listened {self.audio_s:.1f} s, {self.detections} detections, {self.overflows} input overflows, "
                f"{self.dropped_samples} dropped samples")


class DetectionLog:
    """Append-only SQLite log (WAL mode; each row committed, so it survives a kill)."""

    def __init__(self, path: str):
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS detections (
            id INTEGER PRIMARY KEY, start_utc TEXT, end_utc TEXT, stream_start_s REAL, stream_end_s REAL,
            scientific_name TEXT, common_name TEXT, confidence REAL, device TEXT, model_version TEXT)""")
        self.db.commit()

    def add(self, d: Detection, t0: float, device: str, version: str) -> None:
        iso = lambda s: dt.datetime.fromtimestamp(t0 + s, dt.timezone.utc).isoformat(timespec="milliseconds")
        self.db.execute("INSERT INTO detections (start_utc, end_utc, stream_start_s, stream_end_s, scientific_name,"
                        " common_name, confidence, device, model_version) VALUES (?,?,?,?,?,?,?,?,?)",
                        (iso(d.start_s), iso(d.end_s), d.start_s, d.end_s, d.scientific, d.common, d.confidence,
                         device, version))
        self.db.commit()

    def close(self) -> None:
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

    def get(self, start: int, stop: int) -> np.ndarray:
        first = self.end - len(self.buf)
        start, stop = max(start, first, 0), min(stop, self.end)
        return self.buf[start - first:stop - first].copy()


def listen(model: Classifier, opts: DetectOptions, device: str | None = None, overlap_s: float = 0.0,
           duration_s: float | None = None, min_hits: int = 1, within_s: float = 0.0, cooldown_s: float = 0.0,
           log_path: str | None = None, clips_dir: str | None = None, pre_roll_s: float = 1.0,
           post_roll_s: float = 1.0, echo: Callable[[str], None] = print,
           stop_event: threading.Event | None = None,
           echo_err: Callable[[str], None] = lambda m: None) -> LiveSummary:
    """Record and report until `duration_s` seconds of audio, Ctrl-C/SIGTERM, or a device error."""
    sd = _sd()
    dev, info = resolve_device(device)
    sr, win = model.meta.sample_rate, model.meta.window_samples
    try:
        sd.check_input_settings(device=dev, channels=1, samplerate=sr, dtype="float32")
        rate = sr
    except Exception:
        rate = int(info["default_samplerate"])
    resampler = soxr.ResampleStream(rate, sr, 1, dtype="float32") if rate != sr else None
    limit_in = int(round(duration_s * rate)) if duration_s else None
    q: queue.Queue = queue.Queue()
    cap = int(BUFFER_S * rate)
    state = {"queued": 0, "received": 0, "overflows": 0, "dropped": 0}
    stop = stop_event or threading.Event()  # the user asked to stop (Ctrl-C, SIGTERM, caller)
    finished = threading.Event()  # PortAudio ended the stream (duration reached, or the device went away)
    summary = LiveSummary()

    def callback(indata, frames, time_info, status):  # PortAudio thread: copy only
        if status.input_overflow:
            state["overflows"] += 1
        x = indata[:, 0]
        if limit_in is not None:
            x = x[:max(0, limit_in - state["received"])]
        state["received"] += len(x)
        if state["queued"] + len(x) > cap:
            state["dropped"] += len(x)
        elif len(x):
            state["queued"] += len(x)
            q.put(x.copy())
        if limit_in is not None and state["received"] >= limit_in:
            raise sd.CallbackStop

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if threading.current_thread() is threading.main_thread() else {}
    for s in old:
        signal.signal(s, lambda *_: stop.set())
    windower = Windower(win, hop_samples(win, overlap_s, sr), batch=8)
    confirm = Confirmer(min_hits, within_s, cooldown_s)
    log = DetectionLog(log_path) if log_path else None
    history = History(int((pre_roll_s + post_roll_s + model.meta.window_s + 5) * sr))
    pending: list[Detection] = []
    dev_name = str(info["name"])
    t0 = time.time()
    if clips_dir:
        os.makedirs(clips_dir, exist_ok=True)

    def report(batch_dets: list[Detection]) -> None:
        for d in confirm.feed(batch_dets):
            clock = dt.datetime.fromtimestamp(t0 + d.start_s).strftime("%H:%M:%S")
            line = f"{clock}  {d.start_s:8.1f}s  {d.label}  {d.confidence:.3f}"
            summary.lines.append(line)
            echo(line)
            summary.detections += 1
            if log:
                log.add(d, t0, dev_name, model.meta.model_version)
            if clips_dir:
                pending.append(d)

    def write_clips(final: bool) -> None:
        for d in list(pending):
            stop = int(round((d.end_s + post_roll_s) * sr))
            if history.end >= stop or final:
                x = history.get(int(round((d.start_s - pre_roll_s) * sr)), stop)
                name = f"{d.start_s:09.2f}s_{d.scientific.replace(' ', '_')}_{d.confidence:.2f}.wav"
                tmp = os.path.join(clips_dir, "." + name)
                sf.write(tmp, x, sr, subtype="PCM_16", format="WAV")
                os.replace(tmp, os.path.join(clips_dir, name))
                pending.remove(d)

    def score(wbs) -> None:
        for wb in wbs:
            probs = model.predict(wb.windows)
            report(detect(wb.starts / sr, (wb.starts + wb.lengths) / sr, probs, model.labels, opts))

    try:
        stream = sd.InputStream(device=dev, channels=1, samplerate=rate, dtype="float32",
                                blocksize=int(BLOCK_S * rate), callback=callback, finished_callback=finished.set)
    except Exception as e:
        raise LiveError(f"--device {device or dev_name}: cannot open input ({str(e).splitlines()[0]})") from None
    echo_err(f"listening on '{dev_name}' at {rate} Hz ({'until ' + str(duration_s) + ' s of audio' if duration_s else 'Ctrl-C stops'})")
    try:
        with stream:
            t0 = time.time()
            last_audio = time.monotonic()
            while True:
                try:
                    x = q.get(timeout=0.2)
                except queue.Empty:
                    if finished.is_set() or not stream.active or (stop.is_set() and limit_in is None):
                        if q.empty():
                            break
                    elif time.monotonic() - last_audio > STALL_S:
                        summary.error = f"no audio from '{dev_name}' for {STALL_S:.0f} s"
                        break
                    continue
                last_audio = time.monotonic()
                state["queued"] -= len(x)
                if resampler is not None:
                    x = resampler.resample_chunk(x)
                history.push(x)
                summary.audio_s += len(x) / sr
                score(windower.push(x))
                if clips_dir:
                    write_clips(False)
                if stop.is_set() and limit_in is None:
                    break
        reached = limit_in is not None and state["received"] >= limit_in
        if not (summary.error or stop.is_set() or reached):
            summary.error = (f"input device '{dev_name}' stopped delivering audio after {summary.audio_s:.1f} s "
                             "(unplugged, or its sound server stopped)")
    except sd.PortAudioError as e:
        summary.error = f"audio device stopped: {str(e).splitlines()[0]}"
    finally:
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                history.push(tail)
                summary.audio_s += len(tail) / sr
                score(windower.push(tail))
        score(windower.flush())
        if clips_dir:
            write_clips(True)
        if log:
            log.close()
        for s, h in old.items():
            signal.signal(s, h)
    summary.overflows, summary.dropped_samples = state["overflows"], state["dropped"]
    if summary.error:
        saved = ", ".join(x for x in (f"log {log_path}" if log_path else "",
                                      f"clips in {clips_dir}" if clips_dir else "") if x)
        summary.error += f"; the {summary.detections} detections so far are saved" + (f" ({saved})" if saved else "")
    return summary
