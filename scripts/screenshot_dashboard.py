"""Screenshot of the live dashboard for the README: `birdsound serve --device` on a clocked fake microphone
(PulseAudio null sink, tests/pulsemic.py) playing real recordings, seen in Debian's Chromium via Playwright.

    python scripts/screenshot_dashboard.py [-o docs/dashboard.png] [RECORDING ...]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
DEFAULT = [os.path.join(ROOT, "..", "shared", "data", "vogelstimmen_xc", "audio", f) for f in
           ("accipiter_gentilis_XC1075227.mp3",)]


def main() -> None:
    import soundfile as sf
    from playwright.sync_api import sync_playwright

    import pulsemic
    from birdsound import audio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recordings", nargs="*", default=DEFAULT)
    ap.add_argument("-o", "--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="dash-")
    wavs = []
    for i, r in enumerate(a.recordings):
        w = os.path.join(tmp, f"{i}.wav")
        sf.write(w, audio.load(r, 32000)[: 32000 * 20], 32000, subtype="FLOAT")
        wavs.append(w)
    with pulsemic.PulseMic(32000) as mic:
        env = {**os.environ, **mic.env}
        env.pop("ALSA_CONFIG_PATH", None)
        proc = subprocess.Popen([sys.executable, "-m", "birdsound", "serve", "--port", str(port), "--device", "default",
                                 "--log", os.path.join(tmp, "det.sqlite"), "--clips", os.path.join(tmp, "clips"),
                                 "--cooldown", "0"], env=env)
        try:
            url = f"http://127.0.0.1:{port}/"
            pulsemic.wait_listening(url)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=pulsemic.CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1100, "height": 860})
                page.goto(url)
                page.wait_for_selector("text=listening on", timeout=15000)
                for w in wavs:
                    mic.play(w)
                time.sleep(4)
                os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
                page.screenshot(path=a.out)
                n = page.locator("#live li").count()
                browser.close()
            print(f"wrote {a.out} ({n} detections on the page)")
        finally:
            proc.terminate()
            proc.wait(20)


if __name__ == "__main__":
    main()
