"""The tape: ``Tensor``, ``Function`` and the backward pass, define-by-run.

Every differentiable call is a :class:`Function` node. Its ``forward`` and
``backward`` work on plain backend arrays; ``Function.apply`` unwraps the
Tensor arguments, runs ``forward``, and, when some input needs a gradient
(and grad mode is on), returns Tensors that point back at the node. The node
keeps what its ``forward`` chose to keep, plus an edge per input: the node
that made that input, or the leaf Tensor itself (a parameter).

``loss.backward()`` orders the nodes reachable from ``loss`` so that each
runs after every node that consumes its outputs (a depth-first topological
sort), hands each node the sum of its outputs' gradients, and adds the leaf
gradients into ``.grad``. A node is freed (its saved arrays dropped) as soon
as its backward has run, unless ``retain_graph=True``; a second backward
through a freed node raises ``UsageError``.

The tape is plain Python over arrays: it never reads an array's value, so a
whole step (forward, backward, update) traces under ``jax.jit``.
"""

from __future__ import annotations

import contextlib
import functools
import threading

from .._arrays import describe_array, namespace_of
from .._dispatch import TapeValue
from ..errors import DTypeError, ShapeError, UsageError

__all__ = ["Tensor", "Function", "tensor", "no_grad", "enable_grad", "is_grad_enabled"]


# --------------------------------------------------------------------------
# grad mode


class _GradMode(threading.local):
    enabled = True
    trace = None  # a list while trace_calls() is active: every Function call is appended to it


_grad_mode = _GradMode()


def is_grad_enabled() -> bool:
    """Whether ops record the graph now (False inside ``no_grad()``)."""
    return _grad_mode.enabled


class _GradModeSwitch:
    """A context manager that is also a decorator, as PyTorch's ``no_grad`` is."""

    _mode: bool

    def __enter__(self):
        self._previous = _grad_mode.enabled
        _grad_mode.enabled = self._mode
        return self

    def __exit__(self, *exc_info):
        _grad_mode.enabled = self._previous
        return False

    def __call__(self, function):
        mode = self._mode

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            previous = _grad_mode.enabled
            _grad_mode.enabled = mode
            try:
                return function(*args, **kwargs)
            finally:
                _grad_mode.enabled = previous
        return wrapper


class no_grad(_GradModeSwitch):  # noqa: N801 - PyTorch's name
    """Record nothing: ops return Tensors without a graph, so no node keeps arrays alive.

    Use it for evaluation and inference, as ``with portacnn.no_grad(): ...``
    or as a decorator.
    """

    _mode = False


class enable_grad(_GradModeSwitch):  # noqa: N801 - PyTorch's name
    """Record again inside a ``no_grad()`` block."""

    _mode = True


# --------------------------------------------------------------------------
# Tensor


def _new_tensor(data, requires_grad=False, node=None, output_index=0):
    t = object.__new__(Tensor)
    t.data, t.grad, t.requires_grad, t._node, t._output_index = data, None, requires_grad, node, output_index
    t._version = 0
    return t


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, TapeValue)


