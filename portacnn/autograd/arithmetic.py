"""Tensor arithmetic, reductions, reshaping, slicing and ``cat``, each a ``Function``.

These ops have no counterpart in ``functional`` (which holds the layer
math), so their gradients are written here, once. Operands may be Tensors,
backend arrays (constants) or Python numbers; arrays of different backends
or devices are refused with the message naming both sides.
"""

from __future__ import annotations

import numbers
import operator

import array_api_extra as xpx

from .._arrays import device_of, namespace_of, reshape_sizes, writes_through_views
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from .tape import Function, Tensor

__all__ = ["cat"]


def _shape(value):
    return tuple(value.shape) if hasattr(value, "shape") else ()


def _operands_namespace(a, b):
    """The namespace of the array operand(s); refuses two arrays from different backends or devices."""
    if hasattr(a, "shape") and hasattr(b, "shape"):
        return namespace_of(a, b, names=("left operand", "right operand"))
    return namespace_of(a if hasattr(a, "shape") else b)


def _sum_to_shape(xp, grad, shape):
    """Undo broadcasting: sum ``grad`` down to ``shape``, the operand's own."""
    if tuple(grad.shape) == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = xp.sum(grad, axis=tuple(range(extra)))
    axes = tuple(axis for axis, (got, wanted) in enumerate(zip(grad.shape, shape)) if wanted == 1 and got != 1)
    if axes:
        grad = xp.sum(grad, axis=axes, keepdims=True)
    return grad


class Add(Function):
    def forward(self, a, b):
        self.xp = _operands_namespace(a, b)
        self.shapes = (_shape(a), _shape(b))
        return a + b

    def backward(self, grad):
        xp, (a_shape, b_shape) = self.xp, self.shapes
        need_a, need_b = self.needs_input_grad
        return (_sum_to_shape(xp, grad, a_shape) if need_a else None,
                _sum_to_shape(xp, grad, b_shape) if need_b else None)


class Sub(Function):
    def forward(self, a, b):
        self.xp = _operands_namespace(a, b)
        self.shapes = (_shape(a), _shape(b))
        return a - b

    def backward(self, grad):
        xp, (a_shape, b_shape) = self.xp, self.shapes
        need_a, need_b = self.needs_input_grad
        return (_sum_to_shape(xp, grad, a_shape) if need_a else None,
                _sum_to_shape(xp, -grad, b_shape) if need_b else None)


class Mul(Function):
    def forward(self, a, b):
        self.xp = _operands_namespace(a, b)
        need_a, need_b = self.needs_input_grad
        self.a, self.b = (a if need_b else None), (b if need_a else None)
        self.shapes = (_shape(a), _shape(b))
        return a * b

    def backward(self, grad):
        xp, (a_shape, b_shape) = self.xp, self.shapes
        need_a, need_b = self.needs_input_grad
        return (_sum_to_shape(xp, grad * self.b, a_shape) if need_a else None,
                _sum_to_shape(xp, grad * self.a, b_shape) if need_b else None)


class Div(Function):
    def forward(self, a, b):
        self.xp = _operands_namespace(a, b)
        self.a, self.b = a, b
        self.shapes = (_shape(a), _shape(b))
        return a / b

    def backward(self, grad):
        xp, a, b, (a_shape, b_shape) = self.xp, self.a, self.b, self.shapes
        need_a, need_b = self.needs_input_grad
        grad_a = grad / b
        return (_sum_to_shape(xp, grad_a, a_shape) if need_a else None,
                _sum_to_shape(xp, -grad_a * a / b, b_shape) if need_b else None)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, grad):
        return -grad


class PowScalar(Function):
    """``x ** exponent`` for a Python number ``exponent``."""

    def forward(self, x, *, exponent):
        self.x, self.exponent = x, exponent
        return x ** exponent

    def backward(self, grad):
        return grad * (self.exponent * self.x ** (self.exponent - 1))


