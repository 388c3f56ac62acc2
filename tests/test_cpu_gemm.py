"""Our own AVX2 + FMA kernels (backends/_cpu_gemm.h): the float32 affine
layer's backward pass, against float64 products and against the OpenBLAS
path they replace (``set_simd_kernels(False)``), and the stride-1
convolution without im2col (float32 and float64), against the float64
formula and the im2col path.

The shapes cover every edge of the kernels: rows of dout and of w that are
not multiples of the 6-row register tile, widths that are not multiples of
its 16 columns, dx's sum over more than 256 columns of dout (summed 256 at a
time) and dw's over more than 256 rows (the same), blocks of w of 48 rows
with a short last one; output rows shorter than a panel or not a multiple
of it, filter counts that are not multiples of the tile, no padding, and the
1x1 convolution that keeps im2col. The convolution's image kernel also has
an AVX-512 build (``set_avx512_kernels``), taken for output rows that its
wider panels pad no more than AVX2's: it sums each output in the same order,
so it must give the AVX2 build's bits.

numpy-only, like test_cpu_fused.py: these kernels exist only for host arrays.
"""
import numpy as np
import pytest

from helpers import assert_close, compiled_kernels as compiled

pytestmark = pytest.mark.usefixtures("numpy_backend")


@pytest.fixture
def kern():
    """The kernel module with the AVX2 + FMA kernels on; settings restored afterwards."""
    kern = compiled()
    if not kern.simd_kernels_available():
        pytest.skip("this CPU has no AVX2 + FMA")
    threads = kern.get_num_threads()
    previous = kern.set_simd_kernels(True)
    yield kern
    kern.set_simd_kernels(previous)
    kern.set_num_threads(threads)


@pytest.mark.parametrize("which, lacks", [("simd", "lacks AVX2 or FMA"),
                                          ("avx512", "lacks AVX-512")])
def test_kernel_switches_report_and_restore(which, lacks):
    # set_simd_kernels / set_avx512_kernels return the previous setting and
    # refuse True on a CPU without the instructions.
    kern = compiled()
    available = getattr(kern, which + "_kernels_available")()
    switch = getattr(kern, "set_%s_kernels" % which)
    assert isinstance(available, bool)
    previous = switch(False)
    try:
        assert switch(False) is False
        if available:
            assert switch(True) is False
            assert switch(False) is True
        else:
            with pytest.raises(ValueError, match=lacks):
                switch(True)
    finally:
        switch(previous)  # True only where available


SHAPES = [
    (50, 8192, 500),    # the CNN's hidden layer: 171 blocks, 31 panels + 4 columns
    (1, 1, 1),
    (5, 47, 15),        # one short block; a tile of 5 rows; 15 columns (masked)
    (6, 48, 16),        # exactly one tile, one block, one panel
    (7, 49, 17),        # 7 rows: tiles of 3 and 4; a block of 1 row after 48
    (13, 100, 257),     # dx sums 257 columns of dout: 256, then 1
    (300, 97, 20),      # dw sums 300 rows: 256, then 44
    (257, 50, 255),     # both (N * M just under the compiled path's limit)
    (2, 200, 1),        # a single column
]


def _inputs(shape, seed=3, dtype=np.float32):
    N, D, M = shape
    rng = np.random.RandomState(seed)
    return tuple(rng.randn(*s).astype(dtype) for s in ((N, D), (D, M), (N, M)))


# Rounding of the kernels' sums, relative to the scale of the result.
AFFINE_TOL = {np.float32: 1e-4, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("reg", [0.0, 0.25])
def test_simd_affine_backward_matches_the_products(kern, shape, reg, dtype):
    # float32: dx and dw on the AVX2 tiles; float64: dw on them (8 doubles
    # a panel, so the CNN's 500 columns end in a masked panel of 4), dx on
    # OpenBLAS.
    x, w, dout = _inputs(shape, dtype=dtype)
    x64, w64, d64 = (a.astype(np.float64) for a in (x, w, dout))
    dx, dw, sumsq = kern.affine_backward(x, w, dout, reg, True, True)
    assert dx.dtype == dw.dtype == dtype and sumsq.dtype == dtype
    # sums of N or M terms: errors grow with the terms, about sqrt(terms)
    # times the type's rounding, relative to the scale of the result
    tol = AFFINE_TOL[dtype]
    assert_close(dx, d64 @ w64.T, dtype, atol=tol * max(1, np.sqrt(shape[2])))
    assert_close(dw, x64.T @ d64 + reg * w64, dtype, atol=tol * max(1, np.sqrt(shape[0])))
    assert abs(sumsq / (w64 ** 2).sum() - 1) < 1e-6
    # the OpenBLAS path gives the same values to rounding
    kern.set_simd_kernels(False)
    bdx, bdw, bsumsq = kern.affine_backward(x, w, dout, reg, True, True)
    kern.set_simd_kernels(True)
    np.testing.assert_allclose(dx, bdx, rtol=tol, atol=tol * np.abs(bdx).max())
    np.testing.assert_allclose(dw, bdw, rtol=tol, atol=tol * np.abs(bdw).max())
    assert abs(sumsq / bsumsq - 1) < 1e-6
    # without dx: the same dw, bit for bit
    none, dw_only = kern.affine_backward(x, w, dout, reg, False)
    assert none is None
    np.testing.assert_array_equal(dw_only, dw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(50, 8192, 500), (7, 49, 17), (257, 50, 255)],
                         ids=["cnn-hidden", "edges", "long-sums"])
