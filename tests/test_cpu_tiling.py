"""How the compiled CPU kernels split their GEMMs (xdl.backends._cpu_kernels):
the tiles and runs of tiles chosen for speed must never change a result."""
import numpy as np
import pytest

from xdl.backends import cpu

from helpers import assert_close, compiled_kernels as compiled


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


def test_band_rows_keep_an_images_columns_within_the_budget():
    kern = compiled()
    budget = kern.CONV_BAND_BYTES
    assert kern._band_rows(147, 32, 32, 4) == 16    # the CNN's float32 columns: 2 bands
    assert kern._band_rows(147, 32, 32, 8) == 11    # float64: 3 bands (11, 11, 10 rows)
    assert kern._band_rows(147, 32, 32, 0) == 32    # no itemsize: one band
    for K, OH, OW, size in [(147, 32, 32, 8), (27, 31, 31, 4), (4000, 8, 300, 8), (9, 1, 5, 4),
                            (3, 100, 7, 4)]:
        bh = kern._band_rows(K, OH, OW, size)
        assert 1 <= bh <= OH
        assert bh == 1 or K * bh * OW * size <= budget          # each band fits
        bands = -(-OH // bh)
        assert bands == 1 or K * -(-OH // (bands - 1)) * OW * size > budget  # no fewer would


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 2)])
def test_convolution_in_bands_of_rows_matches_the_formulas(monkeypatch, dtype, stride, pad):
    # Bands of 1, 2 or 3 output rows (a short last band included) for every
    # convolution kernel, fused or not, dx included: the formulas' results.
    kern = compiled()
    rng = np.random.RandomState(5)
    x, w, b = rng.randn(3, 2, 11, 9), rng.randn(4, 2, 3, 3), rng.randn(4)
    x, w, b = (a.astype(dtype) for a in (x, w, b))
    OH, OW = (11 + 2 * pad - 3) // stride + 1, (9 + 2 * pad - 3) // stride + 1
    dout = rng.randn(3, 4, OH, OW).astype(dtype)
    POH, POW = OH // 2, OW // 2
    ref = cpu.numpy_kernels
    fwd = ref.conv_forward(x, w, b, stride, pad, OH, OW)
    bwd = ref.conv_backward(dout, x, w, stride, pad, OH, OW)
    pooled, argmax = ref.conv_relu_pool_forward(x, w, b, stride, pad, OH, OW, 2, 2, 2, POH, POW)
    dpooled = rng.randn(*pooled.shape).astype(dtype)
    pool_bwd = ref.conv_relu_pool_backward(dpooled, argmax, x, w, stride, pad, OH, OW, 2, 2, 2,
                                           POH, POW)
    for rows in (1, 2, 3):
        monkeypatch.setattr(kern, "CONV_BAND_BYTES", rows * 18 * OW * np.dtype(dtype).itemsize)
        assert kern._band_rows(18, OH, OW, np.dtype(dtype).itemsize) <= rows
        assert_close(kern.conv_forward(x, w, b, stride, pad, OH, OW), fwd, dtype)
        for got, want in zip(kern.conv_backward(dout, x, w, stride, pad, OH, OW), bwd):
            assert_close(got, want, dtype)
        got_pooled, got_argmax = kern.conv_relu_pool_forward(x, w, b, stride, pad, OH, OW,
                                                             2, 2, 2, POH, POW)
        assert_close(got_pooled, pooled, dtype)
        np.testing.assert_array_equal(got_argmax, argmax)
        got = kern.conv_relu_pool_backward(dpooled, argmax, x, w, stride, pad, OH, OW, 2, 2, 2,
                                           POH, POW)
        for g, want in zip(got, pool_bwd):
            assert_close(g, want, dtype)
