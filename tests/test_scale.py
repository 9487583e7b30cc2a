"""Chunked, parallel and Dask analysis give exactly the single-threaded results."""

import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from birdsound import analyze as an
from birdsound import audio
from birdsound.cli import main
from birdsound.runtime import load_model
from birdsound.stream import file_windows, hop_samples
from conftest import SR, tone_signal

WIN = 3 * SR


def all_chunk_windows(path, hop, chunk_s):
    info = audio.info(path)
    chunks = an.plan_chunks(path, info, SR, WIN, hop, chunk_s=chunk_s)
    wbs = [wb for c in chunks for wb in an.chunk_windows(c, SR, WIN, hop)]
    return chunks, np.concatenate([w.starts for w in wbs]), np.concatenate([w.lengths for w in wbs]), \
        np.concatenate([w.windows for w in wbs])


@pytest.mark.parametrize("rate", [SR, 44100, 48000, 22050])
@pytest.mark.parametrize("overlap", [0.0, 1.0, 2.3])
def test_chunks_reproduce_continuous_windows(write_wav, rate, overlap):
    x = tone_signal(61.3, [(20.5, 21.0, 3000.0)], sr=rate, noise=0.05)
    p = write_wav(f"long_{rate}.flac", x, rate, format="FLAC")
    hop = hop_samples(WIN, overlap, SR)
    chunks, starts, lengths, wins = all_chunk_windows(p, hop, chunk_s=10.0)
    assert len(chunks) >= 4  # really cut into pieces
    ref = list(file_windows(p, SR, WIN, hop))
    ref_starts = np.concatenate([w.starts for w in ref])
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_array_equal(lengths, np.concatenate([w.lengths for w in ref]))
    diff = np.abs(wins - np.concatenate([w.windows for w in ref])).max()
    assert diff == 0.0 if rate == SR else diff < 1e-5  # resampler restarted with a warm-up margin


def test_chunk_plan_does_not_depend_on_anything_but_the_file(write_wav):
    p = write_wav("plan.wav", tone_signal(30.0, []), SR)
    info = audio.info(p)
    a = an.plan_chunks(p, info, SR, WIN, WIN, chunk_s=6.0)
    assert [(c.first, c.count) for c in a] == [(0, 2), (2, 2), (4, 2), (6, 2), (8, None)]
    assert sum(c.duration_s for c in a) == pytest.approx(30.0)


@pytest.fixture
def long_tones(write_wav, monkeypatch):
    """Three files (one at 44.1 kHz) with bursts either side of 10 s chunk edges."""
    monkeypatch.setattr(an, "CHUNK_S", 9.0)
    paths = [
        write_wav("in/a.wav", tone_signal(40.0, [(8.9, 9.4, 3000.0), (17.5, 18.4, 1000.0), (38.0, 39.0, 3000.0)])),
        write_wav("in/sub/b.wav", tone_signal(25.0, [(2.0, 2.5, 1000.0), (9.0, 9.1, 3000.0)], sr=44100), 44100),
        write_wav("in/c.wav", tone_signal(4.0, [(1.0, 1.5, 3000.0)])),
    ]
    return os.path.dirname(paths[0])


