"""`birdsound serve`: the HTTP API against a real uvicorn server, and the dashboard in a real browser."""

import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from birdsound.cli import main
from conftest import SR, tone_signal

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'birdsound[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (the test extra)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving create_app(...) in a thread of this process."""

    def __init__(self, model_path: str, **opts):
        import uvicorn

        from birdsound import serve as sv
        from birdsound.runtime import load_model

        self.port = free_port()
        self.opts = sv.ServeOptions(port=self.port, **opts)
        self.app = sv.create_app(load_model(model_path, threads=1), self.opts)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def tmp(self) -> str:
        return self.app.state.analyzer.tmp


@pytest.fixture
def burst_file(write_wav):
    return write_wav("burst.wav", tone_signal(20.0, [(7.0, 7.5, 3000.0), (15.2, 15.4, 1000.0)], sr=44100), 44100)


def test_analyze_answer_is_the_cli_json(tone_model, burst_file, tmp_path):
    r = CliRunner().invoke(main, ["analyze", "-q", burst_file, "-m", tone_model, "-o", str(tmp_path / "cli"),
                                  "--rtype", "json", "--min-conf", "0.3", "--overlap", "1"])
    assert r.exit_code == 0, r.output
    cli_json = (tmp_path / "cli" / "burst.birdsound.results.json").read_text()
    with Server(tone_model) as s:
        body = open(burst_file, "rb").read()
        got = httpx.post(f"{s.url}/v1/analyze", params={"min_conf": 0.3, "overlap": 1, "filename": burst_file},
                         content=body, headers={"Content-Type": "audio/wav"}, timeout=60)
        assert got.status_code == 200, got.text
        assert got.text == cli_json  # byte for byte
        doc = got.json()
        # hop 2 s: the windows at 6 s (6-9) and 14 s (14-17) hold the tones at 7.0-7.5 and 15.2-15.4 s
        assert [(d["start_s"], d["common_name"]) for d in doc["detections"]] == [(6.0, "High Tone"), (14.0, "Low Tone")]
        # multipart: the uploaded file's name is the file's name in the answer
        mp = httpx.post(f"{s.url}/v1/analyze", files={"file": ("field.wav", body, "audio/wav")}, timeout=60)
        assert mp.status_code == 200 and mp.json()["file"] == "field.wav"
        assert [d["start_s"] for d in mp.json()["detections"]] == [6.0, 15.0]
        merged = httpx.post(f"{s.url}/v1/analyze", params={"overlap": 2, "merge": "true", "include": "High Tone"},
                            content=body, timeout=60).json()
        assert [(d["start_s"], d["end_s"], d["common_name"]) for d in merged["detections"]] == [(5.0, 10.0, "High Tone")]
        assert os.listdir(s.tmp) == []
        m = httpx.get(f"{s.url}/v1/model").json()
        assert m["model_version"] == "tone-test-1" and len(m["labels"]) == 2
        assert httpx.get(f"{s.url}/healthz").json()["status"] == "ok"
        spec = httpx.get(f"{s.url}/openapi.json").json()
        assert "/v1/analyze" in spec["paths"] and "post" in spec["paths"]["/v1/analyze"]
        docs = httpx.get(f"{s.url}/docs")
        assert docs.status_code == 200 and "/v1/analyze" in docs.text and "http" not in docs.text.split("<body")[0]


def test_bad_requests_get_their_status_and_leave_nothing_behind(tone_model, burst_file, tmp_path):
    wav = open(burst_file, "rb").read()
    long_wav = tmp_path / "long.wav"
    sf.write(str(long_wav), np.zeros(SR * 30, np.float32), SR)
    nan = tmp_path / "nan.wav"
    x = tone_signal(4, [])
    x[40000] = np.nan
    sf.write(str(nan), x, SR, subtype="FLOAT")
    cases = [
        ({}, b"this is not audio at all\n" * 50, 415, "not an audio file"),
        ({}, b"", 400, "empty body"),
        ({}, wav[:30], 415, "not an audio file"),  # truncated inside the header
        ({}, open(long_wav, "rb").read(), 413, "at most 20 s"),
        ({}, b"\0" * 2_100_000, 413, "at most 2 MB"),
        ({"min_conf": "high"}, wav, 422, "min_conf"),
        ({"min_conf": "7"}, wav, 422, "between 0.0 and 1.0"),
        ({"colour": "blue"}, wav, 422, "unknown parameter(s) colour"),
        ({"include": "High Tne"}, wav, 422, "did you mean 'Testus altus_High Tone'"),
        ({"fmin": "3000", "fmax": "1000"}, wav, 422, "fmin"),
        ({}, open(nan, "rb").read(), 422, "NaN"),
    ]
    with Server(tone_model, max_mb=2, max_s=20) as s:
        for params, body, status, needle in cases:
            r = httpx.post(f"{s.url}/v1/analyze", params=params, content=body, timeout=60)
            assert r.status_code == status, (params, r.status_code, r.text)
            doc = r.json()
            assert doc["status"] == status and needle in doc["error"], (needle, doc)
            assert "Traceback" not in r.text and s.tmp not in r.text  # no server path leaks either
            assert os.listdir(s.tmp) == []
        for path in ("/v1/clips/..%2F..%2Fetc%2Fpasswd", "/v1/clips/passwd", "/nothing/here"):
            r = httpx.get(s.url + path)
            assert r.status_code == 404 and r.json()["status"] == 404


