"""ONNX export: ``portacnn.onnx.export(model, "model.onnx", (1, 28, 28))``.

The file holds the inference graph of a model, with a dynamic batch axis, in
the operators deployment tools recognise: one ``Conv`` per convolution
(batch norm folded into it), ``MaxPool``/``AveragePool``/
``GlobalAveragePool``, ``Gemm`` for linear layers, ``Relu`` and the other
activations, ``Flatten``, ``Add``/``Concat`` for residual and branch
graphs, ``Slice``/``Pad`` where a model uses them. ``onnx`` and ``onnxruntime``
are optional: ``pip install "portacnn[onnx]"``.

How the graph is built. The model runs once, in eval mode and under
``no_grad``, on a sample batch inside ``autograd.tape.trace_calls()``, which
records every ``Function.apply`` call: the Function type, its inputs exactly
as passed (Tensors, parameters, buffer arrays, constants, numbers) and its
options (stride, padding, axis, ...). That is what the backward graph keeps
too, plus what it leaves out because no gradient needs it (frozen
parameters, buffers, constants). Walking back from the output over the
recorded calls finds the ops the output depends on; they are emitted in the
order they ran, which is a topological order. Parameters and buffers are
recognised by identity and become initializers under their ``state_dict``
names. Dropout in eval is the identity and leaves no node.

The batch axis is symbolic ("batch"). The trace runs on a batch of two so
that an array whose leading axis is the batch can be told from a broadcast
constant: such an array (ResNet's option-A shortcut concatenates zeros of
the batch's shape) becomes a ``Pad``, or an ``Expand`` of its one row.
Anything a model computes from ``Tensor.data`` outside the tape is frozen
into the graph as a constant; one that varies along the batch axis is an
error, since the graph could not reproduce it.

The graph is float32 whatever the model's dtype (initializers are cast).
"""

from __future__ import annotations

import math
import numbers
from collections import Counter

import numpy

from ._checks import as_int, pair
from .autograd import Tensor, no_grad
from .autograd import arithmetic as _arith
from .autograd import layer_ops as _ops
from .autograd.tape import trace_calls
from ._arrays import namespace_of
from .backends import dtype_name, placement_of, to_device, to_numpy
from .errors import ArgumentError, ArgumentTypeError, ExportError
from .files import atomic_write
from .functional import pooling as _pooling
from .functional import upsampling as _upsampling

__all__ = ["export", "to_onnx", "DEFAULT_OPSET", "SUPPORTED_OPSETS"]

#: opset 17 has every operator used here (LayerNormalization is the newest) and runs on onnxruntime >= 1.13.
DEFAULT_OPSET = 17
#: onnxruntime 1.18, the oldest the ``onnx`` extra allows, runs up to opset 21.
SUPPORTED_OPSETS = range(17, 22)

_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
#: The batch the trace runs on when the exported batch is dynamic: see the module docstring.
_TRACE_BATCH = 2
_INSTALL_HINT = 'pip install "portacnn[onnx]"'


def _import_onnx():
    try:
        import onnx  # the package, not this module: imports are absolute
        from onnx import helper, numpy_helper  # noqa: F401 - submodules used as onnx.helper, onnx.numpy_helper
    except ImportError as error:
        raise ExportError(f"ONNX export needs the onnx package, which is not installed: {_INSTALL_HINT} "
                          f"(import failed: {error})") from None
    return onnx


# --------------------------------------------------------------------------
# the public functions