class MatMul(Function):
    """``a @ b`` with NumPy's rules: 1-D operands are promoted, leading axes broadcast."""

    def forward(self, a, b):
        xp = self.xp = namespace_of(a, b, names=("left operand", "right operand"))
        need_a, need_b = self.needs_input_grad
        self.a, self.b = (a if need_b else None), (b if need_a else None)
        self.a_ndim, self.b_ndim = a.ndim, b.ndim
        self.shapes = (_shape(a), _shape(b))
        return xp.matmul(a, b)

    def backward(self, grad):
        xp = self.xp
        a_shape, b_shape = self.shapes
        # Put back the axes matmul dropped for 1-D operands, then use the 2-D rules.
        if self.a_ndim == 1:
            grad = xp.expand_dims(grad, axis=-1 if self.b_ndim == 1 else -2)
        if self.b_ndim == 1:
            grad = xp.expand_dims(grad, axis=-1) if self.a_ndim != 1 else xp.reshape(grad, (1, 1))
        need_a, need_b = self.needs_input_grad
        grad_a = grad_b = None
        if need_a:
            b = self.b if self.b_ndim > 1 else xp.reshape(self.b, (-1, 1))
            grad_a = xp.matmul(grad, xp.matrix_transpose(b))
            grad_a = xp.reshape(_sum_to_shape(xp, grad_a, a_shape if self.a_ndim > 1 else (1, a_shape[0])), a_shape)
        if need_b:
            a = self.a if self.a_ndim > 1 else xp.reshape(self.a, (1, -1))
            grad_b = xp.matmul(xp.matrix_transpose(a), grad)
            grad_b = xp.reshape(_sum_to_shape(xp, grad_b, b_shape if self.b_ndim > 1 else (b_shape[0], 1)), b_shape)
        return grad_a, grad_b


def _normalize_axes(axis, ndim: int, op: str):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    try:
        normalized = tuple(operator.index(a) % ndim if -ndim <= operator.index(a) < ndim else None for a in axes)
    except TypeError:
        raise ArgumentTypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}") from None
    if None in normalized or ndim == 0:
        raise ArgumentError(f"{op}: axis {axis!r} is out of range for a {ndim}-D Tensor")
    return normalized


class Sum(Function):
    def forward(self, x, *, axis=None, keepdims=False):
        xp = self.xp = namespace_of(x)
        self.axes = _normalize_axes(axis, x.ndim, "sum") if x.ndim else ()
        self.keepdims, self.shape = keepdims, _shape(x)
        return xp.sum(x, axis=axis if axis is None else self.axes, keepdims=keepdims)

    def backward(self, grad):
        return _spread(self.xp, grad, self.axes, self.keepdims, self.shape)


class Mean(Function):
    def forward(self, x, *, axis=None, keepdims=False):
        xp = self.xp = namespace_of(x)
        self.axes = _normalize_axes(axis, x.ndim, "mean") if x.ndim else ()
        self.keepdims, self.shape = keepdims, _shape(x)
        count = 1
        for a in self.axes:
            count *= x.shape[a]
        self.count = count
        return xp.mean(x, axis=axis if axis is None else self.axes, keepdims=keepdims)

    def backward(self, grad):
        return _spread(self.xp, grad / self.count, self.axes, self.keepdims, self.shape)


def _spread(xp, grad, axes, keepdims, shape):
    """The gradient of a sum over ``axes``: every summed element gets its total's gradient."""
    if not keepdims and axes:
        kept = tuple(1 if axis in axes else extent for axis, extent in enumerate(shape))
        grad = xp.reshape(grad, kept)
    return xp.broadcast_to(grad, shape)


class Reshape(Function):
    def forward(self, x, *, shape):
        xp = self.xp = namespace_of(x)
        self.input_shape = _shape(x)
        return xp.reshape(x, shape)

    def backward(self, grad):
        return self.xp.reshape(grad, reshape_sizes(self.input_shape))  # a lazy size (None) is read as -1


def _basic_key(key):
    """``key`` as a tuple of ints, slices, None and Ellipsis, or ``ArgumentTypeError``.

    Axes the key leaves out are taken whole, as NumPy does (a trailing ``...``
    is added: the standard asks for one index per axis).
    """
    parts = key if isinstance(key, tuple) else (key,)
    if not any(part is Ellipsis for part in parts):
        parts = (*parts, Ellipsis)
    for part in parts:
        if part is None or part is Ellipsis or isinstance(part, slice):
            continue
        if isinstance(part, numbers.Integral) and not isinstance(part, bool):
            continue
        raise ArgumentTypeError(
            f"Tensor indexing takes ints, slices, None and ... (basic indexing), got {type(part).__name__}; "
            "index the array itself (t.data[...]) for a constant, or use a mask multiplication to keep gradients")
    return parts


