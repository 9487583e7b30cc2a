"""Model files: checkpoints, training smoke test, head-only transfer, export and parity."""

import copy
import importlib.util
import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from birdsound.cli import main
from birdsound.metadata import ModelError
from birdsound.model import BirdNetLite, load_checkpoint
from birdsound.runtime import DEFAULT_MODEL_PATH, load_model
from conftest import SR, SYNTH_SPECIES, shared_data_or_skip, synth_call


def export_cli(model: str, out, fmt: str, calibration: str, windows: int = 16, quantize: str = "none"):
    """``birdsound export`` through click; returns the result."""
    return CliRunner().invoke(main, ["export", model, "-o", str(out), "--format", fmt, "--quantize", quantize,
                                     "--calibration", calibration, "--windows", str(windows)])


def test_smoke_training_learns_synthetic_species(small_model):
    m = load_model(small_model)
    assert m.labels == sorted(SYNTH_SPECIES)
    assert m.meta.model_version == "smoke-1"
    correct = 0
    for label, kind in SYNTH_SPECIES.items():
        x = synth_call(kind, 3.0, seed=99)[None]
        p = m.predict(x)[0]
        correct += int(m.labels[int(np.argmax(p))] == label)
    assert correct >= 2  # 120 steps: well above chance (1 of 3)
    metrics = json.load(open(os.path.join(os.path.dirname(small_model), "metrics.json")))
    assert metrics["n_recordings"] == 6 and metrics["config"]["steps"] == 120
    assert os.path.exists(os.path.join(os.path.dirname(small_model), "MODEL_CARD.md"))


def test_checkpoint_round_trip(small_model, tmp_path):
    from birdsound.model import save_checkpoint
    net, meta = load_checkpoint(small_model)
    p = tmp_path / "copy.pt"
    save_checkpoint(net, meta, str(p))
    net2, meta2 = load_checkpoint(str(p))
    x = torch.from_numpy(synth_call("chirp", 3.0, 5))[None]
    with torch.no_grad():
        assert torch.equal(net(x), net2(x))
    assert meta2.to_dict() == meta.to_dict()


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/birdsound_pwned",))


def test_checkpoint_never_runs_pickled_code(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"format": "birdsound-checkpoint-1", "x": Evil()}, p)
    with pytest.raises(ModelError, match="not a birdsound model"):
        load_model(str(p))
    assert not os.path.exists("/tmp/birdsound_pwned")


def test_corrupted_model_file(small_model, tmp_path):
    data = open(small_model, "rb").read()
    p = tmp_path / "cut.pt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=str(p)):
        load_model(str(p))
    if importlib.util.find_spec("executorch"):  # a .pte that is not one
        bad = tmp_path / "bad.pte"
        bad.write_bytes(b"\x3c\x00\x00\x00ET12" + b"\x00" * 64)
        with pytest.raises(ModelError, match=f"{bad}: damaged ExecuTorch program"):
            load_model(str(bad))


def test_size_and_cost_within_budget():
    from birdsound.model import count_mflops, count_parameters
    net = BirdNetLite(69)
    assert count_parameters(net) < 1_000_000
    assert count_mflops(net, 96000) < 50


def test_average_of_nets_on_other_input_scales_is_the_mean_of_their_logits():
    """A pretrained mn net reads the log-mel scaled by 0.2, a v1 net unscaled: their average folds the ratio into
    the mn net's first convolution and gives the mean of both nets' logits on a bird call, in either order; front
    ends differing in more than the scale are refused."""
    from birdsound.model import average
    torch.manual_seed(0)
    plain = BirdNetLite(4).eval()
    mn = BirdNetLite(4, frontend={"scale": 0.2}, backbone={"type": "mn", "depth": 11}).eval()
    x = torch.from_numpy(np.stack([synth_call(kind, 3.0, 3) for kind in SYNTH_SPECIES.values()]))
    for m in mn.modules():  # trained-looking normalisation: statistics of these calls, scales and shifts spread
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    with torch.no_grad():
        mn.train()(x)
        mn.eval()
        assert (mn(x)[0] - mn(x)[1]).abs().max() > 0.01  # the net tells the calls apart
        want = (plain(x) + mn(x)) / 2
        unscaled = copy.deepcopy(mn)
        unscaled.frontend.scale = 1.0
        assert (mn(x) - unscaled(x)).abs().max() > 0.01  # the scale matters: ignoring it would be wrong
        for nets, backbones in (([plain, mn], [None, {"type": "mn", "depth": 11}]),
                                ([mn, plain], [{"type": "mn", "depth": 11}, None])):
            assert torch.allclose(average(nets, backbones)(x), want, atol=1e-5)
    with pytest.raises(ModelError, match="differ in front end"):
        average([plain, BirdNetLite(4, frontend={"n_mels": 48})], [None, None])