def to_onnx(model, input_shape, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True):
    """The ``onnx.ModelProto`` of ``model``'s inference graph (see :func:`export`), checked, not written."""
    from .nn import Module

    onnx = _import_onnx()
    if not isinstance(model, Module):
        raise ArgumentTypeError(f"ONNX export takes a portacnn Module, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or int(opset) not in SUPPORTED_OPSETS:
        raise ArgumentError(f"opset must be an int from {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1} "
                            f"(onnxruntime 1.18 runs up to {SUPPORTED_OPSETS.stop - 1}), got {opset!r}")
    if not isinstance(dynamic_batch, bool):
        raise ArgumentTypeError(f"dynamic_batch must be True or False, got {dynamic_batch!r}")
    sample_shape, batch = _sample_shape(input_shape, dynamic_batch)

    # Parameters and buffers by identity, read before the forward runs (a layer may rebind a buffer's array).
    parameters = model.named_parameters()
    leaves = _Leaves(parameters, model.named_buffers())
    first = parameters[0][1].data if parameters else None
    dtype = str(first.dtype).rsplit(".", 1)[-1] if first is not None else "float32"
    sample = numpy.random.default_rng(0).standard_normal(sample_shape).astype(
        dtype if dtype in ("float16", "float32", "float64") else "float32")
    data = to_device(sample, placement_of(first)) if first is not None else sample
    if first is not None and dtype == "bfloat16":
        xp = placement_of(first).namespace
        data = xp.astype(data, xp.bfloat16)
    x = Tensor(data)

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with no_grad(), trace_calls() as calls:
            result = model(x)
    finally:
        for module, mode in modes:
            module.training = mode

    outputs = list(result) if isinstance(result, (tuple, list)) else [result]
    if not outputs or not all(isinstance(out, Tensor) for out in outputs):
        raise ExportError(f"ONNX export needs forward to return a Tensor or a tuple of Tensors; "
                          f"{type(model).__name__}.forward returned {type(result).__name__}")
    graph = _Graph(onnx, int(opset), batch if dynamic_batch else None)
    _Exporter(graph, leaves, x, calls, outputs).run()
    return graph.model(sample_shape, outputs, dynamic_batch)


def export(model, path, input_shape, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = True):
    """Write ``model``'s inference graph to ``path`` as ONNX; returns the ``onnx.ModelProto`` written.

    ``input_shape`` is one sample's shape ``(C, H, W)`` or a batch's
    ``(N, C, H, W)``. With ``dynamic_batch`` (the default) the input and
    output take any batch size (the axis is named "batch"); without it the
    graph is fixed to ``N`` (1 when not given). ``opset`` is the ONNX
    operator set, 17 to 21. The model runs once, in eval mode (its mode is
    restored), on its own backend. The graph is float32; batch norm after a
    convolution or linear layer whose output nothing else uses is folded
    into that layer's weights, and a folded weight's initializer is named
    after both (``conv1.weight+bn1``); every other weight keeps its
    ``state_dict`` name. An op with no ONNX form raises ``ExportError``
    naming it. The file is written atomically.
    """
    proto = to_onnx(model, input_shape, opset=opset, dynamic_batch=dynamic_batch)
    payload = proto.SerializeToString()
    atomic_write(path, lambda handle: handle.write(payload))
    return proto


def _sample_shape(input_shape, dynamic_batch: bool):
    """The shape the trace runs on, and the batch size in it."""
    try:
        shape = tuple(as_int(extent) for extent in input_shape)
    except TypeError:
        raise ArgumentTypeError(f"input_shape must be (C, H, W) or (N, C, H, W), a tuple of ints, e.g. (1, 28, 28), "
                                f"got {input_shape!r}") from None
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise ArgumentError(f"input_shape must be (C, H, W) or (N, C, H, W) with positive sizes, e.g. (1, 28, 28), "
                            f"got {input_shape!r}")
    batch = shape[0] if len(shape) == 4 else 1
    if dynamic_batch:
        batch = _TRACE_BATCH
    return (batch, *shape[-3:]), batch


class _Leaves:
    """Parameters (by Tensor and by array) and buffers (by array), with their state_dict names."""

    def __init__(self, parameters, buffers):
        self.tensors = {id(p): name for name, p in parameters}
        self.arrays = {id(p.data): name for name, p in parameters}
        self.arrays.update({id(b.data): name for name, b in buffers})
        # The arrays are kept alive so that their ids stay theirs.
        self._keep = [p.data for _, p in parameters] + [b.data for _, b in buffers]

    def name_of(self, value):
        if isinstance(value, Tensor):
            return self.tensors.get(id(value)) or self.arrays.get(id(value.data))
        return self.arrays.get(id(value))


# --------------------------------------------------------------------------
# the ONNX graph being written



def _unique(base: str, taken: set) -> str:
    """``base``, or ``base_2``, ``base_3``, ... : the first not in ``taken``, which it joins."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


class _Graph:
    def __init__(self, onnx, opset: int, batch):
        self.onnx, self.helper = onnx, onnx.helper
        self.opset = opset
        self.batch = batch  # the traced batch size when the batch axis is dynamic, else None
        self.nodes, self.initializers = [], []
        self.values = {"input"}  # value and initializer names taken
        self.node_names = set()
        self._counts = Counter()  # op → nodes named after it so far
        self._constants = {}
        self._stored = set()  # initializer names
        self._batch_size = None

    def fresh(self, base: str) -> str:
        return _unique(base, self.values)

    def node_name(self, base: str) -> str:
        return _unique(base, self.node_names)

    def add(self, op: str, inputs, *, name=None, out=None, **attributes) -> str:
        """Append a node named ``name`` (a layer's, e.g. ``layer1.0.conv1``) or after its op (``Relu_3``); its
        output is ``out`` or a fresh name after the node. Returns the output's name."""
        if name is None:
            name = f"{op}_{self._counts[op]}"
            self._counts[op] += 1
        node = self.node_name(name)
        out = out or self.fresh(node)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=node, **attributes))
        return out

    def initializer(self, name: str, array) -> str:
        """An initializer named ``name`` (a state_dict name, or one from ``fresh``), added once."""
        if name in self._stored:
            return name
        self.values.add(name)
        self._stored.add(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(_onnx_array(array), name))
        return name

    def constant(self, array, base: str = "const") -> str:
        """A constant initializer; small ones (scalars, shapes) are shared."""
        array = _onnx_array(array)
        key = None
        if array.size <= 16:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._constants:
                return self._constants[key]
        name = self.initializer(self.fresh(base), array)
        if key is not None:
            self._constants[key] = name
        return name

    def ints(self, values) -> str:
        return self.constant(numpy.asarray(list(values), dtype=numpy.int64), "shape")

    def scalar(self, value) -> str:
        return self.constant(numpy.asarray(value, dtype=numpy.float32), "scalar")

    def batch_size(self) -> str:
        """A 1-D int64 [N]: the batch size of the input, for shapes that must follow it."""
        if self._batch_size is None:
            self._batch_size = self.add("Shape", ["input"], name="batch_size", start=0, end=1)
        return self._batch_size

    def reduce(self, op: str, x: str, axes, keepdims: bool, out=None, name=None) -> str:
        """ReduceMean/ReduceMax/ReduceSum; ``axes`` None reduces all. Opset 18 moved ``axes`` to an input."""
        if axes is None:
            return self.add(op, [x], keepdims=int(keepdims), out=out, name=name)
        if op == "ReduceSum" or self.opset >= 18:
            return self.add(op, [x, self.ints(axes)], keepdims=int(keepdims), out=out, name=name)
        return self.add(op, [x], axes=list(axes), keepdims=int(keepdims), out=out, name=name)

    def model(self, sample_shape, outputs, dynamic_batch: bool):
        onnx, helper = self.onnx, self.helper
        from . import __version__

        batch_dim = "batch" if dynamic_batch else sample_shape[0]
        inputs = [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [batch_dim, *sample_shape[1:]])]
        results = []
        for index, out in enumerate(outputs):
            shape = list(out.shape)
            if dynamic_batch and shape and shape[0] == self.batch:
                shape[0] = "batch"
            results.append(helper.make_tensor_value_info(_output_name(index, len(outputs)),
                                                         onnx.TensorProto.FLOAT, shape))
        graph = helper.make_graph(self.nodes, "portacnn", inputs, results, initializer=self.initializers)
        opset = [helper.make_opsetid("", self.opset)]
        proto = helper.make_model(graph, opset_imports=opset, producer_name="portacnn",
                                  producer_version=__version__)
        # The oldest IR version that carries this opset, so older runtimes open the file too.
        proto.ir_version = helper.find_min_ir_version_for(opset)
        if proto.ByteSize() >= 2**31:
            raise ExportError("the model is too large for a single ONNX file (2 GiB protobuf limit); "
                              "portacnn does not write external-data ONNX files")
        try:
            onnx.checker.check_model(proto, full_check=True)
        except Exception as error:  # noqa: BLE001 - any checker failure is a bug in this exporter
            raise ExportError(f"the exported graph fails onnx.checker ({error}); this is a bug in "
                              "portacnn.onnx, please report it with the model") from error
        return proto


