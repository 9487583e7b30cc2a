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
import io
import json
import os
import sys
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from .detect import DEFAULT_MIN_CONF
from .features import MelFrontEnd
from .metadata import Metadata
from .model import BirdNetLite, ProbabilityModel
from .util import atomic_path, first_line, quiet_logger, quiet_stderr, remove

FORMATS = ("torchscript", "lite", "onnx", "executorch", "coreml")
EXECUTORCH_MAX_BATCH = 8  # the .pte's forward takes 1 .. this many windows per call
QUANTIZE = ("none", "dynamic", "int8")
IO_DESCRIPTION = ("input: float32 [batch, window_samples] raw mono PCM in [-1, 1] at sample_rate; "
                  "output: float32 [batch, n_labels] sigmoid probabilities, columns in labels order")
FP32_TOLERANCE = 1e-4
# a quantized export is kept when, at the default min-conf, it names the float model's top species on the
# windows where that model reports one, and reports the same detections (of the (window, species) pairs
# either reports, the share both do); with fewer detected windows than QUANTIZED_MIN_DETECTED_WINDOWS to
# judge by (synthesized or bird-free audio), when its top species agrees on all windows
QUANTIZED_MIN_TOP1_AGREEMENT = 0.95
QUANTIZED_MIN_DETECTION_AGREEMENT = 0.90
QUANTIZED_MIN_DETECTED_WINDOWS = 20


FORMAT_NEEDS = {"onnx": (("onnx", "onnxscript"), "onnx and onnxscript: pip install onnx onnxscript"),
                "executorch": (("executorch",), "the executorch extra: pip install 'birdsound[executorch]'"),
                "coreml": (("coremltools",), "the coreml extra: pip install 'birdsound[coreml]'")}


class ExportError(Exception):
    """Export refused: parity or quantization failed; the message says why."""


def check_format(fmt: str, quantize: str = "none") -> None:
    """Raise ExportError at once when `fmt` cannot be written here (a missing extra, an unsupported
    quantization), before any work is done."""
    import importlib.util

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    modules, what = FORMAT_NEEDS.get(fmt, ((), ""))
    if any(importlib.util.find_spec(m) is None for m in modules):
        raise ExportError(f"--format {fmt} needs {what}")
    if fmt in ("onnx", "coreml") and quantize != "none":
        raise ExportError(f"--format {fmt} --quantize {quantize}: not supported; quantized models are exported "
                          "as --format lite, torchscript or executorch")
    if fmt == "executorch" and quantize not in ("none", "int8"):
        raise ExportError(f"--format executorch --quantize {quantize}: use none or int8")


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


def qconfig_mapping(engine: str):
    """The engine's default FX mapping with per-channel int8 weights wherever it has per-tensor ones (qnnpack's
    default): one scale per output channel keeps convolutions whose channels differ widely in range (the
    members of an ensemble, depthwise layers) apart. On v9, 512 training windows: detections agreeing with
    the float model 0.934 against 0.896 with per-tensor weights."""
    from torch.ao.quantization import QConfig, default_per_channel_weight_observer, get_default_qconfig_mapping

    mapping = get_default_qconfig_mapping(engine)
    default = mapping.global_qconfig
    per_channel = QConfig(activation=default.activation, weight=default_per_channel_weight_observer)
    mapping.set_global(per_channel)
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        if qconfig == default:  # fixed-qparams ops (sigmoid, hardsigmoid, ...) keep theirs
            mapping.set_object_type(kind, per_channel)
    return mapping


def quantize_static(net: BirdNetLite, calibration: np.ndarray) -> nn.Module:
    """Post-training static int8 quantization (FX graph mode) of backbone and head, per-channel weights
    (:func:`qconfig_mapping`), calibrated on `calibration` windows ``[N, window_samples]``; the mel front end
    stays float."""
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = _engine()
    torch.backends.quantized.engine = engine
    body = nn.Sequential(copy.deepcopy(net.backbone), copy.deepcopy(net.head)).eval()
    x = net.frontend(torch.from_numpy(calibration[:2]))
    prepared = prepare_fx(body, qconfig_mapping(engine), example_inputs=(x,))
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


