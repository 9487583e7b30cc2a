"""Evaluate a model on labelled recordings through the real analysis path (raw PCM in).

Window metrics use every window of a recording labelled with its focal species (weak
labels); recording metrics aggregate windows with the model's recording score (chosen by
cross-validation at training, :func:`birdsound.metrics.recording_scores`). False detections
per hour are counted at default settings (no overlap, ``min_conf`` 0.25) on audio known to hold
none of the model's species: synthesized noise, the user's bird-free folders, and with a teacher
the windows of the evaluated recordings in which BirdNET hears none of the species. With Raven
selection tables, detections are also scored as events in time.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from . import audio, outputs
from .dataset import read_dataset
from .detect import DEFAULT_MIN_CONF, DetectOptions, detect, label_matcher, merge_consecutive
from .metrics import (detection_rate, false_detections, macro_ap, macro_auc, prf_at_threshold,
                      recording_scores, topk_accuracy)
from .runtime import Classifier
from .stream import file_windows, hop_samples
from .util import atomic_write


def probabilities(model: Classifier, path: str, overlap_s: float = 0.0,
                  channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All window start times (s) and probabilities ``[W, n_labels]`` of a file."""
    sr, win = model.meta.sample_rate, model.meta.window_samples
    starts, probs = [], []
    for wb in file_windows(path, sr, win, hop_samples(win, overlap_s, sr), channel):
        starts.append(wb.starts / sr)
        probs.append(wb.score(model.predict))
    return np.concatenate(starts), np.concatenate(probs)


def synthetic_negatives(sample_rate: int, seed: int = 12345) -> list[np.ndarray]:
    """Bird-free synthesized audio (noise colours, wind, rain, hum, near-silence), 40 s each."""
    from .dataset import synth_noise

    return synth_noise(seed, sample_rate)


def false_detection_report(model: Classifier, negatives: list[str] = (), teacher_free: dict | None = None) -> dict:
    """False detections at default settings on bird-free audio, by source, and in all.

    `negatives`: audio files/folders without any of the model's species; `teacher_free`:
    {file: window start times (s) the teacher found free of the species} (windows of the model's
    length starting there are counted).
    """
    from .stream import windows_from_blocks

    sr, win = model.meta.sample_rate, model.meta.window_samples
    window_s = model.meta.window_s
    by = {}
    synth = [wb.score(model.predict) for x in synthetic_negatives(sr) for wb in windows_from_blocks([x], win, win)]
    by["synthesized_noise"] = false_detections(np.concatenate(synth), window_s, DEFAULT_MIN_CONF)
    if negatives:
        probs = []
        for p, _ in audio.find_audio_files(list(negatives)):
            try:
                probs.append(probabilities(model, p)[1])
            except audio.AudioError:
                continue
        by["bird_free_files"] = false_detections(np.concatenate(probs) if probs else np.zeros((0, 1)), window_s,
                                                 DEFAULT_MIN_CONF)
    if teacher_free:
        probs = []
        for p, free in teacher_free.items():
            starts, pr = probabilities(model, p)
            keep = np.isin(np.round(starts, 3), np.round(free, 3))
            probs.append(pr[keep])
        by["teacher_empty_windows"] = false_detections(np.concatenate(probs) if probs else np.zeros((0, 1)),
                                                       window_s, DEFAULT_MIN_CONF)
    return {"by_source": by, **detection_rate(sum(v["detections"] for v in by.values()),
                                              sum(v["hours"] for v in by.values()))}


def teacher_free_windows(model: Classifier, files: dict[str, list[int]], cache_dir: str) -> dict[str, np.ndarray]:
    """Start times (s) of each file's teacher windows, on the model's window grid (no overlap), in which
    BirdNET scores every one of the model's species below the negative threshold. `files`: {path: its
    species (label indices)}; a file of a species BirdNET lacks has no such window."""
    from . import teacher as tc

    outs, _ = tc.teacher_outputs(list(files), cache_dir)
    mapping = tc.map_labels(model.labels, tc.teacher_labels())
    out = {}
    for p, o in outs.items():
        t = tc.targets_for(o, mapping, 1.0)  # frame rate 1: frames are seconds
        out[p] = o.starts_s[tc.empty(t, files[p]) & tc.on_grid(o.starts_s, model.meta.window_s)]
    return out


