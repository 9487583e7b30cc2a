"""The window rule, checked against a brute-force reference on many block sizes."""

import numpy as np
import pytest

from birdsound.stream import Windower, band_limit, fill_tail, hop_samples, windows_from_blocks


def reference(x: np.ndarray, window: int, hop: int):
    """Window k covers [k*hop, k*hop+window); one more window covers any remainder: its samples
    looped, and (alt) the input's last full window when there is one."""
    n, out, k = len(x), [], 0
    while True:
        s = k * hop
        if s + window <= n:
            out.append((s, x[s:s + window], window, None))
        else:
            prev_end = (k - 1) * hop + window if k else 0
            if n > prev_end and s < n:
                out.append((s, fill_tail(x[s:], window), n - s, x[n - window:] if n >= window else None))
            break
        k += 1
    return out


def blocks(x, size):
    return [x[i:i + size] for i in range(0, len(x), size)]


@pytest.mark.parametrize("n", [1, 50, 99, 100, 101, 250, 1000, 1037])
@pytest.mark.parametrize("window,hop", [(100, 100), (100, 40), (100, 1), (100, 99)])
@pytest.mark.parametrize("block", [1, 7, 100, 333, 5000])
def test_windows_match_reference(n, window, hop, block):
    x = np.arange(n, dtype=np.float32) + 1
    got = [(int(s), w, int(l), None if b.alt is None else b.alt[i])
           for b in windows_from_blocks(blocks(x, block), window, hop, batch=5)
           for i, (s, w, l) in enumerate(zip(b.starts, b.windows, b.lengths))]
    ref = reference(x, window, hop)
    assert [g[0] for g in got] == [r[0] for r in ref]
    assert [g[2] for g in got] == [r[2] for r in ref]
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g[1], r[1])
        assert (g[3] is None) == (r[3] is None)
        if r[3] is not None:
            np.testing.assert_array_equal(g[3], r[3])


def test_every_sample_covered_and_nothing_past_end():
    x = np.ones(10_000, np.float32)
    bs = list(windows_from_blocks(blocks(x, 999), 3000, 2000))
    starts = np.concatenate([b.starts for b in bs])
    ends = starts + np.concatenate([b.lengths for b in bs])
    assert starts[0] == 0 and ends.max() == 10_000
    assert list(starts) == [0, 2000, 4000, 6000, 8000]
    assert list(ends) == [3000, 5000, 7000, 9000, 10_000]


def test_batches_respect_batch_size_and_memory():
    w = Windower(100, 50, batch=4)
    out = list(w.push(np.zeros(10_000, np.float32)))
    assert all(len(b.starts) <= 4 for b in out)
    assert len(w.buf) < 100 + 2 * 50  # only what a future window (or the tail window) needs is kept


def test_fill_tail_loops_without_clicks_and_keeps_silence():
    sr = 32000
    t = np.arange(int(0.7 * sr)) / sr
    rest = (0.5 * np.sin(2 * np.pi * 3000 * t + 0.3)).astype(np.float32)
    w = fill_tail(rest, 3 * sr)
    assert w.shape == (3 * sr,) and w.dtype == np.float32
    np.testing.assert_array_equal(w[1000:len(rest) - 1000], rest[1000:-1000])  # the samples themselves, looped
    np.testing.assert_array_equal(w[len(rest) + 1000:2 * len(rest) - 1000], rest[1000:-1000])
    # a plain loop would jump at the join; the dip keeps every step as small as the tone's own
    assert np.abs(np.diff(w)).max() <= np.abs(np.diff(rest)).max() * 1.01
    assert not fill_tail(np.zeros(5000, np.float32), 96000).any()
    assert not fill_tail(np.zeros(0, np.float32), 96000).any()


def test_tail_window_is_its_own_samples_and_the_last_full_window():
    x = np.arange(1, 251, dtype=np.float32)
    last = list(windows_from_blocks([x], 100, 100))[-1]
    assert int(last.starts[-1]) == 200 and int(last.lengths[-1]) == 50  # the rule: starts at 200, 50 real samples
    np.testing.assert_array_equal(last.alt[-1], x[150:250])  # real context, no padding
    np.testing.assert_array_equal(last.windows[-1], fill_tail(x[200:], 100))  # its own samples, looped
    # a species' score is the lower of the two versions
    scores = last.score(lambda w: np.stack([w[:, 0], w[:, -1]], axis=1))
    np.testing.assert_array_equal(scores, np.minimum([[201, fill_tail(x[200:], 100)[-1]]], [[151, 250]]))


def test_hop_from_overlap():
    assert hop_samples(96000, 0.0, 32000) == 96000
    assert hop_samples(96000, 1.5, 32000) == 48000
    with pytest.raises(ValueError):
        hop_samples(96000, 3.0, 32000)


def test_band_limit_removes_out_of_band_tone():
    sr = 32000
    t = np.arange(sr) / sr
    x = (np.sin(2 * np.pi * 500 * t) + np.sin(2 * np.pi * 5000 * t)).astype(np.float32)[None]
    y = band_limit(x, sr, 2000, 8000)
    spec = np.abs(np.fft.rfft(y[0]))
    assert spec[500] < 1e-3 * spec[5000]


def test_quiet_stderr_silences_c_libraries_but_not_other_threads_error_lines():
    """While one thread decodes with fd 2 silenced (libmpg123's chatter), an error line another thread prints
    must still reach the terminal: a batch run reports every bad file."""
    import subprocess
    import sys

    code = ("import os, sys, threading\n"
            "from birdsound.util import quiet_stderr\n"
            "with quiet_stderr():\n"
            "    os.write(2, b'C library noise\\n')\n"
            "    t = threading.Thread(target=lambda: print('error: x.wav: kept', file=sys.stderr, flush=True))\n"
            "    t.start(); t.join()\n"
            "print('after', file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "error: x.wav: kept" in p.stderr and "after" in p.stderr and "C library noise" not in p.stderr, p.stderr
