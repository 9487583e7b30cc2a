"""Writers for the formats users already load, readers for them, and the PNG plot.

Renderers return the whole file's text; the drivers write it with
:func:`birdsound.util.atomic_write` (temporary name in the same folder, then a rename), so a
killed run never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Iterable

from .detect import Detection
from .metadata import DEFAULT_FMAX_HZ
from .util import atomic_write  # noqa: F401  (the writers' one helper, re-exported)

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
    duration_s: float | None  # what decoded (None: not known yet)
    detections: list[Detection]
    low_freq_hz: float = 0.0
    high_freq_hz: float = DEFAULT_FMAX_HZ  # the model's band (its metadata); set by the drivers
    offset_s: float = 0.0  # begin time of this file in a combined table


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


def output_path(audio_path: str, root: str, out_dir: str | None, rtype: str, keep_ext: bool = False) -> str:
    """Where a file's result goes: mirrored under `out_dir` relative to `root`, else beside it.
    `keep_ext` keeps the audio file's extension in the name (``x.wav.birdsound.results.csv``)."""
    name = os.path.basename(audio_path)
    stem = name if keep_ext else os.path.splitext(name)[0]
    if out_dir is None:
        folder = os.path.dirname(audio_path)
    else:
        rel = os.path.relpath(os.path.dirname(os.path.abspath(audio_path)), os.path.abspath(root))
        folder = out_dir if rel.startswith("..") else os.path.normpath(os.path.join(out_dir, rel))
    return os.path.join(folder, stem + SUFFIX[rtype])


def plot_path(result_path: str) -> str:
    """The PNG beside a result file: ``x.birdsound.results.csv`` -> ``x.birdsound.png``."""
    for suffix in SUFFIX.values():
        if result_path.endswith(suffix):
            return result_path[: -len(suffix)] + ".birdsound.png"
    return os.path.splitext(result_path)[0] + ".png"


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


def read_result(paths: dict[str, str], labels: list[str]) -> FileResult:
    """A file's result read back from its own outputs (`paths`: result type -> file), for a combined
    table of a resumed run: the JSON if there is one, else the CSV, Raven table or Audacity track
    (their species are matched to `labels`). The duration comes from the JSON; else it is None
    (the caller decodes the audio to know it)."""
    by_common = {lab.split("_", 1)[-1].lower(): lab for lab in labels}
    if "json" in paths:
        with open(paths["json"], encoding="utf-8") as f:
            doc = json.load(f)
        dets = [Detection(d["start_s"], d["end_s"], d["label"], d["confidence"]) for d in doc["detections"]]
        return FileResult(doc["file"], float(doc["duration_s"]), dets)
    audio_path, dets = None, []
    if "csv" in paths:
        with open(paths["csv"], encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f):
                audio_path = r["File"]
                dets.append(Detection(float(r["Start (s)"]), float(r["End (s)"]),
                                      f"{r['Scientific name']}_{r['Common name']}", float(r["Confidence"])))
    elif "table" in paths:
        for r in read_raven(paths["table"]):
            audio_path = r["Begin Path"]
            lab = by_common.get(r["Common Name"].lower(), r["Common Name"])
            dets.append(Detection(float(r["File Offset (s)"]), float(r["End Time (s)"]) - float(r["Begin Time (s)"])
                                  + float(r["File Offset (s)"]), lab, float(r["Confidence"])))
    else:
        for s, e, text in read_audacity(paths["audacity"]):
            common, _, conf = text.rpartition(" (")
            dets.append(Detection(s, e, by_common.get(common.lower(), common), float(conf.rstrip(")"))))
    return FileResult(audio_path or "", None, dets)


def plot(x, sample_rate: int, detections: list[Detection], out_png: str, title: str = "",
         fmax_hz: float = DEFAULT_FMAX_HZ) -> None:
    """PNG of a spectrogram (dB, colour scale set by the recording's own levels, with a colour bar)
    up to the model's top frequency, and above it a label lane: one row per species, a bar for each
    detection, darker for higher confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    dur = len(x) / sample_rate
    shown = [d for d in detections if d.start_s < dur]
    species = list(dict.fromkeys(d.label for d in sorted(shown, key=lambda d: d.start_s)))
    lane_h = 0.28 * max(1, len(species)) + 0.4
    width = min(40.0, max(10.0, dur / 4))
    fig, (lane, ax) = plt.subplots(2, 1, sharex=True, figsize=(width, 4.0 + lane_h),
                                   gridspec_kw={"height_ratios": [lane_h, 4.0], "hspace": 0.05})
    nfft = 1024
    f, t, sxx = _spectrogram(np.asarray(x, dtype=np.float64), sample_rate, nfft)
    keep = f <= min(fmax_hz, sample_rate / 2)
    db = 10 * np.log10(sxx[keep] + 1e-12)
    lo, hi = np.percentile(db, 20), np.percentile(db, 99.7)
    im = ax.pcolormesh(t, f[keep] / 1000, db, shading="auto", cmap="magma", vmin=lo, vmax=max(hi, lo + 10))
    ax.set_ylabel("kHz")
    ax.set_xlabel("time (s)")
    ax.set_xlim(0, dur)
    cbar = fig.colorbar(im, ax=[lane, ax], fraction=0.02, pad=0.01)
    cbar.set_label("dB (relative)")
    for k, lab in enumerate(species):
        for d in (d for d in shown if d.label == lab):
            lane.barh(k, d.end_s - d.start_s, left=d.start_s, height=0.7, color=plt.cm.Greens(0.35 + 0.65 * d.confidence),
                      edgecolor="darkgreen", linewidth=0.5)
            ax.axvspan(d.start_s, d.end_s, ymin=0.97, ymax=1.0, color="lime", alpha=0.8, lw=0)
    lane.set_yticks(range(len(species)), [lab.split("_", 1)[-1] for lab in species], fontsize=8)
    lane.set_ylim(len(species) - 0.5, -0.5) if species else lane.set_yticks([])
    lane.set_title((title + "  " if title else "") + f"{len(shown)} detections (bar colour: confidence)", fontsize=9)
    lane.grid(axis="x", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write(out_png, buf.getvalue())


def _spectrogram(x, sample_rate: int, nfft: int):
    """Power spectrogram with a Hann window and 50 % overlap: (frequencies, times, power [F, T])."""
    import numpy as np

    hop = nfft // 2
    if len(x) < nfft:
        x = np.pad(x, (0, nfft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, nfft)[::hop] * np.hanning(nfft)
    p = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    t = (np.arange(len(frames)) * hop + nfft / 2) / sample_rate
    return np.fft.rfftfreq(nfft, 1 / sample_rate), t, p.T
