"""Open any birdsound model file and score windows with it.

A model file is one of

* a birdsound checkpoint (``torch.save`` of plain tensors, strings and numbers, loaded with
  ``weights_only=True`` so no pickled code ever runs),
* a TorchScript file made by ``birdsound export`` (``.pt`` or lite ``.ptl``) carrying
  ``metadata.json`` in its extra files,
* an ONNX file made by ``birdsound export --format onnx`` (metadata in its
  ``metadata_props``), run with onnxruntime: torch is then never imported, which keeps a
  batch run's memory small,
* an ExecuTorch program (``.pte``) made by ``birdsound export --format executorch`` (metadata
  returned by its ``metadata_json`` method), run with ExecuTorch's Python runtime,
* a Core ML package (``.mlpackage``) made by ``birdsound export --format coreml`` (metadata in its
  user-defined metadata): readable everywhere, runnable on macOS only.

:func:`load_model` opens all of them and returns a :class:`Classifier` with one ``predict`` call.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import warnings
import zipfile
from typing import Any

import numpy as np

from .metadata import Metadata, ModelError
from .util import first_line, quiet_logger, quiet_stderr

DEFAULT_MODEL_NAME = "birdsound_default"


def shipped_path(suffix: str) -> str:
    """Path of the shipped default model file with `suffix` (package data ``birdsound.models``,
    which is the repository's ``models/`` folder; found through :mod:`importlib.resources`)."""
    from importlib.resources import files

    try:
        return str(files("birdsound.models") / (DEFAULT_MODEL_NAME + suffix))
    except ModuleNotFoundError:  # a source tree used without installing it
        return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models",
                            DEFAULT_MODEL_NAME + suffix)


DEFAULT_MODEL_PATH = shipped_path(".pt")
DEFAULT_ONNX_PATH = shipped_path(".onnx")  # the same model exported, for speed
ONNX_METADATA_KEY = "birdsound_metadata"
COREML_ELSEWHERE = "Core ML packages run on macOS and iOS only; use the .pt, .onnx or .pte here"


