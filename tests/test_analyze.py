"""`birdsound analyze` end to end on synthesized recordings with a deterministic tone model."""

import json
import os

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from birdsound.cli import main
from birdsound.outputs import RAVEN_HEADER, read_audacity, read_raven
from conftest import SR, tone_signal


def analyze(*args):
    r = CliRunner().invoke(main, ["analyze", "-q", *args])
    return r


def read_csv(path):
    import csv
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def burst_wav(write_wav):
    # 20 s at 44.1 kHz (resampled to 32 kHz): high tone 7.0-7.5 s, low tone 15.2-15.4 s
    x = tone_signal(20.0, [(7.0, 7.5, 3000.0), (15.2, 15.4, 1000.0)], sr=44100)
    return write_wav("rec/burst.wav", x, 44100)


def test_tone_found_at_its_time_no_overlap(tone_model, burst_wav, tmp_path):
    out = tmp_path / "out"
    r = analyze(burst_wav, "-m", tone_model, "-o", str(out), "--rtype", "csv")
    assert r.exit_code == 0, r.output
    rows = read_csv(out / "burst.birdsound.results.csv")
    got = [(float(x["Start (s)"]), float(x["End (s)"]), x["Common name"]) for x in rows]
    assert got == [(6.0, 9.0, "High Tone"), (15.0, 18.0, "Low Tone")]
    assert "1 files analysed" in r.output and "2 detections" in r.output


def test_tone_with_overlap_every_covering_window_and_merge(tone_model, burst_wav, tmp_path):
    out = tmp_path / "out"
    r = analyze(burst_wav, "-m", tone_model, "-o", str(out), "--rtype", "csv", "--overlap", "2")
    assert r.exit_code == 0, r.output
    high = [float(x["Start (s)"]) for x in read_csv(out / "burst.birdsound.results.csv") if x["Common name"] == "High Tone"]
    assert high == [5.0, 6.0, 7.0]  # exactly the windows that overlap 7.0-7.5 s
    r = analyze(burst_wav, "-m", tone_model, "-o", str(out), "--rtype", "csv", "--overlap", "2", "--merge-consecutive")
    assert r.exit_code == 0, r.output
    ev = [(float(x["Start (s)"]), float(x["End (s)"])) for x in read_csv(out / "burst.birdsound.results.csv")
          if x["Common name"] == "High Tone"]
    assert ev == [(5.0, 10.0)]


def test_last_window_padded_and_end_clipped(tone_model, write_wav, tmp_path):
    p = write_wav("short_tail.wav", tone_signal(7.2, [(6.5, 7.0, 3000.0)]))
    r = analyze(p, "-m", tone_model, "-o", str(tmp_path / "o"), "--rtype", "csv")
    assert r.exit_code == 0, r.output
    rows = read_csv(tmp_path / "o" / "short_tail.birdsound.results.csv")
    assert [(float(x["Start (s)"]), float(x["End (s)"])) for x in rows] == [(6.0, 7.2)]


def test_all_formats_round_trip(tone_model, burst_wav, tmp_path):
    out = tmp_path / "o"
    r = analyze(burst_wav, "-m", tone_model, "-o", str(out), *sum((["--rtype", t] for t in ("csv", "table", "audacity", "json")), []))
    assert r.exit_code == 0, r.output
    with open(out / "burst.birdsound.selection.table.txt") as f:
        assert f.readline().rstrip("\n").split("\t") == RAVEN_HEADER
    raven = read_raven(str(out / "burst.birdsound.selection.table.txt"))
    assert [(float(x["Begin Time (s)"]), float(x["End Time (s)"]), x["Common Name"], x["Species Code"]) for x in raven] == [
        (6.0, 9.0, "High Tone", "TESALT"), (15.0, 18.0, "Low Tone", "TESBAS")]
    assert raven[0]["View"] == "Spectrogram 1" and raven[0]["Channel"] == "1" and raven[0]["Selection"] == "1"
    assert raven[0]["Begin Path"] == burst_wav
    labels = read_audacity(str(out / "burst.birdsound.results.txt"))
    assert [(s, e) for s, e, _ in labels] == [(6.0, 9.0), (15.0, 18.0)]
    assert labels[0][2].startswith("High Tone")
    doc = json.load(open(out / "burst.birdsound.results.json"))
    assert doc["model"]["model_version"] == "tone-test-1"
    assert [d["scientific_name"] for d in doc["detections"]] == ["Testus altus", "Testus bassus"]
    assert doc["duration_s"] == pytest.approx(20.0)


