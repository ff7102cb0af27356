"""``portacnn.summary(model, input_shape)``: each layer's output shape and parameter count, from one real forward."""

from __future__ import annotations

from .autograd import Tensor, no_grad
from .backends import dtype_name, placement_of, to_device
from .errors import ArgumentTypeError

__all__ = ["summary"]


def _own_parameter_count(module) -> int:
    from .nn import Parameter

    count = 0
    for value in vars(module).values():
        if isinstance(value, Parameter):
            size = 1
            for extent in value.data.shape:
                size *= extent
            count += size
    return count


def summary(model, input_shape, *, dtype=None) -> str:
    """A table of every layer the forward runs: its name, type, output shape and own parameter count.

    Runs the model once under ``no_grad`` on zeros of ``input_shape`` (batch
    axis included, e.g. ``(1, 1, 28, 28)``), on the model's backend and in
    its dtype, in eval mode (the mode is restored). A layer called twice is
    listed twice; the totals count each parameter once.
    """
    import numpy

    from .nn import Module

    if not isinstance(model, Module):
        raise ArgumentTypeError(f"summary takes a Module, got {type(model).__name__}")
    try:
        shape = tuple(int(extent) for extent in input_shape)
    except TypeError:
        raise ArgumentTypeError(f"input_shape must be a tuple of ints with the batch axis, e.g. (1, 1, 28, 28), "
                                f"got {input_shape!r}") from None
    parameters = model.parameters()
    placement = placement_of(parameters[0].data) if parameters else None
    dtype = dtype or (dtype_name(parameters[0].data) if parameters else "float32")
    x = numpy.zeros(shape, dtype=dtype)
    x = to_device(x, placement) if placement is not None else x

    rows = []
    names = {id(module): name or type(model).__name__ for name, module in model.named_modules()}
    leaves = {id(m) for m in model.modules() if not any(isinstance(v, Module) for v in vars(m).values())}
    patched = []
    for module in model.modules():
        if id(module) not in leaves and not _own_parameter_count(module):
            continue
        original = module.forward

        def recording(*args, _module=module, _forward=original, **kwargs):
            out = _forward(*args, **kwargs)
            first = out[0] if isinstance(out, tuple) else out
            shape_out = tuple(first.shape) if isinstance(first, Tensor) or hasattr(first, "shape") else "-"
            rows.append((names[id(_module)], type(_module).__name__, shape_out, _own_parameter_count(_module)))
            return out

        module.forward = recording
        patched.append(module)
    was_training = model.training
    try:
        model.eval()
        with no_grad():
            output = model(x)
    finally:
        for module in patched:
            del module.forward
        model.train(was_training)
    total, trainable = model.num_parameters(), model.num_parameters(trainable_only=True)
    headers = ("layer", "type", "output shape", "parameters")
    table = [headers] + [(name, kind, str(out_shape), f"{count:,}") for name, kind, out_shape, count in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(4)]
    lines = ["  ".join(str(cell).ljust(w) if i < 3 else str(cell).rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))) for row in table]
    lines.insert(1, "-" * len(lines[0]))
    out_shape = tuple(output.shape) if hasattr(output, "shape") else "-"
    lines += ["-" * len(lines[0]), f"input {shape} -> output {out_shape}",
              f"parameters: {total:,} ({trainable:,} trainable)"]
    return "\n".join(lines)
