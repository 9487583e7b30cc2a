"""The generated part of a model card: data, attributions, architecture, metrics, licence terms."""

from __future__ import annotations

import os

import numpy as np

from .dataset import Recording
from .metadata import Metadata

CARD_METRICS = (("recording_top1", "recording top-1"), ("recording_top5", "recording top-5"),
                ("window_macro_ap", "window macro AP"), ("window_macro_auc", "window ROC-AUC"),
                ("false_detections_per_hour", "false detections per hour (bird-free audio, min-conf 0.25), raw"),
                ("recall_at_default", "recall at min-conf 0.25 where BirdNET hears the focal species, raw"))
CALIBRATED = (("false_detections_per_hour", "false detections per hour, calibrated (offset chosen on the other fold)"),
              ("recall_at_default", "recall at min-conf 0.25, calibrated"))


def cv_table(cv: dict) -> list[str]:
    """Markdown rows of cross-validated metrics: mean and each fold."""
    lines = ["| metric | mean | per fold |", "|---|---|---|"]
    for key, name in CARD_METRICS:
        vals = [f[key] for f in cv["folds"] if key in f]
        if vals:
            lines.append(f"| {name} | {np.mean(vals):.3f} | {', '.join(f'{v:.3f}' for v in vals)} |")
    for key, name in CALIBRATED:
        vals = [f["calibrated"][key] for f in cv["folds"] if "calibrated" in f]
        if vals:
            lines.append(f"| {name} | {np.mean(vals):.3f} | {', '.join(f'{v:.3f}' for v in vals)} |")
    return lines


def model_card(meta: Metadata, net, recs: list[Recording], report: dict) -> str:
    """Markdown model card of a trained model and the recordings it was trained on."""
    from .model import count_mflops, count_parameters

    ws = meta.window_samples
    lines = [f"# birdsound model {meta.model_version}", "",
             f"- Species: {len(meta.labels)}; sample rate {meta.sample_rate} Hz; window {meta.window_s} s",
             f"- Parameters: {count_parameters(net):,}; {count_mflops(net, ws):.1f} MFLOPs per window",
             f"- Licence of the weights: {meta.license}"]
    if meta.extra.get("teacher"):
        lines.append(f"- Distilled from: {meta.extra['teacher']}")
    if meta.extra.get("logit_offset"):
        lines.append(f"- Calibrated for silence: logits lowered by {meta.extra['logit_offset']:.3f} (chosen by "
                     "cross-validation: the smallest offset giving at most 2 false detections per hour of bird-free audio at "
                     "min-conf 0.25, unless that costs more than a quarter of the recall, in which case the largest "
                     "offset that keeps three quarters)")
    if meta.extra.get("calibration_temperature"):
        lines.append(f"- Confidence calibrated: logits divided by {meta.extra['calibration_temperature']:.3f} "
                     "(fitted on cross-validated predictions)")
    lines.append("")
    cv = report.get("cross_validation")
    if cv:
        k = len(cv["folds"])
        lines += [f"## Cross-validated metrics ({k} folds, split by recording)", ""] + cv_table(cv) + [""]
        if cv.get("recording_score"):
            lines += [f"Recording score: `{cv['recording_score']}` (chosen by this cross-validation).", ""]
    lines += ["## Species", ""] + [f"- {lab}" for lab in meta.labels] + ["", "## Training recordings", "",
              "| file | species | xeno-canto | recordist | licence |", "|---|---|---|---|---|"]
    for r in recs:
        i = r.info
        xc = i.get("xc_id", "")
        url = f"xeno-canto.org/{xc[2:]}" if xc.upper().startswith("XC") else ""
        lines.append(f"| {os.path.basename(r.path)} | {r.labels[0]} | {xc} {url} | {i.get('recordist', '')} | "
                     f"{i.get('license', '')} |")
    return "\n".join(lines) + "\n"
