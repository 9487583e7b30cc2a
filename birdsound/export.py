"""Export a trained model as a self-contained TorchScript file for phones and other runtimes.

Exported signature: ``forward(pcm: float32 [batch, window_samples]) -> float32 [batch, n_labels]``,
raw mono PCM in [-1, 1] at ``sample_rate`` in, sigmoid probabilities out; the mel front end
is inside. ``metadata.json`` travels in the file's extra files.

``optimize_for_mobile`` needs XNNPACK, which the stock Linux CPU wheels here lack, so the
model is frozen (``torch.jit.freeze``) instead; the lite file is saved with
``_save_for_lite_interpreter``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings

import numpy as np
import torch
from torch import nn

from .features import MelFrontEnd
from .model import BirdNetLite, Metadata, ProbabilityModel

FORMATS = ("torchscript", "lite", "onnx")
QUANTIZE = ("none", "dynamic", "int8")
IO_DESCRIPTION = ("input: float32 [batch, window_samples] raw mono PCM in [-1, 1] at sample_rate; "
                  "output: float32 [batch, n_labels] sigmoid probabilities, columns in labels order")
FP32_TOLERANCE = 1e-4
INT8_MIN_TOP1_AGREEMENT = 0.95


class ExportError(Exception):
    """Export refused: parity or quantization failed; the message says why."""


class QuantizableBackbone(nn.Module):
    """Backbone + head wrapped with quant/dequant stubs; the mel front end stays float."""

    def __init__(self, net: BirdNetLite):
        super().__init__()
        self.frontend = net.frontend
        self.quant = torch.ao.quantization.QuantStub()
        self.backbone = net.backbone
        self.head = net.head
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        x = self.frontend(pcm)
        return self.dequant(self.head(self.backbone(self.quant(x))))


def metadata_for_export(meta: Metadata, quantize: str, fmt: str) -> dict:
    d = meta.to_dict()
    d.update(io=IO_DESCRIPTION, quantization=quantize, format=fmt,
             input_shape=["batch", meta.window_samples], output="probabilities")
    return d


def quantize_dynamic(net: BirdNetLite) -> nn.Module:
    """Dynamic int8 quantization (Linear layers); convolutions stay float."""
    torch.backends.quantized.engine = _engine()
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(net).eval(), {nn.Linear}, dtype=torch.qint8)


def _engine() -> str:
    engines = torch.backends.quantized.supported_engines
    return "qnnpack" if "qnnpack" in engines else ("x86" if "x86" in engines else engines[-1])


def quantize_static(net: BirdNetLite, calibration: np.ndarray) -> nn.Module:
    """Post-training static int8 quantization (FX graph mode) of backbone and head,
    calibrated on `calibration` windows ``[N, window_samples]``; the mel front end stays float."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = _engine()
    torch.backends.quantized.engine = engine
    body = nn.Sequential(copy.deepcopy(net.backbone), copy.deepcopy(net.head)).eval()
    x = net.frontend(torch.from_numpy(calibration[:2]))
    prepared = prepare_fx(body, get_default_qconfig_mapping(engine), example_inputs=(x,))
    with torch.no_grad():
        for chunk in torch.from_numpy(calibration).split(32):
            prepared(net.frontend(chunk))
    qbody = convert_fx(prepared)
    return _FrontendThen(copy.deepcopy(net.frontend), qbody).eval()


class _FrontendThen(nn.Module):
    def __init__(self, frontend: nn.Module, body: nn.Module):
        super().__init__()
        self.frontend = frontend
        self.body = body

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        return self.body(self.frontend(pcm))


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """Script and freeze ``sigmoid(module(pcm))``."""
    wrapped = ProbabilityModel(module).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            scripted = torch.jit.script(wrapped)
        except Exception:
            example = torch.zeros(1, 16000 * 3)
            scripted = torch.jit.trace(wrapped, example, check_trace=False)
        return torch.jit.freeze(scripted.eval())


