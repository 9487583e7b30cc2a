"""Training state on disk, so that an interrupted ``birdsound train`` continues where it stopped.

Each fit (a cross-validation fold or the final model) writes its whole state, atomically, at every
evaluation step (``eval_every``): weights, optimiser, schedule, weight average, the random generators of
the loop and of the batch sampler, torch's generator, the validation history and the running loss. A
resumed fit draws the same batches and reaches the same weights as one never interrupted (same machine
and thread count). The files live in ``<out>/training_state/`` and are removed once the run has written
its models. They are pickles of our own making (``torch.load(weights_only=False)``): load only your own.
"""

from __future__ import annotations

import json
import os
import random
import re

import torch

from .util import atomic_path, atomic_write

STATE_DIR = "training_state"
STATE_FORMAT = "birdsound-training-state-1"
RUN_FILE = "run.json"  # the command's settings, checked before any audio is decoded again


def state_dir(out_dir: str) -> str:
    """The folder of a run's training states."""
    return os.path.join(out_dir, STATE_DIR)


def state_path(out_dir: str, desc: str) -> str:
    """The state file of the fit called `desc` ("fold 1/2" -> fold_1_of_2.pt, "final model" -> final_model.pt)."""
    name = re.sub(r"[^a-z0-9]+", "_", desc.lower().replace("/", " of ")).strip("_")
    return os.path.join(state_dir(out_dir), f"{name}.pt")


def check_run(out_dir: str, run: dict) -> None:
    """Refuse, in one line, to resume the run in `out_dir` with settings `run` other than those it started with."""
    path = os.path.join(state_dir(out_dir), RUN_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        raise ValueError(f"--resume: {path} is missing or unreadable; delete {state_dir(out_dir)} to start afresh") from None
    differs = differences(json.loads(json.dumps(run)), saved)  # `run` as it would read back (tuples as lists)
    if differs:
        raise ValueError(f"--resume: {out_dir} was started with other {', '.join(differs)}; resume with the command "
                         f"that started it, or delete {state_dir(out_dir)} to start afresh")


def start_run(out_dir: str, run: dict) -> None:
    """Keep the settings `run` of a run that is starting (its fits then save their states beside them)."""
    os.makedirs(state_dir(out_dir), exist_ok=True)
    atomic_write(os.path.join(state_dir(out_dir), RUN_FILE), json.dumps(run, indent=1))


def differences(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between `a` and `b`; of a dict in both, its differing keys ("config.steps")."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += [f"{k}.{j}" for j in sorted(set(x) | set(y)) if x.get(j) != y.get(j)]
        elif x != y:
            out.append(k)
    return out


def fingerprint(config: dict, desc: str, recordings: list[str], init: bool) -> dict:
    """What must be equal for a saved state to be continued: recipe, fit, training recordings, start."""
    return {"config": config, "desc": desc, "recordings": sorted(recordings), "init": bool(init)}


def save(path: str, fp: dict, step: int, parts: dict, rngs: dict[str, random.Random], history: list,
         running: float | None) -> None:
    """Write the state after `step`: ``state_dict()`` of every object in `parts`, the generators `rngs`."""
    blob = {"format": STATE_FORMAT, "fingerprint": fp, "step": step, "history": history, "running": running,
            "parts": {k: v.state_dict() for k, v in parts.items()},
            "rngs": {k: r.getstate() for k, r in rngs.items()}, "torch_rng": torch.get_rng_state()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


def restore(path: str, fp: dict, parts: dict, rngs: dict[str, random.Random]) -> tuple[int, list, float | None]:
    """Load the state at `path` into `parts` and `rngs` (and torch's generator); (step, history, running).

    Raises ValueError, one line naming the file, when it is unreadable or of another recipe, data or fit.
    """
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or foreign files of every kind
        raise ValueError(f"{path}: not a readable training state ({type(e).__name__}); delete it to start "
                         "that fit afresh") from None
    if not isinstance(blob, dict) or blob.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: not a birdsound training state")
    if differs := differences(fp, blob["fingerprint"]):
        raise ValueError(f"{path}: saved by a run of other {', '.join(differs)}; resume with the command "
                         f"that started it, or delete {os.path.dirname(path)} to start afresh")
    for k, v in parts.items():
        v.load_state_dict(blob["parts"][k])
    for k, r in rngs.items():
        r.setstate(blob["rngs"][k])
    torch.set_rng_state(blob["torch_rng"])
    return blob["step"], blob["history"], blob["running"]