def outputs_of(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            out[os.path.relpath(os.path.join(root, n), folder)] = open(os.path.join(root, n), "rb").read()
    return out


RTYPES = ["--rtype", "csv", "--rtype", "table", "--rtype", "json"]


def test_workers_give_identical_outputs(tone_model, long_tones, tmp_path):
    res = {}
    for w in ("1", "2", "3"):
        r = CliRunner().invoke(main, ["analyze", "-q", long_tones, "-m", tone_model, "-o", str(tmp_path / w),
                                      "--workers", w, "--overlap", "1", *RTYPES])
        assert r.exit_code == 0, r.output
        res[w] = outputs_of(tmp_path / w)
    assert res["1"] == res["2"] == res["3"] and len(res["1"]) == 9
    csv = res["1"]["a.birdsound.results.csv"].decode()
    # bursts on both sides of the 9 s chunk edge: every window overlapping them, once
    starts = [float(l.split(",")[0]) for l in csv.splitlines()[1:] if "High Tone" in l]
    assert starts == [6.0, 8.0, 36.0, 38.0]


def test_dask_local_cluster_identical_to_local_run(tone_model, long_tones, tmp_path):
    pytest.importorskip("distributed")
    from dask.distributed import Client, LocalCluster

    model = load_model(tone_model)
    inputs = audio.find_audio_files([long_tones])
    opts = an.AnalyzeOptions(overlap_s=1.0)
    rt = ("csv", "table", "json")
    local = an.run(model, inputs, str(tmp_path / "local"), rt, opts, progress_bar=False, workers=1)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        remote = an.run(model, inputs, str(tmp_path / "dask"), rt, opts, progress_bar=False, dask=client)
    assert (remote.files, remote.detections, remote.failed) == (local.files, local.detections, [])
    assert outputs_of(tmp_path / "dask") == outputs_of(tmp_path / "local")


def _die_once(model_path, chunk, opts):
    """Kills its worker process the first time it sees chunk 1 of a.wav (marker file), then works."""
    import os

    from birdsound import analyze

    marker = os.environ["BIRDSOUND_TEST_MARKER"]
    if chunk.path.endswith("a.wav") and chunk.index == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    if chunk.path.endswith("c.wav") and os.path.exists(marker + ".always"):
        os._exit(1)
    return analyze._dask_chunk(model_path, chunk, opts)


def dying_workers(monkeypatch, tmp_path):
    """Dask workers run :func:`_die_once` instead of the chunk task; returns its marker file."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(an, "_dask_chunk", _die_once)
    monkeypatch.setenv("BIRDSOUND_TEST_MARKER", str(tmp_path / "died"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    return tmp_path / "died"


def test_dask_worker_death_is_retried_or_reported(tone_model, long_tones, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import dask
    from dask.distributed import Client, LocalCluster

    dying_workers(monkeypatch, tmp_path)
    model = load_model(tone_model)
    inputs = audio.find_audio_files([long_tones])
    opts = an.AnalyzeOptions()
    an.run(model, inputs, str(tmp_path / "local"), ("csv",), opts, progress_bar=False)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        s = an.run(model, inputs, str(tmp_path / "dask"), ("csv",), opts, progress_bar=False, dask=client)
        assert os.path.exists(tmp_path / "died")  # a worker really died mid-file ...
        assert s.failed == [] and outputs_of(tmp_path / "dask") == outputs_of(tmp_path / "local")  # ... and was rerun
        open(str(tmp_path / "died") + ".always", "w").close()
        s = an.run(model, inputs, str(tmp_path / "dask2"), ("csv",), opts, progress_bar=False, dask=client)
    assert s.files == 2 and len(s.failed) == 1 and "c.wav" in s.failed[0] and "analysis failed" in s.failed[0]
    assert sorted(outputs_of(tmp_path / "dask2")) == ["a.birdsound.results.csv", "sub/b.birdsound.results.csv"]


def test_dask_worker_death_takes_no_other_file_along(tone_model, long_tones, tmp_path, monkeypatch):
    """One worker holding every task (no queueing, no Dask retries): c.wav kills it, and with it the
    tasks of sub/b.wav waiting there; b.wav must still be analysed, only c.wav reported."""
    pytest.importorskip("distributed")
    import dask
    from dask.distributed import Client, LocalCluster

    marker = dying_workers(monkeypatch, tmp_path)
    marker.touch()
    open(str(marker) + ".always", "w").close()
    model = load_model(tone_model)
    inputs = audio.find_audio_files([long_tones])
    assert [os.path.relpath(p, long_tones) for p, _ in inputs] == ["a.wav", "c.wav", os.path.join("sub", "b.wav")]
    opts = an.AnalyzeOptions()
    an.run(model, inputs, str(tmp_path / "local"), ("csv",), opts, progress_bar=False)
    lines = []
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": float("inf")}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        s = an.run(model, inputs, str(tmp_path / "dask"), ("csv",), opts, progress_bar=False, dask=client,
                   report=lines.append)
    assert s.files == 2 and len(s.failed) == 1 and "c.wav" in s.failed[0], lines
    local = outputs_of(tmp_path / "local")
    del local["c.birdsound.results.csv"]
    assert outputs_of(tmp_path / "dask") == local


def test_dask_unreachable_scheduler_is_one_line(tone_model, long_tones):
    pytest.importorskip("distributed")
    r = CliRunner().invoke(main, ["analyze", "-q", long_tones, "-m", tone_model, "--dask", "tcp://127.0.0.1:1"])
    assert r.exit_code == 2 and "--dask tcp://127.0.0.1:1" in r.output and "Traceback" not in r.output