def test_info_command(small_model):
    r = CliRunner().invoke(main, ["info", small_model, "--labels"])
    assert r.exit_code == 0, r.output
    assert "sample rate:    32000 Hz" in r.output and "parameters:" in r.output and "MFLOPs/window:" in r.output
    for l in SYNTH_SPECIES:
        assert l in r.output


def test_head_only_on_species_subset(small_model, synth_dataset, tmp_path):
    import shutil
    sub = tmp_path / "subset"
    for label in ["Avis chirpus_Chirper", "Avis trillus_Triller"]:
        shutil.copytree(os.path.join(synth_dataset, label), sub / label)
    r = CliRunner().invoke(main, ["train", str(sub), "-o", str(tmp_path / "head"), "--base", small_model, "--head-only"])
    assert r.exit_code == 0, r.output
    m = load_model(str(tmp_path / "head" / "model.pt"))
    assert m.labels == ["Avis chirpus_Chirper", "Avis trillus_Triller"]
    base, _ = load_checkpoint(small_model)
    for k, v in base.backbone.state_dict().items():  # backbone frozen
        assert torch.equal(v, m.net.backbone.state_dict()[k])
    p = m.predict(np.stack([synth_call("chirp", 3.0, 7), synth_call("trill", 3.0, 8)]))
    assert p[0, 0] > p[0, 1] and p[1, 1] > p[1, 0]


def test_head_only_needs_base(synth_dataset, tmp_path):
    r = CliRunner().invoke(main, ["train", synth_dataset, "-o", str(tmp_path / "x"), "--head-only"])
    assert r.exit_code == 2 and "--base" in r.output


STANDALONE = r"""
import json, sys, numpy as np, torch
path, fmt, inp, outp = sys.argv[1:5]
assert "birdsound" not in sys.modules
if fmt == "lite":
    from torch.jit.mobile import _load_for_lite_interpreter
    m = _load_for_lite_interpreter(path)
    import zipfile
    z = zipfile.ZipFile(path)
    meta = json.loads(z.read([n for n in z.namelist() if n.endswith("extra/metadata.json")][0]))
else:
    extra = {"metadata.json": ""}
    m = torch.jit.load(path, _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
x = torch.from_numpy(np.load(inp))
np.save(outp, m(x).detach().numpy())
print(json.dumps({k: meta[k] for k in ("sample_rate", "window_s", "model_version")}), len(meta["labels"]))
assert not any(k.startswith("birdsound") for k in sys.modules)
"""


@pytest.mark.parametrize("fmt,quant", [("torchscript", "none"), ("lite", "none"), ("lite", "dynamic"),
                                       ("torchscript", "int8"), ("lite", "int8")])
