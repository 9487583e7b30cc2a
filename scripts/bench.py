"""Throughput benchmark of `birdsound analyze`; prints JSON (not part of the test suite).

    python scripts/bench.py                     # 1 h WAV/FLAC/MP3 + 24 h WAV, stages, latency
    python scripts/bench.py --quick             # 10 min files, no 24 h file
    python scripts/bench.py --peer birdnet      # also BirdNET (../shared/peer) on the same 48 kHz file
    python scripts/bench.py --budget-only       # the per-window budget alone: shipped ONNX against v1's

Inputs are built once in --work (default /tmp/birdsound-bench) by looping real recordings from
../shared/data (a synthesized signal where that is absent): 32 kHz WAV of 1 h and 24 h,
1 h FLAC, 1 h MP3 at 48 kHz (and a 48 kHz WAV for the side-by-side with BirdNET). The 24 h
file is an RF64 WAV (a RIFF WAV stops at 4 GB, 18.6 h at 32 kHz 16 bit).
Every end-to-end figure is a fresh `birdsound analyze` process (outputs written, overlap 0):
x real time and its peak RSS (VmHWM of that process), start-up included. Without --model
analyze runs the shipped model's ONNX export (onnxruntime); the checkpoint (torch) is run too.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import soundfile as sf

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.path.join(ROOT, "..", "shared")
BLOCK_S = 60
V1_ONNX = "51d55ac:models/birdsound_default.onnx"  # v1 as shipped with the real-valued mel (git object)


def source_audio(rate: int, seconds: float = 600.0) -> np.ndarray:
    """About `seconds` of real recordings (concatenated) at `rate`, or synthesized birdsong-like audio."""
    from birdsound import audio

    files = sorted(glob.glob(os.path.join(SHARED, "data", "british_birdsong_xc", "audio", "*.flac")))
    parts, n = [], 0
    for p in files:
        try:
            x = audio.load(p, rate)
        except audio.AudioError:
            continue
        parts.append(x)
        n += len(x)
        if n >= seconds * rate:
            break
    if parts:
        return np.concatenate(parts)[: int(seconds * rate)]
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.01 * rng.standard_normal(len(t)) + 0.2 * np.sin(2 * np.pi * (3000 + 800 * np.sin(2 * np.pi * 3 * t)) * t) * (
        np.sin(2 * np.pi * 0.2 * t) > 0.6)
    return x.astype(np.float32)


def make_long(path: str, hours: float, rate: int, fmt: str, subtype: str | None = None) -> str:
    """Loop real audio into a `hours`-long file (built once, then reused)."""
    if os.path.exists(path) and sf.info(path).duration >= hours * 3600 - 1:
        return path
    src = source_audio(rate)
    total = int(hours * 3600 * rate)
    if fmt == "WAV" and total * 2 >= 2 ** 32:  # a RIFF WAV stops at 4 GB (18.6 h at 32 kHz, 16 bit): RF64, as recorders do
        fmt = "RF64"
    from birdsound.util import atomic_path

    with atomic_path(path, os.path.splitext(path)[1]) as tmp, \
            sf.SoundFile(tmp, "w", rate, 1, format=fmt, subtype=subtype) as f:
        done = 0
        while done < total:
            n = min(len(src), total - done)
            f.write(src[:n])
            done += n
    return path


# The child's own peak RSS: VmHWM of its address space, read as it exits. (ru_maxrss from wait4 would also
# count the parent's pages at fork time, i.e. this benchmark's own memory.)
HWM_WRAPPER = """
import atexit, os, sys
def _hwm():
    kb = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
    open(os.environ['BENCH_HWM_FILE'], 'w').write(kb)
