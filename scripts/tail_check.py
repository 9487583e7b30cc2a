"""How trustworthy are detections in the last, partial window of a file?

Over the focal recordings of a dataset (default: ``../shared/data/british_birdsong_xc``), compare the
share of detections that are *not* the recording's focal species in full windows and in the tail
window, scored as birdsound scores it now (``stream.Windower``: the lower score of the remainder
looped and of the file's last full window) and as alternatives: zero padding (the old rule), the
remainder looped alone, the last full window alone. Prints JSON.

    python scripts/tail_check.py [--model M] [--data DIR_OR_MANIFEST] [--min-conf 0.25]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from birdsound import audio
from birdsound.dataset import read_dataset
from birdsound.detect import label_matcher
from birdsound.runtime import load_model
from birdsound.stream import fill_tail, windows_from_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "british_birdsong_xc", "manifest.csv")


def dataset(path: str) -> list[tuple[str, str]]:
    """(file, focal scientific name) pairs from a manifest of ../shared/data or a birdsound dataset."""
    import csv

    if path.endswith("manifest.csv") and "species_scientific" in open(path, encoding="utf-8").readline():
        base = os.path.dirname(path)
        return [(os.path.join(base, r["path"]), r["species_scientific"]) for r in csv.DictReader(open(path, encoding="utf-8"))]
    recs, _ = read_dataset(path)
    return [(r.path, r.labels[0].split("_")[0]) for r in recs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--min-conf", type=float, default=0.25)
    a = ap.parse_args()
    model = load_model(a.model) if a.model else load_model(None)
    sr, win = model.meta.sample_rate, model.meta.window_samples
    match = label_matcher(model.labels)
    kinds = ("full", "tail_birdsound", "tail_zeros", "tail_looped", "tail_end_aligned")
    counts = {k: {"detections": 0, "not_focal": 0, "focal_found": 0, "windows": 0} for k in kinds}
    for path, sci in dataset(a.data):
        focal = match.get(sci.lower())
        try:
            x = audio.load(path, sr)
        except audio.AudioError:
            continue
        n_full = len(x) // win
        rest = x[n_full * win:]
        groups = {"full": x[: n_full * win].reshape(n_full, win)}
        if len(rest):
            zeros = np.zeros((1, win), np.float32)
            zeros[0, :len(rest)] = rest
            groups["tail_zeros"] = zeros
            groups["tail_looped"] = fill_tail(rest, win)[None]
            if len(x) >= win:
                groups["tail_end_aligned"] = x[-win:][None]
        probs = {k: model.predict(w) for k, w in groups.items() if len(w)}
        if len(rest):
            tail = list(windows_from_blocks([x], win, win))[-1]
            probs["tail_birdsound"] = tail.score(model.predict)[-1:]
        for k, p in probs.items():
            w = p
            hit = p >= a.min_conf
            counts[k]["windows"] += len(w)
            counts[k]["detections"] += int(hit.sum())
            counts[k]["not_focal"] += int(hit.sum() - (hit[:, focal].sum() if focal is not None else 0))
            counts[k]["focal_found"] += int(hit[:, focal].sum()) if focal is not None else 0
    for c in counts.values():
        c["share_not_focal"] = round(c["not_focal"] / c["detections"], 4) if c["detections"] else None
    print(json.dumps({"model": model.meta.model_version, "data": a.data, "min_conf": a.min_conf, **counts}))


if __name__ == "__main__":
    main()
