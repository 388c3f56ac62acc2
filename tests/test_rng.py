"""xdl._rng, the counter-based generator of dropout masks on the GPU: its
numbers against a plain-Python SplitMix64, on the host (the same array code
runs on cupy; test_cross_backend.py compares the GPU's masks with these)."""
import numpy as np
import pytest

from xdl import _rng

MASK64 = 2 ** 64 - 1


def splitmix64(seed, n):
    """The reference generator, one Python integer at a time (Vigna's splitmix64.c)."""
    out, state = [], seed
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def test_reference_has_the_published_first_outputs():
    # The widely quoted test vector of splitmix64.c for seed 1234567.
    assert splitmix64(1234567, 3) == [6457827717110365317, 3203168211198807973,
                                      9817491932198370423]


@pytest.mark.parametrize("seed", [0, 17, 1234567, 2 ** 63 + 5, 2 ** 64 - 1])
def test_uniform_is_splitmix64_scaled_to_the_unit_interval(seed):
    u = _rng.uniform(np, (7, 9), seed)
    assert u.shape == (7, 9) and u.dtype == np.float64
    expected = [(z >> 11) * 2.0 ** -53 for z in splitmix64(seed, 63)]
    np.testing.assert_array_equal(u.ravel(), expected)


def test_uniform_statistics_and_range():
    u = _rng.uniform(np, (200, 500), 3)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    # Neighbouring seeds give unrelated streams.
    v = _rng.uniform(np, (200, 500), 4)
    assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.01


def test_new_seed_follows_numpys_global_seed():
    np.random.seed(8)
    a = _rng.new_seed()
    np.random.seed(8)
    assert _rng.new_seed() == a and 0 <= a < 2 ** 63


@pytest.mark.parametrize("seed", [-1, 2 ** 64])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        _rng.uniform(np, (3,), seed)


def test_integers_are_floor_of_uniform_times_high():
    idx = _rng.integers(np, 1000, 37, 11)
    assert idx.dtype == np.int64 and idx.shape == (1000,)
    np.testing.assert_array_equal(idx, np.floor(_rng.uniform(np, (1000,), 11) * 37))
    assert idx.min() == 0 and idx.max() == 36
    counts = np.bincount(_rng.integers(np, 37000, 37, 12), minlength=37)
    assert counts.min() > 850 and counts.max() < 1150  # about 1000 each
    # high = 1, and a high where u * high rounds up to high without the clip
    assert np.all(_rng.integers(np, 5, 1, 3) == 0)
    assert _rng.integers(np, 1000, 2 ** 62, 5).max() < 2 ** 62
    with pytest.raises(ValueError, match="high must be > 0, got 0"):
        _rng.integers(np, 3, 0, 1)