def evaluate(model: Classifier, data: str, out_dir: str, threshold: float = 0.25, overlap_s: float = 1.5,
             annotations: str | None = None, tolerance_s: float = 1.5, negatives: list[str] = (),
             teacher_cache: str | None = None) -> dict:
    """Score `model` on DATA and write ``report.json``, ``confusion.png`` and ``pr_curves.png``.

    `teacher_cache`: count false detections in BirdNET-empty windows of DATA too (distill extra).
    """
    recs, _ = read_dataset(data)
    labels = model.labels
    method = str(model.meta.extra.get("recording_score", "top25"))
    match = label_matcher(labels)
    T, S, rec_true, rec_scores, per_rec, errors = [], [], [], [], [], []
    columns: dict[str, list[int]] = {}  # each evaluated file's species (label indices)
    for r in recs:
        idx = [match.get(lab.lower(), match.get(lab.split("_")[0].lower())) for lab in r.labels]
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
        agg = recording_scores(probs, method)
        rec_true.append(idx[0])
        rec_scores.append(agg)
        per_rec.append({"file": r.path, "species": labels[idx[0]], "top5": [labels[i] for i in np.argsort(-agg)[:5]]})
        columns[r.path] = idx
    if not T:
        raise ValueError(f"{data}: no recording could be evaluated ({'; '.join(errors[:3])})")
    T, S, R, y = np.concatenate(T), np.concatenate(S), np.stack(rec_scores), np.array(rec_true)
    mAP, per_class = macro_ap(T, S)
    teacher_free = teacher_free_windows(model, columns, teacher_cache) if teacher_cache else None
    fd = false_detection_report(model, negatives, teacher_free)
    summary = {"window_macro_ap": mAP, "window_macro_auc": macro_auc(T, S),
               "recording_top1": topk_accuracy(y, R, 1), "recording_top5": topk_accuracy(y, R, 5),
               **{f"window_{k}": v for k, v in prf_at_threshold(T, S, threshold).items()},
               "false_detections_per_hour": fd["per_hour"],
               "n_recordings": len(y), "n_windows": len(T)}
    os.makedirs(out_dir, exist_ok=True)
    present = sorted(set(y.tolist()))
    conf = confusion(y, R.argmax(1), present)
    report = {"model": model.meta.model_version, "data": data, "recording_score": method, "summary": summary,
              "per_class_ap": {labels[c]: v for c, v in per_class.items()}, "false_detections": fd,
              "recordings": per_rec,
              "confusion_matrix": {"labels": [labels[c] for c in present] + ["(other species)"],
                                   "counts": conf.tolist()},
              "errors": errors}
    if annotations:
        report["events"] = score_events(model, annotations, threshold, overlap_s, tolerance_s)
        summary.update({f"event_{k}": v for k, v in report["events"]["summary"].items()})
    plot_confusion([labels[c] for c in present], conf, os.path.join(out_dir, "confusion.png"))
    plot_pr_curves(labels, T, S, per_class, os.path.join(out_dir, "pr_curves.png"))
    atomic_write(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1) + "\n")
    return report


def confusion(true: np.ndarray, pred: np.ndarray, present: list[int]) -> np.ndarray:
    """Counts ``[len(present), len(present) + 1]``: rows true species, columns predicted species
    among those present, the last column predictions of any other species."""
    pos = {c: i for i, c in enumerate(present)}
    m = np.zeros((len(present), len(present) + 1), dtype=int)
    for t, p in zip(true, pred):
        m[pos[int(t)], pos.get(int(p), len(present))] += 1
    return m


def _savefig(fig, path: str) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue())


