"""Containers of layers."""

from __future__ import annotations

from ..autograd.tape import as_input
from ..errors import ArgumentTypeError, PortacnnError
from .module import Module


class Sequential(Module):
    def __init__(self, *layers):
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise ArgumentTypeError(
                    f"Sequential takes layers (Module instances), argument {index} is {type(layer).__name__}"
                    + ("; create it first, e.g. ReLU() rather than ReLU" if isinstance(layer, type) else ""))
            setattr(self, str(index), layer)

    @property
    def layers(self):
        return [m for m in vars(self).values() if isinstance(m, Module)]

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def forward(self, x):
        x = as_input(x)
        for index, layer in enumerate(self.layers):
            try:
                x = layer.forward(x)
            except PortacnnError as error:
                # Say which layer refused its input; the error keeps its type and traceback.
                error.args = (f"layer {index} ({type(layer).__name__}): {error}", *error.args[1:])
                raise
        return x