class GetItem(Function):
    def forward(self, x, *, key):
        self.xp = namespace_of(x)
        self.key, self.input_shape, self.dtype, self.device = key, _shape(x), x.dtype, device_of(x)
        return x[key]

    def backward(self, grad):
        xp = self.xp
        key = tuple(part for part in self.key if part is not None)
        full = xp.zeros(self.input_shape, dtype=self.dtype, device=self.device)
        grad = xp.reshape(grad, _shape(full[key]))  # drop the axes None added
        # The zeros are ours alone, so they may be written (as in functional._scatter_taps).
        if writes_through_views(full):
            full[key] = grad
            return full
        return xpx.at(full)[key].set(grad, xp=xp)


class Concat(Function):
    def forward(self, *arrays, axis):
        xp = self.xp = namespace_of(*arrays, names=tuple(f"tensors[{i}]" for i in range(len(arrays))))
        ndim = arrays[0].ndim
        if any(a.ndim != ndim for a in arrays):
            raise ShapeError(f"cat: every Tensor must have the same number of dimensions, got shapes "
                             f"{[_shape(a) for a in arrays]}")
        self.axis = _normalize_axes(axis, ndim, "cat")[0]
        self.sizes = [a.shape[self.axis] for a in arrays]
        return xp.concat(arrays, axis=self.axis)

    def backward(self, grad):
        lead = (slice(None),) * self.axis
        pieces, start = [], 0
        for size, needed in zip(self.sizes, self.needs_input_grad):
            pieces.append(grad[(*lead, slice(start, start + size), ...)] if needed else None)
            start += size
        return tuple(pieces)


def cat(tensors, axis: int = 1) -> Tensor:
    """Concatenate Tensors (or arrays) along ``axis``; the gradient is split back to each."""
    tensors = list(tensors)
    if not tensors:
        raise ArgumentError("cat needs at least one Tensor")
    return Concat.apply(*tensors, axis=axis)


# --------------------------------------------------------------------------
# Tensor methods and operators


def _is_operand(value) -> bool:
    return isinstance(value, (Tensor, numbers.Real)) or (hasattr(value, "shape") and hasattr(value, "dtype"))


def _binary(function, reflected=False):
    def method(self, other):
        if not _is_operand(other):
            return NotImplemented
        return function.apply(other, self) if reflected else function.apply(self, other)
    return method


def _reshape(self, *shape):
    """``reshape(2, -1)`` or ``reshape((2, -1))``; the gradient is reshaped back."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Reshape.apply(self, shape=tuple(shape))


def _sum(self, axis=None, keepdims: bool = False):
    return Sum.apply(self, axis=axis, keepdims=keepdims)


def _mean(self, axis=None, keepdims: bool = False):
    return Mean.apply(self, axis=axis, keepdims=keepdims)


def _getitem(self, key):
    return GetItem.apply(self, key=_basic_key(key))


def _pow(self, exponent):
    if not isinstance(exponent, numbers.Real) or isinstance(exponent, bool):
        return NotImplemented
    return PowScalar.apply(self, exponent=exponent)


Tensor.__add__, Tensor.__radd__ = _binary(Add), _binary(Add, reflected=True)
Tensor.__sub__, Tensor.__rsub__ = _binary(Sub), _binary(Sub, reflected=True)
Tensor.__mul__, Tensor.__rmul__ = _binary(Mul), _binary(Mul, reflected=True)
Tensor.__truediv__, Tensor.__rtruediv__ = _binary(Div), _binary(Div, reflected=True)
Tensor.__matmul__, Tensor.__rmatmul__ = _binary(MatMul), _binary(MatMul, reflected=True)
Tensor.__neg__ = lambda self: Neg.apply(self)
Tensor.__pow__ = _pow
Tensor.__getitem__ = _getitem
Tensor.reshape = _reshape
Tensor.sum = _sum
Tensor.mean = _mean