def plot_confusion(names: list[str], conf: np.ndarray, path: str) -> None:
    """Confusion matrix of the species present (rows) with an 'other species' column, counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    short = [n.split("_")[-1] for n in names]
    size = max(4.0, 0.28 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(conf, cmap="Blues", aspect="auto")
    fs = max(5, min(9, int(200 / max(1, len(names)))))
    ax.set_xticks(range(len(names) + 1), short + ["(other)"], rotation=90, fontsize=fs)
    ax.set_yticks(range(len(names)), short, fontsize=fs)
    if len(names) <= 40:
        for i, j in zip(*np.nonzero(conf)):
            ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=fs,
                    color="white" if conf[i, j] > conf.max() / 2 else "black")
    ax.set_xlabel("predicted (recording top-1)")
    ax.set_ylabel("true species")
    acc = np.trace(conf[:, :len(names)]) / max(1, conf.sum())
    ax.set_title(f"Recording top-1 confusion ({len(names)} species present, accuracy {acc:.2f})")
    fig.colorbar(im, ax=ax, fraction=0.04, label="recordings")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_pr_curves(labels: list[str], T: np.ndarray, S: np.ndarray, per_class: dict[int, float], path: str,
                   n_named: int = 5) -> None:
    """Micro-averaged PR curve (bold), every class in grey, and the best and worst `n_named` classes
    in colour with their AP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(8, 6.5))
    order = sorted(per_class, key=lambda c: -per_class[c])
    named = order[:n_named] + [c for c in order[-n_named:] if c not in order[:n_named]]
    for c in order:
        if c not in named:
            p, r, _ = precision_recall_curve(T[:, c], S[:, c])
            ax.plot(r, p, color="0.8", lw=0.6)
    cmap = plt.get_cmap("tab10")
    for k, c in enumerate(named):
        p, r, _ = precision_recall_curve(T[:, c], S[:, c])
        ax.plot(r, p, color=cmap(k % 10), lw=1.3, label=f"{labels[c].split('_')[-1]} (AP {per_class[c]:.2f})")
    present = sorted(per_class)
    p, r, _ = precision_recall_curve(T[:, present].ravel(), S[:, present].ravel())
    micro = average_precision_score(T[:, present].ravel(), S[:, present].ravel())
    ax.plot(r, p, color="black", lw=2.5, label=f"all species, micro-average (AP {micro:.2f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"Precision-recall per window (macro AP {np.mean(list(per_class.values())):.3f}; "
                 f"grey: other species)", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def score_events(model: Classifier, folder: str, threshold: float, overlap_s: float, tolerance_s: float) -> dict:
    """Match detections to Raven selections of the same species within `tolerance_s` at both ends.

    Annotation rows name species by 'Species', 'Common Name' or 'Annotation' columns; rows whose
    species the model does not know are counted as unknown and left out.
    """
    match = label_matcher(model.labels)
    tp = fp = fn = unknown = 0
    files = []
    for table in sorted(glob.glob(os.path.join(folder, "**", "*.txt"), recursive=True)):
        stem = os.path.basename(table).split(".")[0]
        cands = [p for p in glob.glob(os.path.join(os.path.dirname(table), stem + ".*"))
                 if p.lower().endswith(audio.AUDIO_EXTENSIONS)]
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
        win_s = model.meta.window_s
        dets = merge_consecutive(detect(starts, starts + win_s, probs, model.labels, DetectOptions(min_conf=threshold)))
        used = set()
        for d in dets:
            hit = next((k for k, (b, e, lab) in enumerate(truth) if k not in used and lab == d.label
                        and d.start_s <= e + tolerance_s and d.end_s >= b - tolerance_s), None)
            if hit is None:
                fp += 1
            else:
                used.add(hit)
                tp += 1
        fn += len(truth) - len(used)
        files.append({"table": table, "audio": cands[0], "annotated": len(truth), "detected": len(dets),
                      "matched": len(used)})
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"summary": {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                        "tp": tp, "fp": fp, "fn": fn, "unknown_species_rows": unknown}, "files": files}


def write_embeddings(model: Classifier, paths: list[str], out_path: str, overlap_s: float = 0.0) -> tuple[int, list[str]]:
    """Per-window backbone embeddings of `paths` into an .npz; returns (count, errors)."""
    import torch

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
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, files=np.array(files), starts=np.concatenate(starts) if starts else np.zeros(0),
                        ends=np.concatenate(ends) if ends else np.zeros(0), embeddings=E,
                        model_version=model.meta.model_version)
    atomic_write(out_path, buf.getvalue())
    return len(E), errors
