"""Containers of layers.

Children are plain attributes (``"0"``, ``"1"``, ... in ``Sequential`` and
``ModuleList``, the keys in ``ModuleDict``), because that is where ``Module``
finds parameters, so ``state_dict`` names come out as PyTorch's for the same
structure (``blocks.0.weight``).
"""

from __future__ import annotations

from .._arrays import namespace_of
from .._checks import as_int
from ..autograd.tape import as_input
from ..errors import ArgumentError, ArgumentTypeError, ModuleIndexError, ModuleKeyError, PortacnnError, UsageError
from .module import Module, array_of


def _check_module(value, where: str) -> Module:
    if not isinstance(value, Module):
        raise ArgumentTypeError(
            f"{where} must be a layer (a Module instance), got {type(value).__name__}"
            + ("; create it first, e.g. ReLU() rather than ReLU" if isinstance(value, type) else ""))
    return value


def _named_children(module) -> list:
    return [(name, value) for name, value in vars(module).items() if isinstance(value, Module)]


def _position(index, length: int, container: str) -> int:
    """A list index in ``[-length, length)`` as a position in ``[0, length)``."""
    try:
        index = as_int(index)
    except TypeError:
        raise ArgumentTypeError(
            f"{container} indices must be integers or slices, got {index!r} ({type(index).__name__})") from None
    if not -length <= index < length:
        raise ModuleIndexError(f"index {index} is out of range for a {container} of {length} "
                               f"layer{'s' if length > 1 else ''} (valid: {-length} to {length - 1})" if length else
                               f"index {index} is out of range: the {container} is empty")
    return index % length


class Identity(Module):
    """Returns its input: a placeholder where an architecture expects a layer (a removed head, an optional
    block). Like PyTorch's, it accepts and ignores any arguments, so it can stand in for the layer it replaces."""

    def __init__(self, *args, **kwargs):
        pass

    def forward(self, x):
        namespace_of(array_of(x), names=("x",))
        return x


class _NotCallable:
    def forward(self, *inputs):
        name = type(self).__name__
        raise UsageError(f"{name} holds layers but is not one itself (it has no forward): call its layers in your "
                         f"model's forward, e.g. for layer in self.layers: x = layer(x), or use Sequential")


class Sequential(Module):
    def __init__(self, *layers):
        for index, layer in enumerate(layers):
            _check_module(layer, f"Sequential argument {index}")
            setattr(self, str(index), layer)

    @property
    def layers(self):
        return [m for m in vars(self).values() if isinstance(m, Module)]

    def __getitem__(self, index):
        if isinstance(index, slice):
            # A Sequential whose layers keep their names ("2", "3", ...), as PyTorch's slice does, so the
            # slice's state_dict names are the full model's.
            part = Sequential()
            for name, layer in _named_children(self)[index]:
                setattr(part, name, layer)
            return part
        layers = self.layers
        return layers[_position(index, len(layers), "Sequential")]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

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


class ModuleList(_NotCallable, Module):
    """Layers in a list, for a ``forward`` that loops over them or picks some: their parameters are found,
    moved and saved. A slice is a new ModuleList numbered from 0, as in PyTorch."""

    def __init__(self, modules=None):
        if modules is not None:
            self.extend(modules)

    def _layers(self) -> list:
        return [m for m in vars(self).values() if isinstance(m, Module)]

    def _renumber(self, layers) -> None:
        for name, _ in _named_children(self):
            delattr(self, name)
        for index, layer in enumerate(layers):
            setattr(self, str(index), layer)

    def append(self, module):
        setattr(self, str(len(self)), _check_module(module, "ModuleList.append's argument"))
        return self

    def extend(self, modules):
        if isinstance(modules, Module) and not isinstance(modules, (ModuleList, Sequential)):
            raise ArgumentTypeError(f"ModuleList.extend takes an iterable of layers, got one layer "
                                    f"({type(modules).__name__}): use append for a single layer")
        try:
            modules = list(modules)
        except TypeError:
            raise ArgumentTypeError(f"ModuleList.extend takes an iterable of layers (a list, tuple, ...), got "
                                    f"{type(modules).__name__}") from None
        start = len(self)
        for offset, module in enumerate(modules):
            _check_module(module, f"ModuleList element {start + offset}")
        for offset, module in enumerate(modules):
            setattr(self, str(start + offset), module)
        return self

    def insert(self, index, module):
        """Insert before ``index``, as ``list.insert`` (an index past either end inserts at that end)."""
        _check_module(module, "ModuleList.insert's module")
        try:
            index = as_int(index)
        except TypeError:
            raise ArgumentTypeError(f"ModuleList.insert index must be an int, got {index!r}") from None
        layers = self._layers()
        layers.insert(index, module)
        self._renumber(layers)

    def __getitem__(self, index):
        layers = self._layers()
        if isinstance(index, slice):
            return ModuleList(layers[index])
        return layers[_position(index, len(layers), "ModuleList")]

    def __setitem__(self, index, module):
        _check_module(module, "a ModuleList element")
        names = [name for name, _ in _named_children(self)]
        setattr(self, names[_position(index, len(names), "ModuleList")], module)

    def __delitem__(self, index):
        layers = self._layers()
        if isinstance(index, slice):
            del layers[index]
        else:
            del layers[_position(index, len(layers), "ModuleList")]
        self._renumber(layers)

    def __len__(self):
        return len(self._layers())

    def __iter__(self):
        return iter(self._layers())