def test_folder_tree_mirrored_combined_and_skip_existing(tone_model, write_wav, tmp_path):
    write_wav("in/a/one.wav", tone_signal(6, [(1, 1.5, 3000.0)]))
    write_wav("in/b/c/two.flac", tone_signal(6, [(4, 4.5, 1000.0)]), format="FLAC")
    out = tmp_path / "out"
    r = analyze(str(tmp_path / "in"), "-m", tone_model, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert (out / "a" / "one.birdsound.selection.table.txt").exists()
    assert (out / "b" / "c" / "two.birdsound.selection.table.txt").exists()
    r = analyze(str(tmp_path / "in"), "-m", tone_model, "-o", str(out), "--skip-existing")
    assert r.exit_code == 0 and "0 files analysed (2 skipped)" in r.output
    r = analyze(str(tmp_path / "in"), "-m", tone_model, "-o", str(out), "--combine", "--rtype", "table")
    assert r.exit_code == 0 and "2 files analysed (0 skipped)" in r.output
    rows = read_raven(str(out / "birdsound.combined.selection.table.txt"))
    # second file's times are offset by the first file's duration; File Offset stays file-relative
    assert [(x["Common Name"], float(x["Begin Time (s)"]), float(x["File Offset (s)"])) for x in rows] == [
        ("High Tone", 0.0, 0.0), ("Low Tone", 9.0, 3.0)]


def test_channel_selection_and_band_limit(tone_model, write_wav, tmp_path):
    quiet = tone_signal(6, [])
    loud = tone_signal(6, [(1, 1.5, 3000.0)], seed=1)
    p = write_wav("stereo.wav", np.stack([quiet, loud], axis=1))
    out = tmp_path / "o"
    analyze(p, "-m", tone_model, "-o", str(out), "--rtype", "csv", "--channel", "2")
    assert len(read_csv(out / "stereo.birdsound.results.csv")) == 1
    analyze(p, "-m", tone_model, "-o", str(out), "--rtype", "csv", "--channel", "1")
    assert len(read_csv(out / "stereo.birdsound.results.csv")) == 0
    analyze(p, "-m", tone_model, "-o", str(out), "--rtype", "csv", "--fmax", "2000")
    assert len(read_csv(out / "stereo.birdsound.results.csv")) == 0


def test_species_lists_thresholds_top_n(tone_model, write_wav, tmp_path):
    p = write_wav("both.wav", tone_signal(3, [(0.5, 0.8, 3000.0), (1.5, 1.8, 1000.0)]))
    inc = tmp_path / "inc.txt"
    inc.write_text("# my list\nTestus bassus\n")
    exc = tmp_path / "exc.txt"
    exc.write_text("low tone\n")
    thr = tmp_path / "thr.csv"
    thr.write_text("species,threshold\nTestus altus_High Tone,0.99999\n")
    runs = [(["--include", str(inc)], ["Low Tone"]), (["--exclude", str(exc)], ["High Tone"]),
            (["--thresholds", str(thr)], ["Low Tone"]), (["--top-n", "1"], None), ([], ["High Tone", "Low Tone"])]
    for k, (args, want) in enumerate(runs):
        out = tmp_path / f"o{k}"  # a fresh folder each time: no run can pass on a file an earlier one wrote
        r = analyze(p, "-m", tone_model, "-o", str(out), "--rtype", "csv", *args)
        assert r.exit_code == 0, r.output
        got = [x["Common name"] for x in read_csv(out / "both.birdsound.results.csv")]
        assert (len(got) == 1) if want is None else (sorted(got) == want), (args, got)


def test_unusual_but_valid_audio(tone_model, write_wav, tmp_path):
    files = [
        # tones at 0.2-0.7 s: in the first window only (the 3-4 s tail is scored on the last 3 s, 1-4 s)
        write_wav("sr8k.wav", tone_signal(4, [(0.2, 0.7, 1000.0)], sr=8000, noise=0.0), 8000),  # 8 kHz noise: 30-45 % in the high band
        write_wav("sr192k.wav", tone_signal(4, [(0.2, 0.7, 3000.0)], sr=192000), 192000),
        write_wav("ch8.wav", np.repeat(tone_signal(4, [(0.2, 0.7, 3000.0)])[:, None], 8, axis=1)),
        write_wav("tiny.wav", tone_signal(0.4, [(0.1, 0.3, 3000.0)])),
        write_wav("vorbis.ogg", tone_signal(4, [(0.2, 0.7, 3000.0)]), format="OGG"),
    ]
    out = tmp_path / "o"
    r = analyze(*files, "-m", tone_model, "-o", str(out), "--rtype", "csv")
    assert r.exit_code == 0, r.output
    for f in files:
        rows = read_csv(out / (os.path.splitext(os.path.basename(f))[0] + ".birdsound.results.csv"))
        assert len(rows) == 1, f
        assert float(rows[0]["Start (s)"]) == 0.0
    tiny = read_csv(out / "tiny.birdsound.results.csv")
    assert float(tiny[0]["End (s)"]) == pytest.approx(0.4)


def test_bad_files_reported_batch_continues(tone_model, write_wav, tmp_path):
    good = write_wav("in/good.wav", tone_signal(6, [(1, 1.5, 3000.0)]))
    (tmp_path / "in" / "empty.wav").write_bytes(b"")
    (tmp_path / "in" / "text.wav").write_text("this is not audio\n" * 20)
    (tmp_path / "in" / "text.mp3").write_text("this is not audio either\n" * 20)
    full = open(good, "rb").read()
    (tmp_path / "in" / "truncated.wav").write_bytes(full[:30])
    nan = tone_signal(6, [])
    nan[40000] = np.nan
    write_wav("in/nan.wav", nan, subtype="FLOAT")
    out = tmp_path / "out"
    missing = str(tmp_path / "nowhere.wav")
    r = analyze(str(tmp_path / "in"), missing, "-m", tone_model, "-o", str(out), "--rtype", "csv")
    assert r.exit_code == 1
    lines = [l for l in r.output.splitlines() if l.startswith("error:")]
    assert len(lines) == 6, r.output
    assert "Note:" not in r.output and "pipe" not in r.output  # no decoder chatter, no misleading cause
    for name, what in [("empty.wav", "empty"), ("text.wav", "not an audio file"), ("text.mp3", "not an audio file"),
                       ("truncated.wav", ""), ("nan.wav", "NaN"), ("nowhere.wav", "no such file")]:
        assert any(name in l and what in l for l in lines), (name, r.output)
    assert "Traceback" not in r.output
    rows = read_csv(out / "good.birdsound.results.csv")
    assert [(float(x["Start (s)"]), x["Common name"]) for x in rows] == [(0.0, "High Tone")]
    assert not [p for p in os.listdir(out) if ".part" in p]
    assert "1 files analysed" in r.output and "6 errors" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--overlap", "3"], "--overlap"),
    (["--overlap", "-1"], "--overlap"),
    (["--min-conf", "2"], "--min-conf"),
    (["--sensitivity", "3"], "--sensitivity"),
    (["--fmin", "5000", "--fmax", "1000"], "--fmin"),
    (["--fmin", "16000"], "highest frequency the model hears"),
    (["--rtype", "xls"], "--rtype"),
])
def test_bad_flag_values(tone_model, burst_wav, args, needle):
    r = analyze(burst_wav, "-m", tone_model, *args)
    assert r.exit_code == 2
    assert needle in r.output and "Traceback" not in r.output