class Tensor(TapeValue):
    """One backend array (``data``) with what autograd needs around it.

    ``data`` is the array itself, of any backend (NumPy, CuPy, torch, JAX,
    array-api-strict, ...); ``grad`` is an array of the same backend, or None;
    ``requires_grad`` says whether gradients flow to it. A Tensor made by an
    op remembers the node that made it (``grad_fn``); one made by the user is
    a *leaf*, and ``backward()`` adds into the ``grad`` of every leaf that
    requires it. ``grad`` arrays are rebound, never written in place.
    """

    # ``_version`` counts the writes into ``data`` in place (an optimizer's update on NumPy, CuPy,
    # torch): a node that kept the array for its backward refuses to run once it has changed.
    __slots__ = ("data", "grad", "requires_grad", "_node", "_output_index", "_version", "__weakref__")

    # NumPy must hand ``ndarray + Tensor`` to Tensor.__radd__ (recording the
    # op) instead of converting the Tensor through __array__.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, Tensor):
            data = data.data
        if not _is_array(data):
            raise DTypeError(
                f"a Tensor wraps a backend array, got {type(data).__name__}; convert it first, e.g. "
                "portacnn.tensor(portacnn.to_device(numpy.asarray(value), 'numpy'))")
        self.data = data
        self.grad = None
        self._node = None
        self._output_index = 0
        self._version = 0
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # -- what it is --------------------------------------------------------

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def device(self):
        from .._arrays import device_of

        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        """True for Tensors the user made (parameters, inputs); False for an op's result."""
        return self._node is None

    @property
    def grad_fn(self):
        """The ``Function`` node that made this Tensor, or None for a leaf."""
        return self._node

    def __len__(self) -> int:
        return self.data.shape[0]

    def __repr__(self) -> str:
        parts = [f"shape={self.shape}", f"dtype={self.dtype}", describe_array(self.data)]
        if self._node is not None:
            parts.append(f"grad_fn={type(self._node).__name__}")
        elif self.requires_grad:
            parts.append("requires_grad=True")
        return f"{type(self).__name__}({', '.join(parts)})"

    def __array__(self, dtype=None, copy=None):
        # NumPy conversion goes through the backend array's own __array__, so a
        # CuPy Tensor refuses an implicit device-to-host copy exactly as CuPy does.
        if dtype is None and copy is None:
            return self.data.__array__()
        return self.data.__array__(dtype, copy=copy) if copy is not None else self.data.__array__(dtype)

    # -- autograd ----------------------------------------------------------

    def requires_grad_(self, requires_grad: bool = True):
        """Set ``requires_grad`` in place; only leaves, and only floating-point ones, can require gradients."""
        requires_grad = bool(requires_grad)
        if self._node is not None and not requires_grad:
            raise UsageError(
                "requires_grad can only be switched off on a leaf Tensor (one you made, such as a parameter); "
                "for an op's result use .detach() to get a Tensor outside the graph")
        if requires_grad and not _is_floating(self.data):
            raise DTypeError(f"only floating-point Tensors can require gradients, got dtype {self.dtype}; "
                             "cast it first, e.g. x.astype(float32)")
        self.requires_grad = requires_grad
        return self

    def detach(self) -> Tensor:
        """The same array in a new Tensor outside the graph (no gradient flows through it)."""
        return _new_tensor(self.data)

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Add d(self)/d(leaf) into ``leaf.grad`` for every leaf this Tensor depends on.

        ``grad`` is the gradient of some final scalar with respect to this
        Tensor; it may be left out when this Tensor has a single element (a
        loss), and is then 1. The graph is freed on the way, unless
        ``retain_graph`` keeps it for another backward.
        """
        run_backward(self, grad, retain_graph)

    def item(self):
        """The single value as a Python number (reads the array back from the device)."""
        size = 1
        for extent in self.data.shape:
            size *= extent
        if size != 1:
            raise ShapeError(f"item() needs a Tensor with exactly one element, got shape {self.shape}; "
                             "reduce it first, e.g. t.sum().item(), or index one element")
        xp = namespace_of(self.data)
        value = xp.reshape(self.data, ())
        if xp.isdtype(value.dtype, "bool"):
            return bool(value)
        if xp.isdtype(value.dtype, "integral"):
            return int(value)
        return float(value)

    def __float__(self):
        return float(self.item())

    # Arithmetic, reductions and shaping are ops like any other: see arithmetic.py.


def _is_floating(array) -> bool:
    xp = namespace_of(array)
    return xp.isdtype(array.dtype, "real floating")


def tensor(data, requires_grad: bool = False) -> Tensor:
    """A leaf Tensor around the backend array ``data`` (not copied).

    ``requires_grad=True`` makes ``backward()`` fill its ``grad``.
    """
    return Tensor(data, requires_grad=requires_grad)


def as_input(value):
    """A Module's view of an argument: a Tensor stays, a backend array becomes a constant Tensor."""
    if isinstance(value, Tensor) or not _is_array(value):
        return value
    return _new_tensor(value)


# --------------------------------------------------------------------------
# Function


