"""Write models/MODEL_CARD.md: the hand-written header (models/CARD_HEADER.md) followed by the
generated part (cross-validated metrics, species, attribution of every training recording).

    python scripts/make_model_card.py [--cv runs/cv/metrics.json] [--model models/birdsound_default.pt]
"""

import argparse
import json
import os

from birdsound.dataset import read_dataset
from birdsound.model import load_checkpoint
from birdsound.modelcard import model_card
from birdsound.runtime import DEFAULT_MODEL_PATH
from birdsound.util import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL_PATH)
    ap.add_argument("--cv", default=os.path.join(ROOT, "runs", "cv", "metrics.json"))
    ap.add_argument("--manifest", default=os.path.join(ROOT, "datasets", "xc_train_manifest.csv"))
    ap.add_argument("-o", "--out", default=os.path.join(ROOT, "models", "MODEL_CARD.md"))
    a = ap.parse_args()
    net, meta = load_checkpoint(a.model)
    recs, _ = read_dataset(a.manifest)  # provenance columns only; no audio is decoded
    report = json.load(open(a.cv)) if os.path.exists(a.cv) else {}
    body = model_card(meta, net, recs, report).split("\n", 1)[1]  # the header has the title
    header = open(os.path.join(ROOT, "models", "CARD_HEADER.md"), encoding="utf-8").read().rstrip("\n")
    atomic_write(a.out, header + "\n\n## Generated from the model file and the training manifest\n" + body)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