class ModuleDict(_NotCallable, Module):
    """Layers by name, in insertion order: ``blocks["conv"]``, with the key as the attribute and state_dict
    name (``blocks.conv.weight``). Keys that would hide one of its methods or attributes (``keys``, ``training``,
    ...) are refused, as PyTorch does."""

    def __init__(self, modules=None):
        if modules is not None:
            self.update(modules)

    def _check_key(self, key) -> str:
        if not isinstance(key, str):
            raise ArgumentTypeError(f"ModuleDict keys must be strings (they become attribute and state_dict "
                                    f"names), got {key!r} ({type(key).__name__})")
        if not key or "." in key:
            raise ArgumentError(f"ModuleDict key {key!r} must be non-empty and contain no '.' (the dot separates "
                                "the parts of state_dict names)")
        held = vars(self).get(key)
        if held is None and hasattr(self, key) or held is not None and not isinstance(held, Module):
            raise ArgumentError(f"ModuleDict key {key!r} would hide the ModuleDict's own attribute {key!r}; "
                                "pick another name")
        return key

    def __getitem__(self, key):
        value = vars(self).get(key) if isinstance(key, str) else None
        if not isinstance(value, Module):
            raise ModuleKeyError(f"ModuleDict has no layer {key!r}; its keys are {self.keys()}")
        return value

    def __setitem__(self, key, module):
        setattr(self, self._check_key(key), _check_module(module, f"ModuleDict[{key!r}]"))

    def __delitem__(self, key):
        self[key]  # raises ModuleKeyError for a missing key
        delattr(self, key)

    def __contains__(self, key):
        return isinstance(key, str) and isinstance(vars(self).get(key), Module)

    def __len__(self):
        return len(self.keys())

    def __iter__(self):
        return iter(self.keys())

    def keys(self) -> list:
        return [name for name, _ in _named_children(self)]

    def values(self) -> list:
        return [module for _, module in _named_children(self)]

    def items(self) -> list:
        return _named_children(self)

    def pop(self, key):
        module = self[key]
        delattr(self, key)
        return module

    def clear(self) -> None:
        for key in self.keys():
            delattr(self, key)

    def update(self, modules) -> None:
        """From a mapping (dict, ModuleDict) or an iterable of ``(key, layer)`` pairs."""
        if hasattr(modules, "keys") and hasattr(modules, "__getitem__"):
            pairs = [(key, modules[key]) for key in modules.keys()]
        else:
            try:
                pairs = list(modules)
            except TypeError:
                raise ArgumentTypeError(f"ModuleDict takes a mapping of layers by name or an iterable of (name, "
                                        f"layer) pairs, got {type(modules).__name__}") from None
            for index, pair in enumerate(pairs):
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise ArgumentTypeError(f"ModuleDict element {index} must be a (name, layer) pair, got {pair!r}")
        for key, module in pairs:
            self._check_key(key)
            _check_module(module, f"ModuleDict[{key!r}]")
        for key, module in pairs:
            setattr(self, key, module)