class Function:
    """A differentiable op: subclass it and write ``forward`` and ``backward`` on plain arrays.

    ``forward(self, *inputs, **options)`` gets the input arrays (Tensors are
    unwrapped; ``None`` and numbers pass as they are) and returns an array,
    or a tuple of arrays for several outputs. It keeps on ``self`` whatever
    ``backward`` needs, and no more: a node lives as long as its outputs'
    graph. ``self.needs_input_grad`` (one bool per input) is set before
    ``forward`` runs, so both methods can skip work nobody needs.

    ``backward(self, *grad_outputs)`` gets one gradient array per output
    (None for an output nothing depended on) and returns one gradient per
    positional input, as a tuple (a single array when there is one input);
    None where there is none. Built-in ops are written this way: their
    ``forward`` calls ``functional.<op>`` and their ``backward`` calls
    ``functional.<op>_backward``.

    Call it with ``MyFunction.apply(x, y, option=...)``::

        class Swish(Function):
            def forward(self, x):
                self.x = x
                return x * F.sigmoid(x)

            def backward(self, grad):
                s = F.sigmoid(self.x)
                return grad * (s + self.x * s * (1.0 - s))

        y = Swish.apply(x)        # a Tensor; y.sum().backward() fills x.grad
    """

    needs_input_grad: tuple = ()
    #: (leaf Tensor, its ``_version`` at the forward) for each leaf input whose array the node kept
    _kept_leaf_versions: tuple = ()

    def forward(self, *inputs, **options):
        raise NotImplementedError(f"{type(self).__name__} must define forward(self, *inputs)")

    def backward(self, *grad_outputs):
        raise NotImplementedError(f"{type(self).__name__} must define backward(self, *grad_outputs)")

    @classmethod
    def apply(cls, *inputs, **options):
        """Run ``forward`` on the inputs' arrays; record the node when any input needs a gradient."""
        # This runs for every op of every step: it is written for speed.
        if _grad_mode.trace is not None:  # an exporter is recording the calls (trace_calls)
            return _traced_apply(cls, inputs, options)
        if options:
            for value in options.values():
                if isinstance(value, Tensor):
                    raise UsageError(f"{cls.__name__}.apply: pass Tensors as positional arguments (they are the "
                                     "op's inputs); keyword arguments are options and are not differentiated")
        node = cls()
        recording = _grad_mode.enabled
        arrays, edges = [], []
        any_needed = False
        for value in inputs:
            if isinstance(value, Tensor):
                arrays.append(value.data)
                if recording and value.requires_grad:
                    any_needed = True
                    edges.append(value if value._node is None else (value._node, value._output_index))
                    continue
            else:
                arrays.append(value)
            edges.append(None)
        if not any_needed:
            node.needs_input_grad = (False,) * len(edges)
            outputs = node.forward(*arrays, **options)
            if type(outputs) is tuple:
                return tuple(None if out is None else _new_tensor(out) for out in outputs)
            return _new_tensor(outputs)
        node.needs_input_grad = tuple([edge is not None for edge in edges])
        outputs = node.forward(*arrays, **options)
        node._edges = edges
        node._input_shapes = [None if edge is None else array.shape for edge, array in zip(edges, arrays)]
        for edge in edges:
            if edge is not None and type(edge) is not tuple:  # a leaf (a parameter): see _kept_leaf_versions
                node._kept_leaf_versions = _kept_leaf_versions(node, edges, arrays)
                break
        if type(outputs) is tuple:
            node._output_count = len(outputs)
            return tuple(None if out is None else _new_tensor(out, True, node, index)
                         for index, out in enumerate(outputs))
        node._output_count = 1
        return _new_tensor(outputs, True, node, 0)

    def __repr__(self):
        return f"<{type(self).__name__}>"


class TracedCall:
    """One ``Function.apply`` call seen by :func:`trace_calls`: what went in and what came out.

    ``inputs`` are the positional arguments as given (Tensors, backend
    arrays, numbers, None), ``options`` the keyword arguments, ``outputs``
    the result (a Tensor, or a tuple of them).
    """

    __slots__ = ("function", "inputs", "options", "outputs")

    def __init__(self, function, inputs, options, outputs):
        self.function, self.inputs, self.options, self.outputs = function, inputs, options, outputs

    def __repr__(self):
        return f"<TracedCall {self.function.__name__}>"


def _traced_apply(cls, inputs, options):
    calls = _grad_mode.trace
    _grad_mode.trace = None  # the call itself runs as usual (and anything it applies is not a separate call)
    try:
        outputs = cls.apply(*inputs, **options)
    finally:
        _grad_mode.trace = calls
    calls.append(TracedCall(cls, inputs, options, outputs))
    return outputs


@contextlib.contextmanager
def trace_calls():
    """Record every ``Function.apply`` call made inside the block, in order, as :class:`TracedCall`s.

    For exporters (``portacnn.onnx``): unlike the backward graph, which keeps
    only the inputs that need a gradient and what ``backward`` needs, a
    trace keeps every input (frozen parameters, buffers, constants) and the
    op's options exactly as passed. It records whether or not grad mode is
    on, so run it under ``no_grad()`` to keep no saved arrays.
    """
    previous = _grad_mode.trace
    calls = _grad_mode.trace = []
    try:
        yield calls
    finally:
        _grad_mode.trace = previous


def _kept_leaf_versions(node, edges, arrays) -> tuple:
    """(leaf, version) for each leaf input whose very array ``forward`` kept on the node (directly, or in
    a tuple or list): only those make its backward wrong once written in place."""
    kept = set()
    for value in vars(node).values():
        kept.add(id(value))
        if type(value) in (tuple, list):
            kept.update(id(item) for item in value)
    return tuple((edge, edge._version) for edge, array in zip(edges, arrays)
                 if edge is not None and type(edge) is not tuple and id(array) in kept)


