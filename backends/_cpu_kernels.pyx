# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled CPU kernels: convolution (im2col + GEMM), col2im, max pooling,
fused elementwise kernels (update rules, sum of squares, axpy) and a tiled
matrix product for the affine layers.

Same functions, arguments and layouts as ``numpy_kernels``; ``cpu`` decides
per call whether they apply. One file per kind of work, included here and
sharing this module's namespace:

- ``_cpu_common.pxi``: the float type, BLAS, work items, the work objects
  the thread team runs, array addresses and argument checks;
- ``_cpu_handoff.pxi``: how the thread team hands calls to its workers
  (spinning, then blocking);
- ``_cpu_memory.pxi``: pooled_empty, reused memory for large outputs;
- ``_cpu_conv.pxi``: im2col, col2im, conv_forward, conv_backward;
- ``_cpu_pool.pxi``: maxpool_forward, maxpool_backward;
- ``_cpu_elementwise.pxi``: sgd, sgd_momentum, rmsprop, adam, adamw, adamw_alongside,
  sum_of_squares, axpy;
- ``_cpu_gemm.pxi``: matrix-product kernels with AVX2 + FMA (selected at run
  time): float32 affine_backward, the stride-1 convolution without im2col;
- ``_cpu_matmul.pxi``: matmul;
- ``_cpu_affine.pxi``: affine_backward (dx and dw in one sweep over w);
- ``_cpu_conv_relu_pool.pxi``: conv_relu_pool_forward, conv_relu_pool_backward
  (convolution, bias, ReLU and max pooling fused per image).

The thread team and the workspace cache are plain Python (``_cpu_team``),
with the handoff's atomics here.
Every output element is written by one thread in a fixed order, so results
do not depend on the threads: repeated calls are bit-identical. How the work
is split, and why (with the measurements): xdl/DESIGN.md, "The CPU kernels".
"""
import numpy as np

from xdl.backends import _boundary, _cpu_team
from xdl.backends._cpu_team import clear_workspace, get_num_threads, set_num_threads  # noqa: F401

include "_cpu_common.pxi"
include "_cpu_handoff.pxi"
include "_cpu_memory.pxi"
include "_cpu_gemm.pxi"
include "_cpu_conv.pxi"
include "_cpu_pool.pxi"
include "_cpu_conv_relu_pool.pxi"
include "_cpu_elementwise.pxi"
include "_cpu_matmul.pxi"
include "_cpu_affine.pxi"
