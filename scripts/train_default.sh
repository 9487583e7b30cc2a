#!/usr/bin/env bash
# Reproduce the shipped default model birdsound-xc69-v5 end to end (2 cores: ~6 min teacher pass, then
# ~1 h 50 min for the 2-fold cross-validation and the final model, fitted side by side: --jobs 3). Needs ../shared/data (xeno-canto recordings, not part
# of this repo), espeak-ng (apt-get install espeak-ng) and the distill extra (pip install -e '.[distill]').
set -euo pipefail
cd "$(dirname "$0")/.."
S=../shared/data
python datasets/prepare_xc.py                          # datasets/xc_train_manifest.csv
python datasets/make_negatives.py -o runs/negatives    # bird-free audio: speech, insects, frogs, traffic, ... (train/ val/)
# BirdNET V2.4 over every recording and negative, 1 s hop, cached by content hash (train reuses it)
python -m birdsound.teacher datasets/xc_train_manifest.csv --cache runs/teacher_cache \
  --extra runs/negatives "$S/strong_label_examples" "$S/birdnet_example_soundscapes/audio/soundscape.wav"
# 2-fold cross-validation by recording (the model card's figures) and the final model on everything,
# three one-thread processes side by side (the folds' calibration offset is applied to the final model after).
# XC563936 (birdnet_example_soundscapes) stays out: it is the visible open-set check.
birdsound train datasets/xc_train_manifest.csv -o runs/v5 --folds 2 --jobs 3 --steps 18000 --seed 0 \
  --teacher birdnet --teacher-cache runs/teacher_cache \
  --negatives runs/negatives/train --negatives "$S/strong_label_examples" \
  --negatives "$S/birdnet_example_soundscapes/audio/soundscape.wav" --val-negatives runs/negatives/val \
  --recipe '{"emb_weight": 1.0, "eval_every": 2000, "sampler": {"bg_share": 0.35, "real_negative_share": 0.7, "hard_weight": 0.3, "shift_p": 0.3, "stretch_p": 0.3, "other_share": 0.3}}' \
  --model-version birdsound-xc69-v5 \
  --license "CC BY-NC-SA 4.0 (non-commercial; inherited from the CC BY-NC(-SA/-ND) training recordings and the BirdNET V2.4 teacher)"
cp runs/v5/model.pt models/birdsound_default.pt
cp runs/v5/metrics.json models/birdsound_default.cv.json   # the cross-validation behind the card
# the same model for onnxruntime: what analyze and listen run by default (no torch import: faster start, less memory)
birdsound export models/birdsound_default.pt -o models/birdsound_default.onnx --format onnx
python scripts/make_model_card.py --cv runs/v5/metrics.json   # models/MODEL_CARD.md = CARD_HEADER.md + metrics + attributions
echo "shipped models/birdsound_default.pt, models/birdsound_default.onnx and models/MODEL_CARD.md"
