"""Training speed of the shipped recipe: steps per second of one process on 1 and 2 threads, and of
`birdsound train --jobs N` (N forked one-thread processes, each fitting its own model); prints JSON.

Usage: python scripts/bench_train.py [--steps 150] [--jobs 2 3]

Needs ../shared/data, the teacher cache of scripts/train_default.sh (runs/teacher_cache) and
runs/negatives. Run it on an idle machine: it measures CPU throughput.
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
SHARED = os.path.join(ROOT, "..", "shared", "data")
RECIPE = ('{"sampler": {"bg_share": 0.35, "real_negative_share": 0.7, "hard_weight": 0.3, "shift_p": 0.3, '
          '"stretch_p": 0.3, "other_share": 0.3}}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--jobs", type=int, nargs="+", default=[2, 3])
    a = ap.parse_args()
    cfg = T.apply_recipe(T.TrainConfig(steps=a.steps, teacher="birdnet", eval_every=10**9), RECIPE)
    negatives = [os.path.join(ROOT, "runs", "negatives", "train"), os.path.join(SHARED, "strong_label_examples"),
                 os.path.join(SHARED, "birdnet_example_soundscapes", "audio", "soundscape.wav")]
    prep = load_training_data(os.path.join(ROOT, "datasets", "xc_train_manifest.csv"), teacher="birdnet",
                              negatives=negatives, seed=0, cache_dir=os.path.join(ROOT, "runs", "teacher_cache"))
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
