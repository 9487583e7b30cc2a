"""Live-microphone benchmark of `birdsound listen` on a clocked fake microphone; prints JSON.

    python scripts/bench_listen.py [--bursts 8] [--cpu-seconds 60]

Needs pulseaudio, pulseaudio-utils and libasound2-plugins (Debian): a PulseAudio null sink plays
audio in real time into ALSA's default capture device (../shared/FAKE_MIC_REALTIME.md).

* latency: a 3 kHz tone burst is played at random moments; the test tone model reports it.
  Latency = wall time at which the detection line reaches our pipe minus the wall time at which
  the burst ended (paplay's start-up, ~10 ms, is counted as latency). Bound: one window + 0.5 s.
* CPU: the shipped default model listens for --cpu-seconds at overlap 0 while a real recording
  plays; CPU time (user + system, from /proc) of the listen process over that span, in % of one core.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import soundfile as sf

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import pulsemic  # noqa: E402
from conftest import SR, tone_signal, write_tone_model  # noqa: E402


class Listener:
    """A `birdsound listen` process whose stdout lines are time-stamped as they arrive."""

    def __init__(self, env: dict, args: list[str]):
        env = {**os.environ, **env}
        env.pop("ALSA_CONFIG_PATH", None)
        self.p = subprocess.Popen([sys.executable, "-m", "birdsound", "listen", *args], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.err: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()
        if not self.ready.wait(120):
            raise RuntimeError("listen did not start: " + "".join(self.err))

    def _out(self):
        for line in self.p.stdout:
            self.lines.append((time.time(), line.strip()))

    def _err(self):
        for line in self.p.stderr:
            self.err.append(line)
            if line.startswith("listening on"):
                self.ready.set()

    def cpu_s(self) -> float:
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> str:
        self.p.terminate()
        self.p.wait(30)
        time.sleep(0.2)
        return "".join(self.err)


def latency(mic: pulsemic.PulseMic, work: str, bursts: int, seed: int = 0) -> dict:
    model = write_tone_model(os.path.join(work, "tone.pt"))
    wav = os.path.join(work, "burst.wav")
    sf.write(wav, tone_signal(0.6, [(0.2, 0.5, 3000.0)], noise=0.0), SR, subtype="FLOAT")
    lis = Listener(mic.env, ["-m", model, "--cooldown", "0"])
    rng = random.Random(seed)
    ends = []
    for _ in range(bursts):
        time.sleep(rng.uniform(3.5, 6.5))  # lands anywhere in a window, one burst per window at most
        t = time.time()
        mic.play(wav)
        ends.append(t + 0.5)
    time.sleep(4.0)
    err = lis.stop()
    lat = []
    for e in ends:
        after = [t for t, line in lis.lines if t > e and "High Tone" in line]
        lat.append(after[0] - e if after else float("nan"))
    lat = np.array(lat)
    return {"bursts": bursts, "detected": int(np.isfinite(lat).sum()), "latency_s": [round(x, 3) for x in lat],
            "latency_median_s": round(float(np.nanmedian(lat)), 3), "latency_max_s": round(float(np.nanmax(lat)), 3),
            "bound_s": 3.5, "summary": err.strip().splitlines()[-1] if err.strip() else ""}


def cpu(mic: pulsemic.PulseMic, work: str, seconds: float) -> dict:
    files = sorted(glob.glob(os.path.join(HERE, "..", "..", "shared", "data", "british_birdsong_xc", "audio", "*.flac")))
    wav = os.path.join(work, "birds.wav")
    if files:
        from birdsound import audio

        x = np.concatenate([audio.load(p, SR) for p in files[:4]])
    else:
        x = tone_signal(60.0, [(10.0 * k + 1, 10.0 * k + 2, 3000.0) for k in range(6)])
    sf.write(wav, np.tile(x, int(np.ceil(seconds * SR / len(x))))[: int(seconds * SR)], SR, subtype="FLOAT")
    lis = Listener(mic.env, ["--overlap", "0"])
    time.sleep(2.0)  # model loaded, stream running
    c0, t0 = lis.cpu_s(), time.monotonic()
    mic.play(wav)
    c1, t1 = lis.cpu_s(), time.monotonic()
    err = lis.stop()
    return {"model": "default", "overlap_s": 0, "seconds": round(t1 - t0, 1), "cpu_s": round(c1 - c0, 2),
            "cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2), "detections_printed": len(lis.lines),
            "summary": err.strip().splitlines()[-1] if err.strip() else ""}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=8)
    ap.add_argument("--cpu-seconds", type=float, default=60.0)
    a = ap.parse_args()
    if not pulsemic.available():
        sys.exit("needs pulseaudio: apt-get install pulseaudio pulseaudio-utils libasound2-plugins")
    work = tempfile.mkdtemp(prefix="bench-listen-")
    with pulsemic.PulseMic(SR) as mic:
        res = {"latency": latency(mic, work, a.bursts), "cpu": cpu(mic, work, a.cpu_seconds)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
