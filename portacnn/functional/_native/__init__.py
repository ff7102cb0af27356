"""Fused kernels of the array libraries themselves, for backends that declare ``native_kernels``.

The generic math (im2col and one matrix multiply for conv2d, one strided
slice per tap for max pooling, a scatter-add for their backwards) runs on
every backend. Where a library has its own fused CNN ops, one module here per
backend, named after it (``torch.py``), calls them instead:

* ``conv2d(x, weight, bias, geometry)`` and
  ``conv2d_backward(grad_out, x, weight, geometry, needs)`` →
  ``(grad_x, grad_weight, grad_bias)``, None where ``needs`` (three bools)
  says that gradient is not wanted;
* ``max_pool2d(x, kernel, stride, padding, ceil_mode)``,
  ``max_pool2d_with_argmax(...)`` → ``(out, argmax)``, and
  ``max_pool2d_backward(grad_out, x, kernel, stride, padding, ceil_mode, argmax)``,
  which finds the maxima again when ``argmax`` is None.

``geometry`` is ``conv.ConvGeometry``; kernel, stride and padding are pairs
of ints. The ops in ``conv`` and ``pooling`` check their arguments first, so
errors read the same on either path, and a kernel only replaces the
arithmetic: it returns new arrays and never writes into its inputs.
``portacnn._arrays.native_kernels_for(x)`` finds the module (cached per array
type). ``tests/test_native_kernels.py`` checks that both paths agree.
"""

from __future__ import annotations

import contextlib

from ... import _arrays


@contextlib.contextmanager
def generic_only():
    """Run the block on the generic math, whatever the backends declare (for tests and A/B timings).

    Not thread-safe: it switches the kernels off for the whole process.
    """
    previous = _arrays._generic_only
    _arrays._generic_only = True
    _arrays._NATIVE_KERNELS_BY_TYPE.clear()
    try:
        yield
    finally:
        _arrays._generic_only = previous
        _arrays._NATIVE_KERNELS_BY_TYPE.clear()
