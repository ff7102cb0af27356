"""Loss scaling for float16 training: ``GradScaler``, as PyTorch's ``torch.amp.GradScaler``.

float16 gradients below about 6e-8 round to zero. Scaling the loss by a large
factor before ``backward()`` scales every gradient by it, keeping them
representable; ``step`` divides them back before the optimizer sees them and
skips the step when a gradient overflowed to inf or nan. ``update`` then
adjusts the factor with PyTorch's rule: times ``backoff_factor`` after a
skipped step, times ``growth_factor`` after ``growth_interval`` finite steps
in a row::

    scaler = portacnn.amp.GradScaler()
    for x, y in batches:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

The scale is a Python float on the host. Checking the gradients reads one
value from the device per optimizer step (a sync on a GPU), as PyTorch's
``step`` does.
"""

from __future__ import annotations

import math

from ._arrays import namespace_of
from ._checks import check_flag, check_number
from .errors import ArgumentError, ArgumentTypeError, UsageError

__all__ = ["GradScaler"]

_READY, _UNSCALED, _STEPPED = "ready", "unscaled", "stepped"


class GradScaler:
    """Dynamic loss scaling (PyTorch's ``GradScaler``; ``enabled=False`` makes every method a pass-through)."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        self._enabled = check_flag(enabled, "GradScaler enabled")
        self._scale = check_number(init_scale, "GradScaler init_scale", low=0.0, low_inclusive=False)
        if math.isinf(self._scale):
            raise ArgumentError(f"GradScaler init_scale must be finite, got {init_scale!r}")
        self._growth_factor = check_number(growth_factor, "GradScaler growth_factor", low=1.0,
                                           low_inclusive=False, hint=" (it multiplies the scale after "
                                           "growth_interval finite steps)")
        self._backoff_factor = check_number(backoff_factor, "GradScaler backoff_factor", low=0.0, high=1.0,
                                            low_inclusive=False)
        if self._backoff_factor == 1.0:
            raise ArgumentError("GradScaler backoff_factor must be below 1 (it multiplies the scale after an "
                                "overflow), got 1.0")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int):
            raise ArgumentTypeError(f"GradScaler growth_interval must be an int, got {growth_interval!r}")
        if growth_interval < 1:
            raise ArgumentError(f"GradScaler growth_interval must be a positive int, got {growth_interval!r}")
        self._growth_interval = growth_interval
        self._growth_tracker = 0
        self._per_optimizer: dict[int, dict] = {}

    # -- scaling -----------------------------------------------------------

    def scale(self, outputs):
        """``outputs * scale`` (a Tensor for a Tensor loss; lists and tuples element by element)."""
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        return outputs * self._scale

    def _state(self, optimizer) -> dict:
        return self._per_optimizer.setdefault(id(optimizer), {"stage": _READY, "found_inf": False})

    def unscale_(self, optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the scale (rebinding ``p.grad``), once per step.

        Call it before clipping gradients; ``step`` then does not unscale again.
        """
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["stage"] == _UNSCALED:
            raise UsageError("GradScaler.unscale_() has already been called on this optimizer since the last "
                             "update(); call it once per step")
        if state["stage"] == _STEPPED:
            raise UsageError("GradScaler.unscale_() is being called after step(); call update() first")
        inv_scale = 1.0 / self._scale
        flags = []
        for p in optimizer.params:
            if p.grad is None:
                continue
            xp = namespace_of(p.grad)
            p.grad = p.grad * inv_scale
            flags.append(xp.any(~xp.isfinite(p.grad)))
        found = None
        for flag in flags:
            found = flag if found is None else found | flag
        state["found_inf"] = False if found is None else bool(found)  # the one read from the device
        state["stage"] = _UNSCALED

    def step(self, optimizer, *args, **kwargs):
        """Unscale (unless ``unscale_`` did) and call ``optimizer.step()``, unless a gradient is inf or nan.

        Returns what ``optimizer.step`` returns, or None for a skipped step.
        """
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        state = self._state(optimizer)
        if state["stage"] == _STEPPED:
            raise UsageError("GradScaler.step() has already been called on this optimizer since the last "
                             "update(); call update() once per iteration")
        if state["stage"] == _READY:
            self.unscale_(optimizer)
        state["stage"] = _STEPPED
        if state["found_inf"]:
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale=None) -> None:
        """Back off after an inf/nan, grow after ``growth_interval`` clean steps (or set ``new_scale``)."""
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = check_number(new_scale, "GradScaler.update new_scale", low=0.0, low_inclusive=False)
        else:
            if not self._per_optimizer:
                raise UsageError("GradScaler.update(): no optimizer has been stepped (or unscaled) through this "
                                 "scaler since the last update; call scaler.step(optimizer) first")
            if any(s["found_inf"] for s in self._per_optimizer.values()):
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    self._scale *= self._growth_factor
                    self._growth_tracker = 0
        self._per_optimizer = {}

    # -- state -------------------------------------------------------------

    def get_scale(self) -> float:
        """The current scale (1.0 when disabled)."""
        return self._scale if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def is_enabled(self) -> bool:
        return self._enabled

    def state_dict(self) -> dict:
        """PyTorch's keys: scale, growth_factor, backoff_factor, growth_interval, _growth_tracker ({} if disabled)."""
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor, "backoff_factor": self._backoff_factor,
                "growth_interval": self._growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict) -> None:
        if not self._enabled:
            return
        if not isinstance(state_dict, dict) or not state_dict:
            raise ArgumentError("GradScaler.load_state_dict: the state dict is empty or not a dict; was it saved "
                                "from a disabled GradScaler?")
        missing = [k for k in ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
                   if k not in state_dict]
        if missing:
            raise ArgumentError(f"GradScaler.load_state_dict: missing {', '.join(missing)}")
        self._scale = float(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])
