"""Size, per-window latency and parity of each export format of a model; prints JSON.

Usage: python scripts/bench_export.py [MODEL] [--threads 1] [--calibration PATH]

Formats whose extra is not installed are reported as skipped. Core ML cannot run on Linux:
its row has size and the parity of the converted torch graph, no latency.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch

from birdsound import export as ex
from birdsound.model import load_checkpoint
from birdsound.runtime import DEFAULT_MODEL_PATH, load_model

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
    try:  # before any ExecuTorch program runs (the export's parity check runs one)
        from birdsound.runtime import executorch_threads
        executorch_threads(a.threads)
    except ImportError:
        pass
    net, meta = load_checkpoint(a.model)
    wins, labels = ex.calibration_windows([a.calibration], meta.sample_rate, meta.window_samples, 512)
    out = {"model": meta.model_version, "threads": a.threads, "windows": len(wins), "formats": []}
    x1, x32 = torch.from_numpy(wins[:1]), torch.from_numpy(wins[:32])
    out["eager"] = {"ms_per_window_b1": latency_ms(net, x1), "ms_per_window_b32": latency_ms(net, x32)}
    tmp = tempfile.mkdtemp()
    ext = {"torchscript": "pt", "lite": "ptl", "onnx": "onnx", "executorch": "pte", "coreml": "mlpackage"}
    for fmt, q in [("torchscript", "none"), ("lite", "none"), ("lite", "dynamic"), ("torchscript", "int8"),
                   ("lite", "int8"), ("onnx", "none"), ("executorch", "none"), ("executorch", "int8"),
                   ("coreml", "none")]:
        path = os.path.join(tmp, f"m_{q}.{ext[fmt]}")
        try:
            rep = ex.export(net, meta, path, fmt, q, wins, labels)
        except ex.ExportError as e:
            out["formats"].append({"format": fmt, "quantize": q, "skipped": str(e)})
            continue
        rep.update(size_mb=rep["size_bytes"] / 1e6)
        if fmt != "coreml" or sys.platform == "darwin":
            m = load_model(path, threads=a.threads)
            predict = m.module if m.kind in ("torchscript", "lite") else (lambda x, m=m: m.predict(x.numpy()))
            rep.update(ms_per_window_b1=latency_ms(predict, x1), ms_per_window_b32=latency_ms(predict, x32))
        rep.pop("file")
        out["formats"].append(rep)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
