"""Average trained models into one model file (an ensemble of their logits), scored without audio.

Each member is a ``birdsound train --folds K`` output directory (``model.pt``, ``metrics.json``,
``cv_logits.npz``) of the same data and seed, so that their folds held out the same recordings. The
ensemble's cross-validated figures come from the mean of the members' held-out logits (what an ensemble
of their fold models gives), and its calibration offset is chosen on them as ``train`` chooses one; the
members' own offsets are taken back out of their heads first.

    birdsound ensemble runs/H runs/K -o runs/HK --model-version birdsound-xc69-v6
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np

from . import crossval
from .metadata import Metadata
from .model import BirdNetLite, average, ensemble_config, load_checkpoint, save_checkpoint
from .train import apply_offset, cv_report, make_meta, raw_final_model
from .util import atomic_write

# held-out arrays that say which window is which: equal in every member, or their folds differ
IDENTITY_KEYS = ("_window_recording", "_window_start_s", "_free_recordings_recording", "_free_recordings_start_s",
                 "_recording_files", "_recording_focal", "_recording_targets", "_free_hours_by_source")
LOGIT_KEYS = ("_window_logits", "_free_recordings_logits", "_free_files_logits", "_present_logits")


class EnsembleError(Exception):
    """Runs that cannot be averaged; the message names the run."""


def read_run(run: str, cv_only: bool = False) -> tuple[BirdNetLite | None, Metadata, dict, list[dict]]:
    """A cross-validated run's final model with its calibration offset taken out (raw logits), its
    metadata, its ``metrics.json`` and its folds' held-out arrays (``cv_logits.npz``); with `cv_only` no
    model (a ``--cv-only`` run has none) and the metadata of its first fold's model."""
    try:
        report, held_out = crossval.read_cv_run(run, also=("fold1.pt",) if cv_only else ("model.pt",))
    except FileNotFoundError as e:
        raise EnsembleError(str(e)) from None
    if cv_only:
        net, meta = None, load_checkpoint(os.path.join(run, "fold1.pt"))[1]
    else:
        net, meta, report = raw_final_model(run)
    cv = report.get("cross_validation")
    if not cv or "k" not in cv:
        raise EnsembleError(f"{run}: metrics.json has no cross-validation of its own")
    folds = []
    for k in range(cv["k"]):
        arrays = crossval.fold_arrays(held_out, k)
        absent = [key for key in IDENTITY_KEYS + LOGIT_KEYS if key not in arrays]
        if absent:
            raise EnsembleError(f"{run}: cv_logits.npz lacks {', '.join(absent)} of fold {k + 1} (a run older "
                                "than 2026-12-01): rerun its cross-validation")
        folds.append(arrays)
    return net, meta, report, folds


def mean_arrays(runs: list[str], folds: list[list[dict]]) -> list[dict]:
    """Per fold, the members' held-out arrays with the logits averaged; an error where the runs' folds or
    windows differ."""
    if len({len(f) for f in folds}) != 1:
        raise EnsembleError(f"{', '.join(runs)}: different numbers of folds ({', '.join(str(len(f)) for f in folds)})")
    out = []
    for k, first in enumerate(folds[0]):
        for run, member in zip(runs[1:], folds[1:]):
            for key in IDENTITY_KEYS + LOGIT_KEYS:
                a, b = first[key], member[k][key]
                if a.shape != b.shape or (key in IDENTITY_KEYS and not np.array_equal(a, b)):
                    raise EnsembleError(f"{run}: fold {k + 1} held out other windows than {runs[0]} ({key} differs): "
                                        "members need the same data, --folds and --seed")
        mean = {key: np.mean([m[k][key].astype(np.float64) for m in folds], axis=0).astype(first[key].dtype)
                for key in LOGIT_KEYS}
        out.append({**first, **mean})
    return out


def write_model(nets: list[BirdNetLite], metas: list[Metadata], cv: dict, path: str, model_version: str,
                license: str) -> None:
    """The members' mean logits as one model file, calibrated with the ensemble's own offset."""
    backbones = [m.extra.get("backbone") or {} for m in metas]
    net = apply_offset(average(nets, backbones), cv["logit_offset"])
    extra = {"backbone": ensemble_config(backbones),
             "architecture": f"mean of {len(nets)} MobileNetV3-style networks' logits, mel front end inside (shared)",
             "ensemble_of": [m.model_version for m in metas], "recording_score": cv["recording_score"],
             "logit_offset": round(cv["logit_offset"], 4), "window_s": metas[0].window_s}
    for key in ("teacher", "pretrained"):
        if any(key in m.extra for m in metas):
            extra[key] = "; ".join(sorted({m.extra[key] for m in metas if key in m.extra}))
    save_checkpoint(net, make_meta(metas[0].labels, net, model_version, license, extra), path)


def ensemble(runs: list[str], out_dir: str, model_version: str, license: str | None = None, log=print,
             cv_only: bool = False) -> dict:
    """Write ``model.pt`` (the members' mean logits, calibrated), ``metrics.json`` and ``cv_logits.npz`` of the
    ensemble of the cross-validated `runs` into `out_dir`; returns the report. With `cv_only` the ensemble is
    only scored and calibrated (no ``model.pt``), so runs without a final model (``--cv-only``) can be members."""
    if len(runs) < 2:
        raise EnsembleError("an ensemble needs at least two runs")
    for run in runs:
        if os.path.abspath(run) == os.path.abspath(out_dir):
            raise EnsembleError(f"-o {out_dir}: is one of the runs (it would be overwritten)")
    members = [read_run(r, cv_only) for r in runs]
    nets, metas, reports = [m[0] for m in members], [m[1] for m in members], [m[2] for m in members]
    for run, meta in zip(runs[1:], metas[1:]):
        if meta.labels != metas[0].labels or meta.window_s != metas[0].window_s:
            raise EnsembleError(f"{run}: other labels or window than {runs[0]}")
    licenses = {m.license for m in metas}
    if license is None and len(licenses) > 1:
        raise EnsembleError(f"the runs' licences differ ({' / '.join(sorted(licenses))}): pass --license")
    targets = {r["config"].get("false_detections_target", crossval.FALSE_DETECTIONS_TARGET) for r in reports}
    if len(targets) > 1:
        raise EnsembleError(f"the runs calibrated for different false-detection targets {sorted(targets)}")
    results = [{**crossval.with_method(crossval.metrics_of(a, metas[0].window_s), "top25"), **a}
               for a in mean_arrays(runs, [m[3] for m in members])]
    os.makedirs(out_dir, exist_ok=True)
    cv = cv_report([{"final": r, "history": []} for r in results], SimpleNamespace(false_detections_target=targets.pop()),
                   log=log, arrays_path=os.path.join(out_dir, "cv_logits.npz"))
    if not cv_only:
        write_model(nets, metas, cv, os.path.join(out_dir, "model.pt"), model_version, license or licenses.pop())
    report = {"ensemble_of": [{"run": r, "model_version": m.model_version, "config": rep["config"],
                               "cross_validation_mean": rep["cross_validation"]["mean"]}
                              for r, m, rep in zip(runs, metas, reports)],
              **{key: reports[0][key] for key in ("data", "labels", "n_recordings", "audio_s") if key in reports[0]},
              "cross_validation": cv}
    if cv_only:
        report["model_version"] = model_version  # scored only: no model file carries it
    atomic_write(os.path.join(out_dir, "metrics.json"), json.dumps(report, indent=1, default=float) + "\n")
    return report
