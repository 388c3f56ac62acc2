"""How the compiled CPU kernels split their GEMMs (xdl.backends._cpu_kernels):
the tiles and runs of tiles chosen for speed must never change a result."""
import numpy as np
import pytest

from xdl.backends import cpu

from helpers import assert_close


def compiled():
    if cpu.compiled is None:
        pytest.fail("the compiled CPU kernels are not built (%s)" % cpu._import_error)
    return cpu.compiled


def test_matmul_runs_of_tiles_give_identical_results(dtype):
    # A run of tiles is summed block by block over K for all its tiles; each
    # tile still adds its blocks in order, so any run length gives the same bits.
    kern = compiled()
    rng = np.random.RandomState(3)
    a, b = rng.randn(37, 300).astype(dtype), rng.randn(300, 90).astype(dtype)
    tiles = (8, 16, 64)  # 5 x 6 tiles, 5 blocks of K
    first = kern.matmul(a, b, tiles=tiles, grain=1)
    assert_close(first, a.astype(np.float64) @ b.astype(np.float64), dtype,
                 atol=1e-4 if dtype == np.float32 else 1e-11)
    for grain in (2, 7, 30, 100):
        np.testing.assert_array_equal(kern.matmul(a, b, tiles=tiles, grain=grain), first)
    np.testing.assert_array_equal(kern.matmul(np.asfortranarray(a), b, tiles=tiles, grain=4),
                                  kern.matmul(np.asfortranarray(a), b, tiles=tiles, grain=1))


def test_tile_grain_keeps_every_thread_busy():
    kern = compiled()
    assert kern._tile_grain(7, 2) == 1          # few tiles: one at a time
    assert kern._tile_grain(512, 2) == 32       # 16 runs: 8 per thread
    assert kern._tile_grain(7, 1) == 7          # one thread: one run
    for tiles in (1, 15, 16, 17, 100, 684, 5000):
        for threads in (2, 3, 8):
            grain = kern._tile_grain(tiles, threads)
            assert grain >= 1
            assert grain == 1 or -(-tiles // grain) >= 8 * threads


def test_filter_gradient_tiles_fit_and_come_in_rows_of_8():
    kern = compiled()
    limit = kern.GEMM_TILE_LIMIT
    assert kern._dw_tiles(32, 147, 1024) == (8, 32, 1024)  # ThreeLayerConvNet's first layer
    for F, K, P in [(32, 147, 1024), (64, 576, 256), (3, 27, 49), (256, 2304, 64), (7, 18, 72)]:
        wk, wf, wp = kern._dw_tiles(F, K, P)
        assert wk * wf * wp <= limit
        assert 1 <= wk <= K and 1 <= wf <= F and 1 <= wp <= P
        assert wk == K or wk <= 8 or wk % 8 == 0