def test_export_runs_standalone_and_matches_eager(small_model, synth_dataset, tmp_path, fmt, quant):
    out = tmp_path / f"m.{'ptl' if fmt == 'lite' else 'pt'}"
    r = export_cli(small_model, out, fmt, synth_dataset, 32, quant)
    assert r.exit_code == 0, r.output
    assert re.search(r"parity on \d+ real windows", r.output)
    x = np.stack([synth_call(k, 3.0, 50 + i) for i, k in enumerate(SYNTH_SPECIES.values())])
    np.save(tmp_path / "in.npy", x)
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    p = subprocess.run([sys.executable, str(script), str(out), fmt, str(tmp_path / "in.npy"), str(tmp_path / "out.npy")],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert '"sample_rate": 32000' in p.stdout and p.stdout.strip().endswith(" 3")
    got = np.load(tmp_path / "out.npy")
    net, _ = load_checkpoint(small_model)
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    if quant == "none":
        assert np.abs(got - ref).max() < 1e-5
    else:
        assert np.abs(got - ref).max() < 0.1
        assert (got.argmax(1) == ref.argmax(1)).all()
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "smoke-1" in info.output and "input/output:" in info.output


def test_int8_quantizes_convolutions_with_one_weight_scale_per_output_channel():
    """Static int8 gives every quantized convolution and the head a weight scale per output channel (qnnpack's
    default is one per tensor, which lost v9's detections), and the quantized model still ranks like the float
    one on windows with distinct calls."""
    from birdsound.export import quantize_static

    torch.manual_seed(0)
    net = BirdNetLite(3, SR).eval()
    x = torch.from_numpy(np.stack([synth_call(k, 3.0, 70 + i) for i, k in enumerate(SYNTH_SPECIES.values())
                                   for _ in range(4)]).astype(np.float32))
    q = quantize_static(net, x.numpy())
    packed = [m for m in q.body.modules() if hasattr(m, "weight") and callable(m.weight)]
    schemes = {m.weight().qscheme() for m in packed}
    assert len(packed) > 10 and schemes <= {torch.per_channel_affine, torch.per_channel_symmetric}, schemes
    with torch.no_grad():
        assert (q(x).argmax(1) == net(x).argmax(1)).float().mean() >= 0.75


def test_exported_model_gives_identical_detections(small_model, synth_dataset, tmp_path):
    out = tmp_path / "m.pt"
    CliRunner().invoke(main, ["export", small_model, "-o", str(out), "--calibration", synth_dataset, "--windows", "16"])
    res = {}
    for name, model in [("eager", small_model), ("ts", str(out))]:
        r = CliRunner().invoke(main, ["analyze", "-q", synth_dataset, "-m", model, "-o", str(tmp_path / name),
                                      "--rtype", "csv", "--combine", "--min-conf", "0.1"])
        assert r.exit_code == 0, r.output
        res[name] = (tmp_path / name / "birdsound.combined.results.csv").read_text()
    assert res["eager"] == res["ts"] and res["eager"].count("\n") > 3


def test_foreign_torchscript_is_refused(tmp_path):
    p = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(p))
    with pytest.raises(ModelError, match="without birdsound metadata"):
        load_model(str(p))


ONNX_STANDALONE = r"""
import json, sys, numpy as np, onnxruntime as ort
path, inp, outp = sys.argv[1:4]
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
meta = json.loads(s.get_modelmeta().custom_metadata_map["birdsound_metadata"])
np.save(outp, s.run(None, {"pcm": np.load(inp)})[0])
print(meta["sample_rate"], len(meta["labels"]))
assert "torch" not in sys.modules and not any(k.startswith("birdsound") for k in sys.modules)
"""


def assert_folded(path: str) -> None:
    """Constant-folded at export: every Conv and BatchNormalization reads its parameters from initializers,
    which lets onnxruntime fuse them (unfolded, each Conv's bias came through an Expand/CastLike chain);
    and stripped of the exporter's per-node debug records."""
    import onnx

    g = onnx.load(path).graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    layers = [n for n in g.node if n.op_type in ("Conv", "BatchNormalization")]
    assert layers and all(set(n.input[1:]) <= consts for n in layers)
    assert not [n for n in g.node if n.op_type == "CastLike"]
    assert not [n for n in g.node if n.metadata_props]  # no exporter debug records: they only add size


