"""Evaluate a model on labelled recordings through the real analysis path (raw PCM in).

Window metrics use every window of a recording labelled with its focal species (weak
labels); recording metrics aggregate windows with :func:`birdsound.metrics.recording_scores`.
With Raven selection tables, detections are also scored as events in time.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import torch

from . import audio, outputs
from .analyze import probabilities
from .detect import label_matcher
from .metrics import macro_ap, macro_auc, prf_at_threshold, recording_scores, topk_accuracy
from .runtime import Classifier
from .stream import file_windows, hop_samples


def evaluate(model: Classifier, data: str, out_dir: str, threshold: float = 0.25, overlap_s: float = 1.5,
             annotations: str | None = None, tolerance_s: float = 1.5) -> dict:
    """Score `model` on DATA and write ``report.json``, ``confusion.png`` and ``pr_curves.png``."""
    from .train import read_dataset

    recs, _ = read_dataset(data)
    labels = model.labels
    match = label_matcher(labels)
    T, S, rec_true, rec_scores, per_rec, errors = [], [], [], [], [], []
    for r in recs:
        idx = [match.get(l.lower(), match.get(l.split("_")[0].lower())) for l in r.labels]
        if any(i is None for i in idx):
            errors.append(f"{r.path}: species {r.labels} not among the model's labels; skipped")
            continue
        try:
            _, probs = probabilities(model, r.path, overlap_s)
        except audio.AudioError as e:
            errors.append(str(e))
            continue
        t = np.zeros_like(probs)
        t[:, idx] = 1
        T.append(t)
        S.append(probs)
        agg = recording_scores(probs)
        rec_true.append(idx[0])
        rec_scores.append(agg)
        per_rec.append({"file": r.path, "species": labels[idx[0]], "top5": [labels[i] for i in np.argsort(-agg)[:5]]})
    if not T:
        raise ValueError(f"{data}: no recording could be evaluated ({'; '.join(errors[:3])})")
    T, S, R, y = np.concatenate(T), np.concatenate(S), np.stack(rec_scores), np.array(rec_true)
    mAP, per_class = macro_ap(T, S)
    summary = {"window_macro_ap": mAP, "window_macro_auc": macro_auc(T, S),
               "recording_top1": topk_accuracy(y, R, 1), "recording_top5": topk_accuracy(y, R, 5),
               **{f"window_{k}": v for k, v in prf_at_threshold(T, S, threshold).items()},
               "n_recordings": len(y), "n_windows": len(T)}
    os.makedirs(out_dir, exist_ok=True)
    conf = np.zeros((len(labels), len(labels)), dtype=int)
    for t, r in zip(y, R.argmax(1)):
        conf[t, r] += 1
    report = {"model": model.meta.model_version, "data": data, "summary": summary,
              "per_class_ap": {labels[c]: v for c, v in per_class.items()},
              "recordings": per_rec, "confusion_matrix": {"labels": labels, "counts": conf.tolist()},
              "errors": errors}
    if annotations:
        report["events"] = score_events(model, annotations, threshold, overlap_s, tolerance_s)
        summary.update({f"event_{k}": v for k, v in report["events"]["summary"].items()})
    _plots(labels, conf, T, S, per_class, out_dir)
    outputs.atomic_write(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1) + "\n")
    return report


def _plots(labels, conf, T, S, per_class, out_dir) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(12, 11))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(labels)), [l.split("_")[-1] for l in labels], rotation=90, fontsize=5)
    ax.set_yticks(range(len(labels)), [l.split("_")[-1] for l in labels], fontsize=5)
    ax.set_xlabel("predicted (recording top-1)")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "confusion.png"), dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 6))
    for c in per_class:
        p, r, _ = precision_recall_curve(T[:, c], S[:, c])
        ax.plot(r, p, lw=0.6, alpha=0.6)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"per-class PR curves (macro AP {np.mean(list(per_class.values())):.3f})")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "pr_curves.png"), dpi=120)
    plt.close(fig)


def score_events(model: Classifier, folder: str, threshold: float, overlap_s: float, tolerance_s: float) -> dict:
    """Match detections to Raven selections of the same species within `tolerance_s` at both ends.

    Annotation rows name species by 'Species', 'Common Name' or 'Annotation' columns; rows whose
    species the model does not know are counted as unknown and left out.
    """
    from .detect import DetectOptions, detect, merge_consecutive

    match = label_matcher(model.labels)
    tp = fp = fn = unknown = 0
    files = []
    for table in sorted(glob.glob(os.path.join(folder, "**", "*.txt"), recursive=True)):
        stem = os.path.basename(table).split(".")[0]
        cands = [p for p in glob.glob(os.path.join(os.path.dirname(table), stem + ".*")) if p.lower().endswith(audio.AUDIO_EXTENSIONS)]
        if not cands:
            continue
        truth = []
        for row in outputs.read_raven(table):
            name = row.get("Species") or row.get("Common Name") or row.get("Annotation") or ""
            i = match.get(name.strip().lower())
            if i is None:
                unknown += 1
                continue
            truth.append((float(row["Begin Time (s)"]), float(row["End Time (s)"]), model.labels[i]))
        starts, probs = probabilities(model, cands[0], overlap_s)
        sr, win = model.meta.sample_rate, model.meta.window_samples
        dets = merge_consecutive(detect(starts, starts + win / sr, probs, model.labels, DetectOptions(min_conf=threshold)))
        used = set()
        for d in dets:
            hit = next((k for k, (b, e, l) in enumerate(truth) if k not in used and l == d.label
                        and d.start_s <= e + tolerance_s and d.end_s >= b - tolerance_s), None)
            if hit is None:
                fp += 1
            else:
                used.add(hit)
                tp += 1
        fn += len(truth) - len(used)
        files.append({"table": table, "audio": cands[0], "annotated": len(truth), "detected": len(dets), "matched": len(used)})
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"summary": {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                        "tp": tp, "fp": fp, "fn": fn, "unknown_species_rows": unknown}, "files": files}


def write_embeddings(model: Classifier, paths: list[str], out_path: str, overlap_s: float = 0.0) -> tuple[int, list[str]]:
    """Per-window backbone embeddings of `paths` into an .npz; returns (count, errors)."""
    sr, win = model.meta.sample_rate, model.meta.window_samples
    hop = hop_samples(win, overlap_s, sr)
    files, starts, ends, embs, errors = [], [], [], [], []
    for p in paths:
        try:
            for wb in file_windows(p, sr, win, hop):
                with torch.inference_mode():
                    embs.append(model.net.embed(torch.from_numpy(wb.windows)).numpy())
                starts.append(wb.starts / sr)
                ends.append((wb.starts + wb.lengths) / sr)
                files += [p] * len(wb.starts)
        except audio.AudioError as e:
            errors.append(str(e))
    E = np.concatenate(embs) if embs else np.zeros((0, 0), np.float32)
    tmp = out_path + ".part.npz"
    np.savez_compressed(tmp, files=np.array(files), starts=np.concatenate(starts) if starts else np.zeros(0),
                        ends=np.concatenate(ends) if ends else np.zeros(0), embeddings=E,
                        model_version=model.meta.model_version)
    os.replace(tmp, out_path)
    return len(E), errors