def script(module: nn.Module, window_samples: int) -> torch.jit.ScriptModule:
    """Script (or, where scripting fails, trace on a window of `window_samples`) and freeze
    ``sigmoid(module(pcm))``."""
    wrapped = ProbabilityModel(module).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            scripted = torch.jit.script(wrapped)
        except Exception:
            scripted = torch.jit.trace(wrapped, torch.zeros(1, window_samples), check_trace=False)
        return torch.jit.freeze(scripted.eval())


def save_onnx(module: nn.Module, meta: dict, path: str, window_samples: int) -> None:
    """Export ``sigmoid(module(pcm))`` to ONNX (opset 18, batch dimension dynamic) with the
    metadata as ``metadata_props``; one self-contained file, written atomically."""
    try:
        import onnx
        from onnxscript.optimizer import fold_constants, remove_unused_nodes
    except ImportError:
        raise ExportError(f"--format onnx needs {FORMAT_NEEDS['onnx'][1]}") from None
    from .runtime import ONNX_METADATA_KEY

    wrapped = ProbabilityModel(portable_copy(module)).eval()
    with _atomic_output(path, "ONNX export") as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")
            # optimize=False: the exporter's optimizer drops ``+ LOG_EPS`` (1e-8 "is close to 0"),
            # which gives log(0) = -inf and NaN on digital silence.
            prog = torch.onnx.export(wrapped, (torch.zeros(2, window_samples),), dynamo=True, optimize=False,
                                     input_names=["pcm"], output_names=["probabilities"], opset_version=18,
                                     dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},))
        model = prog.model_proto
        # Constant folding alone (no rewrites) turns the exporter's Expand/CastLike chains (each Conv's
        # bias) into initializers, so onnxruntime fuses BatchNormalization into Conv: v7's graph went
        # from 3.7 to 2.1 ms per window (batch 32, one thread) with outputs equal to 1.2e-7.
        fold_constants(model)
        remove_unused_nodes(model)
        for node in model.graph.node:  # the exporter's per-node debug records (stack traces, module paths):
            del node.metadata_props[:]  # 0.8 MB of v8's file, read by no runtime
        onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: json.dumps(meta)})
        onnx.save_model(model, tmp)


def portable_copy(module: nn.Module, linear: bool = False) -> nn.Module:
    """A copy of `module` whose mel front end uses real-valued operations only (see :mod:`.features`)."""
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, MelFrontEnd):
            m.make_portable(linear=linear)
    return module


def save_executorch(net: BirdNetLite, meta: dict, path: str, window_samples: int, quantize: str,
                    calibration: np.ndarray) -> None:
    """Export ``sigmoid(net(pcm))`` as an ExecuTorch program (``.pte``) with the XNNPACK delegate;
    metadata is the constant method ``metadata_json``. `quantize` ``int8``: static post-training
    quantization (pt2e, XNNPACK quantizer, per-channel weights) calibrated on `calibration`."""
    try:
        with quiet_stderr():  # a torch deprecation line logged at import
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
    except ImportError:
        raise ExportError(f"--format executorch needs {FORMAT_NEEDS['executorch'][1]}") from None
    wrapped = ProbabilityModel(portable_copy(net, linear=True)).eval()
    example = (torch.zeros(2, window_samples),)
    dims = ({0: torch.export.Dim("batch", min=1, max=EXECUTORCH_MAX_BATCH)},)
    if quantize not in ("none", "int8"):
        raise ExportError(f"--format executorch --quantize {quantize}: use none or int8")
    with _atomic_output(path, "ExecuTorch export") as tmp:
        with warnings.catch_warnings(), quiet_logger("torch"):
            warnings.simplefilter("ignore")
            ep = torch.export.export(wrapped, example, dynamic_shapes=dims)
            if quantize == "int8":
                from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                    XNNPACKQuantizer, get_symmetric_quantization_config)
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
                quantizer.set_filter_function(_outside_frontend)  # the mel front end stays float
                prepared = prepare_pt2e(ep.module(), quantizer)
                with torch.no_grad():
                    for chunk in torch.from_numpy(calibration).split(EXECUTORCH_MAX_BATCH):
                        prepared(chunk)
                ep = torch.export.export(convert_pt2e(prepared), example, dynamic_shapes=dims)
            program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                                  constant_methods={"metadata_json": json.dumps(meta)}).to_executorch()
        with open(tmp, "wb") as f:
            f.write(program.buffer)


