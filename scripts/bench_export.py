"""Size, per-window latency and parity of each export format of a model; prints JSON.

Usage: python scripts/bench_export.py [MODEL] [--threads 1] [--calibration PATH]
"""

import argparse
import json
import os
import tempfile
import time
import warnings

import numpy as np
import torch

from birdsound import export as ex
from birdsound.model import DEFAULT_MODEL_PATH, load_checkpoint, load_model

HERE = os.path.dirname(os.path.abspath(__file__))


def latency_ms(fn, x, repeats=20):
    with torch.inference_mode():
        fn(x)
        t = time.perf_counter()
        for _ in range(repeats):
            fn(x)
    return (time.perf_counter() - t) / repeats / len(x) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=DEFAULT_MODEL_PATH)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calibration", default=os.path.join(HERE, "..", "datasets", "xc_train_manifest.csv"))
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(a.threads)
    net, meta = load_checkpoint(a.model)
    wins, labels = ex.calibration_windows([a.calibration], meta.sample_rate, meta.window_samples, 512)
    out = {"model": meta.model_version, "threads": a.threads, "windows": len(wins), "formats": []}
    x1, x32 = torch.from_numpy(wins[:1]), torch.from_numpy(wins[:32])
    out["eager"] = {"ms_per_window_b1": latency_ms(net, x1), "ms_per_window_b32": latency_ms(net, x32)}
    tmp = tempfile.mkdtemp()
    for fmt, q in [("torchscript", "none"), ("lite", "none"), ("lite", "dynamic"), ("torchscript", "int8"), ("lite", "int8")]:
        path = os.path.join(tmp, f"m_{q}.{'ptl' if fmt == 'lite' else 'pt'}")
        rep = ex.export(net, meta, path, fmt, q, wins, labels)
        m = load_model(path).module
        rep.update(ms_per_window_b1=latency_ms(m, x1), ms_per_window_b32=latency_ms(m, x32),
                   size_mb=rep["size_bytes"] / 1e6)
        rep.pop("file")
        out["formats"].append(rep)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