def save_onnx(module: nn.Module, meta: dict, path: str, window_samples: int) -> None:
    """Export ``sigmoid(module(pcm))`` to ONNX (opset 18, batch dimension dynamic) with the
    metadata as ``metadata_props``; one self-contained file, written atomically."""
    import io

    try:
        import onnx
    except ImportError:
        raise ExportError("--format onnx needs the onnx extra: pip install 'birdsound[onnx]'") from None
    from .runtime import ONNX_METADATA_KEY

    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, MelFrontEnd):
            m.make_portable()
    wrapped = ProbabilityModel(module).eval()
    tmp = f"{path}.part{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            # optimize=False: the exporter's optimizer drops ``+ LOG_EPS`` (1e-8 "is close to 0"),
            # which gives log(0) = -inf and NaN on digital silence; onnxruntime optimizes the graph itself.
            prog = torch.onnx.export(wrapped, (torch.zeros(2, window_samples),), dynamo=True, optimize=False,
                                     input_names=["pcm"], output_names=["probabilities"], opset_version=18,
                                     dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))
        model = prog.model_proto
        onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: json.dumps(meta)})
        onnx.save_model(model, tmp)
        os.replace(tmp, path)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{path}: ONNX export failed ({str(e).strip().splitlines()[0][:300]})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def _quiet_logger(name: str):
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def save(scripted: torch.jit.ScriptModule, meta: dict, path: str, fmt: str) -> None:
    """Write a TorchScript (``torchscript``) or lite-interpreter (``lite``) file atomically."""
    extra = {"metadata.json": json.dumps(meta)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.part{os.getpid()}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "lite":
            scripted._save_for_lite_interpreter(tmp, _extra_files=extra)
        elif fmt == "torchscript":
            torch.jit.save(scripted, tmp, _extra_files=extra)
        else:
            raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    os.replace(tmp, path)


def parity(reference: nn.Module, predict, windows: np.ndarray) -> dict:
    """Max absolute difference of probabilities and top-1 agreement on `windows`;
    `predict` maps float32 windows ``[B, S]`` to probabilities (numpy in, numpy out)."""
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    with torch.inference_mode():
        ref = torch.cat([torch.sigmoid(reference(c)) for c in x.split(32)]).numpy()
    out = np.concatenate([predict(c.numpy()) for c in x.split(32)])
    return {"windows": int(len(x)), "max_abs_diff": float(np.abs(ref - out).max()),
            "top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1))), "reference": ref, "exported": out}


def calibration_windows(sources: list[str], sample_rate: int, window: int, max_windows: int = 256,
                        seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Up to `max_windows` real audio windows from files/folders or a training manifest CSV.

    Returns (windows ``[N, window]``, label of each window's recording or "" when unknown).
    """
    from . import audio
    from .stream import file_windows

    files: list[tuple[str, str]] = []
    for s in sources:
        if s.lower().endswith(".csv") and os.path.isfile(s):
            from .train import read_dataset
            recs, _ = read_dataset(s)
            files += [(r.path, r.labels[0]) for r in recs]
        else:
            files += [(p, os.path.basename(os.path.dirname(p))) for p, _ in audio.find_audio_files([s])]
    rng = np.random.default_rng(seed)
    rng.shuffle(files)
    per_file = max(1, max_windows // max(1, min(len(files), 64)))
    wins, labels = [], []
    for path, label in files:
        try:
            got = []
            for wb in file_windows(path, sample_rate, window, window):
                got += [w for w, n in zip(wb.windows, wb.lengths) if n == window]
                if len(got) >= per_file:
                    break
        except audio.AudioError:
            continue
        wins += got[:per_file]
        labels += [label] * len(got[:per_file])
        if len(wins) >= max_windows:
            break
    if not wins:
        raise ExportError(f"no usable audio windows in {', '.join(sources)} for calibration/parity")
    return np.stack(wins[:max_windows]), labels[:max_windows]


def export(net: BirdNetLite, meta: Metadata, out: str, fmt: str, quantize: str, windows: np.ndarray,
           window_labels: list[str]) -> dict:
    """Build, save, reload and parity-check an exported file; raises ExportError when refused."""
    from .runtime import load_model

    if fmt == "onnx" and quantize != "none":
        raise ExportError(f"--format onnx --quantize {quantize}: not supported; quantized models are exported "
                          "as --format lite or torchscript")
    if quantize == "none":
        module: nn.Module = net
    elif quantize == "dynamic":
        module = quantize_dynamic(net)
    elif quantize == "int8":
        module = quantize_static(net, windows)
    else:
        raise ValueError(f"unknown quantization {quantize!r}")
    if fmt == "onnx":
        save_onnx(module, metadata_for_export(meta, quantize, fmt), out, meta.window_samples)
    else:
        save(script(module), metadata_for_export(meta, quantize, fmt), out, fmt)
    loaded = load_model(out)
    p = parity(net, loaded.predict, windows)
    report = {"file": out, "format": fmt, "quantize": quantize, "size_bytes": os.path.getsize(out),
              "windows": p["windows"], "max_abs_diff": p["max_abs_diff"], "top1_agreement": p["top1_agreement"]}
    known = [i for i, l in enumerate(window_labels) if l in meta.labels]
    if quantize != "none" and known:
        from .metrics import macro_ap
        idx = {l: i for i, l in enumerate(meta.labels)}
        T = np.zeros((len(known), len(meta.labels)), dtype=np.float32)
        for r, i in enumerate(known):
            T[r, idx[window_labels[i]]] = 1
        ap_ref, _ = macro_ap(T, p["reference"][known])
        ap_q, _ = macro_ap(T, p["exported"][known])
        report.update(macro_ap_fp32=ap_ref, macro_ap_exported=ap_q, macro_ap_drop=ap_ref - ap_q)
    if quantize == "none" and not p["max_abs_diff"] <= FP32_TOLERANCE:  # NaN fails too
        os.remove(out)
        raise ExportError(f"{out}: fp32 parity failed, max |diff| {p['max_abs_diff']:.2e} > {FP32_TOLERANCE:g}; file removed")
    if quantize != "none" and not (p["top1_agreement"] >= INT8_MIN_TOP1_AGREEMENT and np.isfinite(p["exported"]).all()):
        os.remove(out)
        raise ExportError(f"{out}: {quantize} top-1 agreement {p['top1_agreement']:.3f} < {INT8_MIN_TOP1_AGREEMENT}; file removed")
    return report