def test_unknown_species_in_list(tone_model, burst_wav, tmp_path):
    inc = tmp_path / "inc.txt"
    inc.write_text("Testus altus\nTurdus nonexistens\nTestus altuss\n# comment\nHigh tone\nlow  tone\n")
    r = analyze(burst_wav, "-m", tone_model, "--include", str(inc), "-o", str(tmp_path / "o"))
    assert r.exit_code == 2 and r.output.count("\n") == 1  # one line, every unknown name in it
    assert f"{inc}: 3 unknown species" in r.output
    assert "line 2 'Turdus nonexistens' (nothing close)" in r.output
    assert "line 3 'Testus altuss' (did you mean 'Testus altus_High Tone'?)" in r.output
    assert "line 6 'low  tone' (did you mean 'Testus bassus_Low Tone'?)" in r.output
    assert not (tmp_path / "o").exists()


def test_model_that_is_not_a_birdsound_model(burst_wav, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_text("hello")
    r = analyze(burst_wav, "-m", str(bad))
    assert r.exit_code == 2 and "--model" in r.output and str(bad) in r.output and "not a birdsound model" in r.output
    import torch
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    r = analyze(burst_wav, "-m", str(other))
    assert r.exit_code == 2 and "not a birdsound model" in r.output


SLOW_WRITER = r"""
import sys, time
from birdsound.util import atomic_path
path = sys.argv[1]
with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
        for i in range(100000):
            f.write("new row %d\n" % i)
            f.flush()
            if i == 10:
                print("writing", flush=True)
            time.sleep(0.001)
"""


def test_outputs_written_atomically_even_when_killed(tmp_path):
    """A writer killed mid-write leaves the previous file whole (a plain write would have truncated it)."""
    import signal
    import subprocess
    import sys

    from birdsound.util import atomic_write
    p = tmp_path / "x.birdsound.results.csv"
    atomic_write(str(p), "one\n")
    atomic_write(str(p), "two\n")
    assert p.read_text() == "two\n" and os.listdir(tmp_path) == [p.name]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(p)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"  # the new content is half written ...
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert p.read_text() == "two\n"  # ... and the old file is untouched
    leftovers = [f for f in os.listdir(tmp_path) if f != p.name]
    assert all(f.startswith(".") and ".part" in f for f in leftovers)  # only a hidden temporary could remain


def test_every_input_gets_its_own_outputs(tone_model, write_wav, tmp_path):
    write_wav("in/x.wav", tone_signal(6, [(1, 1.5, 3000.0)]))
    write_wav("in/x.flac", tone_signal(6, [(4, 4.5, 1000.0)]), format="FLAC")
    write_wav("in/y.wav", tone_signal(6, [(1, 1.5, 1000.0)]))
    out = tmp_path / "out"
    r = analyze(str(tmp_path / "in"), "-m", tone_model, "-o", str(out), "--rtype", "csv")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["x.flac.birdsound.results.csv", "x.wav.birdsound.results.csv",
                                       "y.birdsound.results.csv"]
    assert [x["Common name"] for x in read_csv(out / "x.wav.birdsound.results.csv")] == ["High Tone"]
    assert [x["Common name"] for x in read_csv(out / "x.flac.birdsound.results.csv")] == ["Low Tone"]
    assert "3 files analysed" in r.output and "3 detections" in r.output


def test_two_folders_with_one_name_are_refused_up_front(tone_model, write_wav, tmp_path):
    a = write_wav("a/x.wav", tone_signal(6, [(1, 1.5, 3000.0)]))
    b = write_wav("b/x.wav", tone_signal(6, [(4, 4.5, 1000.0)]))
    out = tmp_path / "out"
    r = analyze(str(tmp_path / "a"), str(tmp_path / "b"), "-m", tone_model, "-o", str(out), "--rtype", "csv")
    assert r.exit_code == 2 and a in r.output and b in r.output and "separate -o" in r.output
    assert not out.exists()  # refused before any work


def test_skip_existing_with_combine_reuses_done_files(tone_model, write_wav, tmp_path):
    write_wav("in/a.wav", tone_signal(6, [(1, 1.5, 3000.0)]))
    write_wav("in/b.wav", tone_signal(7, [(4, 4.5, 1000.0)]))
    out = tmp_path / "out"
    r = analyze(str(tmp_path / "in"), "-m", tone_model, "-o", str(out), "--combine", "--rtype", "table")
    assert r.exit_code == 0 and "2 files analysed" in r.output, r.output
    write_wav("in/c.wav", tone_signal(5, [(0.5, 1.0, 3000.0)]))
    r = analyze(str(tmp_path / "in"), "-m", tone_model, "-o", str(out), "--combine", "--rtype", "table",
                "--skip-existing")
    assert r.exit_code == 0 and "1 files analysed (2 skipped)" in r.output, r.output
    combined = read_raven(str(out / "birdsound.combined.selection.table.txt"))
    fresh = tmp_path / "fresh"
    r = analyze(str(tmp_path / "in"), "-m", tone_model, "-o", str(fresh), "--combine", "--rtype", "table")
    assert r.exit_code == 0
    assert combined == read_raven(str(fresh / "birdsound.combined.selection.table.txt"))
    # a, b, c in input order, each file offset by the durations before it (6 s, then 7 s)
    assert [(x["Common Name"], float(x["Begin Time (s)"])) for x in combined] == [
        ("High Tone", 0.0), ("Low Tone", 9.0), ("High Tone", 13.0)]


def test_truncated_wav_analysed_as_far_as_it_goes(tone_model, write_wav, tmp_path):
    p = write_wav("cut.wav", tone_signal(20, [(2.0, 2.5, 3000.0), (15.0, 15.5, 1000.0)]), subtype="PCM_16")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: 44 + 2 * SR * 8])  # a power cut after 8 s: the header still says 20 s
    r = analyze(p, "-m", tone_model, "-o", str(tmp_path / "o"), "--rtype", "json")
    assert r.exit_code == 0, r.output
    warn = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and p in warn[0] and "20.000 s" in warn[0] and "8.000 s" in warn[0]
    doc = json.load(open(tmp_path / "o" / "cut.birdsound.results.json"))
    assert doc["duration_s"] == pytest.approx(8.0)
    assert [(d["start_s"], d["end_s"], d["common_name"]) for d in doc["detections"]] == [(0.0, 3.0, "High Tone")]


def test_mp3_duration_is_what_decodes_not_the_header(tone_model, tmp_path):
    from conftest import shared_data_or_skip
    p = os.path.join(shared_data_or_skip("anki_central_european_xc/audio"), "Aegithalos_caudatus_song_1.mp3")
    assert sf.info(p).duration == pytest.approx(14.6129, abs=1e-3)  # what the header says
    r = analyze(p, "-m", tone_model, "-o", str(tmp_path / "o"), "--rtype", "json", "--rtype", "csv")
    assert r.exit_code == 0, r.output
    doc = json.load(open(tmp_path / "o" / "Aegithalos_caudatus_song_1.birdsound.results.json"))
    assert doc["duration_s"] == pytest.approx(14.3151, abs=1e-3)  # what decodes
    ends = [d["end_s"] for d in doc["detections"]]
    assert not ends or max(ends) <= 14.3151 + 1e-3


def test_plot_png(tone_model, burst_wav, tmp_path):
    r = analyze(burst_wav, "-m", tone_model, "-o", str(tmp_path / "o"), "--plot")
    assert r.exit_code == 0, r.output
    png = tmp_path / "o" / "burst.birdsound.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