def test_simd_affine_backward_is_deterministic_across_threads(kern, shape, dtype):
    # Each element is summed by one thread in a fixed order, whatever the
    # threads and the prefetching of the next block.
    x, w, dout = _inputs(shape, seed=5, dtype=dtype)
    kern.set_num_threads(1)
    one = kern.affine_backward(x, w, dout, 0.1, True, True)
    kern.set_num_threads(2)
    two = kern.affine_backward(x, w, dout, 0.1, True, True)
    again = kern.affine_backward(x, w, dout, 0.1, True, True)
    for a, b, c in zip(one, two, again):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_simd_affine_backward_writes_all_of_reused_memory(kern, dtype):
    # dx and dw come from reused blocks left full of NaN: every element
    # must be written (masked stores at the last panel's 4 columns included).
    x, w, dout = _inputs((50, 8192, 500), seed=7, dtype=dtype)
    first = kern.affine_backward(x, w, dout, 0.0, True)
    expected = tuple(a.copy() for a in first)
    poisoned = set()
    for a in first:
        a.fill(np.nan)
        poisoned.add(a.ctypes.data)
    del first, a
    again = kern.affine_backward(x, w, dout, 0.0, True)
    assert poisoned & {a.ctypes.data for a in again}, "no poisoned block was reused"
    for a, b in zip(again, expected):
        np.testing.assert_array_equal(a, b)


def test_simd_path_gives_the_layer_results_of_openblas(kern):
    # The layer's gradients agree on both paths to rounding, in both types
    # (float64: dx from OpenBLAS either way, bit for bit).
    from xdl.layers import affine_backward, affine_forward
    rng = np.random.RandomState(11)
    x = rng.randn(50, 8, 32, 32)
    w = rng.randn(8192, 500) * 1e-2
    b = rng.randn(500)
    dout = rng.randn(50, 500)
    for dtype in (np.float64, np.float32):
        args = [a.astype(dtype) for a in (x, w, b)]
        _, cache = affine_forward(*args)
        simd = affine_backward(dout.astype(dtype), cache)
        kern.set_simd_kernels(False)
        blas = affine_backward(dout.astype(dtype), cache)
        kern.set_simd_kernels(True)
        for s, o in zip(simd, blas):
            assert s.dtype == dtype and s.shape == o.shape
            tol = AFFINE_TOL[dtype]
            np.testing.assert_allclose(s, o, rtol=tol, atol=tol * np.abs(o).max())
        if dtype == np.float64:
            np.testing.assert_array_equal(simd[0], blas[0])


# (N, C, H, W, F, KH, KW, pad): the CNN's layer; a row shorter than a panel
# (13 columns: masked stores) and 7 filters (tiles of 3 and 4); rows of
# 16 + 16 + 5; no padding; padding wider than the filter less one (dx
# folds the columns' gradient back); a 1x1 filter (whose padded image does
# not fit in the columns' space with its spare floats: the im2col path).
CONV_SHAPES = [(2, 3, 32, 32, 32, 7, 7, 3), (3, 2, 9, 13, 7, 3, 3, 1),
               (2, 4, 20, 37, 13, 5, 5, 2), (2, 3, 8, 8, 6, 3, 3, 0), (2, 2, 7, 7, 5, 3, 3, 3),
               (2, 5, 6, 6, 4, 1, 1, 0)]


def _conv_inputs(shape, seed, dtype):
    """x, w, the generator for more, and the output size (OH, OW) of a stride-1 case."""
    N, C, H, W, F, KH, KW, pad = shape
    rng = np.random.RandomState(seed)
    x = rng.randn(N, C, H, W).astype(dtype)
    w = rng.randn(F, C, KH, KW).astype(dtype)
    return x, w, rng, (H + 2 * pad - KH + 1, W + 2 * pad - KW + 1)


# Rounding of a sum of n float32 / float64 terms of unit scale, as an absolute tolerance.
SUM_TOL = {np.float32: 1e-4, np.float64: 1e-12}


