"""`birdsound listen` through the real sounddevice/PortAudio path with an ALSA file-plugin fake mic."""

import ctypes.util
import os
import sqlite3

import numpy as np
import pytest
import soundfile as sf

from conftest import SR, run_cli, tone_signal

pytestmark = pytest.mark.skipif(ctypes.util.find_library("portaudio") is None,
                                reason="libportaudio2 not installed (apt-get install libportaudio2)")

ALSA_CONF = """pcm.!default {{
  type plug
  slave {{
    pcm {{
      type file
      slave.pcm "null"
      file "/dev/null"
      infile "{raw}"
      format "raw"
    }}
    format FLOAT_LE
    rate {rate}
    channels 1
  }}
}}
"""


def fake_mic(tmp_path, x: np.ndarray, rate: int = SR) -> dict:
    raw = tmp_path / "mic.f32le.raw"
    np.concatenate([x, np.zeros(rate * 10, np.float32)]).astype("<f4").tofile(raw)
    conf = tmp_path / "asound.conf"
    conf.write_text(ALSA_CONF.format(raw=raw, rate=rate))
    return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{conf}"}


def test_listen_reports_tones_at_their_offsets_logs_and_clips(tone_model, tmp_path):
    env = fake_mic(tmp_path, tone_signal(20.0, [(7.0, 7.5, 3000.0), (15.2, 15.4, 1000.0)]))
    db, clips = tmp_path / "det.sqlite", tmp_path / "clips"
    r = run_cli("listen", "-m", tone_model, "--duration", "20", "--log", str(db), "--clips", str(clips),
                "--cooldown", "0", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [l.split() for l in r.stdout.splitlines() if l.strip()]
    got = [(float(l[1].rstrip("s")), " ".join(l[2:-1])) for l in lines]
    assert got == [(6.0, "Testus altus_High Tone"), (15.0, "Testus bassus_Low Tone")]
    assert "listened 20.0 s, 2 detections, 0 input overflows, 0 dropped samples" in r.stderr
    rows = sqlite3.connect(db).execute(
        "SELECT stream_start_s, stream_end_s, scientific_name, model_version FROM detections ORDER BY id").fetchall()
    assert rows == [(6.0, 9.0, "Testus altus", "tone-test-1"), (15.0, 18.0, "Testus bassus", "tone-test-1")]
    files = sorted(os.listdir(clips))
    assert len(files) == 2
    for f in files:  # 1 s pre-roll + 3 s window + 1 s post-roll
        assert sf.info(str(clips / f)).frames == 5 * SR


def test_listen_confirmation_needs_repeated_hits(tone_model, tmp_path):
    # one burst: heard in one window only; with --min-hits 2 it is never confirmed
    env = fake_mic(tmp_path, tone_signal(12.0, [(4.0, 4.3, 3000.0), (9.5, 9.8, 3000.0)]))
    r = run_cli("listen", "-m", tone_model, "--duration", "12", "--min-hits", "2", "--within", "10",
                "--cooldown", "0", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    offs = [float(l.split()[1].rstrip("s")) for l in r.stdout.splitlines() if l.strip()]
    assert offs == [9.0]  # second hit (window at 9 s) confirms the species


def test_bad_device_name(tone_model, tmp_path):
    env = fake_mic(tmp_path, tone_signal(3.0, []))
    r = run_cli("listen", "-m", tone_model, "--device", "nosuchmic", "--duration", "1", env=env)
    assert r.returncode == 2
    assert "--device nosuchmic" in r.stderr and "Traceback" not in r.stderr


def test_no_device(tone_model, tmp_path):
    if os.path.exists("/proc/asound/cards") and "no soundcards" not in open("/proc/asound/cards").read():
        pytest.skip("this machine has a sound card")
    env = {"ALSA_CONFIG_PATH": "/usr/share/alsa/alsa.conf"}
    for args in (["devices"], ["listen", "-m", tone_model, "--duration", "1"]):
        r = run_cli(*args, env=env)
        assert r.returncode != 0
        assert "no audio input device" in r.stderr and "Traceback" not in r.stderr


def test_device_disappearing_mid_stream_is_reported_and_detections_kept(tone_model, tmp_path):
    """Clocked fake mic (PulseAudio null sink): a tone is heard, then the sound server dies."""
    import time

    import pulsemic

    if not pulsemic.available():
        pytest.skip("pulseaudio not installed (apt-get install pulseaudio pulseaudio-utils libasound2-plugins)")
    wav = tmp_path / "tone.wav"
    sf.write(str(wav), tone_signal(1.0, [(0.2, 0.7, 3000.0)]), SR, subtype="FLOAT")
    db = tmp_path / "det.sqlite"
    with pulsemic.PulseMic(SR) as mic:
        p, err, ready = _start_listen(tone_model, mic, ["--log", str(db), "--cooldown", "0"])
        assert ready.wait(60), "".join(err)
        mic.play(str(wav))
        line = p.stdout.readline()  # the detection, printed once its window has ended
        time.sleep(0.5)
        mic.kill()
        rc = p.wait(30)
    assert "Testus altus_High Tone" in line
    text = "".join(err)
    assert rc == 1 and "stopped delivering audio" in text and "detections so far are saved" in text, text
    assert "Traceback" not in text
    rows = sqlite3.connect(db).execute("SELECT scientific_name FROM detections").fetchall()
    assert rows == [("Testus altus",)]


def _start_listen(tone_model, mic, args):
    """`birdsound listen` on the clocked fake mic; returns (process, stderr lines, ready event)."""
    import subprocess
    import sys
    import threading

    env = {**os.environ, **mic.env}
    env.pop("ALSA_CONFIG_PATH", None)
    p = subprocess.Popen([sys.executable, "-m", "birdsound", "listen", "-m", tone_model, *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    ready = threading.Event()

    def read_err():
        for line in p.stderr:
            err.append(line)
            if line.startswith("listening on"):
                ready.set()
    threading.Thread(target=read_err, daemon=True).start()
    return p, err, ready


@pytest.mark.parametrize("sig,duration", [("SIGTERM", "3600"), ("SIGINT", None)])
def test_stop_signal_ends_within_a_second_with_or_without_duration(tone_model, tmp_path, sig, duration):
    """Ctrl-C (SIGINT) or SIGTERM stops listening within a second, even with --duration; the log is
    flushed and the summary printed (exit 0)."""
    import signal
    import time

    import pulsemic

    if not pulsemic.available():
        pytest.skip("pulseaudio not installed (apt-get install pulseaudio pulseaudio-utils libasound2-plugins)")
    wav = tmp_path / "tone.wav"
    sf.write(str(wav), tone_signal(1.0, [(0.2, 0.7, 3000.0)]), SR, subtype="FLOAT")
    db = tmp_path / "logs" / "new" / "det.sqlite"  # a folder that does not exist yet
    args = ["--log", str(db), "--cooldown", "0"] + (["--duration", duration] if duration else [])
    with pulsemic.PulseMic(SR) as mic:
        p, err, ready = _start_listen(tone_model, mic, args)
        assert ready.wait(60), "".join(err)
        mic.play(str(wav))
        line = p.stdout.readline()  # the detection (its window has ended)
        t0 = time.monotonic()
        p.send_signal(getattr(signal, sig))
        rc = p.wait(10)
        took = time.monotonic() - t0
    text = "".join(err)
    assert "Testus altus_High Tone" in line
    assert rc == 0 and took < 1.5, (rc, took, text)
    assert "listened" in text and "1 detections" in text and "Traceback" not in text
    assert sqlite3.connect(db).execute("SELECT scientific_name FROM detections").fetchall() == [("Testus altus",)]


def test_log_path_that_cannot_be_created_is_one_line(tone_model, tmp_path):
    env = fake_mic(tmp_path, tone_signal(3.0, []))
    (tmp_path / "file").write_text("x")
    r = run_cli("listen", "-m", tone_model, "--duration", "1", "--log", str(tmp_path / "file" / "det.sqlite"), env=env)
    assert r.returncode == 2 and "--log" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1


def test_timestamps_stay_true_across_dropped_audio(tone_model):
    """Samples lost between blocks (scoring fell behind) are a gap: windows restart after it and the
    offsets count the lost time, so a tone after the gap is reported at its true stream time."""
    from birdsound.detect import DetectOptions
    from birdsound.listen import Capture, LiveOptions, LiveSession
    from birdsound.runtime import load_model

    model = load_model(tone_model)
    lines, warnings = [], []
    s = LiveSession(model, DetectOptions(), LiveOptions(cooldown_s=0), SR, echo=lines.append, echo_err=warnings.append)
    before = tone_signal(10.0, [(7.0, 7.5, 3000.0)], seed=1)
    after = tone_signal(10.0, [(3.2, 3.6, 1000.0)], seed=2)  # stream time 15 + 3.2 = 18.2 s
    for i in range(0, len(before), 3200):
        s.feed(before[i:i + 3200])
    s.feed(after[:3200], gap=5 * SR)  # 5 s lost
    for i in range(3200, len(after), 3200):
        s.feed(after[i:i + 3200])
    summary = s.finish()
    got = [(float(l.split()[1].rstrip("s")), l.split()[2]) for l in lines]
    # the 9-10 s tail before the gap holds none of the 7.0-7.5 s tone itself: not reported again
    assert got == [(6.0, "Testus"), (18.0, "Testus")], lines
    assert "Low Tone" in lines[-1]
    assert summary.gaps == 1 and summary.audio_s == pytest.approx(25.0)
    assert len(warnings) == 1 and "5.00 s of audio dropped at 10.0 s" in warnings[0]

    # the capture side: a block that does not fit is dropped, counted, and its length rides on the next block
    class Status:
        input_overflow = False

    c = Capture(SR, None, capacity_s=0.25)
    blk = np.zeros((3200, 1), np.float32)
    for _ in range(4):  # 0.4 s into a 0.25 s queue: blocks 3 and 4 are dropped
        c.callback(blk, 3200, None, Status())
    assert c.dropped == 6400 and c.get(0)[0] == 0 and c.get(0)[0] == 0
    c.callback(blk, 3200, None, Status())
    assert c.get(0)[0] == 6400
