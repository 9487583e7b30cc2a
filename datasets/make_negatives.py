"""Synthesize bird-free audio for training and for measuring false detections.

Speech in many voices and languages (``espeak-ng``, Debian package ``espeak-ng``) and generated
non-bird sounds: insects (crickets, cicada and katydid buzz), frogs, dog barks, traffic and engines,
bells, simple music, handling thumps and footsteps. Two disjoint sets (other seeds, texts, voices):
``train/`` for training negatives and ``val/`` for the false-detection measure. The teacher later
checks every window (a synthesized sound BirdNET takes for one of our species is not used).

    python datasets/make_negatives.py -o runs/negatives [--minutes 12]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile

import numpy as np
import soundfile as sf

SR = 32000
WORDS = {
    "en": "the a river morning light house garden window table water people small green open close quickly "
          "never always before after evening forest music station yesterday tomorrow number paper story".split(),
    "de": "der die das und wasser morgen abend haus garten fenster tisch menschen klein grün schnell immer "
          "niemals vorher nachher wald musik bahnhof gestern morgen zahl papier geschichte".split(),
    "fr": "le la les et eau matin soir maison jardin fenêtre table gens petit vert vite toujours jamais "
          "avant après forêt musique gare hier demain nombre papier histoire".split(),
    "es": "el la los y agua mañana tarde casa jardín ventana mesa gente pequeño verde rápido siempre nunca "
          "antes después bosque música estación ayer número papel historia".split(),
    "it": "il la e acqua mattina sera casa giardino finestra tavolo gente piccolo verde presto sempre mai "
          "prima dopo bosco musica stazione ieri domani numero carta storia".split(),
    "nl": "de het en water ochtend avond huis tuin raam tafel mensen klein groen snel altijd nooit voor na "
          "bos muziek station gisteren morgen nummer papier verhaal".split(),
    "pl": "i woda rano wieczór dom ogród okno stół ludzie mały zielony szybko zawsze nigdy przed po las "
          "muzyka stacja wczoraj jutro numer papier historia".split(),
    "sv": "och vatten morgon kväll hus trädgård fönster bord människor liten grön snabbt alltid aldrig före "
          "efter skog musik station igår imorgon nummer papper historia".split(),
}
VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt"]


def speech(rng: np.random.Generator, seconds: float, tmp: str) -> np.ndarray:
    """`seconds` of espeak-ng speech: random sentences, languages, voices, speeds and pitches."""
    parts, total = [], 0
    while total < seconds * SR:
        lang = rng.choice(list(WORDS))
        text = " ".join(rng.choice(WORDS[lang], size=rng.integers(6, 20))) + "."
        wav = os.path.join(tmp, "s.wav")
        subprocess.run(["espeak-ng", "-v", lang + rng.choice(VARIANTS), "-s", str(rng.integers(110, 210)),
                        "-p", str(rng.integers(15, 85)), "-w", wav, text], check=True, capture_output=True)
        x, sr = sf.read(wav, dtype="float32")
        x = np.interp(np.arange(0, len(x), sr / SR), np.arange(len(x)), x).astype(np.float32)
        x = np.concatenate([x, np.zeros(int(rng.uniform(0.1, 1.0) * SR), np.float32)])
        parts.append(x * rng.uniform(0.2, 0.9) / (np.abs(x).max() + 1e-9))
        total += len(x)
    return np.concatenate(parts)[: int(seconds * SR)]


def _tone(f0: np.ndarray, harmonics: list[float]) -> np.ndarray:
    ph = 2 * np.pi * np.cumsum(f0) / SR
    return sum(a * np.sin((k + 1) * ph) for k, a in enumerate(harmonics))


def insects(rng, seconds):
    n, t = int(seconds * SR), np.arange(int(seconds * SR)) / SR
    kind = rng.integers(3)
    if kind == 0:  # cricket: chirps of 3-5 pulses of a 3.5-5.5 kHz carrier
        carrier = np.sin(2 * np.pi * rng.uniform(3500, 5500) * t)
        env = np.zeros(n)
        period, pulse = rng.uniform(0.3, 0.9), rng.uniform(0.012, 0.025)
        for s in np.arange(0, seconds, period):
            for k in range(rng.integers(3, 6)):
                i = int((s + k * pulse * 2) * SR)
                env[i:i + int(pulse * SR)] = 1
        return carrier * env
    band = rng.uniform(4000, 9000)
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * (np.abs(np.fft.rfftfreq(n, 1 / SR) - band) < 1500), n)
    am = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(60, 250) * t) if kind == 1 else (np.sin(2 * np.pi * rng.uniform(10, 40) * t) > 0)
    return noise * am / (np.abs(noise).max() + 1e-9)


def frogs(rng, seconds):
    n = int(seconds * SR)
    x = np.zeros(n)
    f0 = rng.uniform(250, 900)
    for s in np.arange(0, seconds - 0.5, rng.uniform(0.25, 1.2)):
        d = rng.uniform(0.08, 0.4)
        m = int(d * SR)
        tt = np.arange(m) / SR
        pulses = (np.sin(2 * np.pi * rng.uniform(20, 80) * tt) > 0)
        call = _tone(np.full(m, f0 * rng.uniform(0.95, 1.05)), [1, 0.6, 0.4, 0.2]) * pulses * np.hanning(m)
        i = int(s * SR)
        x[i:i + m] += call[: n - i]
    return x


def dogs(rng, seconds):
    n = int(seconds * SR)
    x = np.zeros(n)
    s = 0.2
    while s < seconds - 0.4:
        m = int(rng.uniform(0.1, 0.3) * SR)
        f0 = np.linspace(rng.uniform(400, 900), rng.uniform(250, 500), m)
        call = (_tone(f0, [1, 0.8, 0.6, 0.5, 0.3, 0.2]) + 0.5 * rng.standard_normal(m)) * np.hanning(m) ** 0.5
        i = int(s * SR)
        x[i:i + m] += call
        s += rng.uniform(0.25, 2.5)
    return x


def traffic(rng, seconds):
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(25, 90) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t))
    engine = _tone(f0, [1, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1])
    brown = np.cumsum(rng.standard_normal(n))
    brown -= np.convolve(brown, np.ones(2000) / 2000, mode="same")
    swell = np.interp(t, np.linspace(0, seconds, 8), rng.uniform(0.1, 1, 8))
    return engine / 3 + brown / (np.abs(brown).max() + 1e-9) * swell


def bells(rng, seconds):
    n = int(seconds * SR)
    x = np.zeros(n)
    for s in np.arange(0, seconds - 1, rng.uniform(0.8, 3)):
        m = min(n - int(s * SR), int(3 * SR))
        tt = np.arange(m) / SR
        f = rng.uniform(200, 800)
        x[int(s * SR):int(s * SR) + m] += sum(np.sin(2 * np.pi * f * r * tt) * np.exp(-tt * rng.uniform(1, 4)) / (k + 1)
                                              for k, r in enumerate([1, 2.0, 2.4, 3.0, 4.2, 5.4]))
    return x


def music(rng, seconds):
    n = int(seconds * SR)
    x = np.zeros(n)
    scale = 220 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16]) / 12)
    s = 0.0
    while s < seconds - 0.5:
        d = rng.choice([0.25, 0.5, 0.75, 1.0])
        m = min(int(d * SR), n - int(s * SR))
        tt = np.arange(m) / SR
        f = rng.choice(scale) * rng.choice([0.5, 1, 2])
        x[int(s * SR):int(s * SR) + m] += _tone(np.full(m, f), [1, 0.5, 0.3, 0.2]) * np.exp(-tt * 3)
        s += d
    return x


def thumps(rng, seconds):
    n = int(seconds * SR)
    x = 0.02 * rng.standard_normal(n)
    for s in np.cumsum(rng.uniform(0.3, 1.5, int(seconds))):
        if s >= seconds - 0.2:
            break
        m = int(0.08 * SR)
        tt = np.arange(m) / SR
        x[int(s * SR):int(s * SR) + m] += np.sin(2 * np.pi * rng.uniform(40, 200) * tt) * np.exp(-tt * 60) \
            + 0.3 * rng.standard_normal(m) * np.exp(-tt * 120)
    return x


GENERATORS = {"insects": insects, "frogs": frogs, "dogs": dogs, "traffic": traffic, "bells": bells,
              "music": music, "thumps": thumps}


def write(path: str, x: np.ndarray, rng) -> None:
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.1, 0.8)
    x = x + rng.standard_normal(len(x)) * 10 ** rng.uniform(-4, -2.5)  # a recorder's own noise floor
    sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", default="runs/negatives")
    ap.add_argument("--minutes", type=float, default=12.0, help="speech minutes in train/ (val/ gets half)")
    a = ap.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("error: espeak-ng not found: apt-get install espeak-ng")
    for split, seed, scale in (("train", 1, 1.0), ("val", 2, 0.5)):
        rng = np.random.default_rng(seed)
        folder = os.path.join(a.out, split)
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(int(a.minutes * scale)):
                write(os.path.join(folder, f"speech_{k:02d}.wav"), speech(rng, 60.0, tmp), rng)
        for name, gen in GENERATORS.items():
            for k in range(int(4 * scale)):
                write(os.path.join(folder, f"{name}_{k}.wav"), gen(rng, 30.0), rng)
        print(f"{folder}: {len(os.listdir(folder))} files")


if __name__ == "__main__":
    main()