class Classifier:
    """A loaded model of any kind: ``predict(windows) -> probabilities``.

    `kind` is ``checkpoint``, ``torchscript``, ``lite``, ``onnx``, ``executorch`` or ``coreml``; `net` is the trainable
    ``BirdNetLite`` for checkpoints (embeddings, export), else None.
    """

    def __init__(self, module: Any, meta: Metadata, path: str, kind: str, net: Any = None):
        self.module = module
        self.meta = meta
        self.path = path
        self.kind = kind
        self.net = net
        self._local = threading.local()  # ExecuTorch: one loaded method per thread (its buffers are its own)

    @property
    def labels(self) -> list[str]:
        return self.meta.labels

    @property
    def runnable(self) -> bool:
        """False for a Core ML package off Apple systems (metadata only)."""
        return self.module is not None

    def predict(self, windows: np.ndarray) -> np.ndarray:
        """``float32 [B, window_samples]`` at ``meta.sample_rate`` -> probabilities ``[B, n_labels]``."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if self.kind == "onnx":
            return self.module.run(None, {self.module.get_inputs()[0].name: x})[0]
        if self.kind == "coreml":
            if not self.runnable:
                raise ModelError(f"{self.path}: {COREML_ELSEWHERE}")
            return np.concatenate([self.module.predict({"pcm": w[None]})["probabilities"] for w in x])
        import torch

        if self.kind == "executorch":  # the program takes at most meta.extra["max_batch"] windows per call
            forward = getattr(self._local, "forward", None)
            if forward is None:
                forward = self._local.forward = self.module.load_method("forward")
            step = int(self.meta.extra.get("max_batch", 1))
            return np.concatenate([forward.execute([torch.from_numpy(x[i:i + step])])[0].numpy()
                                   for i in range(0, len(x), step)])

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()


def file_size(path: str) -> int:
    """Bytes of a model file, or of all files of a package folder (``.mlpackage``)."""
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path)


def default_model_path(fast: bool = False) -> str:
    """The shipped model: with `fast`, its ONNX export when onnxruntime is installed (no torch
    import: about 1.5 s quicker to start and a third of the memory), else the checkpoint."""
    if fast and os.path.exists(DEFAULT_ONNX_PATH):
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is not None:
            return DEFAULT_ONNX_PATH
    return DEFAULT_MODEL_PATH


def load_model(path: str | None = None, threads: int | None = None) -> Classifier:
    """Open any model file of the list above; `path` None means the shipped checkpoint. `threads`
    sets the ONNX session's threads and, on first use, ExecuTorch's pool (torch threads are
    process-wide: set them with ``torch.set_num_threads``)."""
    path = path or DEFAULT_MODEL_PATH
    if not os.path.exists(path):
        shipped = path in (DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH)
        hint = " (the default model is package data of birdsound: reinstall birdsound, or pass --model)" if shipped else ""
        raise ModelError(f"{path}: no such model file{hint}")
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "Manifest.json")):
            return _load_coreml(path)
        raise ModelError(f"{path}: is a directory, not a model file")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"ET12" or (path.lower().endswith(".pte") and not zipfile.is_zipfile(path)):
        return _load_executorch(path, threads)
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
        raise ModelError(f"{path}: ONNX models need onnxruntime: pip install onnxruntime") from None
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


def import_coremltools():
    """coremltools, imported without the lines it logs on Linux (no Core ML framework, untested
    torch/scikit-learn versions); ImportError when not installed."""
    import io

    with quiet_logger("coremltools"), contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):
        import coremltools
    return coremltools


def _load_coreml(path: str) -> Classifier:
    try:
        ct = import_coremltools()
    except ImportError:
        raise ModelError(f"{path}: Core ML packages need coremltools: pip install 'birdsound[coreml]'") from None

    try:
        spec_only = ct.models.MLModel(path, skip_model_load=True)
    except Exception as e:
        raise ModelError(f"{path}: damaged Core ML package ({first_line(e)})") from None
    raw = spec_only.user_defined_metadata.get(ONNX_METADATA_KEY, "")
    if not raw:
        raise ModelError(f"{path}: Core ML package without birdsound metadata (not exported by birdsound)")
    module = ct.models.MLModel(path) if sys.platform == "darwin" else None
    return Classifier(module, _parse_meta(raw, path), path, "coreml")


_executorch_pool_fixed = False


def executorch_threads(threads: int | None) -> None:
    """Size ExecuTorch's process-wide XNNPACK thread pool. Only the first call in a process acts
    (resizing the pool after a program has run crashes); None keeps the default (all cores)."""
    global _executorch_pool_fixed
    if _executorch_pool_fixed:
        return
    _executorch_pool_fixed = True
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        _unsafe_reset_threadpool(threads)


def _load_executorch(path: str, threads: int | None) -> Classifier:
    # quiet: importing executorch logs a torch deprecation line, and its runtime's first run logs
    # CPU-probing lines from C++ on x86; errors still raise
    with quiet_stderr():
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError:
            raise ModelError(f"{path}: ExecuTorch programs need executorch: pip install 'birdsound[executorch]'") from None
        executorch_threads(threads)
        try:
            program = Runtime.get().load_program(path)
            forward = program.load_method("forward")
        except Exception as e:
            raise ModelError(f"{path}: damaged ExecuTorch program ({first_line(e)})") from None
        if "metadata_json" not in program.method_names:
            raise ModelError(f"{path}: ExecuTorch program without birdsound metadata (not exported by birdsound)")
        meta = _parse_meta(program.load_method("metadata_json").execute([])[0], path)
        try:
            forward.execute([torch.zeros(1, meta.window_samples)])
        except Exception as e:
            raise ModelError(f"{path}: ExecuTorch program does not run ({first_line(e)})") from None
    return Classifier(program, meta, path, "executorch")


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