def test_onnx_export_runs_without_torch_and_matches_eager(small_model, synth_dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    r = export_cli(small_model, out, "onnx", synth_dataset, 32)
    assert r.exit_code == 0, r.output
    x = np.stack([synth_call(k, 3.0, 60 + i) for i, k in enumerate(SYNTH_SPECIES.values())] + [np.zeros(96000, np.float32)])
    np.save(tmp_path / "in.npy", x)
    (tmp_path / "sa.py").write_text(ONNX_STANDALONE)
    p = subprocess.run([sys.executable, str(tmp_path / "sa.py"), str(out), str(tmp_path / "in.npy"), str(tmp_path / "o.npy")],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["32000", "3"]
    assert_folded(str(out))
    net, _ = load_checkpoint(small_model)
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    got = np.load(tmp_path / "o.npy")
    assert np.isfinite(got).all() and np.abs(got - ref).max() < 1e-4  # digital silence included
    # analyze with the ONNX file: same detections as eager, and torch is never imported
    code = ("import sys; from birdsound.cli import main\n"
            "try:\n main(['analyze', '-q', sys.argv[1], '-m', sys.argv[2], '-o', sys.argv[3], '--rtype', 'csv', "
            "'--combine', '--min-conf', '0.1'])\nexcept SystemExit as e:\n assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    p = subprocess.run([sys.executable, "-c", code, synth_dataset, str(out), str(tmp_path / "onnx")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    CliRunner().invoke(main, ["analyze", "-q", synth_dataset, "-m", small_model, "-o", str(tmp_path / "eager"),
                              "--rtype", "csv", "--combine", "--min-conf", "0.1"])
    import csv
    rows = {k: list(csv.reader(open(tmp_path / k / "birdsound.combined.results.csv"))) for k in ("onnx", "eager")}
    assert len(rows["eager"]) > 3 and len(rows["onnx"]) == len(rows["eager"])
    for a, b in zip(rows["onnx"][1:], rows["eager"][1:]):
        assert a[:4] + a[5:] == b[:4] + b[5:] and abs(float(a[4]) - float(b[4])) <= 2e-4


def test_export_refuses_nan_parity(small_model, synth_dataset, tmp_path, monkeypatch):
    from birdsound import export as ex
    monkeypatch.setattr(ex, "parity", lambda ref, pred, w: {"windows": 1, "max_abs_diff": float("nan"),
                                                            "top1_agreement": 1.0, "reference": None, "exported": None})
    out = tmp_path / "m.pt"
    r = CliRunner().invoke(main, ["export", small_model, "-o", str(out), "--calibration", synth_dataset, "--windows", "8"])
    assert r.exit_code == 1 and "parity failed" in r.output and not out.exists()


@pytest.mark.parametrize("sample_rate", [32000, 22050, 16000])
def test_matmul_mel_matches_torchaudio(sample_rate):
    """The real-valued front end of exports computes the same power mel as torchaudio's STFT,
    including models whose top mel filter reaches the Nyquist bin (22.05 and 16 kHz)."""
    from birdsound.features import LinearMel, MatmulMel, MelFrontEnd

    fe = MelFrontEnd(sample_rate)
    t = np.arange(3 * sample_rate) / sample_rate
    chirp = 0.5 * np.sin(2 * np.pi * (300 * t + (sample_rate / 2 - 600) / 6 * t ** 2))  # sweeps up to Nyquist
    x = torch.from_numpy(np.stack([chirp, np.random.default_rng(0).normal(0, 0.1, t.size)]).astype(np.float32))
    ref = fe.power_mel(x)
    for impl in (MatmulMel, LinearMel):
        got = impl(fe.mel)(x)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() < 1e-6 * ref.max(), impl.__name__
    assert ref[0, -1].max() > 1e-3 * ref.max()  # the chirp lights the top filter: the test covers it
    portable = MelFrontEnd(sample_rate).make_portable()
    assert torch.equal(portable.normalize(ref), fe.normalize(ref))  # median via top-k: the same numbers
    assert (portable(x) - fe(x)).abs().max() < 1e-2  # log of the quietest bins magnifies rounding


def test_shipped_onnx_is_the_shipped_checkpoint():
    """analyze and listen run models/birdsound_default.onnx by default: it must be the checkpoint's export."""
    pytest.importorskip("onnxruntime")
    from birdsound.runtime import DEFAULT_MODEL_PATH, DEFAULT_ONNX_PATH, default_model_path

    assert default_model_path(fast=True) == DEFAULT_ONNX_PATH and default_model_path() == DEFAULT_MODEL_PATH
    ckpt, onnx_model = load_model(DEFAULT_MODEL_PATH), load_model(DEFAULT_ONNX_PATH)
    a, b = ckpt.meta, onnx_model.meta
    assert (a.labels, a.sample_rate, a.window_s, a.model_version, a.license) == \
        (b.labels, b.sample_rate, b.window_s, b.model_version, b.license), "re-export: birdsound export models/birdsound_default.pt -o models/birdsound_default.onnx --format onnx"
    x = np.stack([synth_call(k, 3.0, 70 + i) for i, k in enumerate(SYNTH_SPECIES.values())]
                 + [np.random.default_rng(1).normal(0, 0.05, 96000).astype(np.float32), np.zeros(96000, np.float32)])
    assert np.abs(ckpt.predict(x) - onnx_model.predict(x)).max() < 1e-4
    assert_folded(DEFAULT_ONNX_PATH)


def test_analyze_default_model_runs_without_torch(synth_dataset, tmp_path):
    pytest.importorskip("onnxruntime")
    code = ("import sys; from birdsound.cli import main\n"
            "try:\n main(['analyze', '-q', sys.argv[1], '-o', sys.argv[2], '--rtype', 'json'])\n"
            "except SystemExit as e:\n assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    p = subprocess.run([sys.executable, "-c", code, synth_dataset, str(tmp_path / "o")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    outs = list((tmp_path / "o").rglob("*.json"))
    shipped = load_checkpoint(DEFAULT_MODEL_PATH)[1].model_version  # the checkpoint the ONNX file was exported from
    assert outs and json.loads(outs[0].read_text())["model"]["model_version"] == shipped


ET_STANDALONE = r"""
import json, sys, numpy as np, torch
from executorch.runtime import Runtime
path, inp, outp = sys.argv[1:4]
program = Runtime.get().load_program(path)
meta = json.loads(program.load_method("metadata_json").execute([])[0])
forward = program.load_method("forward")
x = torch.from_numpy(np.load(inp))
np.save(outp, np.concatenate([forward.execute([x[i:i + 1]])[0].numpy() for i in range(len(x))]
                             + [forward.execute([x[:meta["max_batch"]]])[0].numpy()]))
print(meta["sample_rate"], meta["model_version"], len(meta["labels"]))
assert not any(k.startswith("birdsound") for k in sys.modules)
"""


@pytest.fixture(scope="module")
def pte_fp32(small_model, synth_dataset, tmp_path_factory):
    """The small model exported to ExecuTorch (fp32)."""
    pytest.importorskip("executorch")
    out = tmp_path_factory.mktemp("pte") / "none.pte"
    r = export_cli(small_model, out, "executorch", synth_dataset, 32)
    assert r.exit_code == 0, r.output
    return out


def test_executorch_export_runs_standalone_and_matches_eager(small_model, pte_fp32, tmp_path):
    """The .pte (XNNPACK delegate, real-valued front end) runs with torch + executorch alone, batch 1 and
    batch max_batch, and agrees with the eager model."""
    out = pte_fp32
    x = np.stack([synth_call(k, 3.0, 80 + i) for i, k in enumerate(SYNTH_SPECIES.values())]
                 + [np.zeros(96000, np.float32)] * 5)  # 8 windows: digital silence included
    np.save(tmp_path / "in.npy", x)
    (tmp_path / "et.py").write_text(ET_STANDALONE)
    p = subprocess.run([sys.executable, str(tmp_path / "et.py"), str(out), str(tmp_path / "in.npy"),
                        str(tmp_path / "o.npy")], capture_output=True, text=True, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split()[-3:] == ["32000", "smoke-1", "3"]
    net, _ = load_checkpoint(small_model)
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    got = np.load(tmp_path / "o.npy")
    assert np.isfinite(got).all() and np.abs(got[:8] - ref).max() < 1e-4 and np.abs(got[8:] - ref).max() < 1e-4
    m = load_model(str(out))
    assert m.kind == "executorch" and m.meta.model_version == "smoke-1"
    assert np.abs(m.predict(np.concatenate([x, x])) - np.concatenate([ref, ref])).max() < 1e-4  # > max_batch: split


def test_executorch_loads_again_with_other_threads(pte_fp32):
    """XNNPACK's pool is process-wide and resizing it after use crashed the process: a second load with
    another thread count must keep working (subprocess: a crash must not take pytest down)."""
    code = ("import sys, numpy as np; from birdsound.runtime import load_model\n"
            "a = load_model(sys.argv[1]); a.predict(np.zeros((8, 96000), np.float32))\n"
            "b = load_model(sys.argv[1], threads=1); b.predict(np.zeros((8, 96000), np.float32))\n"
            "a.predict(np.zeros((1, 96000), np.float32)); print('ok')\n")
    p = subprocess.run([sys.executable, "-c", code, str(pte_fp32)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.strip() == "ok", (p.returncode, p.stderr[-500:])


def test_executorch_int8_quantizes_the_cnn_not_the_front_end(small_model, synth_dataset, pte_fp32, tmp_path):
    out = tmp_path / "int8.pte"
    r = export_cli(small_model, out, "executorch", synth_dataset, 32, "int8")
    assert r.exit_code == 0, r.output
    sizes = {"none": os.path.getsize(pte_fp32), "int8": os.path.getsize(out)}
    assert sizes["int8"] < 0.6 * sizes["none"], sizes  # the CNN's weights are int8 (front-end matrices stay float)
    x = np.stack([synth_call(k, 3.0, 90 + i) for i, k in enumerate(SYNTH_SPECIES.values())])
    ref, got = (load_model(str(p)).predict(x) for p in (pte_fp32, out))
    assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 0.15


def test_coreml_export_keeps_metadata_and_refuses_to_run_off_apple(small_model, synth_dataset, tmp_path):
    pytest.importorskip("coremltools")
    out = tmp_path / "m.mlpackage"
    r = export_cli(small_model, out, "coreml", synth_dataset)
    assert r.exit_code == 0, r.output
    assert (out / "Manifest.json").exists() and re.search(r"max \|diff\| \d\.\d\de-0[5-9]", r.output)
    info = CliRunner().invoke(main, ["info", str(out)])
    assert info.exit_code == 0 and "coreml" in info.output and "smoke-1" in info.output
    if sys.platform != "darwin":
        a = CliRunner().invoke(main, ["analyze", synth_dataset, "-m", str(out), "-o", str(tmp_path / "o")])
        assert a.exit_code == 2 and "run on macOS and iOS only" in a.output
    q = export_cli(small_model, tmp_path / "q.mlpackage", "coreml", synth_dataset, 8, "int8")
    assert q.exit_code == 1 and "not supported" in q.output


def test_missing_export_extra_is_one_clear_line_before_any_work(small_model, synth_dataset, tmp_path, monkeypatch):
    import importlib.util

    from birdsound import export as ex
    real_find_spec = importlib.util.find_spec

    def no_executorch(name, *args, **kwargs):
        return None if name.startswith("executorch") else real_find_spec(name, *args, **kwargs)

    def no_work(*a, **k):
        raise AssertionError("calibration audio was read before the extras were checked")

    monkeypatch.setattr(importlib.util, "find_spec", no_executorch)
    monkeypatch.setattr(ex, "calibration_windows", no_work)
    r = export_cli(small_model, tmp_path / "m.pte", "executorch", synth_dataset, 8)
    assert r.exit_code == 1 and "pip install 'birdsound[executorch]'" in r.output
    assert r.output.count("\n") == 1 and not (tmp_path / "m.pte").exists()


@pytest.mark.parametrize("offset,accepted", [(3e-4, False), (0.0, True)])
def test_fp32_parity_judged_against_float64_when_over_tolerance(small_model, synth_dataset, tmp_path, monkeypatch,
                                                                 offset, accepted):
    """Over 1e-4 from the float32 eager model, an export is kept only if it is as exact as that model against
    a float64 run: a real error (offset) is refused, float32 rounding of another FFT (the float64 result
    itself, here) is accepted and explained."""
    from birdsound import export as ex
    real = ex.parity

    def shifted(reference, predict, windows):
        p = real(reference, predict, windows)
        exact = copy.deepcopy(reference).double().eval()
        with torch.no_grad():
            x = torch.from_numpy(windows.astype(np.float64))
            p["exported"] = torch.sigmoid(exact(x)).numpy().astype(np.float32) + offset
        p["reference"] = p["reference"] + np.float32(2e-4) * (offset == 0)  # force the float64 judgement
        p["max_abs_diff"] = float(np.abs(p["reference"] - p["exported"]).max())
        return p

    monkeypatch.setattr(ex, "parity", shifted)
    out = tmp_path / "m.pt"
    r = export_cli(small_model, out, "torchscript", synth_dataset, 8)
    assert "vs a float64 run of the model" in r.output
    assert (r.exit_code == 0 and out.exists()) if accepted else (r.exit_code == 1 and not out.exists()), r.output


def test_export_without_usable_calibration_audio_says_what_to_do(small_model, tmp_path, monkeypatch):
    from birdsound import cli
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,species\nnowhere/a.wav,Testus altus_High Tone\n")
    monkeypatch.setattr(cli, "DEFAULT_CALIBRATION", str(manifest))
    # fp32: parity falls back to synthesized windows, and says so
    r = CliRunner().invoke(main, ["export", small_model, "-o", str(tmp_path / "fp32.pt")])
    assert r.exit_code == 0 and "synthesized windows" in r.output and "real windows" not in r.output, r.output
    assert (tmp_path / "fp32.pt").exists()
    # int8 calibrates on real audio: without any, one line saying what to pass
    r = CliRunner().invoke(main, ["export", small_model, "-o", str(tmp_path / "m.pt"), "--quantize", "int8"])
    assert r.exit_code == 2 and "pass --calibration AUDIO_FOLDER" in r.output, r.output
    assert not (tmp_path / "m.pt").exists()
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["export", small_model, "-o", str(tmp_path / "m.pt"), "--calibration", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no usable audio windows" in r.output and "pass --calibration" not in r.output
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("fmt", ["lite", "executorch"])
def test_mobile_demo_classifies_a_wav(small_model, synth_dataset, pte_fp32, tmp_path, fmt):
    """scripts/mobile_demo.py (what app developers copy) names each synthetic species in its window."""
    import soundfile as sf
    if fmt == "lite":
        model = tmp_path / "m.ptl"
        assert export_cli(small_model, model, "lite", synth_dataset, 8).exit_code == 0
    else:
        model = pte_fp32
    labels = list(SYNTH_SPECIES)
    sf.write(str(tmp_path / "r.wav"), np.concatenate([synth_call(k, 3.0, 200 + i) for i, k in enumerate(SYNTH_SPECIES.values())]), SR)
    demo = os.path.join(os.path.dirname(__file__), "..", "scripts", "mobile_demo.py")
    p = subprocess.run([sys.executable, demo, str(model), str(tmp_path / "r.wav"), "--top", "1"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-1000:]
    lines = [l for l in p.stdout.splitlines() if l.strip().endswith(tuple("0123456789"))]
    assert [" ".join(l.split()[1:-1]) for l in lines] == labels, p.stdout


def test_quantized_exports_are_judged_by_their_detections_at_the_default_min_conf():
    """A quantized export is kept when it reports what the float model reports at min-conf 0.25: top-1 on the
    windows with a detection and the same detections; flips of the top species among noise-level
    probabilities (no detection either way) do not count; too few detections fall back to top-1 everywhere."""
    from birdsound.export import detection_agreement, quantized_refusal
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 0.05, (200, 10))
    ref[:100, 3] = rng.uniform(0.3, 0.9, 100)  # 100 windows with a detection of label 3

    def verdict(out, ref=ref):
        top1 = float(np.mean(ref.argmax(1) == out.argmax(1)))
        return quantized_refusal({"top1_agreement": top1, **detection_agreement(ref, out)})

    assert verdict(ref.copy()) is None
    noise = ref.copy()
    noise[100:] = rng.uniform(0, 0.05, (100, 10))  # the top label of every bird-free window changes
    assert float(np.mean(ref.argmax(1) == noise.argmax(1))) < 0.95 and verdict(noise) is None
    lost = ref.copy()
    lost[:15, 3] = 0.1  # 15 of 100 detections missed
    assert "detections agreeing 0.850" in verdict(lost)
    swapped = ref.copy()
    swapped[:8, 5] = swapped[:8, 3] + 0.05  # another species named first in 8 of 100 detected windows
    assert "top-1 agreement 0.920" in verdict(swapped)
    few = ref[95:].copy()  # 5 detected windows: judged by top-1 on all windows
    flipped = few.copy()
    flipped[5:] = rng.uniform(0, 0.05, (100, 10))
    r = verdict(flipped, few)
    assert r is not None and "too few windows with a detection" in r


def test_shipped_model_exports_to_int8_lite_that_agrees_on_its_detections(tmp_path):
    """The shipped model's int8 lite export, calibrated and checked on 512 windows of the training
    recordings, is kept, and its reported detection agreement is what the check requires."""
    shared_data_or_skip()
    out = tmp_path / "bird_int8.ptl"
    r = CliRunner().invoke(main, ["export", "-o", str(out), "--format", "lite", "--quantize", "int8"])
    assert r.exit_code == 0 and out.exists(), r.output
    m = re.search(r"detections at min-conf 0.25: (\d+) windows with one, top-1 agreement there ([\d.]+), "
                  r"detections agreeing ([\d.]+)", r.output)
    assert m and int(m[1]) >= 100 and float(m[2]) >= 0.95 and float(m[3]) >= 0.9, r.output
    assert os.path.getsize(out) < 0.5 * os.path.getsize(DEFAULT_MODEL_PATH)