def _outside_frontend(node) -> bool:
    """pt2e quantizer filter: False for graph nodes of the mel front end."""
    return not any(str(path).startswith("net.frontend") for path, _ in node.meta.get("nn_module_stack", {}).values())


def save_coreml(net: BirdNetLite, meta: dict, path: str, window_samples: int) -> nn.Module:
    """Convert ``sigmoid(net(pcm))`` to a Core ML ML Program package (``.mlpackage``, iOS 16+,
    input ``pcm`` [1, window_samples], output ``probabilities``) with coremltools; the metadata
    JSON is the package's user-defined metadata ``birdsound_metadata``. Returns the torch
    module that was converted (real-valued front end, :class:`MatmulMel`: coremltools has no
    ``unfold``) for the parity check."""
    from .runtime import ONNX_METADATA_KEY, import_coremltools

    try:
        ct = import_coremltools()
    except ImportError:
        raise ExportError(f"--format coreml needs {FORMAT_NEEDS['coreml'][1]}") from None

    wrapped = ProbabilityModel(portable_copy(net)).eval()
    with _atomic_output(path, "Core ML conversion", ".mlpackage") as tmp:  # coremltools insists on the extension
        with warnings.catch_warnings(), quiet_logger("coremltools"), quiet_logger("torch"), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            ep = torch.export.export(wrapped, (torch.zeros(1, window_samples),)).run_decompositions({})
            mlmodel = ct.convert(ep, inputs=[ct.TensorType(name="pcm", shape=(1, window_samples), dtype=np.float32)],
                                 outputs=[ct.TensorType(name="probabilities")], convert_to="mlprogram",
                                 minimum_deployment_target=ct.target.iOS16)
        mlmodel.user_defined_metadata[ONNX_METADATA_KEY] = json.dumps(meta)
        mlmodel.short_description = "birdsound: raw 32 kHz mono PCM window in, per-species probabilities out"
        mlmodel.save(tmp)
    return wrapped


@contextlib.contextmanager
def _atomic_output(path: str, what: str, suffix: str = ""):
    """:func:`birdsound.util.atomic_path` where any failure becomes one ExportError naming `path`."""
    try:
        with atomic_path(path, suffix) as tmp:
            yield tmp
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"{path}: {what} failed ({first_line(e)[:300]})") from None


def save(scripted: torch.jit.ScriptModule, meta: dict, path: str, fmt: str) -> None:
    """Write a TorchScript (``torchscript``) or lite-interpreter (``lite``) file atomically."""
    if fmt not in ("lite", "torchscript"):
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    extra = {"metadata.json": json.dumps(meta)}
    with _atomic_output(path, "TorchScript export") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if fmt == "lite":
            scripted._save_for_lite_interpreter(tmp, _extra_files=extra)
        else:
            torch.jit.save(scripted, tmp, _extra_files=extra)


