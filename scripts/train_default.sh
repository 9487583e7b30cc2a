#!/usr/bin/env bash
# Reproduce the shipped default model end to end (about 10 min cross-validation + 7 min final on 2 cores).
# Needs ../shared/data (xeno-canto recordings; not part of this repo).
set -euo pipefail
cd "$(dirname "$0")/.."
python datasets/prepare_xc.py
# 2-fold cross-validation by recording (metrics for the model card); optional: SKIP_CV=1
if [ "${SKIP_CV:-0}" != 1 ]; then
  birdsound train datasets/xc_train_manifest.csv -o runs/cv --folds 2 --cv-only --steps 4500 --seed 0
fi
birdsound train datasets/xc_train_manifest.csv -o runs/default --steps 4500 --seed 0 \
  --model-version birdsound-xc69-v1 \
  --license "CC BY-NC-SA 4.0 (non-commercial; inherited from the CC BY-NC(-SA/-ND) training recordings)"
cp runs/default/model.pt models/birdsound_default.pt
# the same model for onnxruntime: what analyze and listen run by default (no torch import: faster start, less memory)
birdsound export models/birdsound_default.pt -o models/birdsound_default.onnx --format onnx
python scripts/make_model_card.py --cv runs/cv/metrics.json   # models/MODEL_CARD.md = CARD_HEADER.md + metrics + attributions
echo "shipped models/birdsound_default.pt, models/birdsound_default.onnx and models/MODEL_CARD.md"