def _assert_forward_formula(out, x, w, b, pad, OH, OW):
    """out (x's dtype) is the stride-1 convolution's float64 formula, to rounding; returns the tolerance."""
    from xdl.backends import numpy_kernels
    ref = numpy_kernels.conv_forward(*(a.astype(np.float64) for a in (x, w, b)), 1, pad, OH, OW)
    assert out.dtype == x.dtype
    tol = SUM_TOL[x.dtype.type] * np.sqrt(w[0].size)
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)
    return tol


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=["x".join(map(str, s)) for s in CONV_SHAPES])
def test_conv_forward_without_im2col_matches_the_formula(kern, shape, dtype):
    # Stride 1 reads the columns in place from the padded image
    # (xdl_conv_image); the float64 formula and the im2col path agree.
    N, C, H, W, F, KH, KW, pad = shape
    x, w, rng, (OH, OW) = _conv_inputs(shape, 4, dtype)
    b = rng.randn(F).astype(dtype)
    out = kern.conv_forward(x, w, b, 1, pad, OH, OW)
    tol = _assert_forward_formula(out, x, w, b, pad, OH, OW)
    kern.set_simd_kernels(False)
    blas = kern.conv_forward(x, w, b, 1, pad, OH, OW)
    kern.set_simd_kernels(True)
    np.testing.assert_allclose(out, blas, rtol=tol, atol=tol * np.abs(blas).max())
    # the fused layer takes the same per-image convolution: the same bits
    # as the unfused chain (conv, pool, ReLU)
    if OH % 2 == 0 and OW % 2 == 0:
        pooled, _ = kern.conv_relu_pool_forward(x, w, b, 1, pad, OH, OW, 2, 2, 2, OH // 2, OW // 2)
        unfused = np.maximum(out.reshape(N, F, OH // 2, 2, OW // 2, 2).max(axis=(3, 5)), 0)
        np.testing.assert_array_equal(pooled, unfused)


def test_strided_convolution_keeps_im2col(kern):
    # Stride 2 reads the columns through im2col on both settings: the same bits.
    rng = np.random.RandomState(6)
    x = rng.randn(2, 3, 11, 11).astype(np.float32)
    w = rng.randn(5, 3, 3, 3).astype(np.float32)
    b = rng.randn(5).astype(np.float32)
    out = kern.conv_forward(x, w, b, 2, 1, 6, 6)
    kern.set_simd_kernels(False)
    np.testing.assert_array_equal(kern.conv_forward(x, w, b, 2, 1, 6, 6), out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=["x".join(map(str, s)) for s in CONV_SHAPES])
def test_conv_filter_gradient_without_im2col_matches_the_formula(kern, shape, dtype):
    # Stride 1 takes dw from the padded image and dout transposed
    # (xdl_conv_dw_image), and dx as the convolution of the padded dout with
    # the flipped filters (xdl_conv_image, no col2im): the float64 formula
    # and the im2col path agree, and compute_dx does not change dw or db.
    from xdl.backends import numpy_kernels
    N, C, H, W, F, KH, KW, pad = shape
    x, w, rng, (OH, OW) = _conv_inputs(shape, 8, dtype)
    dout = rng.randn(N, F, OH, OW).astype(dtype)
    dx, dw, db = kern.conv_backward(dout, x, w, 1, pad, OH, OW)
    rdx, rdw, rdb = numpy_kernels.conv_backward(*(a.astype(np.float64) for a in (dout, x, w)),
                                                1, pad, OH, OW)
    terms = SUM_TOL[dtype] * np.sqrt(N * OH * OW)
    for got, ref, tol in ((dw, rdw, terms), (db, rdb, terms),
                          (dx, rdx, SUM_TOL[dtype] * np.sqrt(F * KH * KW))):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    none, dw_only, db_only = kern.conv_backward(dout, x, w, 1, pad, OH, OW, False)
    assert none is None
    np.testing.assert_array_equal(dw_only, dw)
    np.testing.assert_array_equal(db_only, db)
    kern.set_simd_kernels(False)
    bdx, bdw, _ = kern.conv_backward(dout, x, w, 1, pad, OH, OW)
    kern.set_simd_kernels(True)
    dx_tol = SUM_TOL[dtype] * np.sqrt(F * KH * KW)
    np.testing.assert_allclose(dx, bdx, rtol=dx_tol, atol=dx_tol * np.abs(bdx).max())
    np.testing.assert_allclose(dw, bdw, rtol=terms, atol=terms * np.abs(bdw).max())


@pytest.fixture
def wide_kern(kern):
    """kern with the AVX-512 build on (skipped without it); restored afterwards."""
    if not kern.avx512_kernels_available():
        pytest.skip("this CPU has no AVX-512")
    previous = kern.set_avx512_kernels(True)
    yield kern
    kern.set_avx512_kernels(previous)


def test_wide_panels_where_they_pad_no_more(wide_kern):
    # float32: AVX2 panels of 16, AVX-512 of 32; float64: 8 and 16.
    for n, wide in ((32, True), (20, True), (64, True), (16, False), (13, False),
                    (33, False), (40, False), (8, False)):
        assert wide_kern._wide_panels_for(n, 4) is wide, n
    for n, wide in ((16, True), (13, True), (11, True), (8, False), (37, False), (32, True)):
        assert wide_kern._wide_panels_for(n, 8) is wide, n
    wide_kern.set_avx512_kernels(False)
    assert not wide_kern._wide_panels_for(32, 4)


# Rows the AVX-512 build takes: 32 (the CNN), 20 and 13/11 (masked lanes:
# float32 20 of 32, float64 13 or 11 of 16), 64 (two wide panels), and
# ones it leaves to AVX2 (16, 37).
WIDE_SHAPES = CONV_SHAPES[:3] + [(2, 2, 7, 7, 5, 3, 3, 3), (2, 3, 6, 20, 7, 3, 3, 1),
                                 (1, 2, 3, 64, 6, 3, 3, 1), (2, 3, 16, 16, 8, 3, 3, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", WIDE_SHAPES, ids=["x".join(map(str, s)) for s in WIDE_SHAPES])
def test_conv_avx512_build_gives_the_avx2_bits(wide_kern, shape, dtype):
    # Forward (and the fused layer) and dx, which is the forward kernel on
    # the padded dout, with and without the AVX-512 build.
    N, C, H, W, F, KH, KW, pad = shape
    x, w, rng, (OH, OW) = _conv_inputs(shape, 11, dtype)
    b = rng.randn(F).astype(dtype)
    dout = rng.randn(N, F, OH, OW).astype(dtype)

    def run():
        out = [wide_kern.conv_forward(x, w, b, 1, pad, OH, OW)]
        out += list(wide_kern.conv_backward(dout, x, w, 1, pad, OH, OW))
        if OH % 2 == 0 and OW % 2 == 0:
            out += list(wide_kern.conv_relu_pool_forward(x, w, b, 1, pad, OH, OW, 2, 2, 2,
                                                         OH // 2, OW // 2))
        return out

    wide = run()
    _assert_forward_formula(wide[0], x, w, b, pad, OH, OW)
    wide_kern.set_avx512_kernels(False)
    for got, narrow in zip(wide, run()):
        np.testing.assert_array_equal(got, narrow)


# Element counts for the square-root update rules' vector loops: AVX-512 (16 floats or
# 8 doubles), AVX2 (8 or 4) and SSE2 (4 or 2) each leave a tail to the next
# narrower loop, then to the scalar one; 2 ** 16 + 37 is two chunks of the
# team (ELEMENT_CHUNK) with a short second one.
ADAM_SIZES = [1, 3, 7, 15, 16, 17, 31, 33, 1000, 2 ** 16 + 37]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", ADAM_SIZES)
@pytest.mark.parametrize("rule", ["adam", "adamw", "rmsprop"])
def test_square_root_rules_give_the_same_bits_in_every_vector_build(kern, dtype, n, rule):
    # Adam's, AdamW's and RMSprop's passes run AVX-512, AVX2 or SSE2
    # vectors (the widest the CPU and the switches allow), each with the
    # scalar loop's operations in its order and no fused multiply-add:
    # every build must give the bits of the scalar formula (numpy_kernels),
    # in place too.
    from xdl.backends import numpy_kernels
    rng = np.random.RandomState(n)
    w, dw, m = (rng.randn(n).astype(dtype) for _ in range(3))
    v = rng.rand(n).astype(dtype)
    if rule == "rmsprop":
        states, args = (v,), (1e-2, 0.9, 1e-7)
    else:
        states, args = (m, v), (0.8, 0.99, 1e-2, 1e-7) + ((0.97,) if rule == "adamw" else ())
    refs = tuple(s.copy() for s in states)
    ref = getattr(numpy_kernels, rule)(w, dw, *refs, *args)[0]
    builds = [(False, False), (True, False)]
    if kern.avx512_kernels_available():
        builds.append((True, True))
    avx512 = kern.set_avx512_kernels(False)
    try:
        for simd, wide in builds:
            kern.set_simd_kernels(simd)
            kern.set_avx512_kernels(wide)
            for in_place in (False, True):
                copies, ww = tuple(s.copy() for s in states), w.copy()
                out = getattr(kern, rule)(ww, dw, *copies, *args,
                                          out=ww if in_place else None)[0]
                assert (out is ww) == in_place
                for got, want in zip((out,) + copies, (ref,) + refs):
                    np.testing.assert_array_equal(got, want, err_msg="simd=%s avx512=%s"
                                                  % (simd, wide))
    finally:
        kern.set_simd_kernels(True)
        kern.set_avx512_kernels(avx512)