def parity(reference: nn.Module, predict, windows: np.ndarray) -> dict:
    """Max absolute difference of probabilities and top-1 agreement on `windows`;
    `predict` maps float32 windows ``[B, S]`` to probabilities (numpy in, numpy out)."""
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    with torch.inference_mode():
        ref = torch.cat([torch.sigmoid(reference(c)) for c in x.split(32)]).numpy()
    out = np.concatenate([predict(c.numpy()) for c in x.split(32)])
    return {"windows": int(len(x)), "max_abs_diff": float(np.abs(ref - out).max()),
            "top1_agreement": float(np.mean(ref.argmax(1) == out.argmax(1))), "reference": ref, "exported": out}


def detection_agreement(ref: np.ndarray, out: np.ndarray, min_conf: float = DEFAULT_MIN_CONF) -> dict:
    """How far the probabilities `out` of an export agree with the float model's `ref` (``[windows, labels]``)
    as detections at `min_conf`: the windows where `ref` reports a species, top-1 agreement on them, and of
    the (window, species) pairs either reports, the share both report (1.0 when neither reports any)."""
    d, q = ref >= min_conf, out >= min_conf
    detected = d.any(1)
    either = int((d | q).sum())
    top1 = float(np.mean(ref[detected].argmax(1) == out[detected].argmax(1))) if detected.any() else float("nan")
    return {"detected_windows": int(detected.sum()), "top1_agreement_detected": top1,
            "detection_agreement": float((d & q).sum() / either) if either else 1.0}


def quantized_refusal(report: dict) -> str | None:
    """Why a quantized export with parity `report` (``top1_agreement`` and :func:`detection_agreement`'s keys)
    is refused, or None when it is kept."""
    if report["detected_windows"] < QUANTIZED_MIN_DETECTED_WINDOWS:
        if report["top1_agreement"] >= QUANTIZED_MIN_TOP1_AGREEMENT:
            return None
        return (f"top-1 agreement {report['top1_agreement']:.3f} < {QUANTIZED_MIN_TOP1_AGREEMENT} (too few windows with "
                f"a detection to judge by detections: {report['detected_windows']})")
    if (report["top1_agreement_detected"] >= QUANTIZED_MIN_TOP1_AGREEMENT
            and report["detection_agreement"] >= QUANTIZED_MIN_DETECTION_AGREEMENT):
        return None
    return (f"on the {report['detected_windows']} windows with a detection at min-conf {DEFAULT_MIN_CONF}, top-1 "
            f"agreement {report['top1_agreement_detected']:.3f} (needs {QUANTIZED_MIN_TOP1_AGREEMENT}) and detections "
            f"agreeing {report['detection_agreement']:.3f} (needs {QUANTIZED_MIN_DETECTION_AGREEMENT})")


def float64_errors(reference: nn.Module, p: dict, windows: np.ndarray) -> tuple[float, float]:
    """Max |error| of the eager float32 model and of the export against a float64 run of `reference`
    on `windows` (`p` from :func:`parity`): two float32 implementations of one FFT can differ by more
    than either differs from the exact result, in the quietest mel bins where log magnifies rounding."""
    ref64 = copy.deepcopy(reference).double().eval()
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float64))
    with torch.inference_mode():
        exact = torch.cat([torch.sigmoid(ref64(c)) for c in x.split(32)]).numpy()
    return float(np.abs(p["reference"] - exact).max()), float(np.abs(p["exported"] - exact).max())


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
            from .dataset import read_dataset
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


def synthetic_windows(n: int, sample_rate: int, window: int, seed: int = 0) -> np.ndarray:
    """`n` synthesized windows (noise of several colours and levels, tone sweeps, clicks, digital
    silence) for the fp32 parity check when no real audio is at hand."""
    rng = np.random.default_rng(seed)
    t = np.arange(window) / sample_rate
    out = np.zeros((n, window), np.float32)
    for i in range(n):
        x = rng.standard_normal(window) * 10 ** rng.uniform(-4, -1)
        if i % 4 == 1:
            x = np.cumsum(x) / 50
        for _ in range(rng.integers(0, 6)):
            f0, f1 = rng.uniform(500, 9000, 2)
            s0 = rng.uniform(0, t[-1] - 0.3)
            m = (t >= s0) & (t < s0 + rng.uniform(0.05, 0.3))
            x[m] += rng.uniform(0.05, 0.5) * np.sin(2 * np.pi * (f0 + (f1 - f0) * (t[m] - s0)) * t[m])
        out[i] = x if i % 16 else 0.0
    return np.clip(out, -1, 1)


