"""A clocked (real-time) fake microphone: a PulseAudio null sink whose monitor is ALSA's default
capture device (see ../shared/FAKE_MIC_REALTIME.md). Used by a live test and scripts/bench_listen.py.

    with PulseMic(rate=32000) as mic:
        subprocess.Popen([...], env={**os.environ, **mic.env})   # PULSE_SERVER set before sounddevice loads
        mic.play("signal.wav")                                    # plays in real time, returns when done
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

PA_SCRIPT = """load-module module-native-protocol-unix auth-anonymous=1 socket={d}/pulse.sock
load-module module-null-sink sink_name=fakemic rate={rate} channels=1 format=float32le norewinds=1
set-default-sink fakemic
set-default-source fakemic.monitor
"""



CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def wait_listening(url: str, timeout_s: float = 30.0) -> bool:
    """Poll a `birdsound serve --device` at `url` until its live microphone is listening."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "healthz").json()["live"]["state"] == "listening":
                return True
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            pass
        time.sleep(0.1)
    return False


def available() -> bool:
    return all(shutil.which(c) for c in ("pulseaudio", "paplay", "pactl"))


class PulseMic:
    def __init__(self, rate: int = 32000):
        self.rate = rate
        self.dir = tempfile.mkdtemp(prefix="bsmic")  # short: unix socket paths are limited to 108 bytes
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict:
        return {"PULSE_SERVER": f"unix:{self.dir}/pulse.sock"}

    def start(self) -> "PulseMic":
        d = self.dir
        os.makedirs(f"{d}/run", mode=0o700)
        os.makedirs(f"{d}/home")
        with open(f"{d}/fakemic.pa", "w") as f:
            f.write(PA_SCRIPT.format(d=d, rate=self.rate))
        env = {**os.environ, "XDG_RUNTIME_DIR": f"{d}/run", "HOME": f"{d}/home"}
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", f"{d}/fakemic.pa", "--daemonize=no", "--disable-shm=yes",
             "--exit-idle-time=-1", "--realtime=no", "--high-priority=no", f"--log-target=file:{d}/pulse.log"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if subprocess.run(["pactl", "info"], env={**os.environ, **self.env}, capture_output=True).returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"PulseAudio did not start (see {d}/pulse.log)")

    def play(self, wav: str, wait: bool = True) -> subprocess.Popen:
        p = subprocess.Popen(["paplay", "--device=fakemic", wav], env={**os.environ, **self.env})
        if wait:
            p.wait()
        return p

    def kill(self) -> None:
        """The device disappears: the sound server goes away mid-stream."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PulseMic":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
