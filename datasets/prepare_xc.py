"""Build the training manifest of the shipped model from ../shared/data (not committed data).

Usage: python datasets/prepare_xc.py [SHARED_DATA_DIR] [-o datasets/xc_train_manifest.csv]

Writes one row per recording: path (relative to the manifest's folder), species
("Scientific name_Common name", BirdNET's label form), and the provenance columns the model
card needs (xc_id, recordist, license, dataset).
"""

from __future__ import annotations

import argparse
import csv
import os

TRAIN_SETS = ("british_birdsong_xc", "vogelstimmen_xc", "anki_central_european_xc")
HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=os.path.join(HERE, "..", "..", "shared", "data"))
    ap.add_argument("-o", "--out", default=os.path.join(HERE, "xc_train_manifest.csv"))
    args = ap.parse_args()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    rows = []
    for name in TRAIN_SETS:
        folder = os.path.join(args.data, name)
        with open(os.path.join(folder, "manifest.csv"), newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                path = os.path.relpath(os.path.join(folder, r["path"]), out_dir)
                rows.append({
                    "path": path,
                    "species": f"{r['species_scientific']}_{r['species_common']}",
                    "xc_id": r["xc_id"], "recordist": r["recordist"], "license": r["license"],
                    "duration_s": r["duration_s"], "dataset": name,
                })
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{args.out}: {len(rows)} recordings, {len({r['species'] for r in rows})} species")


if __name__ == "__main__":
    main()