def _output_name(index: int, count: int) -> str:
    return "output" if count == 1 else f"output_{index}"


def _onnx_array(array):
    """A NumPy array for an initializer: floating → float32, integer → int64."""
    array = _on_host(array)
    if array.dtype.kind == "f" or str(array.dtype) == "bfloat16":
        return numpy.asarray(array, dtype=numpy.float32, order="C")
    if array.dtype.kind in "iub":
        return numpy.asarray(array, dtype=numpy.int64, order="C")
    raise ExportError(f"cannot store a constant of dtype {array.dtype} in the ONNX graph")


def _on_host(data) -> numpy.ndarray:
    """Any backend's array as a NumPy array; bfloat16, which NumPy lacks, widened (exactly) to float32 first."""
    if isinstance(data, numpy.ndarray):
        return data
    if dtype_name(data) == "bfloat16":
        xp = namespace_of(data)
        data = xp.astype(data, xp.float32)
    return numpy.asarray(to_numpy(data))


def _host(value):
    """A parameter, buffer or constant as a float64 NumPy array (for folding)."""
    data = value.data if isinstance(value, Tensor) else value
    return numpy.asarray(_on_host(data), dtype=numpy.float64)


def _outputs(call):
    return call.outputs if isinstance(call.outputs, tuple) else (call.outputs,)


# --------------------------------------------------------------------------
# the walk over the traced calls


_LOSSES = (_ops.CrossEntropy, _ops.NLLLoss, _ops.MSELoss, _ops.L1Loss, _ops.BCEWithLogits)


