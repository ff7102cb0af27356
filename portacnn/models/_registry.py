"""The architecture registry: how a checkpoint records a model so that it can be rebuilt.

A registered architecture is a name and a factory (a function or a ``Module``
class) that builds the model from keyword arguments. A model built through
a registered factory remembers the name and the arguments it was built with
(:func:`architecture_of`); ``save_checkpoint`` stores them, and
``build_model``, ``portacnn evaluate`` and ``portacnn predict`` call the same
factory with the same arguments to rebuild it. Arguments that only decide
where and how the weights start (``seed``, ``rng``, ``dtype``, ``device``) are
not recorded: the checkpoint holds the weights themselves.
"""

from __future__ import annotations

import functools
import inspect
import json

from .._signatures import accepts_keyword
from ..errors import ArgumentError, CheckpointError
from ..nn.module import RECORDS_ARGUMENTS

__all__ = ["register", "create", "available", "architecture_of", "recipe_of"]

#: Factory arguments a checkpoint does not record (the weights are stored instead).
_PLACEMENT_ARGUMENTS = frozenset({"seed", "rng", "dtype", "device"})


class _Entry:
    __slots__ = ("name", "factory", "recipe")

    def __init__(self, name, factory, recipe):
        self.name, self.factory, self.recipe = name, factory, recipe


_REGISTRY: dict[str, _Entry] = {}


def _recorded_arguments(factory, args, kwargs) -> dict:
    """The keyword arguments (defaults filled in) that rebuild what ``factory(*args, **kwargs)`` built."""
    try:
        bound = inspect.signature(factory).bind(*args, **kwargs)
    except (TypeError, ValueError):  # no signature to read: keep what was passed by name
        return {k: v for k, v in kwargs.items() if k not in _PLACEMENT_ARGUMENTS}
    bound.apply_defaults()
    recorded = {}
    for name, value in bound.arguments.items():
        kind = bound.signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            recorded.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            recorded[name] = value
    return {k: v for k, v in recorded.items() if k not in _PLACEMENT_ARGUMENTS}


def _stamp(model, name: str, arguments: dict):
    object.__setattr__(model, "_architecture", (name, arguments))
    return model


def register(name: str, factory=None, *, recipe: dict | None = None, replace: bool = False):
    """Register ``factory`` as architecture ``name``; returns the factory to build models with.

    ``factory(**kwargs)`` returns a ``Module``. For a function, use the
    returned wrapper (or :func:`create`): models it builds record ``name``
    and their arguments. A ``Module`` subclass is returned unchanged, and
    every instance of it records its constructor arguments. ``recipe`` is
    the architecture's default training hyper-parameters (``TrainConfig``
    field names, e.g. ``{"epochs": 10, "lr": 0.1}``), used when a run names
    no preset. Registering a taken name raises unless ``replace=True``.
    Usable as a decorator: ``@register("mynet")``.
    """
    if factory is None:
        return lambda f: register(name, f, recipe=recipe, replace=replace)
    if not isinstance(name, str) or not name or not name.isidentifier():
        raise ArgumentError(f"an architecture name must be a Python identifier such as 'my_net', got {name!r}")
    if not callable(factory):
        raise ArgumentError(f"register({name!r}, factory): factory must be a function or Module class, "
                            f"got {type(factory).__name__}")
    if recipe is not None and not isinstance(recipe, dict):
        raise ArgumentError(f"recipe must be a dict of TrainConfig fields, got {type(recipe).__name__}")
    if name in _REGISTRY and _REGISTRY[name].factory is not factory and not replace:
        raise ArgumentError(f"architecture {name!r} is already registered (to {_REGISTRY[name].factory!r}); "
                            "pick another name, or pass replace=True to replace it")
    _REGISTRY[name] = _Entry(name, factory, dict(recipe) if recipe else None)
    if isinstance(factory, type):
        RECORDS_ARGUMENTS.add(factory)
        return factory

    @functools.wraps(factory)
    def build(*args, **kwargs):
        return _stamp(factory(*args, **kwargs), name, _recorded_arguments(factory, args, kwargs))

    build.architecture = name
    return build


def available() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ArgumentError(f"unknown architecture {name!r}; known architectures: {', '.join(available())}. "
                            "Register your own with portacnn.models.register(name, factory)")
    return _REGISTRY[name]


def recipe_of(name: str) -> dict | None:
    """The registered default training recipe of architecture ``name`` (a copy), or None."""
    recipe = _entry(name).recipe
    return dict(recipe) if recipe else None


def create(name: str, *, dtype=None, device=None, **kwargs):
    """Build architecture ``name`` with ``kwargs`` (plus ``dtype``/``device`` where given); the model records them."""
    entry = _entry(name)
    factory = entry.factory
    placement = {key: value for key, value in (("dtype", dtype), ("device", device)) if value is not None}
    passed = {k: v for k, v in placement.items() if accepts_keyword(factory, k, if_unknown=True)}
    model = factory(**kwargs, **passed)
    if len(passed) < len(placement):  # the factory cannot place its weights: move them afterwards
        model.to(device, dtype=dtype)
    return _stamp(model, name, _recorded_arguments(factory, (), kwargs))


def architecture_of(model) -> tuple[str, dict] | None:
    """``(name, arguments)`` that rebuild ``model`` through the registry, or None if it was not built by one.

    Raises ``CheckpointError`` when the recorded arguments cannot be stored as JSON.
    """
    found = getattr(model, "_architecture", None)
    if found is None:
        for entry in _REGISTRY.values():
            if type(model) is entry.factory:
                args, kwargs = getattr(model, "_constructor_arguments", ((), {}))
                found = (entry.name, _recorded_arguments(entry.factory, args, kwargs))
                break
    if found is None:
        return None
    name, arguments = found
    try:
        json.dumps(arguments, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"the model was built by architecture {name!r} with arguments a checkpoint cannot store as JSON "
            f"({exc}): pass numbers, strings, lists and dicts to its factory") from exc
    return name, dict(arguments)
