"""Training speed of the shipped model's recipe: steps per second of one process on 1 and 2 threads, and of
`birdsound train --jobs N` (N forked one-thread processes, each fitting its own model); prints JSON.

Usage: python scripts/bench_train.py [--steps 150] [--jobs 2 3]

The recipe, data and bird-free files are those recorded in models/birdsound_default.cv.json (the shipped
model's training report). Needs ../shared/data, the teacher cache of scripts/train_default.sh
(runs/teacher_cache) and runs/negatives. Run it on an idle machine: it measures CPU throughput.
"""

import argparse
import json
import os
import time
from dataclasses import replace

import torch

from birdsound import train as T
from birdsound.trainset import load_training_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_REPORT = os.path.join(ROOT, "models", "birdsound_default.cv.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--jobs", type=int, nargs="+", default=[2, 3])
    a = ap.parse_args()
    shipped = json.load(open(SHIPPED_REPORT))  # paths in it are relative to the repository root
    cfg = replace(T.apply_recipe(T.TrainConfig(), json.dumps(shipped["config"])), steps=a.steps, eval_every=10**9)
    prep = load_training_data(os.path.join(ROOT, shipped["data"]), teacher=cfg.teacher,
                              negatives=[os.path.join(ROOT, n) for n in shipped["negatives"]], seed=cfg.seed,
                              cache_dir=os.path.join(ROOT, "runs", "teacher_cache"), frontend=cfg.frontend)
    out = {"steps_per_fit": a.steps, "batch_size": cfg.batch_size, "one_process": {}, "jobs": {}}
    for threads in (2, 1):
        torch.set_num_threads(threads)
        t = time.perf_counter()
        T.fit(prep, prep.recs, cfg, progress=False)
        out["one_process"][f"{threads}_threads_steps_per_s"] = round(a.steps / (time.perf_counter() - t), 2)
    for jobs in a.jobs:
        specs = [T.FitSpec(prep.recs, replace(cfg, seed=i), f"fit {i}") for i in range(jobs)]
        t = time.perf_counter()
        T.run_fits(prep, specs, jobs, log=lambda m: None)
        out["jobs"][f"{jobs}_steps_per_s_all_processes"] = round(jobs * a.steps / (time.perf_counter() - t), 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