def write_export(net: BirdNetLite, meta: Metadata, out: str, fmt: str, quantize: str,
                 windows: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """Write `out` in `fmt`; returns (predict of what was written, a note for the parity line)."""
    from .runtime import load_model

    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantization {quantize!r}")
    if fmt in ("onnx", "coreml") and quantize != "none":
        raise ExportError(f"--format {fmt} --quantize {quantize}: not supported; quantized models are exported "
                          "as --format lite, torchscript or executorch")
    emeta = metadata_for_export(meta, quantize, fmt)
    if fmt == "coreml":
        emeta["input_shape"] = [1, meta.window_samples]
        converted = save_coreml(net, emeta, out, meta.window_samples)
        if sys.platform == "darwin":
            return load_model(out).predict, ""
        # Core ML runs on Apple systems only: check the graph that was converted
        return (lambda x: converted(torch.from_numpy(x)).detach().numpy(),
                "Core ML cannot run here (not macOS): parity is of the converted torch graph")
    if fmt == "executorch":
        emeta.update(input_shape=[f"batch (1..{EXECUTORCH_MAX_BATCH})", meta.window_samples],
                     max_batch=EXECUTORCH_MAX_BATCH)
        save_executorch(net, emeta, out, meta.window_samples, quantize, windows)
    else:
        module: nn.Module = {"none": lambda: net, "dynamic": lambda: quantize_dynamic(net),
                             "int8": lambda: quantize_static(net, windows)}[quantize]()
        if fmt == "onnx":
            save_onnx(module, emeta, out, meta.window_samples)
        else:
            save(script(module, meta.window_samples), emeta, out, fmt)
    return load_model(out).predict, ""


def export(net: BirdNetLite, meta: Metadata, out: str, fmt: str, quantize: str, windows: np.ndarray,
           window_labels: list[str]) -> dict:
    """Build, save, reload and parity-check an exported file; raises ExportError when refused."""
    from .runtime import file_size

    predict, note = write_export(net, meta, out, fmt, quantize, windows)
    with torch.inference_mode():
        p = parity(net, predict, windows)
    report = {"file": out, "format": fmt, "quantize": quantize, "size_bytes": file_size(out), "note": note,
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
    fp32_ok = p["max_abs_diff"] <= FP32_TOLERANCE  # NaN fails too
    if quantize == "none" and not fp32_ok and p["exported"] is not None and np.isfinite(p["exported"]).all():
        # still accepted when the export is as exact as the eager model itself, against a float64 run
        eager_err, export_err = float64_errors(net, p, windows)
        report.update(float64_error_eager=eager_err, float64_error_exported=export_err)
        fp32_ok = export_err <= eager_err + FP32_TOLERANCE / 2
        report["note"] = "; ".join(filter(None, [report["note"], (
            f"vs a float64 run of the model: eager {eager_err:.1e}, exported {export_err:.1e}")]))
    if quantize == "none" and not fp32_ok:
        remove(out)
        raise ExportError(f"{out}: fp32 parity failed, max |diff| {p['max_abs_diff']:.2e} > {FP32_TOLERANCE:g}"
                          f"{' (' + report['note'] + ')' if report['note'] else ''}; file removed")
    if quantize != "none":
        finite = p["exported"] is not None and np.isfinite(p["exported"]).all()
        if finite:
            report.update(detection_agreement(p["reference"], p["exported"]))
        why = quantized_refusal(report) if finite else "non-finite outputs"
        if why:
            remove(out)
            raise ExportError(f"{out}: {quantize}: {why}; file removed")
    return report
