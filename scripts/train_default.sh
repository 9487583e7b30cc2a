#!/usr/bin/env bash
# Reproduce the shipped default model birdsound-xc69-v9 (= H + KF + Q11) end to end; safe to run again after an
# interruption (finished runs are kept, an interrupted one resumes). 2 cores: ~6 min teacher
# pass, then H 93 min, KF 97 min plus a 13 min BirdNET pass over its augmented views, Q11 92 min, each a 2-fold
# cross-validation and its final model fitted side by side with --jobs 3; the ensemble seconds. J, L and M,
# v7's other networks, are kept below for the record (v7 = H + M); set V7=1 to train them too (~6 h more), V8=1 for
# v8's K (v8 = H + K + Q11; ~2 h more). Needs ../shared/data (xeno-canto recordings, not part
# of this repo), espeak-ng (apt-get install espeak-ng) and the distill extra (pip install -e '.[distill]').
set -euo pipefail
cd "$(dirname "$0")/.."
S=../shared/data
python datasets/prepare_xc.py                          # datasets/xc_train_manifest.csv
python datasets/make_negatives.py -o runs/negatives    # bird-free audio: speech, insects, frogs, traffic, ... (train/ val/)
# BirdNET V2.4 over every recording and negative, 1 s hop, cached by content hash (train reuses it)
python -m birdsound.teacher datasets/xc_train_manifest.csv --cache runs/teacher_cache \
  --extra runs/negatives "$S/strong_label_examples" "$S/birdnet_example_soundscapes/audio/soundscape.wav"
# Three recipes, each cross-validated (2 folds by recording, the model card's figures) with its final model on
# everything, three one-thread processes side by side (the folds' calibration offset is applied to the final
# model after); then the three are averaged into one model (birdsound ensemble), scored and calibrated on the
# mean of their held-out logits. XC563936 (birdnet_example_soundscapes)
# stays out: it is the visible open-set check.
LICENSE="CC BY-NC-SA 4.0 (non-commercial; inherited from the CC BY-NC(-SA/-ND) training recordings and the BirdNET V2.4 teacher)"
common=(--folds 2 --jobs 3 --seed 0 --teacher birdnet --teacher-cache runs/teacher_cache
  --negatives runs/negatives/train --negatives "$S/strong_label_examples"
  --negatives "$S/birdnet_example_soundscapes/audio/soundscape.wav" --val-negatives runs/negatives/val --license "$LICENSE")
SAMPLER='"bg_share": 0.35, "real_negative_share": 0.7, "hard_weight": 0.3, "shift_p": 0.3, "stretch_p": 0.3, "other_share": 0.3'
VIEWS='"views": 2, "ema_decay": 0.999'
# Run again after an interruption: a finished run (model.pt and no training_state/) is kept, an interrupted one
# continues from its last evaluation step (--resume), the rest start afresh.
train() {  # train -o DIR ARGS...
  local out=$2 resume=()
  if [ -d "$out/training_state" ]; then resume=(--resume)
  elif [ -f "$out/model.pt" ]; then echo "$out: finished earlier, kept"; return; fi
  birdsound train datasets/xc_train_manifest.csv "${common[@]}" "${resume[@]}" "$@"
}
# H (v5's recipe; member 1 of v7)
train -o runs/v7-h --steps 18000 --model-version birdsound-xc69-v7-h \
  --recipe "{\"emb_weight\": 1.0, \"eval_every\": 2000, \"sampler\": {$SAMPLER}}"
# KF: H plus BirdNET-labelled augmented views of every recording in the "field" style (other recordists and
# sites: equaliser, distance, reverberation, noise) and a moving average of the weights (its first run also runs
# BirdNET over the views, once: cached)
train -o runs/v9-kf --steps 18000 --model-version birdsound-xc69-kf \
  --recipe "{\"emb_weight\": 1.0, \"eval_every\": 2000, $VIEWS, \"view_style\": \"field\", \"sampler\": {$SAMPLER, \"view_p\": 0.5}}"
if [ "${V7:-0}" = 1 ] || [ "${V8:-0}" = 1 ]; then
  # K (v7's and v8's): KF's recipe with K's milder views (speed, equaliser +-6 dB, self-mix, noise)
  train -o runs/v7-k --steps 18000 --model-version birdsound-xc69-v7-k \
    --recipe "{\"emb_weight\": 1.0, \"eval_every\": 2000, $VIEWS, \"sampler\": {$SAMPLER, \"view_p\": 0.5}}"
fi
# Q11: K's recipe on the first 11 blocks of the AudioSet-pretrained EfficientAT mn04 (MIT licence)
train -o runs/v8-q11 --steps 9000 --lr 0.002 --arch mn --pretrained ../shared/pretrained/efficientat_mn04_as.pt \
  --model-version birdsound-xc69-v8-q11 \
  --recipe "{\"emb_weight\": 1.0, \"eval_every\": 3000, $VIEWS, \"backbone\": {\"type\": \"mn\", \"depth\": 11}, \"sampler\": {$SAMPLER, \"view_p\": 0.5}}"
if [ "${V7:-0}" = 1 ]; then
  # v7's M: K's models of each fold (and its final model) trained 6,000 steps more with the mean logits of J's
  # (H plus all-class distillation), K's and L's (K with the views BirdNET finds empty of our species drawn as
  # bird-free windows too) models of the same fold as a further target
  train -o runs/v7-j --steps 18000 --model-version birdsound-xc69-v7-j \
    --recipe "{\"emb_weight\": 1.0, \"aux_weight\": 1.0, \"eval_every\": 2000, \"sampler\": {$SAMPLER}}"
  train -o runs/v7-l --steps 18000 --model-version birdsound-xc69-v7-l \
    --recipe "{\"emb_weight\": 1.0, \"eval_every\": 2000, $VIEWS, \"sampler\": {$SAMPLER, \"view_p\": 0.5, \"view_negative_p\": 0.5}}"
  train -o runs/v7-m --steps 6000 --model-version birdsound-xc69-v7-m \
    --recipe "{\"emb_weight\": 1.0, \"eval_every\": 2000, $VIEWS, \"lr\": 0.001, \"student_of\": [\"runs/v7-j\", \"runs/v7-k\", \"runs/v7-l\"], \"student_weight\": 2.0, \"init_from\": \"runs/v7-k\", \"sampler\": {$SAMPLER, \"view_p\": 0.5}}"
  birdsound ensemble runs/v7-h runs/v7-m -o runs/v7 --model-version birdsound-xc69-v7
fi
if [ "${V8:-0}" = 1 ]; then
  birdsound ensemble runs/v7-h runs/v7-k runs/v8-q11 -o runs/v8 --model-version birdsound-xc69-v8
fi
birdsound ensemble runs/v7-h runs/v9-kf runs/v8-q11 -o runs/v9 --model-version birdsound-xc69-v9
cp runs/v9/model.pt models/birdsound_default.pt
cp runs/v9/metrics.json models/birdsound_default.cv.json   # the cross-validation behind the card
# the same model for onnxruntime: what analyze and listen run by default (no torch import: faster start, less memory)
birdsound export models/birdsound_default.pt -o models/birdsound_default.onnx --format onnx
python scripts/make_model_card.py --cv runs/v9/metrics.json   # models/MODEL_CARD.md = CARD_HEADER.md + metrics + attributions
echo "shipped models/birdsound_default.pt, models/birdsound_default.onnx and models/MODEL_CARD.md"
