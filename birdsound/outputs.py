"""Writers for the formats users already load, and readers for two of them.

Every writer renders the whole file in memory and writes it atomically (temporary name in
the same folder, then ``os.replace``), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Iterable

from .detect import Detection

RTYPES = ("csv", "table", "audacity", "json")
SUFFIX = {
    "csv": ".birdsound.results.csv",
    "table": ".birdsound.selection.table.txt",
    "audacity": ".birdsound.results.txt",
    "json": ".birdsound.results.json",
}
COMBINED_NAME = {
    "csv": "birdsound.combined.results.csv",
    "table": "birdsound.combined.selection.table.txt",
    "audacity": "birdsound.combined.results.txt",
    "json": "birdsound.combined.results.json",
}
CSV_HEADER = ["Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File"]
RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                "High Freq (Hz)", "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)"]


@dataclass
class FileResult:
    """Detections of one audio file, with what the outputs need to describe it."""

    path: str
    duration_s: float
    detections: list[Detection]
    low_freq_hz: float = 0.0
    high_freq_hz: float = 15000.0
    offset_s: float = 0.0  # begin time of this file in a combined table


def atomic_write(path: str, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.part{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def species_code(label: str) -> str:
    """Six-letter code from the scientific name (genus[:3] + species[:3], upper case)."""
    sci = label.split("_", 1)[0].split()
    if len(sci) >= 2:
        return (sci[0][:3] + sci[1][:3]).upper()
    return sci[0][:6].upper() if sci else ""


def render_csv(results: Iterable[FileResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADER)
    for r in results:
        for d in r.detections:
            w.writerow([_num(d.start_s), _num(d.end_s),
                        d.scientific, d.common, f"{d.confidence:.4f}", r.path])
    return buf.getvalue()


def _num(x: float) -> str:
    s = f"{x:.4f}".rstrip("0").rstrip(".")
    return s or "0"


def render_raven(results: Iterable[FileResult]) -> str:
    """Raven Pro selection table; in a combined table each file's times are offset."""
    lines = ["\t".join(RAVEN_HEADER)]
    sel = 0
    for r in results:
        for d in r.detections:
            sel += 1
            lines.append("\t".join([
                str(sel), "Spectrogram 1", "1", _num(r.offset_s + d.start_s), _num(r.offset_s + d.end_s),
                _num(r.low_freq_hz), _num(r.high_freq_hz), d.common, species_code(d.label),
                f"{d.confidence:.4f}", r.path, _num(d.start_s)]))
    return "\n".join(lines) + "\n"


def render_audacity(results: Iterable[FileResult]) -> str:
    lines = []
    for r in results:
        for d in r.detections:
            lines.append(f"{r.offset_s + d.start_s:.6f}\t{r.offset_s + d.end_s:.6f}\t{d.common} ({d.confidence:.3f})")
    return "\n".join(lines) + ("\n" if lines else "")


def render_json(results: Iterable[FileResult], model_meta: dict) -> str:
    files = [{"file": r.path, "duration_s": r.duration_s,
              "detections": [{"start_s": d.start_s, "end_s": d.end_s, "scientific_name": d.scientific,
                              "common_name": d.common, "label": d.label, "confidence": round(d.confidence, 6)}
                             for d in r.detections]} for r in results]
    meta = {k: v for k, v in model_meta.items() if k != "labels"}
    meta["n_labels"] = len(model_meta.get("labels", []))
    doc = {"model": meta, "files": files} if len(files) != 1 else {"model": meta, **files[0]}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def render(rtype: str, results: list[FileResult], model_meta: dict) -> str:
    if rtype == "csv":
        return render_csv(results)
    if rtype == "table":
        return render_raven(results)
    if rtype == "audacity":
        return render_audacity(results)
    if rtype == "json":
        return render_json(results, model_meta)
    raise ValueError(f"unknown result type {rtype!r}; one of {', '.join(RTYPES)}")


def output_path(audio_path: str, root: str, out_dir: str | None, rtype: str) -> str:
    """Where a file's result goes: mirrored under `out_dir` relative to `root`, else beside it."""
    stem = os.path.splitext(os.path.basename(audio_path))[0]
    if out_dir is None:
        folder = os.path.dirname(audio_path)
    else:
        rel = os.path.relpath(os.path.dirname(os.path.abspath(audio_path)), os.path.abspath(root))
        folder = out_dir if rel.startswith("..") else os.path.normpath(os.path.join(out_dir, rel))
    return os.path.join(folder, stem + SUFFIX[rtype])


def read_raven(path: str) -> list[dict[str, str]]:
    """Rows of a Raven selection table as dicts keyed by its header."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def read_audacity(path: str) -> list[tuple[float, float, str]]:
    """(start, end, label) rows of an Audacity label track (frequency lines skipped)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and not parts[0].startswith("\\"):
                out.append((float(parts[0]), float(parts[1]), parts[2]))
    return out


def plot(audio_path: str, sample_rate: int, detections: list[Detection], out_png: str,
         max_s: float = 600.0) -> None:
    """PNG spectrogram of the first `max_s` seconds with detections drawn as labelled boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from . import audio

    blocks, n = [], 0
    for b in audio.read_blocks(audio_path, sample_rate):
        blocks.append(b)
        n += len(b)
        if n >= max_s * sample_rate:
            break
    x = np.concatenate(blocks)[: int(max_s * sample_rate)]
    dur = len(x) / sample_rate
    fig, ax = plt.subplots(figsize=(min(40, max(8, dur / 4)), 4), dpi=100)
    ax.specgram(x, NFFT=1024, Fs=sample_rate, noverlap=512, cmap="magma")
    ax.set_ylim(0, min(15000, sample_rate / 2))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("Hz")
    ax.set_title(os.path.basename(audio_path))
    top = min(15000, sample_rate / 2)
    for i, d in enumerate(d for d in detections if d.start_s < dur):
        y0 = 300 + (i % 4) * 0.05 * top
        ax.add_patch(plt.Rectangle((d.start_s, y0), d.end_s - d.start_s, top * 0.8, fill=False, color="cyan", lw=1))
        ax.text(d.start_s, y0 + top * 0.8, f"{d.common} {d.confidence:.2f}", color="cyan", fontsize=7, va="bottom")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    tmp = f"{out_png}.part{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, out_png)
