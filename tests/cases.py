"""Shape cases shared by the layer tests (test_conv_kernels.py) and the
kernel contract (test_kernel_contract.py, which adds a full shape matrix
and more cases to these)."""

# (x shape, w shape, stride, pad): N >= 2, C >= 2, H != W, kernels 3x3, 3x2,
# 2x3 and 1x1, strides 1-3, pads 0-2; every case tiles.
CONV_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1),
    ((3, 2, 7, 9), (5, 2, 3, 3), 2, 0),
    ((2, 3, 6, 8), (4, 3, 3, 2), 1, 2),
    ((2, 2, 9, 8), (3, 2, 3, 2), 3, 0),
    ((2, 3, 8, 5), (4, 3, 2, 3), 2, 1),
    ((3, 2, 5, 7), (2, 2, 2, 3), 1, 0),
    ((2, 4, 5, 7), (3, 4, 1, 1), 1, 0),
    ((2, 3, 6, 9), (2, 3, 1, 1), 3, 2),
    ((4, 2, 10, 13), (6, 2, 3, 3), 3, 1),
]

# (x shape, pool_height, pool_width, stride): non-overlapping windows that
# tile, overlapping windows, gaps between windows (stride > window), 1x1.
POOL_CASES = [
    ((2, 3, 8, 6), 2, 2, 2),
    ((3, 2, 9, 7), 3, 3, 2),
    ((2, 3, 6, 7), 2, 3, 1),
    ((2, 2, 8, 11), 2, 2, 3),
    ((2, 3, 9, 8), 3, 2, 3),
    ((2, 3, 9, 6), 3, 3, 3),
    ((2, 2, 5, 4), 1, 1, 1),
]


def conv_ids(cases):
    return ["x%s-w%s-s%d-p%d" % ("x".join(map(str, xs)), "x".join(map(str, ws)), s, p)
            for xs, ws, s, p in cases]


def pool_ids(cases):
    return ["x%s-%dx%d-s%d" % ("x".join(map(str, xs)), ph, pw, s) for xs, ph, pw, s in cases]