class _Exporter:
    def __init__(self, graph: _Graph, leaves: _Leaves, x: Tensor, calls, outputs):
        self.g, self.leaves, self.input, self.calls, self.outputs = graph, leaves, x, calls, outputs
        self.producer = {}  # id(Tensor) → the call that made it
        self.owner = {}  # id(array) → the Tensor an op returned it in (a .detach() shares the array)
        for call in calls:
            for out in _outputs(call):
                if out is not None:
                    self.producer[id(out)] = call
                    self.owner.setdefault(id(out.data), out)
        self.names = {id(x): "input"}  # id(Tensor) → its value's name, once emitted
        self.wanted = {}  # id(output Tensor) → its graph output name
        self.folds = {}  # id(conv/linear call) → the batch-norm call folded into it
        self.folded = set()  # ids of those batch-norm calls

    # -- the walk ----------------------------------------------------------

    def run(self) -> None:
        for index, out in enumerate(self.outputs):
            self.wanted.setdefault(id(self._resolve(out)), _output_name(index, len(self.outputs)))
        reachable = self._reachable()
        self._plan_folds(reachable)
        for call in self.calls:
            if id(call) in reachable and id(call) not in self.folded:
                handler = _HANDLERS.get(call.function)
                if handler is None:
                    raise _unsupported(call.function)
                handler(self, call)
        for index, out in enumerate(self.outputs):
            name = _output_name(index, len(self.outputs))
            if self.names.get(id(self._resolve(out))) != name:  # the input, a weight, or a repeated output
                self.g.add("Identity", [self.value(out)], out=name)

    def _resolve(self, value):
        """The Tensor ``value`` stands for: itself, or the op output whose array it shares (``.detach()``)."""
        if isinstance(value, Tensor) and id(value) not in self.producer and value is not self.input:
            owner = self.owner.get(id(value.data))
            if owner is not None and self.leaves.name_of(value) is None:
                return owner
        return value

    def _tensor_inputs(self, call):
        for value in call.inputs:
            if isinstance(value, Tensor):
                yield self._resolve(value)

    def _reachable(self) -> set:
        seen, stack = set(), [self._resolve(out) for out in self.outputs]
        while stack:
            call = self.producer.get(id(stack.pop()))
            if call is None or id(call) in seen:
                continue
            seen.add(id(call))
            stack.extend(self._tensor_inputs(call))
        return seen

    def _plan_folds(self, reachable) -> None:
        """Batch norms that can fold into the conv or linear layer before them: nothing else reads its output."""
        uses = Counter(id(self._resolve(out)) for out in self.outputs)
        for call in self.calls:
            if id(call) in reachable:
                uses.update(id(value) for value in self._tensor_inputs(call))
        for call in self.calls:
            if id(call) not in reachable or call.function is not _ops.BatchNorm or call.options.get("training"):
                continue
            x = self._resolve(call.inputs[0])
            before = self.producer.get(id(x))
            if before is None or uses[id(x)] != 1 or id(before) in self.folds:
                continue
            conv = before.function in (_ops.Conv2d, _ops.ConvTranspose2d) and x.ndim == 4
            linear = before.function is _ops.Linear and x.ndim == 2
            if conv or linear:
                self.folds[id(before)] = call
                self.folded.add(id(call))

    # -- values ------------------------------------------------------------

    def value(self, value, like=None) -> str:
        """The ONNX name of an op input: an emitted output, the input, a weight, or a new constant.

        ``like`` is the shape of the op's output: a constant with the same rank and the batch
        as its leading axis must follow the batch size (see the module docstring).
        """
        if value is None:
            return ""
        if isinstance(value, Tensor):
            value = self._resolve(value)
            name = self.names.get(id(value))
            if name is not None:
                return name
            if id(value) in self.producer:
                raise ExportError(f"internal: an op's output is used before the op ({self.producer[id(value)]}); "
                                  "this is a bug in portacnn.onnx, please report it with the model")
            data = value.data
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            return self.g.scalar(float(value))
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            data = value
        else:
            raise ExportError(f"cannot export an op input of type {type(value).__name__}: ops take Tensors, "
                              "arrays and numbers")
        state_name = self.leaves.name_of(value)
        if state_name is not None:
            return self.g.initializer(state_name, data)
        array = _on_host(data)
        if self._follows_batch(array, like):
            return self._batch_constant(array)
        return self.g.constant(array)

    def _follows_batch(self, array, like) -> bool:
        batch = self.g.batch
        return (batch is not None and like is not None and len(like) == array.ndim >= 1
                and like[0] == batch and array.shape[0] == batch)

    def _batch_constant(self, array) -> str:
        """A constant the size of the batch: its one row, expanded to the batch the graph runs on."""
        if not bool(numpy.all(array == array[:1])):
            raise ExportError(
                f"the model uses a constant of shape {array.shape} whose rows differ along the batch axis (computed "
                "from Tensor.data outside the tape?), which a graph with a dynamic batch cannot reproduce; keep "
                "the computation on Tensors, or export with dynamic_batch=False")
        shape = self.g.add("Concat", [self.g.batch_size(), self.g.ints(array.shape[1:])], axis=0)
        return self.g.add("Expand", [self.g.constant(array[:1]), shape])

    def weight_name(self, value, fallback: str) -> str:
        return self.leaves.name_of(value) or self.g.fresh(fallback)

    # -- emitting ----------------------------------------------------------

    def module_of(self, call):
        """A node name from the layer's parameters (``layer1.0.conv1``), or None."""
        for value in call.inputs:
            name = self.leaves.name_of(value) if value is not None and not isinstance(value, numbers.Number) else None
            if name is not None:
                return name.rsplit(".", 1)[0] if "." in name else name
        return None

    def finish(self, call, op: str, inputs, *, index: int = 0, name=None, **attributes) -> str:
        """The op's last node: it writes ``call``'s output ``index`` (a graph output under its output name)."""
        out = _outputs(call)[index]
        target = self.wanted.get(id(out))
        name = name or self.module_of(call)
        result = self.g.add(op, inputs, name=name, out=target, **attributes)
        self.names[id(out)] = result
        return result

    def chain(self, call, x: str, steps) -> str:
        """Nodes one after another from ``x``: ``steps`` are (op, extra inputs, attributes); the last finishes."""
        if not steps:
            return self.finish(call, "Identity", [x])
        for op, extra, attributes in steps[:-1]:
            x = self.g.add(op, [x, *extra], **attributes)
        op, extra, attributes = steps[-1]
        return self.finish(call, op, [x, *extra], **attributes)


def _unsupported(function) -> ExportError:
    if function in _LOSSES:
        return ExportError(f"the model's forward computes a loss ({function.__name__}), which ONNX export does not "
                           "handle: export the model that returns the logits, and compute the loss outside it")
    if function is _ops.Dropout:
        return ExportError("the model's forward runs dropout in training mode (functional.dropout with "
                           "training=True), which has no place in an inference graph: pass training=self.training")
    where = f"{function.__module__}.{function.__qualname__}"
    return ExportError(f"cannot export op {function.__name__} ({where}) to ONNX: portacnn.onnx knows no ONNX form "
                       f"for it. Supported ops: {', '.join(sorted(f.__name__ for f in _HANDLERS))}")


# --------------------------------------------------------------------------
# the ops: one function per Function type


def _pads(padding) -> list:
    (ph, pw) = padding
    return [ph, pw, ph, pw]


def _conv(ex: _Exporter, call) -> None:
    x, weight, bias = (list(call.inputs) + [None, None])[:3]
    options = call.options
    transposed = call.function is _ops.ConvTranspose2d
    stride = pair(options.get("stride", 1), "stride", minimum=1)
    padding = pair(options.get("padding", 0), "padding", minimum=0)
    dilation = pair(options.get("dilation", 1), "dilation", minimum=1)
    attributes = dict(kernel_shape=list(weight.shape[2:]), strides=list(stride), pads=_pads(padding),
                      dilations=list(dilation), group=int(options.get("groups", 1)))
    op = "Conv"
    if transposed:
        op = "ConvTranspose"
        attributes["output_padding"] = list(pair(options.get("output_padding", 0), "output_padding", minimum=0))
    bn = ex.folds.get(id(call))
    if bn is None:
        inputs = [ex.value(x), ex.value(weight)] + ([ex.value(bias)] if bias is not None else [])
        ex.finish(call, op, inputs, **attributes)
        return
    groups = attributes["group"]
    w_name, b_name = _folded(ex, call, bn, weight, bias, lambda w, s: _scale_conv_weight(w, s, transposed, groups))
    ex.finish(bn, op, [ex.value(x), w_name, b_name], name=ex.module_of(call), **attributes)


