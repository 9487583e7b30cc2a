"""Classify a WAV with an exported birdsound model using only torch, numpy and soundfile.

What an app developer copies: no birdsound import. Usage:
    python scripts/mobile_demo.py bird.ptl recording.wav [--top 3]     # or bird.pt
    python scripts/mobile_demo.py bird.pte recording.wav               # ExecuTorch (pip install executorch)
"""

import argparse
import json
import zipfile

import numpy as np
import soundfile as sf
import torch
from torch.jit.mobile import _load_for_lite_interpreter


def load(path):
    """Model (windows [batch, samples] -> probabilities) and its metadata (labels, sample_rate, window_s, ...)."""
    if path.endswith(".pte"):  # ExecuTorch: metadata from a constant method, at most max_batch windows a call
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(path)
        meta = json.loads(program.load_method("metadata_json").execute([])[0])
        forward, step = program.load_method("forward"), meta["max_batch"]
        return (lambda x: torch.cat([forward.execute([x[i:i + step]])[0] for i in range(0, len(x), step)]),
                meta)
    with zipfile.ZipFile(path) as z:
        meta = json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/metadata.json"))))
    if path.endswith(".ptl"):
        return _load_for_lite_interpreter(path), meta
    return torch.jit.load(path), meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("wav")
    ap.add_argument("--top", type=int, default=3)
    a = ap.parse_args()
    model, meta = load(a.model)
    x, sr = sf.read(a.wav, dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    rate = meta["sample_rate"]
    if sr != rate:  # simple linear resampling; a phone app would use its platform resampler
        x = np.interp(np.arange(0, len(x) * rate / sr) * sr / rate, np.arange(len(x)), x).astype(np.float32)
    win = int(round(meta["window_s"] * rate))
    n = max(1, int(np.ceil(len(x) / win)))
    x = np.pad(x, (0, n * win - len(x)))
    with torch.no_grad():
        probs = model(torch.from_numpy(x.reshape(n, win))).numpy()
    for k, p in enumerate(probs):
        top = np.argsort(-p)[: a.top]
        print(f"{k * meta['window_s']:7.1f}s  " + "  ".join(f"{meta['labels'][i]} {p[i]:.2f}" for i in top))


if __name__ == "__main__":
    main()
