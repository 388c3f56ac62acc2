"""Counter-based uniform random numbers, the same on every backend.

``uniform(xp, shape, seed)`` returns the first ``prod(shape)`` outputs of
the SplitMix64 generator started at ``seed`` (Steele, Lea and Flood, "Fast
splittable pseudorandom number generators", 2014), as float64 in [0, 1):

    z_i = seed + (i + 1) * 0x9E3779B97F4A7C15          (mod 2**64)
    z_i = (z_i ^ (z_i >> 30)) * 0xBF58476D1CE4E5B9
    z_i = (z_i ^ (z_i >> 27)) * 0x94D049BB133111EB
    u_i = (z_i ^ (z_i >> 31)) >> 11  times 2**-53

Each output depends only on (seed, i), so the numbers are computed where
the array lives: a dropout mask on the GPU is made on the GPU (no host
array copied up every step) and is bit for bit the mask the CPU makes from
the same seed. The arithmetic is plain unsigned 64-bit, which NumPy and
CuPy both do with wrap-around.
"""
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_53 = 2.0 ** -53


def new_seed():
    """A seed for uniform() drawn from NumPy's global generator (np.random.seed fixes it)."""
    return int(np.random.randint(0, 2 ** 63 - 1, dtype=np.int64))


def uniform(xp, shape, seed):
    """
    Inputs:
    - xp: numpy or cupy, where the numbers are made
    - shape: shape of the result
    - seed: integer in [0, 2**64)

    Returns a float64 array of the given shape with values in [0, 1).
    """
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError("seed must be an integer in [0, 2**64), got %d" % seed)
    n = int(np.prod(shape, dtype=np.int64))
    z = (xp.arange(1, n + 1, dtype=xp.uint64) * _GOLDEN) + np.uint64(seed)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(xp.float64) * _TWO_POW_53).reshape(shape)


def integers(xp, size, high, seed):
    """
    Inputs:
    - xp: numpy or cupy, where the numbers are made
    - size: number of integers
    - high: exclusive upper bound (> 0)
    - seed: integer in [0, 2**64)

    Returns an int64 array of shape (size,) with values in [0, high), drawn
    uniformly with replacement (floor(u * high) of uniform()'s numbers).
    """
    if int(high) <= 0:
        raise ValueError("high must be > 0, got %d" % int(high))
    idx = (uniform(xp, (size,), seed) * int(high)).astype(xp.int64)
    # u < 1, but u * high can round up to high when high is large.
    return xp.minimum(idx, int(high) - 1)