def test_busy_server_answers_503_with_retry_after(tone_model, burst_file):
    release = threading.Event()
    with Server(tone_model, max_inflight=1, workers=1) as s:
        analyzer = s.app.state.analyzer
        real = analyzer.analyze_file

        def slow(*a, **k):
            release.wait(30)
            return real(*a, **k)

        analyzer.analyze_file = slow
        body = open(burst_file, "rb").read()
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=httpx.post(f"{s.url}/v1/analyze", content=body, timeout=60)))
        t.start()
        for _ in range(100):
            if analyzer.inflight:
                break
            time.sleep(0.05)
        busy = httpx.post(f"{s.url}/v1/analyze", content=body, timeout=60)
        release.set()
        t.join(60)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
        assert first["r"].status_code == 200
        assert httpx.post(f"{s.url}/v1/analyze", content=body, timeout=60).status_code == 200  # free again
        assert os.listdir(s.tmp) == []


def test_token_required_off_localhost(tone_model, burst_file):
    r = CliRunner().invoke(main, ["serve", "-m", tone_model, "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--token" in r.output and "--insecure-no-auth" in r.output
    with Server(tone_model, token="s3cret") as s:
        body = open(burst_file, "rb").read()
        assert httpx.post(f"{s.url}/v1/analyze", content=body).status_code == 401
        assert httpx.get(f"{s.url}/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{s.url}/healthz").status_code == 401
        ok = httpx.post(f"{s.url}/v1/analyze", content=body, headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert ok.status_code == 200 and ok.json()["detections"]


# in the page: the clip name of the newest detection of today, as the dashboard's own fetch sees it
FIRST_CLIP_JS = """async () => { const r = await fetch('/v1/detections?day=today');
                                 const j = await r.json(); return j.detections[0].clip; }"""


def test_dashboard_in_a_real_browser_shows_a_played_sound(tone_model, tmp_path):
    """Chromium opens the dashboard; a tone played into the clocked fake microphone appears as a detection
    within a few seconds of the sound, with a clip to play and today's tally; a second browser watches too."""
    import ctypes.util

    import pulsemic
    if ctypes.util.find_library("portaudio") is None:
        pytest.skip("libportaudio2 not installed (apt-get install libportaudio2)")
    if not pulsemic.available():
        pytest.skip("pulseaudio not installed (apt-get install pulseaudio pulseaudio-utils libasound2-plugins)")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("Debian chromium not installed (apt-get install chromium chromium-driver)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    wav = tmp_path / "tone.wav"
    sf.write(str(wav), tone_signal(2.0, [(0.3, 1.2, 3000.0)], noise=0.01), SR, subtype="FLOAT")
    port = free_port()
    with pulsemic.PulseMic(SR) as mic:
        env = {**os.environ, **mic.env}
        env.pop("ALSA_CONFIG_PATH", None)
        proc = subprocess.Popen([sys.executable, "-m", "birdsound", "serve", "-m", tone_model, "--port", str(port),
                                 "--device", "default", "--log", str(tmp_path / "det.sqlite"), "--clips",
                                 str(tmp_path / "clips"), "--cooldown", "0"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            pulsemic.wait_listening(url)
            with sync_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=chromium, args=pulsemic.CHROMIUM_ARGS)
                page, other = browser.new_page(viewport={"width": 1100, "height": 900}), browser.new_page()
                for p in (page, other):
                    p.goto(url)
                    sync_api.expect(p.locator("#status")).to_contain_text("listening on", timeout=15000)
                mic.play(str(wav))
                played = time.monotonic()
                for p in (page, other):
                    sync_api.expect(p.locator("#live li").first).to_contain_text("High Tone", timeout=8000)
                seen = time.monotonic() - played
                sync_api.expect(page.locator("#tally tbody")).to_contain_text("High Tone")
                # asked for at once, the clip (written once its post-roll is recorded) is waited for, not a 404
                first = page.evaluate(FIRST_CLIP_JS)
                r = httpx.get(url + "v1/clips/" + first, timeout=15)
                assert r.status_code == 200 and r.content[:4] == b"RIFF", (r.status_code, first)
                page.screenshot(path=str(tmp_path / "dashboard.png"))
                other.close()
                clip = page.locator("#live li button.play").first
                assert clip.is_enabled()
                # the history (from the SQLite log) shows it after a reload too, with a clip that plays
                page.reload()
                sync_api.expect(page.locator("#history li").first).to_contain_text("High Tone", timeout=8000)
                src = page.evaluate(FIRST_CLIP_JS)
                r = httpx.get(url + "v1/clips/" + src)
                assert r.status_code == 200 and r.content[:4] == b"RIFF"
                browser.close()
            assert seen < 6.0, seen  # the line reaches the page within a few seconds of the sound
            assert (tmp_path / "dashboard.png").stat().st_size > 10000
            assert httpx.get(url + "healthz").json()["live"]["state"] == "listening"  # the mic kept running
        finally:
            proc.terminate()
            out = proc.communicate(timeout=20)[0]
    assert "Traceback" not in out, out