atexit.register(_hwm)
from birdsound.cli import main
sys.argv[0] = 'birdsound'
main()
"""


def run_analyze(path: str, out_dir: str, extra: list[str]) -> dict:
    """One fresh `birdsound analyze` process: wall time, x real time, peak RSS (MB)."""
    args = ["analyze", path, "-o", out_dir, "--rtype", "csv", "-q", *extra]
    cmd = [sys.executable, "-c", HWM_WRAPPER, *args]
    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as hwm:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "BENCH_HWM_FILE": hwm.name})
        _, err = p.communicate()
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"birdsound {' '.join(args)} failed: {err[-500:]}")
        peak_kb = int(hwm.read().split()[0])
    dur = sf.info(path).duration
    return {"file": os.path.basename(path), "args": " ".join(extra), "audio_s": round(dur, 1), "wall_s": round(wall, 2),
            "x_realtime": round(dur / wall, 1), "peak_rss_mb": round(peak_kb / 1024, 1),
            "summary": err.strip().splitlines()[-1]}


def stage_breakdown(path: str, seconds: float = 600.0) -> dict:
    """Single-thread seconds per hour of audio for each stage of the pipeline (mel and CNN split in
    torch), their shares, and the shipped ONNX model's time for mel + CNN together."""
    import soxr
    import torch

    from birdsound import audio, outputs
    from birdsound.detect import DetectOptions, detect
    from birdsound.model import load_checkpoint
    from birdsound.runtime import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH, load_model
    from birdsound.stream import windows_from_blocks

    torch.set_num_threads(1)
    net, meta = load_checkpoint(DEFAULT_MODEL_PATH)
    sr, win = meta.sample_rate, meta.window_samples
    info = sf.info(path)
    frames = int(min(seconds, info.duration) * info.samplerate)
    t = {}
    t0 = time.perf_counter()
    blocks = []
    with sf.SoundFile(path) as f:
        while f.tell() < frames:
            b = f.read(min(int(30 * info.samplerate), frames - f.tell()), dtype="float32", always_2d=True)
            blocks.append(audio.to_mono(b))
    t["decode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if info.samplerate != sr:
        rs = soxr.ResampleStream(info.samplerate, sr, 1, dtype="float32", quality="HQ")
        blocks = [rs.resample_chunk(b, last=i == len(blocks) - 1) for i, b in enumerate(blocks)]
    t["resample"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batches = list(windows_from_blocks(blocks, win, win))
    t["window"] = time.perf_counter() - t0
    mels, probs = [], []
    with torch.inference_mode():
        t0 = time.perf_counter()
        for wb in batches:
            mels.append(net.frontend(torch.from_numpy(wb.windows)))
        t["mel"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for m in mels:
            probs.append(torch.sigmoid(net.head(net.backbone(m))).numpy())
        t["cnn"] = time.perf_counter() - t0
    onnx_s = None
    if os.path.exists(DEFAULT_ONNX_PATH):  # what analyze runs by default: mel + CNN in one onnxruntime graph
        m = load_model(DEFAULT_ONNX_PATH, threads=1)
        t0 = time.perf_counter()
        for wb in batches:
            m.predict(wb.windows)
        onnx_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dets = []
    for wb, p in zip(batches, probs):
        dets += detect(wb.starts / sr, (wb.starts + wb.lengths) / sr, p, meta.labels, DetectOptions())
    text = outputs.render("table", [outputs.FileResult(path, frames / info.samplerate, dets)], meta.to_dict())
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
    t["detect_write"] = time.perf_counter() - t0
    total = sum(t.values())
    per_hour = 3600 / (frames / info.samplerate)
    return {"file": os.path.basename(path), "audio_s": frames / info.samplerate, "threads": 1,
            "s_per_audio_hour": {k: round(v * per_hour, 3) for k, v in t.items()},
            "share": {k: round(v / total, 3) for k, v in t.items()},
            "x_realtime_one_core": round(frames / info.samplerate / total, 1),
            "onnxruntime_mel_plus_cnn_s_per_audio_hour": None if onnx_s is None else round(onnx_s * per_hour, 3)}


def ms_per_window(predict, x: np.ndarray, reps: int) -> float:
    """Milliseconds per window of `predict(x)` (one call to warm up, then `reps` timed)."""
    predict(x)
    t0 = time.perf_counter()
    for _ in range(reps):
        predict(x)
    return (time.perf_counter() - t0) / reps / len(x) * 1000


def latency_table(work: str) -> list[dict]:
    """Per-window latency (ms) of eager, TorchScript, int8 lite and ONNX at batch 1/32, 1/2 threads."""
    import torch

    from birdsound import export as ex
    from birdsound.model import ProbabilityModel, load_checkpoint
    from birdsound.runtime import DEFAULT_MODEL_PATH, load_model

    warnings.filterwarnings("ignore")
    net, meta = load_checkpoint(DEFAULT_MODEL_PATH)
    manifest = os.path.join(ROOT, "datasets", "xc_train_manifest.csv")
    try:
        wins, labels = ex.calibration_windows([manifest], meta.sample_rate, meta.window_samples, 512)
    except Exception:
        wins, labels = np.random.default_rng(0).standard_normal((512, meta.window_samples)).astype(np.float32) * 0.1, []
    models = {"eager": ProbabilityModel(net).eval()}
    for name, fmt, q, ext in (("torchscript", "torchscript", "none", "pt"), ("lite_int8", "lite", "int8", "ptl"),
                              ("onnx", "onnx", "none", "onnx")):
        path = os.path.join(work, f"default_{name}.{ext}")
        try:
            ex.export(net, meta, path, fmt, q, wins, labels)
            models[name] = load_model(path, threads=1)
        except Exception as e:  # e.g. the onnx extra not installed
            print(f"skip {name}: {e}", file=sys.stderr)
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, m in models.items():
            if name != "eager" and m.kind == "onnx":
                m = load_model(m.path, threads=threads)
            predict = m.predict if name != "eager" else (lambda x, mod=m: mod(torch.from_numpy(x)).numpy())
            row = {"model": name, "threads": threads}
            with torch.inference_mode():
                for b in (1, 32):
                    row[f"ms_per_window_b{b}"] = round(ms_per_window(predict, wins[:b], max(3, 64 // b)), 3)
            rows.append(row)
    return rows


def onnx_budget(reference: str, rounds: int = 7) -> dict:
    """Issue 11's budget: the shipped ONNX at most as slow per window as v1's. Both files run on
    onnxruntime, one thread, on the same real windows, interleaved round by round (this machine's
    speed drifts); the median of the rounds per batch size. `reference` is a file or a git object."""
    import onnxruntime as ort

    from birdsound.runtime import DEFAULT_ONNX_PATH

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    ref_bytes = reference
    if not os.path.exists(reference):
        blob = subprocess.run(["git", "-C", ROOT, "show", reference], capture_output=True)
        if blob.returncode:
            return {"error": f"reference {reference}: {blob.stderr.decode().strip()}"}
        ref_bytes = blob.stdout
    sessions = {"default": ort.InferenceSession(DEFAULT_ONNX_PATH, so, providers=["CPUExecutionProvider"]),
                "v1": ort.InferenceSession(ref_bytes, so, providers=["CPUExecutionProvider"])}
    x = source_audio(32000, 96.0)[:32 * 96000].reshape(32, 96000).astype(np.float32)
    out: dict = {"reference": reference}
    for b in (1, 32):
        times: dict = {k: [] for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                times[k].append(ms_per_window(lambda w, s=s: s.run(None, {"pcm": w}), x[:b], max(3, 320 // b)))
        med = {k: float(np.median(v)) for k, v in times.items()}
        out[f"b{b}"] = {"default_ms_per_window": round(med["default"], 3), "v1_ms_per_window": round(med["v1"], 3),
                        "ratio": round(med["default"] / med["v1"], 3), "within_budget": med["default"] <= med["v1"]}
    return out


def run_peer(path: str, threads: int = 2) -> dict:
    """BirdNET V2.4 (TFLite) through ../shared/peer on `path`; its JSON line."""
    peer = os.path.join(SHARED, "peer")
    if not os.path.exists(os.path.join(peer, "birdnet_run.py")):
        return {"error": f"{peer} not found"}
    venv = os.environ.get("PEER_VENV", "/tmp/peer-venv")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        subprocess.run(["bash", os.path.join(peer, "setup.sh")], check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([os.path.join(venv, "bin", "python"), os.path.join(peer, "birdnet_run.py"), path,
                            "--threads", str(threads), "--batch", "8", "--min-conf", "0.25",
                            "--out", os.path.join(d, "birdnet.csv")], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr[-300:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/birdsound-bench", help="where the long inputs are built and kept")
    ap.add_argument("--quick", action="store_true", help="10 min inputs, no 24 h file")
    ap.add_argument("--no-24h", action="store_true")
    ap.add_argument("--peer", choices=["birdnet"], default=None, help="also run BirdNET on the 48 kHz file")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--budget-only", action="store_true", help="only the per-window budget against v1's ONNX")
    ap.add_argument("--reference-onnx", default=V1_ONNX, help="v1's ONNX: a file or a git object (default %(default)s)")
    a = ap.parse_args()
    if a.budget_only:
        print(json.dumps({"budget": onnx_budget(a.reference_onnx)}, indent=1))
        return
    os.makedirs(a.work, exist_ok=True)
    h = 1 / 6 if a.quick else 1.0
    tag = "10min" if a.quick else "1h"
    files = {
        f"wav32k_{tag}": make_long(os.path.join(a.work, f"wav32k_{tag}.wav"), h, 32000, "WAV", "PCM_16"),
        f"flac32k_{tag}": make_long(os.path.join(a.work, f"flac32k_{tag}.flac"), h, 32000, "FLAC", "PCM_16"),
        f"mp3_48k_{tag}": make_long(os.path.join(a.work, f"mp3_48k_{tag}.mp3"), h, 48000, "MP3", "MPEG_LAYER_III"),
        f"wav48k_{tag}": make_long(os.path.join(a.work, f"wav48k_{tag}.wav"), h, 48000, "WAV", "PCM_16"),
    }
    if not (a.quick or a.no_24h):
        files["wav32k_24h"] = make_long(os.path.join(a.work, "wav32k_24h.wav"), 24.0, 32000, "WAV", "PCM_16")
    ckpt = os.path.join(ROOT, "models", "birdsound_default.pt")
    result: dict = {"machine": {"cores": os.cpu_count()}, "analyze": []}
    out = tempfile.mkdtemp(prefix="bench-out-")
    for name, path in files.items():
        with open(path, "rb") as f:  # warm the page cache, as for a second pass over a disk
            while f.read(1 << 24):
                pass
        # no --model: the shipped model's ONNX export on onnxruntime (torch never imported)
        result["analyze"].append({"input": name, "model": "default (onnxruntime)", **run_analyze(path, out, [])})
        if name.startswith(("wav32k", "mp3")):
            result["analyze"].append({"input": name, "model": "default checkpoint (torch)",
                                      **run_analyze(path, out, ["-m", ckpt])})
    result["analyze"].append({"input": f"wav32k_{tag}", "model": "default (onnxruntime), 1 worker 1 thread",
                              **run_analyze(files[f"wav32k_{tag}"], out, ["--workers", "1", "--threads", "1"])})
    result["stages"] = [stage_breakdown(files[f"wav32k_{tag}"]), stage_breakdown(files[f"mp3_48k_{tag}"])]
    if not a.skip_latency:
        result["latency"] = latency_table(a.work)
    result["budget"] = onnx_budget(a.reference_onnx)
    if a.peer:
        peer = run_peer(files[f"wav48k_{tag}"])
        ours = run_analyze(files[f"wav48k_{tag}"], out, [])
        result["peer"] = {"file": f"wav48k_{tag}", "birdnet": peer, "birdsound": ours}
        if "realtime_factor" in peer:
            result["peer"]["speed_ratio_birdsound_over_birdnet"] = round(ours["x_realtime"] / peer["realtime_factor"], 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