def _scale_conv_weight(w, scale, transposed: bool, groups: int):
    if not transposed:  # (out, in/groups, kh, kw): output channel o is row o
        return w * scale.reshape(-1, 1, 1, 1)
    # (in, out/groups, kh, kw): output channel g * out/groups + j is group g's (in/groups) rows, column j
    cin, per_group = w.shape[0], w.shape[1]
    grouped = w.reshape(groups, cin // groups, per_group, *w.shape[2:])
    return (grouped * scale.reshape(groups, 1, per_group, 1, 1)).reshape(w.shape)


def _folded(ex: _Exporter, layer_call, bn, weight, bias, scale_weight):
    """Batch norm ``bn`` folded into the weights of the layer before it → (weight name, bias name).

    y = (W x + b - mean) * s + beta with s = gamma / sqrt(var + eps), so W' = s W and
    b' = (b - mean) s + beta: exact up to rounding (done in float64).
    """
    _, mean, var, gamma, beta = (list(bn.inputs) + [None] * 5)[:5]
    eps = float(bn.options.get("eps", 1e-5))
    mean, var = _host(mean), _host(var)
    scale = (_host(gamma) if gamma is not None else numpy.ones_like(var)) / numpy.sqrt(var + eps)
    shift = _host(beta) if beta is not None else numpy.zeros_like(var)
    b = _host(bias) if bias is not None else numpy.zeros_like(mean)
    w = _host(weight)
    bn_name = ex.leaves.name_of(bn.inputs[1])
    bn_prefix = bn_name.rsplit(".", 1)[0] if bn_name else "bn"
    layer = ex.module_of(layer_call) or "layer"
    w_name = ex.g.initializer(ex.g.fresh(f"{ex.weight_name(weight, layer + '.weight')}+{bn_prefix}"),
                              scale_weight(w, scale))
    b_name = ex.g.initializer(ex.g.fresh(f"{layer}.bias+{bn_prefix}"), (b - mean) * scale + shift)
    return w_name, b_name


def _linear(ex: _Exporter, call) -> None:
    x, weight, bias = (list(call.inputs) + [None, None])[:3]
    bn = ex.folds.get(id(call))
    if bn is not None:  # x is 2-D: _plan_folds checked
        w_name, b_name = _folded(ex, call, bn, weight, bias, lambda w, s: w * s.reshape(-1, 1))
        ex.finish(bn, "Gemm", [ex.value(x), w_name, b_name], name=ex.module_of(call), transB=1)
        return
    inputs = [ex.value(x), ex.value(weight)] + ([ex.value(bias)] if bias is not None else [])
    ex.finish(call, "Gemm", inputs, transB=1)  # functional.linear takes (N, in_features) only


def _pool_geometry(call, x, out):
    options = call.options
    kernel = pair(options["kernel_size"], "kernel_size", minimum=1)
    stride = options.get("stride")
    stride = kernel if stride is None else pair(stride, "stride", minimum=1)
    padding = pair(options.get("padding", 0), "padding", minimum=0)
    # ceil_mode's last window may hang past the padding; ONNX's own ceil_mode does not drop a window
    # that starts in the right padding as PyTorch does, so the overhang is made explicit padding instead.
    extra = [max(0, (o - 1) * s + k - (size + 2 * p))
             for o, k, s, p, size in zip(out.shape[2:], kernel, stride, padding, x.shape[2:])]
    return kernel, stride, padding, extra


def _max_pool(ex: _Exporter, call) -> None:
    x, out = call.inputs[0], _outputs(call)[0]
    kernel, stride, padding, extra = _pool_geometry(call, x, out)
    pads = [padding[0], padding[1], padding[0] + extra[0], padding[1] + extra[1]]
    ex.finish(call, "MaxPool", [ex.value(x)], kernel_shape=list(kernel), strides=list(stride), pads=pads)


def _avg_pool(ex: _Exporter, call) -> None:
    x, out = call.inputs[0], _outputs(call)[0]
    kernel, stride, padding, extra = _pool_geometry(call, x, out)
    count_pad = bool(call.options.get("count_include_pad", True))
    geometry = dict(kernel_shape=list(kernel), strides=list(stride))
    name = ex.value(x)
    if not any(extra) or not count_pad:
        # Without an overhang the pads are the layer's; with one, only the input's elements count anyway.
        pads = [padding[0], padding[1], padding[0] + extra[0], padding[1] + extra[1]]
        ex.finish(call, "AveragePool", [name], pads=pads, count_include_pad=int(count_pad), **geometry)
        return
    # count_include_pad with a ceil_mode overhang: the zero padding counts, the overhang does not (PyTorch's
    # divisor), so the padding is real zeros and the overhang is padding AveragePool leaves out of the count.
    if any(padding):
        name = ex.g.add("Pad", [name, ex.g.ints([0, 0, padding[0], padding[1], 0, 0, padding[0], padding[1]])])
    ex.finish(call, "AveragePool", [name], pads=[0, 0, extra[0], extra[1]], count_include_pad=0, **geometry)


def _adaptive_pool(ex: _Exporter, call) -> None:
    x, out = call.inputs[0], _outputs(call)[0]
    mean = call.function is _ops.AdaptiveAvgPool2d
    (h, w), (oh, ow) = x.shape[2:], out.shape[2:]
    name = ex.value(x)
    if (oh, ow) == (1, 1):
        ex.finish(call, "GlobalAveragePool" if mean else "GlobalMaxPool", [name])
    elif h % oh == 0 and w % ow == 0:  # equal windows that tile the input: an ordinary pool
        kernel = [h // oh, w // ow]
        ex.finish(call, "AveragePool" if mean else "MaxPool", [name], kernel_shape=kernel, strides=kernel)
    else:
        # PyTorch's windows [floor(i*H/out), ceil((i+1)*H/out)) may overlap and differ in size: one slice and
        # reduction per window, columns then rows, as functional.adaptive_*_pool2d computes them.
        reduce = "ReduceMean" if mean else "ReduceMax"
        for axis, size, count in ((3, w, ow), (2, h, oh)):
            parts = []
            for start, end in _pooling._adaptive_windows(size, count):
                window = ex.g.add("Slice", [name, ex.g.ints([start]), ex.g.ints([end]), ex.g.ints([axis])])
                parts.append(ex.g.reduce(reduce, window, [axis], True))
            if axis == 2:
                ex.finish(call, "Concat", parts, axis=2)
            else:
                name = ex.g.add("Concat", parts, axis=3)


def _lp_pool(ex: _Exporter, call) -> None:
    x, options = call.inputs[0], call.options
    p = float(options["p"])
    kernel = pair(options["kernel_size"], "kernel_size", minimum=1)
    stride = options.get("stride")
    stride = kernel if stride is None else pair(stride, "stride", minimum=1)
    geometry = dict(kernel_shape=list(kernel), strides=list(stride))
    if math.isinf(p):  # functional.lp_pool2d's p = inf is max pooling
        ex.finish(call, "MaxPool", [ex.value(x)], **geometry)
        return
    # portacnn's lp_pool2d is the power *mean*, mean(x**p) ** (1/p); ONNX LpPool is the power sum of |x|.
    powered = ex.g.add("Pow", [ex.value(x), ex.g.scalar(p)])
    pooled = ex.g.add("AveragePool", [powered], **geometry)
    ex.finish(call, "Pow", [pooled, ex.g.scalar(1.0 / p)])


def _interpolate(ex: _Exporter, call) -> None:
    x, out = call.inputs[0], _outputs(call)[0]
    options = call.options
    mode, align_corners = options.get("mode", "nearest"), options.get("align_corners")
    _, scales = _upsampling.check_interpolate_options(options.get("size"), options.get("scale_factor"), mode,
                                                      align_corners, "interpolate")
    scales = scales or (None, None)
    (h, w), (oh, ow) = x.shape[2:], out.shape[2:]
    name = ex.value(x)
    if mode == "nearest":
        indices = [_upsampling._nearest_indices(n, o, s) for n, o, s in ((h, oh, scales[0]), (w, ow, scales[1]))]
        factors = [o // n if o % n == 0 else 0 for n, o in ((h, oh), (w, ow))]
        if all(factors) and all(index == [i // f for i in range(len(index))]
                                for index, f in zip(indices, factors)):
            # Whole-number upscaling: input i // k is what Resize's asymmetric floor rule picks, exactly.
            scales_name = ex.g.constant(numpy.asarray([1, 1, *factors], dtype=numpy.float32), "scales")
            ex.finish(call, "Resize", [name, "", scales_name], mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            return
        # Otherwise the rows and columns PyTorch's rule picks (float32 rounding included), gathered.
        steps = [("Gather", [ex.g.constant(numpy.asarray(index, dtype=numpy.int64), "indices")], {"axis": axis})
                 for axis, index in ((2, indices[0]), (3, indices[1]))]
        ex.chain(call, name, steps)
        return
    # Bilinear: y = R · x · Cᵀ with functional.interpolate's own constant matrices.
    rows = numpy.asarray(_upsampling._weights(h, oh, mode, bool(align_corners), scales[0]))
    cols = numpy.asarray(_upsampling._weights(w, ow, mode, bool(align_corners), scales[1]))
    left = ex.g.add("MatMul", [ex.g.constant(rows, "resize_rows"), name])
    ex.finish(call, "MatMul", [left, ex.g.constant(cols.T, "resize_cols")])


def _batch_norm(ex: _Exporter, call) -> None:
    x, mean, var, gamma, beta = (list(call.inputs) + [None] * 5)[:5]
    if call.options.get("training"):
        raise ExportError("the model's forward runs batch_norm with training=True (batch statistics), which has no "
                          "place in an inference graph: pass training=self.training")
    channels = mean.shape[0]
    gamma = ex.value(gamma) if gamma is not None else ex.g.constant(numpy.ones(channels, numpy.float32), "ones")
    beta = ex.value(beta) if beta is not None else ex.g.constant(numpy.zeros(channels, numpy.float32), "zeros")
    ex.finish(call, "BatchNormalization", [ex.value(x), gamma, beta, ex.value(mean), ex.value(var)],
              epsilon=float(call.options.get("eps", 1e-5)))


def _layer_norm(ex: _Exporter, call) -> None:
    x, weight, bias = (list(call.inputs) + [None, None])[:3]
    shape = tuple(call.options["normalized_shape"])
    scale = ex.value(weight) if weight is not None else ex.g.constant(numpy.ones(shape, numpy.float32), "ones")
    inputs = [ex.value(x), scale] + ([ex.value(bias)] if bias is not None else [])
    ex.finish(call, "LayerNormalization", inputs, axis=x.ndim - len(shape),
              epsilon=float(call.options.get("eps", 1e-5)))


def _group_norm(ex: _Exporter, call) -> None:
    # Each (sample, group) normalised over its channels and pixels: InstanceNormalization of the
    # (N, groups, rest) reshape, then the per-channel affine map. (GroupNormalization, opset 18, changed
    # its scale's meaning in opset 21; this form means the same everywhere.)
    x, weight, bias = (list(call.inputs) + [None, None])[:3]
    groups = int(call.options["num_groups"])
    ones = ex.g.constant(numpy.ones(groups, numpy.float32), "ones")
    zeros = ex.g.constant(numpy.zeros(groups, numpy.float32), "zeros")
    grouped = ex.g.add("Reshape", [ex.value(x), ex.g.ints([0, groups, -1])])
    normed = ex.g.add("InstanceNormalization", [grouped, ones, zeros], epsilon=float(call.options.get("eps", 1e-5)))
    restore = ex.g.ints(_batch_free_shape(ex, x.shape))
    channel_shape = ex.g.ints([x.shape[1]] + [1] * (x.ndim - 2))
    steps = [("Reshape", [restore], {})]
    if weight is not None:
        steps.append(("Mul", [ex.g.add("Reshape", [ex.value(weight), channel_shape])], {}))
    if bias is not None:
        steps.append(("Add", [ex.g.add("Reshape", [ex.value(bias), channel_shape])], {}))
    ex.chain(call, normed, steps)


def _batch_free_shape(ex: _Exporter, shape) -> list:
    """A Reshape target for ``shape``: 0 (copy the input's size) on the batch axis when the batch is dynamic."""
    return [0, *shape[1:]] if ex.g.batch is not None else list(shape)


def _simple(op: str, **fixed):
    def handler(ex: _Exporter, call) -> None:
        ex.finish(call, op, [ex.value(call.inputs[0])], **fixed)
    return handler


def _leaky_relu(ex: _Exporter, call) -> None:
    ex.finish(call, "LeakyRelu", [ex.value(call.inputs[0])], alpha=float(call.options.get("negative_slope", 0.01)))


def _elu(ex: _Exporter, call) -> None:
    ex.finish(call, "Elu", [ex.value(call.inputs[0])], alpha=float(call.options.get("alpha", 1.0)))


def _softmax(ex: _Exporter, call) -> None:
    op = "Softmax" if call.function is _ops.Softmax else "LogSoftmax"
    ex.finish(call, op, [ex.value(call.inputs[0])], axis=int(call.options.get("axis", -1)))


def _silu(ex: _Exporter, call) -> None:
    x = ex.value(call.inputs[0])
    ex.finish(call, "Mul", [x, ex.g.add("Sigmoid", [x])])


def _gelu(ex: _Exporter, call) -> None:
    x = ex.value(call.inputs[0])
    approximate = call.options.get("approximate", "none")
    if ex.g.opset >= 20:
        ex.finish(call, "Gelu", [x], approximate=approximate)
        return
    half_x = ex.g.add("Mul", [x, ex.g.scalar(0.5)])
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = ex.g.add("Mul", [ex.g.add("Pow", [x, ex.g.scalar(3.0)]), ex.g.scalar(0.044715)])
        inner = ex.g.add("Mul", [ex.g.add("Add", [x, cube]), ex.g.scalar(math.sqrt(2.0 / math.pi))])
        gate = ex.g.add("Tanh", [inner])
    else:  # 0.5 x (1 + erf(x / sqrt 2))
        gate = ex.g.add("Erf", [ex.g.add("Mul", [x, ex.g.scalar(math.sqrt(0.5))])])
    ex.finish(call, "Mul", [half_x, ex.g.add("Add", [gate, ex.g.scalar(1.0)])])


def _binary(op: str):
    def handler(ex: _Exporter, call) -> None:
        # An elementwise op's constant of the output's rank lines its leading axis up with the batch; a
        # matrix product's does not.
        like = _outputs(call)[0].shape if op != "MatMul" else None
        ex.finish(call, op, [ex.value(value, like) for value in call.inputs[:2]])
    return handler


def _pow_scalar(ex: _Exporter, call) -> None:
    ex.finish(call, "Pow", [ex.value(call.inputs[0]), ex.g.scalar(float(call.options["exponent"]))])


def _axes(call, ndim: int):
    axis = call.options.get("axis")
    if axis is None:
        return None
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return sorted(int(a) % ndim for a in axes)


def _reduction(op: str):
    def handler(ex: _Exporter, call) -> None:
        x = call.inputs[0]
        keepdims = bool(call.options.get("keepdims", False))
        axes = _axes(call, x.ndim) if x.ndim else None
        out = _outputs(call)[0]
        ex.names[id(out)] = ex.g.reduce(op, ex.value(x), axes, keepdims, out=ex.wanted.get(id(out)))
    return handler


def _reshape(ex: _Exporter, call) -> None:
    x, out = call.inputs[0], _outputs(call)[0]
    before, after = tuple(x.shape), tuple(out.shape)
    name = ex.value(x)
    flatten = len(before) > 2 and len(after) == 2 and before[0] == after[0]
    if ex.g.batch is None:
        if flatten:
            ex.finish(call, "Flatten", [name], axis=1)
        else:
            ex.finish(call, "Reshape", [name, ex.g.ints(after)])
        return
    batch = ex.g.batch
    if not (before and after and before[0] == batch and after[0] == batch):
        raise ExportError(
            f"a reshape from {before} to {after} mixes the batch axis (the trace ran on a batch of {batch}) with "
            "the others, which a graph with a dynamic batch cannot express; keep the batch as the first axis "
            "(e.g. x.reshape(x.shape[0], -1)), or export with dynamic_batch=False")
    if flatten:
        ex.finish(call, "Flatten", [name], axis=1)
    else:
        ex.finish(call, "Reshape", [name, ex.g.ints(_batch_free_shape(ex, after))])


def _get_item(ex: _Exporter, call) -> None:
    x = call.inputs[0]
    shape, key = tuple(x.shape), tuple(call.options["key"])
    indexed = sum(1 for part in key if part is not None and part is not Ellipsis)
    parts, expanded = [], False
    for part in key:
        if part is Ellipsis:
            if not expanded:  # NumPy allows one ...; later ones (never made by Tensor indexing) take nothing
                parts.extend([slice(None)] * (len(shape) - indexed))
                expanded = True
        else:
            parts.append(part)
    starts, ends, axes, steps, squeeze, unsqueeze = [], [], [], [], [], []
    axis = position = 0
    for part in parts:
        if part is None:
            unsqueeze.append(position)
            position += 1
            continue
        dynamic = axis == 0 and ex.g.batch is not None  # the batch axis: its size is not known here
        if isinstance(part, slice):
            position += 1
            if part.start is None and part.stop is None and part.step in (None, 1):
                axis += 1
                continue
            step = 1 if part.step is None else int(part.step)
            if dynamic:  # ONNX clamps like Python, so out-of-range defaults give the whole axis
                start = part.start if part.start is not None else (0 if step > 0 else _INT64_MAX)
                stop = part.stop if part.stop is not None else (_INT64_MAX if step > 0 else _INT64_MIN)
            else:
                start, stop, step = part.indices(shape[axis])
                if stop < 0:  # "before the first element" when stepping back; ONNX reads -1 as the last
                    stop = _INT64_MIN
            starts.append(int(start))
            ends.append(int(stop))
        else:
            index = int(part)
            if not dynamic:
                index %= shape[axis]
            starts.append(index)
            ends.append(index + 1 if index != -1 else _INT64_MAX)
            step = 1
            squeeze.append(axis)
        axes.append(axis)
        steps.append(step)
        axis += 1
    chain = []
    if axes:
        chain.append(("Slice", [ex.g.ints(starts), ex.g.ints(ends), ex.g.ints(axes), ex.g.ints(steps)], {}))
    if squeeze:
        chain.append(("Squeeze", [ex.g.ints(squeeze)], {}))
    if unsqueeze:
        chain.append(("Unsqueeze", [ex.g.ints(unsqueeze)], {}))
    ex.chain(call, ex.value(x), chain)


def _concat(ex: _Exporter, call) -> None:
    out = _outputs(call)[0]
    axis = int(call.options["axis"]) % out.ndim
    tensors = list(call.inputs)
    variable = [i for i, value in enumerate(tensors) if not _is_constant(ex, value)]
    if len(variable) == 1 and axis != 0 and all(_is_zeros(ex, value) for i, value in enumerate(tensors)
                                                 if i != variable[0]):
        # Zeros before and after one tensor (ResNet's option-A shortcut): a Pad, which also needs no
        # batch-sized constant.
        before = sum(tensors[i].shape[axis] for i in range(variable[0]))
        after = sum(tensors[i].shape[axis] for i in range(variable[0] + 1, len(tensors)))
        pads = [0] * (2 * out.ndim)
        pads[axis], pads[out.ndim + axis] = before, after
        ex.finish(call, "Pad", [ex.value(tensors[variable[0]]), ex.g.ints(pads)], mode="constant")
        return
    like = out.shape if axis != 0 else None  # along the batch axis a constant adds rows, whatever its size
    ex.finish(call, "Concat", [ex.value(value, like) for value in tensors], axis=axis)


def _is_constant(ex: _Exporter, value) -> bool:
    """Whether an op input is a fixed array (not an op's output, the input, or a weight)."""
    if isinstance(value, Tensor):
        value = ex._resolve(value)
        if id(value) in ex.producer or value is ex.input:
            return False
    return ex.leaves.name_of(value) is None


def _is_zeros(ex: _Exporter, value) -> bool:
    data = value.data if isinstance(value, Tensor) else value
    return hasattr(data, "shape") and not bool(numpy.any(_on_host(data)))


_HANDLERS = {
    _ops.Conv2d: _conv,
    _ops.ConvTranspose2d: _conv,
    _ops.MaxPool2d: _max_pool,
    _ops.AvgPool2d: _avg_pool,
    _ops.AdaptiveAvgPool2d: _adaptive_pool,
    _ops.AdaptiveMaxPool2d: _adaptive_pool,
    _ops.LPPool2d: _lp_pool,
    _ops.Interpolate: _interpolate,
    _ops.Linear: _linear,
    _ops.BatchNorm: _batch_norm,
    _ops.LayerNorm: _layer_norm,
    _ops.GroupNorm: _group_norm,
    _ops.ReLU: _simple("Relu"),
    _ops.Sigmoid: _simple("Sigmoid"),
    _ops.Tanh: _simple("Tanh"),
    _ops.Hardswish: _simple("HardSwish"),
    _ops.LeakyReLU: _leaky_relu,
    _ops.ELU: _elu,
    _ops.GELU: _gelu,
    _ops.SiLU: _silu,
    _ops.Softmax: _softmax,
    _ops.LogSoftmax: _softmax,
    _arith.Add: _binary("Add"),
    _arith.Sub: _binary("Sub"),
    _arith.Mul: _binary("Mul"),
    _arith.Div: _binary("Div"),
    _arith.MatMul: _binary("MatMul"),
    _arith.Neg: _simple("Neg"),
    _arith.PowScalar: _pow_scalar,
    _arith.Sum: _reduction("ReduceSum"),
    _arith.Mean: _reduction("ReduceMean"),
    _arith.Reshape: _reshape,
    _arith.GetItem: _get_item,
    _arith.Concat: _concat,
}
