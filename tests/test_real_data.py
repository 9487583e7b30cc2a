"""The shipped default model on real recordings (skipped where ../shared/data is absent)."""

import csv
import os

import numpy as np
import pytest
from click.testing import CliRunner

from birdsound.cli import main
from birdsound.model import DEFAULT_MODEL_PATH, load_model
from conftest import shared_data_or_skip


def test_default_model_on_real_recording(tmp_path):
    data = shared_data_or_skip("vogelstimmen_xc")
    rows = list(csv.DictReader(open(os.path.join(data, "manifest.csv"))))
    rec = next(r for r in rows if r["species_scientific"] == "Turdus merula") if any(
        r["species_scientific"] == "Turdus merula" for r in rows) else rows[0]
    path = os.path.join(data, rec["path"])
    r = CliRunner().invoke(main, ["analyze", "-q", path, "-o", str(tmp_path), "--rtype", "csv", "--min-conf", "0.1"])
    assert r.exit_code == 0, r.output
    out = tmp_path / (os.path.splitext(os.path.basename(path))[0] + ".birdsound.results.csv")
    dets = list(csv.DictReader(open(out)))
    model = load_model()
    labels = {l.split("_")[0] for l in model.labels}
    assert dets, "no detection at all on a focal recording"
    dur = float(rec["duration_s"])
    for d in dets:
        assert d["Scientific name"] in labels
        assert 0 <= float(d["Start (s)"]) < float(d["End (s)"]) <= dur + 0.05


def test_default_model_quiet_on_noise_and_silence():
    model = load_model(DEFAULT_MODEL_PATH)
    rng = np.random.default_rng(0)
    n = model.meta.window_samples
    t = np.arange(n) / model.meta.sample_rate
    brown = np.cumsum(rng.standard_normal(n)).astype(np.float32)
    brown = brown / np.abs(brown).max() * 0.3
    windows = np.stack([np.zeros(n, np.float32), rng.standard_normal(n).astype(np.float32) * 0.01,
                        rng.standard_normal(n).astype(np.float32) * 0.2, brown,
                        (0.2 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)])
    p = model.predict(windows)
    assert p.max() < 0.25, p.max(axis=1)
