"""Benchmark `birdsound serve`: concurrent clients posting 60 s clips. Prints JSON (not a test).

For each concurrency: audio seconds analysed per wall second and per second of the server's CPU time,
p50/p99 latency, errors, 503s; the server's RSS over 1,000 requests (flat memory); and the CLI's throughput
on the same clips on this machine for comparison (`birdsound analyze FOLDER`, the default model, all cores).
The clients run on the same cores as the server, so wall-clock throughput understates the server; the
per-CPU-second figures compare the server's own work with the CLI's.

    python scripts/bench_serve.py [--clips 40] [--requests 1000] [--concurrency 1 2 4 8 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 32000


def clip_audio(seconds: float = 60.0) -> np.ndarray:
    """60 s of real birdsong when ../shared/data is there (looped), else synthetic chirps in noise."""
    src = os.path.join(ROOT, "..", "shared", "data", "vogelstimmen_xc", "audio")
    if os.path.isdir(src):
        from birdsound import audio

        parts, n = [], 0
        for f in sorted(os.listdir(src))[:12]:
            x = audio.load(os.path.join(src, f), SR)
            parts.append(x)
            n += len(x)
            if n >= seconds * SR:
                break
        return np.concatenate(parts)[: int(seconds * SR)]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(int(seconds * SR)).astype(np.float32) * 0.01
    t = np.arange(int(0.3 * SR)) / SR
    call = np.sin(2 * np.pi * (3000 * t + 4000 * t ** 2)).astype(np.float32) * 0.2
    for s in range(0, len(x) - len(call), SR):
        x[s:s + len(call)] += call
    return x


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_clients(url: str, body: bytes, n_requests: int, concurrency: int, audio_s: float) -> dict:
    import httpx

    lat, codes = [], []

    def one(_):
        t0 = time.perf_counter()
        try:
            r = httpx.post(url, content=body, timeout=300)
            code = r.status_code
        except httpx.HTTPError:
            code = -1
        return time.perf_counter() - t0, code

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for dt, code in pool.map(one, range(n_requests)):
            lat.append(dt)
            codes.append(code)
    wall = time.perf_counter() - t0
    ok = [d for d, c in zip(lat, codes) if c == 200]
    return {"concurrency": concurrency, "requests": n_requests, "ok": len(ok), "status_503": codes.count(503),
            "errors": sum(1 for c in codes if c not in (200, 503)), "wall_s": round(wall, 2),
            "audio_s_per_s": round(len(ok) * audio_s / wall, 1),
            "p50_latency_s": round(float(np.percentile(ok, 50)), 3) if ok else None,
            "p99_latency_s": round(float(np.percentile(ok, 99)), 3) if ok else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=40, help="clips per throughput measurement")
    ap.add_argument("--requests", type=int, default=1000, help="requests of the memory run")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 32])
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    try:
        x = clip_audio()
        clip = os.path.join(tmp, "clip.wav")
        sf.write(clip, x, SR, subtype="PCM_16")
        body = open(clip, "rb").read()
        audio_s = len(x) / SR
        folder = os.path.join(tmp, "clips")
        os.makedirs(folder)
        for i in range(a.clips):
            shutil.copy(clip, os.path.join(folder, f"clip{i:03d}.wav"))
        model = ["-m", a.model] if a.model else []
        # the CLI on the same clips (one process, all cores)
        t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "birdsound", "analyze", folder, "-o", os.path.join(tmp, "out"),
                        "--rtype", "json", "-q", *model], check=True, capture_output=True)
        cli_wall, c1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        cli_cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
        cli = {"files": a.clips, "wall_s": round(cli_wall, 2), "audio_s_per_s": round(a.clips * audio_s / cli_wall, 1),
               "audio_s_per_cpu_s": round(a.clips * audio_s / cli_cpu, 1)}
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "birdsound", "serve", "--port", str(port), *model],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        import httpx

        url = f"http://127.0.0.1:{port}/v1/analyze"
        for _ in range(300):
            try:
                inflight_limit = httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        try:
            runs = []
            for c in a.concurrency:  # the server's own CPU time too: the clients share this machine's cores
                s0 = cpu_s(proc.pid)
                runs.append(run_clients(url, body, a.clips if c <= 8 else 4 * a.clips, c, audio_s))
                runs[-1]["server_audio_s_per_cpu_s"] = round(runs[-1]["ok"] * audio_s / max(cpu_s(proc.pid) - s0, 1e-9), 1)
            rss = [{"after_requests": 0, "rss_mb": round(rss_mb(proc.pid), 1)}]
            done = 0
            for step in (100, a.requests - 100):
                r = run_clients(url, body, step, 4, audio_s)
                done += step
                rss.append({"after_requests": done, "rss_mb": round(rss_mb(proc.pid), 1), "errors": r["errors"]})
        finally:
            proc.terminate()
            proc.wait(30)
        best = max(r["audio_s_per_s"] for r in runs if r["concurrency"] <= 8)
        print(json.dumps({"clip_s": audio_s, "cpu_count": os.cpu_count(), "cli": cli, "serve": runs, "memory": rss,
                          "best_serve_vs_cli": round(best / cli["audio_s_per_s"], 3),
                          "serve_vs_cli_per_cpu_s": round(max(r["server_audio_s_per_cpu_s"] for r in runs
                                                              if r["concurrency"] <= 8) / cli["audio_s_per_cpu_s"], 3),
                          "server_up": inflight_limit}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
