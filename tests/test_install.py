"""The install is the product: the wheel carries the default model, and the CI skip policy holds."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_in_a_fresh_venv_analyses_with_the_shipped_model(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), ROOT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (whl,) = list(wheels.glob("birdsound-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert "birdsound/models/birdsound_default.onnx" in names and "birdsound/models/birdsound_default.pt" in names
    assert "birdsound/models/MODEL_CARD.md" in names
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(whl)], check=True, timeout=300)
    # the dependencies come from this environment's site-packages, without its editable birdsound (a .pth
    # file, which PYTHONPATH entries do not process); run from an empty folder, away from the source tree
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    work = tmp_path / "work"
    work.mkdir()
    t = np.arange(10 * 32000) / 32000
    sf.write(str(work / "rec.wav"), (0.01 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), 32000)
    where = subprocess.run([py, "-c", "import birdsound.runtime as r; print(r.__file__); print(r.DEFAULT_ONNX_PATH)"],
                           capture_output=True, text=True, env=env, cwd=work, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where  # the installed package and its model, not the tree
    r = subprocess.run([py, "-m", "birdsound", "analyze", "rec.wav", "-o", "out", "--rtype", "json", "-q"],
                       capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.load(open(work / "out" / "rec.birdsound.results.json"))
    card = open(os.path.join(ROOT, "models", "MODEL_CARD.md"), encoding="utf-8").read()
    assert doc["model"]["model_version"] in card and doc["duration_s"] == 10.0


PROBE = """
import pytest

def test_missing_dependency():
    pytest.importorskip("no_such_module_birdsound_probe")

def test_missing_shared_data():
    from conftest import shared_data_or_skip
    shared_data_or_skip("no/such/folder")
"""


def test_under_ci_a_skip_for_a_missing_dependency_fails(tmp_path):
    # the probe lives in tmp_path (an interrupted run leaves nothing in tests/); tests/conftest.py is loaded into
    # it as a plugin, hooks and helpers alike
    probe = tmp_path / "test_probe_ci_skip.py"
    probe.write_text(PROBE)

    def run(ci):
        env = {**os.environ, "CI": ci, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests"),
                                                                      os.environ.get("PYTHONPATH", "")])}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                               str(probe)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    ci, local = run("true"), run("")
    assert ci.returncode == 1 and "1 failed, 1 skipped" in ci.stdout, ci.stdout
    assert "skipped under CI=true" in ci.stdout and "no_such_module_birdsound_probe" in ci.stdout
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout
