"""What a callable accepts, read from its signature: for calling a model factory or a plugin's
function in the way it can take."""

from __future__ import annotations

import inspect
from typing import Callable


def accepts_keyword(function: Callable, keyword: str, *, if_unknown: bool) -> bool:
    """Whether ``function`` takes ``keyword`` (by that name, or through ``**kwargs``); ``if_unknown``
    where its signature cannot be read (some builtins and C extensions)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return if_unknown
    return keyword in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