def _check_kept_leaves(node) -> None:
    for leaf, version in node._kept_leaf_versions:
        if leaf._version != version:
            raise UsageError(
                f"{type(node).__name__}.backward needs the array of a parameter of shape {leaf.shape} as the "
                "forward saw it, but it has been modified in place since (an optimizer's step() updates "
                "parameters in place); call backward() before optimizer.step(), or run the forward again "
                "after the step")


_FREED = "_freed"


def _release(node) -> None:
    """Drop everything a node saved (and its edges), keeping only the mark that it was freed."""
    vars(node).clear()
    setattr(node, _FREED, True)


def _freed_error() -> UsageError:
    return UsageError(
        "backward through a graph a second time: its saved arrays were freed by the first backward; "
        "call backward(retain_graph=True) the first time to backward through it again, or run the forward again")


# --------------------------------------------------------------------------
# backward


def _topological_order(root):
    """Nodes reachable from ``root``, each before every node that made one of its inputs."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in visited:
            continue
        if getattr(node, _FREED, False):
            raise _freed_error()
        visited.add(node)
        stack.append((node, True))
        for edge in node._edges:
            if type(edge) is tuple and edge[0] not in visited:
                stack.append((edge[0], False))
    order.reverse()
    return order


def _seed_gradient(root: Tensor, grad):
    data = root.data
    if grad is None:
        size = 1
        for extent in data.shape:
            size *= extent
        if size != 1:
            raise UsageError(
                f"backward() without a gradient needs a single-element Tensor (a loss), got shape {root.shape}; "
                "reduce it first (e.g. out.sum().backward()) or pass grad=, the gradient with respect to it")
        xp = namespace_of(data)
        return xp.ones_like(data)
    if isinstance(grad, Tensor):
        grad = grad.data
    namespace_of(grad, data, names=("backward grad", "the Tensor"))
    if tuple(grad.shape) != tuple(data.shape):
        raise ShapeError(f"backward: grad has shape {tuple(grad.shape)} but the Tensor has {root.shape}; "
                         "they must match")
    if grad.dtype != data.dtype:
        raise DTypeError(f"backward: grad has dtype {grad.dtype} but the Tensor has {data.dtype}; cast it first")
    return grad


def _accumulate_leaf(leaf: Tensor, grad) -> None:
    leaf.grad = grad if leaf.grad is None else leaf.grad + grad


def _wrong_shape(node, index, grad, expected_shape) -> ShapeError:
    return ShapeError(
        f"{type(node).__name__}.backward returned a gradient of shape {tuple(grad.shape)} for input {index}, "
        f"which has shape {tuple(expected_shape)}; each gradient must have its input's shape")


def run_backward(root: Tensor, grad=None, retain_graph: bool = False) -> None:
    """The engine behind ``Tensor.backward``."""
    if not root.requires_grad:
        raise UsageError(
            "backward on a Tensor that does not require a gradient: nothing it depends on requires one "
            "(parameters do; an input made with portacnn.tensor(x, requires_grad=True) does), or it was "
            "computed inside no_grad() or from .detach()")
    seed = _seed_gradient(root, grad)
    root_node = root._node
    if root_node is None:
        _accumulate_leaf(root, seed)
        return
    if getattr(root_node, _FREED, False):
        raise _freed_error()
    root_grads = [None] * root_node._output_count
    root_grads[root._output_index] = seed
    pending = {root_node: root_grads}
    for node in _topological_order(root_node):
        grads = pending.pop(node, None)
        if grads is None:  # every path from the root to this node carried no gradient
            if not retain_graph:
                _release(node)
            continue
        if node._kept_leaf_versions:
            _check_kept_leaves(node)
        input_grads = node.backward(*grads)
        edges, shapes = node._edges, node._input_shapes
        if type(input_grads) is not tuple:
            input_grads = (input_grads,)
        if len(input_grads) != len(edges):
            raise UsageError(
                f"{type(node).__name__}.backward returned {len(input_grads)} gradient(s) for {len(edges)} input(s); "
                "return one per positional input of forward (None where there is none)")
        for index, edge in enumerate(edges):
            input_grad = input_grads[index]
            if edge is None or input_grad is None:
                continue
            if input_grad.shape != shapes[index] and tuple(input_grad.shape) != tuple(shapes[index]):
                raise _wrong_shape(node, index, input_grad, shapes[index])
            if type(edge) is tuple:
                producer, output_index = edge
                slots = pending.get(producer)
                if slots is None:
                    slots = pending[producer] = [None] * producer._output_count
                previous = slots[output_index]
                slots[output_index] = input_grad if previous is None else previous + input_grad
            else:
                edge.grad = input_grad if edge.grad is None else edge.grad + input_grad
        if not retain_graph:
            _release(node)


from . import arithmetic as _arithmetic  # noqa: E402,F401 - gives Tensor its operators
