"""Open any birdsound model file and score windows with it.

A model file is one of

* a birdsound checkpoint (``torch.save`` of plain tensors, strings and numbers, loaded with
  ``weights_only=True`` so no pickled code ever runs),
* a TorchScript file made by ``birdsound export`` (``.pt`` or lite ``.ptl``) carrying
  ``metadata.json`` in its extra files,
* an ONNX file made by ``birdsound export --format onnx`` (metadata in its
  ``metadata_props``), run with onnxruntime: torch is then never imported, which keeps a
  batch run's memory small.

:func:`load_model` opens all of them and returns a :class:`Classifier` with one ``predict`` call.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SAMPLE_RATE_HZ = 32000
WINDOW_S = 3.0
DEFAULT_MODEL_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "models", "birdsound_default.pt")
DEFAULT_ONNX_PATH = os.path.splitext(DEFAULT_MODEL_PATH)[0] + ".onnx"  # the same model exported, for speed
ONNX_METADATA_KEY = "birdsound_metadata"


class ModelError(Exception):
    """A model file that cannot be used; the message names the file."""


@dataclass
class Metadata:
    """What travels inside every model file."""

    labels: list[str]
    sample_rate: int = SAMPLE_RATE_HZ
    window_s: float = WINDOW_S
    model_version: str = "untrained"
    license: str = "unspecified"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.extra)
        d.update(labels=list(self.labels), sample_rate=int(self.sample_rate),
                 window_s=float(self.window_s), model_version=self.model_version,
                 license=self.license)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Metadata":
        core = {"labels", "sample_rate", "window_s", "model_version", "license"}
        missing = {"labels", "sample_rate", "window_s"} - set(d)
        if missing:
            raise ValueError(f"metadata lacks {sorted(missing)}")
        return cls(labels=list(d["labels"]), sample_rate=int(d["sample_rate"]),
                   window_s=float(d["window_s"]), model_version=str(d.get("model_version", "")),
                   license=str(d.get("license", "")),
                   extra={k: v for k, v in d.items() if k not in core})


def first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:200] if s else type(e).__name__


class Classifier:
    """A loaded model of any kind: ``predict(windows) -> probabilities``.

    `kind` is ``checkpoint``, ``torchscript``, ``lite`` or ``onnx``; `net` is the trainable
    ``BirdNetLite`` for checkpoints (embeddings, export), else None.
    """

    def __init__(self, module: Any, meta: Metadata, path: str, kind: str, net: Any = None):
        self.module = module
        self.meta = meta
        self.path = path
        self.kind = kind
        self.net = net

    @property
    def labels(self) -> list[str]:
        return self.meta.labels

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """``float32 [B, window_samples]`` at ``meta.sample_rate`` -> probabilities ``[B, n_labels]``."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if self.kind == "onnx":
            return self.module.run(None, {self.module.get_inputs()[0].name: x})[0]
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()


def default_model_path(fast: bool = False) -> str:
    """The shipped model: with `fast`, its ONNX export when onnxruntime is installed (no torch
    import: about 1.5 s quicker to start and a third of the memory), else the checkpoint."""
    if fast and os.path.exists(DEFAULT_ONNX_PATH):
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is not None:
            return DEFAULT_ONNX_PATH
    return DEFAULT_MODEL_PATH


def load_model(path: str | None = None, threads: int | None = None) -> Classifier:
    """Open a checkpoint, an exported TorchScript or an ONNX file; `path` None means the shipped
    default. `threads` sets the ONNX session's threads (torch threads are process-wide: set them
    with ``torch.set_num_threads``)."""
    path = path or DEFAULT_MODEL_PATH
    if not os.path.exists(path):
        shipped = path in (DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH)
        hint = " (the default model ships in models/; reinstall or pass --model)" if shipped else ""
        raise ModelError(f"{path}: no such model file{hint}")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a directory, not a model file")
    with open(path, "rb") as f:
        head = f.read(4)
    if not zipfile.is_zipfile(path):
        if path.lower().endswith(".onnx") or head[:1] == b"\x08":
            return _load_onnx(path, threads)
        raise ModelError(f"{path}: not a birdsound model file (not a PyTorch archive or ONNX model)")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any("/code/" in n for n in names) or any(n.endswith("bytecode.pkl") for n in names):
        return _load_torchscript(path, names)
    from .model import ProbabilityModel, load_checkpoint

    net, meta = load_checkpoint(path)
    return Classifier(ProbabilityModel(net).eval(), meta, path, "checkpoint", net)


def _load_torchscript(path: str, names: list[str]) -> Classifier:
    import torch

    extra = {"metadata.json": ""}
    lite = any(n.endswith("bytecode.pkl") for n in names) and not any(n.endswith("/constants.pkl") for n in names)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            if lite:
                from torch.jit.mobile import _load_for_lite_interpreter
                module = _load_for_lite_interpreter(path)
                raw = _read_extra(names, path)
            else:
                module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
                raw = extra["metadata.json"]
    except Exception as e:
        raise ModelError(f"{path}: damaged TorchScript file ({first_line(e)})") from None
    if not raw:
        raise ModelError(f"{path}: TorchScript file without birdsound metadata.json (not exported by birdsound)")
    return Classifier(module, _parse_meta(raw, path), path, "lite" if lite else "torchscript")


def _load_onnx(path: str, threads: int | None) -> Classifier:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelError(f"{path}: ONNX models need onnxruntime: pip install 'birdsound[onnx]'") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"{path}: not a birdsound model file (onnxruntime: {first_line(e)})") from None
    raw = sess.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY, "")
    if not raw:
        raise ModelError(f"{path}: ONNX file without birdsound metadata (not exported by birdsound)")
    return Classifier(sess, _parse_meta(raw, path), path, "onnx")


def _parse_meta(raw: str, path: str) -> Metadata:
    try:
        return Metadata.from_dict(json.loads(raw))
    except Exception as e:
        raise ModelError(f"{path}: bad metadata.json ({first_line(e)})") from None


def _read_extra(names: list[str], path: str) -> str:
    with zipfile.ZipFile(path) as z:
        for n in names:
            if n.endswith("extra/metadata.json"):
                return z.read(n).decode("utf-8")
    return ""
