"""The window rule, checked against a brute-force reference on many block sizes."""

import numpy as np
import pytest

from birdsound.stream import Windower, band_limit, hop_samples, windows_from_blocks


def reference(x: np.ndarray, window: int, hop: int):
    """Window k covers [k*hop, k*hop+window); one padded window covers any remainder."""
    n, out, k = len(x), [], 0
    while True:
        s = k * hop
        if s + window <= n:
            out.append((s, x[s:s + window], window))
        else:
            prev_end = (k - 1) * hop + window if k else 0
            if n > prev_end and s < n:
                w = np.zeros(window, np.float32)
                w[:n - s] = x[s:]
                out.append((s, w, n - s))
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
    got = [(int(s), w, int(l)) for b in windows_from_blocks(blocks(x, block), window, hop, batch=5)
           for s, w, l in zip(b.starts, b.windows, b.lengths)]
    ref = reference(x, window, hop)
    assert [g[0] for g in got] == [r[0] for r in ref]
    assert [g[2] for g in got] == [r[2] for r in ref]
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g[1], r[1])


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
    assert len(w.buf) < 100 + 50  # only the tail that a future window needs is kept


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
