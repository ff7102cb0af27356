"""Optimizers and learning-rate schedulers with PyTorch's names, arguments and update rules.

Updates rebind ``param.data`` (``p = p - lr * g``) instead of writing in
place, so they work on immutable arrays (JAX) as well as mutable ones.
Parameters without a gradient (frozen with ``requires_grad_(False)``, or
not used by the loss) are left as they are, and, as in PyTorch, do not
advance their own step count (Adam's bias correction, Adagrad's decay).

Hyper-parameters live in ``optimizer.param_groups``, a list of dicts as in
PyTorch, and are read at every step: a scheduler (or you) changes a rate by
writing ``group["lr"]``. ``optimizer.lr`` (and ``.momentum``, ``.betas``, ...)
read and write the value of the only group, which is what single-group code
and ``portacnn train`` use.

Schedulers follow PyTorch's protocol: constructing one performs step 0
(setting every group's ``lr`` to the schedule's first value), and each
``step()`` computes the next rates; the built-in ones use PyTorch's recursive
("chainable") formulas, so they give PyTorch's numbers and two schedulers
stepping one optimizer compose as they do there.

What PyTorch has and portacnn leaves out: the ``foreach``, ``fused``,
``capturable`` and ``differentiable`` switches (one implementation serves
every backend), sparse gradients, a scheduler's ``last_epoch=`` constructor
argument and the deprecated ``scheduler.step(epoch)`` (resume from
``state_dict()`` instead), and the warning about calling ``scheduler.step()``
before ``optimizer.step()``.
"""

from __future__ import annotations

import math
import types
import weakref
from bisect import bisect_right
from collections import Counter

from ._arrays import namespace_of
from ._checks import as_int, check_choice, check_finite, check_flag, check_number, is_real_number
from .errors import ArgumentError, ArgumentTypeError, CheckpointError, UsageError

__all__ = [
    "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad",
    "LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR", "LinearLR",
    "OneCycleLR", "SequentialLR",
]


# --------------------------------------------------------------------------
# optimizers


def _hyperparameter(name: str) -> property:
    """``optimizer.<name>``: the value every parameter group shares.

    Code written before parameter groups (``optimizer.lr``, ``portacnn
    train``'s log lines, the compiled step) keeps working on a single group;
    with several groups that disagree it says where to look instead of
    silently picking one.
    """

    def get(self):
        values = [group[name] for group in self.param_groups]
        if any(value != values[0] for value in values[1:]):
            raise UsageError(
                f"{type(self).__name__} has {len(values)} parameter groups with different {name} values {values}; "
                f"read optimizer.param_groups[i][{name!r}] instead")
        return values[0]

    def set(self, value):
        if len(self.param_groups) != 1:
            raise UsageError(
                f"{type(self).__name__} has {len(self.param_groups)} parameter groups; set "
                f"optimizer.param_groups[i][{name!r}] for each group to change")
        self.param_groups[0][name] = value

    return property(get, set, doc=f"The {name} of the only parameter group (see ``param_groups``).")


#: Every optimizer alive, so that moving a model (``Module.to``) can move the state kept for its parameters.
_LIVE_OPTIMIZERS: weakref.WeakSet = weakref.WeakSet()


def follow_moved_parameters(moved) -> None:
    """Move (and cast) every live optimizer's state for the parameters in ``moved`` to where they now are.

    ``Module.to`` calls this after moving its parameters, as PyTorch users
    expect ``model.to(...)`` after building the optimizer to keep training.
    """
    moved = {id(param) for param in moved}
    for optimizer in list(_LIVE_OPTIMIZERS):
        optimizer._follow_parameters(moved)


class Optimizer:
    """Base class: parameter groups, per-parameter state and the state dict.

    ``params`` is a list of Parameters, or of dicts (parameter groups) as in
    PyTorch: ``[{"params": backbone, "lr": 1e-4}, {"params": head}]``, each
    group's missing hyper-parameters taken from the constructor's. A
    subclass passes its defaults, checks a group's values in
    ``_check_group`` and computes one parameter's new array in ``_update``.

    Per-parameter state lives in lists named in ``_state_names``, indexed
    like ``self.params`` (every group's parameters in order), so a state
    dict can flatten them to ``"<name>.<index>"`` arrays and a compiled step
    can pass them through as arrays.
    """

    _state_names: tuple[str, ...] = ()
    # State kept only once some group needs it (AMSGrad's maxima), so that
    # optimizers not using it carry no list of Nones around.
    _optional_state_names: tuple[str, ...] = ()
    # Whether updates depend on how many steps each parameter has taken
    # (Adam's bias correction, Adagrad's lr_decay).
    _counts_steps = False

    lr = _hyperparameter("lr")

    #: Whether ``step`` writes the new values into the parameters' arrays (and the optimizer's own state)
    #: in place where the backend allows it (NumPy, CuPy, torch: ``portacnn.backends.updates_in_place``), as
    #: PyTorch's optimizers do: no new array per parameter per step, and ``param.data`` stays the same
    #: array. False rebinds ``param.data`` to a new array every step, which is what JAX, array-api-strict
    #: and read-only arrays always get. Both give the same bits.
    in_place = True

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.params: list = []
        self._state_names = tuple(type(self)._state_names)
        for name in self._state_names:
            setattr(self, name, [])
        # A parameter's own step count is step_count - _missed[i], the steps it
        # sat out without a gradient: unlike a count of its own, this stays
        # right when a compiled step passes step_count in as a traced array.
        self._missed: list[int] = []
        # Per parameter: the array last found updatable in place (kept so the check runs once per array).
        self._updatable: list = []
        self.step_count = 0
        groups, implicit = self._groups_from(params)
        for index, group in enumerate(groups):
            self._add_group(group, "" if implicit else f" parameter group {index}")
        if not self.params:
            raise ArgumentError("optimizer got an empty parameter list; pass model.parameters()")
        _LIVE_OPTIMIZERS.add(self)

    def _follow_parameters(self, moved_ids: set) -> None:
        from .backends import placement_of, to_device

        for index, param in enumerate(self.params):
            if id(param) not in moved_ids:
                continue
            placement = placement_of(param.data)
            for name in self._state_names:
                values = getattr(self, name)
                value = values[index]
                if value is None:
                    continue
                value = to_device(value, placement)
                if value.dtype != param.data.dtype:
                    value = placement.namespace.astype(value, param.data.dtype)
                values[index] = value

    def _groups_from(self, params) -> tuple[list[dict], bool]:
        """The parameter groups, and whether the user gave a plain list (one group no message need name)."""
        from .autograd import Tensor
        from .nn import Module

        name = type(self).__name__
        if isinstance(params, Module):
            raise ArgumentTypeError(f"{name} takes the model's parameters, not the model: pass model.parameters()")
        if isinstance(params, (Tensor, dict, set, frozenset)):
            hint = {Tensor: "wrap a single parameter in a list: [param]",
                    dict: "pass a list of parameter groups: [{'params': ...}, ...]"}.get(
                Tensor if isinstance(params, Tensor) else type(params),
                "a set has no fixed order, so the optimizer state would not line up with the parameters; "
                "pass a list")
            raise ArgumentTypeError(f"{name} params must be a list of Parameters (model.parameters()) or of "
                                    f"parameter-group dicts, got a {type(params).__name__}: {hint}")
        try:
            items = list(params)
        except TypeError:
            raise ArgumentTypeError(f"{name} params must be a list of Parameters (model.parameters()), "
                                    f"got {type(params).__name__}") from None
        if not items:
            raise ArgumentError("optimizer got an empty parameter list; pass model.parameters()")
        if all(isinstance(item, dict) for item in items):
            return items, False
        if any(isinstance(item, dict) for item in items):
            raise ArgumentTypeError(f"{name} params mixes parameter-group dicts and Parameters; put every "
                                    "parameter in a group: [{'params': [...]}, {'params': [...], 'lr': ...}]")
        return [{"params": items}], True

    def add_param_group(self, param_group: dict) -> None:
        """Add a parameter group, as PyTorch's method: e.g. layers unfrozen part-way through fine-tuning."""
        self._add_group(param_group, f" parameter group {len(self.param_groups)}")

    def _add_group(self, param_group, where: str) -> None:
        from .autograd import Tensor

        name = type(self).__name__ + where
        if not isinstance(param_group, dict):
            raise ArgumentTypeError(f"{name} must be a dict such as {{'params': [...], 'lr': 0.01}}, "
                                    f"got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ArgumentError(f"{name} has no 'params' entry; a group is {{'params': [...], ...}}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise ArgumentTypeError(f"{name} params is a set, which has no fixed order; pass a list")
        else:
            try:
                params = list(params)
            except TypeError:
                raise ArgumentTypeError(f"{name} params must be a list of Parameters, "
                                        f"got {type(params).__name__}") from None
        seen = {id(p): index for index, p in enumerate(self.params)}
        first_new = len(self.params)
        for index, param in enumerate(params):
            if not isinstance(param, Tensor) or not param.is_leaf:
                what = "an op's result Tensor" if isinstance(param, Tensor) else f"a {type(param).__name__}"
                raise ArgumentTypeError(
                    f"{name} params must be Parameters (pass model.parameters()), item {index} is {what}")
            if id(param) in seen:
                earlier = seen[id(param)]
                items = (f"items {earlier - first_new} and {index}" if earlier >= first_new
                         else f"item {index}, already optimized as parameter {earlier}")
                raise ArgumentError(
                    f"{name} got the same parameter twice ({items}) and would update it twice per step; "
                    "pass each parameter once, e.g. model.parameters()")
            seen[id(param)] = first_new + index
        group = dict(param_group, params=params)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group, name)
        self.param_groups.append(group)
        self.params.extend(params)
        for state_name in self._state_names:
            getattr(self, state_name).extend([None] * len(params))
        self._missed.extend([self.step_count] * len(params))
        self._updatable.extend([None] * len(params))

    def _check_group(self, group: dict, name: str) -> None:
        """Check (and normalise to Python numbers) one group's hyper-parameters; ``name`` labels the messages.

        Python floats, not NumPy scalars: a NumPy float64 would promote
        float32 parameters to float64.
        """
        group["lr"] = check_number(group["lr"], f"{name} learning rate lr", low=0.0, low_inclusive=False)
        if "maximize" in group:
            group["maximize"] = check_flag(group["maximize"], f"{name} maximize")

    def _keep_state(self, name: str) -> None:
        """Start keeping the optional per-parameter state ``name``."""
        if name not in self._state_names:
            self._state_names += (name,)
            setattr(self, name, [None] * len(self.params))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = namespace_of(p.grad).zeros_like(p.grad)

    def step(self, closure=None):
        """Update every parameter that has a gradient; ``closure`` (re-evaluating the loss) as in PyTorch."""
        loss = None
        if closure is not None:
            from .autograd import enable_grad

            with enable_grad():
                loss = closure()
        self.step_count += 1
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    if self._counts_steps:
                        self._missed[index] += 1
                else:
                    data = param.data
                    in_place = self.in_place and (self._updatable[index] is data or self._check_updatable(index, data))
                    updated = self._update(group, index, data, param.grad, in_place)
                    if updated is data:  # written in place: a graph that kept this array is out of date
                        param._version += 1
                    param.data = updated
                index += 1
        return loss

    def _check_updatable(self, index: int, data) -> bool:
        from .backends import updates_in_place

        updatable = updates_in_place(data)
        self._updatable[index] = data if updatable else None
        return updatable

    def _update(self, group: dict, index: int, data, grad, in_place: bool = False):
        """The parameter's new array, given its group, index (into the state lists), array and gradient.

        With ``in_place`` the subclass may write the result into ``data`` (and into its own state arrays,
        which it created) and return ``data``; the result must be the same bits either way.
        """
        raise NotImplementedError(f"{type(self).__name__} must define _update(group, index, data, grad)")

    def _steps_taken(self, index: int):
        """How many updates parameter ``index`` has had, this one included (PyTorch's ``state["step"]``)."""
        return self.step_count - self._missed[index]

    # -- state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        """The state as flat entries: ``step_count``, ``param_groups`` (hyper-parameters and
        parameter indices, JSON-able), ``steps`` for optimizers that count them, and one
        ``"<state>.<index>"`` array per parameter with state."""
        state = {"step_count": self.step_count, "param_groups": []}
        start = 0
        for group in self.param_groups:
            saved = {key: value for key, value in group.items() if key != "params"}
            saved["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            state["param_groups"].append(saved)
        if self._counts_steps:
            state["steps"] = [self._steps_taken(i) if self._has_state(i) else None for i in range(len(self.params))]
        for name in self._state_names:
            for index, value in enumerate(getattr(self, name)):
                if value is not None:
                    state[f"{name}.{index}"] = value
        return state

    def _has_state(self, index: int) -> bool:
        return any(getattr(self, name)[index] is not None for name in self._state_names)

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` output (or one saved before parameter groups existed).

        Arrays are moved to each parameter's device; nothing changes unless
        all of the state fits.
        """
        from .backends import placement_of, to_device

        groups = self._groups_to_load(state)
        step_count = int(state["step_count"])
        names = self._state_names + tuple(
            name for name in self._optional_state_names
            if name not in self._state_names and any(key.startswith(name + ".") for key in state))
        lists = {}
        for name in names:
            values = []
            for index, param in enumerate(self.params):
                value = state.get(f"{name}.{index}")
                if value is not None:
                    if tuple(value.shape) != tuple(param.data.shape):
                        raise CheckpointError(
                            f"optimizer state {name}.{index} has shape {tuple(value.shape)} but the parameter "
                            f"has {tuple(param.data.shape)}; the optimizer state belongs to another model")
                    placement = placement_of(param.data)
                    # A copy of its own: in-place updates must not reach the state dict it came from.
                    value = placement.namespace.asarray(to_device(value, placement), copy=True)
                values.append(value)
            lists[name] = values
        steps = state.get("steps")
        if steps is None:  # saved before per-parameter steps: every parameter with state had them all
            steps = [step_count if any(lists[name][i] is not None for name in names) else None
                     for i in range(len(self.params))]
        elif not isinstance(steps, (list, tuple)) or len(steps) != len(self.params):
            raise CheckpointError(f"optimizer state steps is {steps!r}, not one count per parameter of the "
                                  f"optimizer ({len(self.params)})")
        for own, saved in zip(self.param_groups, groups):
            own.update(saved)
        self.step_count = step_count
        self._state_names = names
        for name, values in lists.items():
            setattr(self, name, values)
        self._missed = [step_count - (0 if taken is None else int(taken)) for taken in steps]

    def _groups_to_load(self, state: dict) -> list[dict]:
        groups = state.get("param_groups")
        if groups is None:  # saved before parameter groups: one group, of which only the rate changes
            if "lr" not in state:
                raise CheckpointError("optimizer state has neither param_groups nor lr")
            if len(self.param_groups) != 1:
                raise CheckpointError(f"the optimizer state was saved with one parameter group, but this "
                                      f"{type(self).__name__} has {len(self.param_groups)}")
            groups = [{"lr": state["lr"]}]
        else:
            sizes = [len(g.get("params", ())) if isinstance(g, dict) else None for g in groups]
            own = [len(g["params"]) for g in self.param_groups]
            if sizes != own:
                raise CheckpointError(f"the optimizer state has parameter groups of sizes {sizes} but this "
                                      f"{type(self).__name__} has {own}; it belongs to another model or setup")
            # JSON (a checkpoint's metadata) turns tuples such as betas into lists.
            groups = [{key: tuple(value) if isinstance(value, list) else value
                       for key, value in group.items() if key != "params"} for group in groups]
        for index, group in enumerate(groups):
            if not is_real_number(group.get("lr", 0.0)) or group.get("lr", 0.0) < 0:
                raise CheckpointError(f"optimizer state: parameter group {index} has lr {group.get('lr')!r}, "
                                      "not a number >= 0")
            if "lr" in group:
                group["lr"] = float(group["lr"])
        return groups


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (and dampening), Nesterov momentum and L2 weight decay."""

    _state_names = ("momentum_buffers",)

    momentum = _hyperparameter("momentum")
    dampening = _hyperparameter("dampening")
    weight_decay = _hyperparameter("weight_decay")
    nesterov = _hyperparameter("nesterov")
    maximize = _hyperparameter("maximize")

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    def _check_group(self, group, name):
        super()._check_group(group, name)
        group["momentum"] = check_number(group["momentum"], f"{name} momentum", low=0.0)
        group["dampening"] = check_finite(group["dampening"], f"{name} dampening")
        group["weight_decay"] = check_number(group["weight_decay"], f"{name} weight_decay", low=0.0)
        group["nesterov"] = check_flag(group["nesterov"], f"{name} nesterov")
        if group["nesterov"] and (group["momentum"] == 0 or group["dampening"] != 0):
            raise ArgumentError(f"{name}: Nesterov momentum needs momentum > 0 and dampening = 0, got momentum "
                                f"{group['momentum']:g} and dampening {group['dampening']:g}")

    def _update(self, group, index, data, grad, in_place=False):
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * data
        momentum, dampening = group["momentum"], group["dampening"]
        if momentum:
            previous = self.momentum_buffers[index]
            if previous is None:
                # The in-place path will write into the buffer: it must not be the gradient array itself.
                buffer = namespace_of(grad).asarray(grad, copy=True) if in_place else grad
            elif in_place:  # momentum * previous + grad, in the buffer (the same bits)
                previous *= momentum
                previous += (1 - dampening) * grad if dampening else grad
                buffer = previous
            else:
                buffer = momentum * previous + ((1 - dampening) * grad if dampening else grad)
            self.momentum_buffers[index] = buffer
            grad = grad + momentum * buffer if group["nesterov"] else buffer
        if in_place:
            data -= group["lr"] * grad  # the same bits as -lr * grad + data: negation is exact
            return data
        # The same bits as data - lr * grad, but NumPy adds into the temporary
        # -lr * grad instead of allocating the result (it can only reuse the
        # left operand of a subtraction): one 1.6 MB allocation less for fc1.
        return -group["lr"] * grad + data


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight decay is added to the gradient, as in PyTorch's Adam.

    ``amsgrad`` divides by the largest second moment seen so far (Reddi et
    al.), as PyTorch does.
    """

    _state_names = ("first_moments", "second_moments")
    _optional_state_names = ("max_second_moments",)
    _counts_steps = True
    # AdamW shrinks the weights directly instead (Loshchilov & Hutter).
    _decoupled_weight_decay = False

    betas = _hyperparameter("betas")
    eps = _hyperparameter("eps")
    weight_decay = _hyperparameter("weight_decay")
    amsgrad = _hyperparameter("amsgrad")
    maximize = _hyperparameter("maximize")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _check_group(self, group, name):
        super()._check_group(group, name)
        betas = group["betas"]
        if isinstance(betas, str) or not (hasattr(betas, "__len__") and len(betas) == 2):
            raise ArgumentTypeError(f"{name} betas must be a pair of numbers such as (0.9, 0.999), got {betas!r}")
        for beta in betas:
            check_number(beta, f"{name} betas", low=0.0, high=1.0)
            if beta == 1.0:
                raise ArgumentError(f"{name} betas must be in [0, 1), got {betas!r}")
        group["betas"] = (float(betas[0]), float(betas[1]))
        group["eps"] = check_number(group["eps"], f"{name} eps", low=0.0, low_inclusive=False)
        group["weight_decay"] = check_number(group["weight_decay"], f"{name} weight_decay", low=0.0)
        group["amsgrad"] = check_flag(group["amsgrad"], f"{name} amsgrad")
        if group["amsgrad"]:
            self._keep_state("max_second_moments")

    def _update(self, group, index, data, grad, in_place=False):
        xp = namespace_of(data, grad, names=("parameter", "gradient"))
        beta1, beta2 = group["betas"]
        lr, weight_decay, step = group["lr"], group["weight_decay"], self._steps_taken(index)
        if group["maximize"]:
            grad = -grad
        if weight_decay:
            if not self._decoupled_weight_decay:
                grad = grad + weight_decay * data
            elif in_place:
                data *= 1 - lr * weight_decay
            else:
                data = data * (1 - lr * weight_decay)
        m = self.first_moments[index]
        v = self.second_moments[index]
        if in_place and m is not None:  # beta * moment + (1 - beta) * ..., in the moments (the same bits)
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
        else:
            m = (1 - beta1) * grad if m is None else beta1 * m + (1 - beta1) * grad
            v = (1 - beta2) * grad * grad if v is None else beta2 * v + (1 - beta2) * grad * grad
        self.first_moments[index], self.second_moments[index] = m, v
        if group["amsgrad"]:
            self._keep_state("max_second_moments")  # in case the group's amsgrad was switched on since
            largest = self.max_second_moments[index]
            if largest is None:  # the in-place path writes into v next step: the maximum must be its own copy
                v = xp.asarray(v, copy=True) if in_place else v
            else:
                v = xp.maximum(largest, v)
            self.max_second_moments[index] = v
        m_hat = m / (1 - beta1 ** step)
        v_hat = v / (1 - beta2 ** step)
        if in_place:
            data -= lr * m_hat / (xp.sqrt(v_hat) + group["eps"])  # the same bits, as in SGD
            return data
        return -lr * m_hat / (xp.sqrt(v_hat) + group["eps"]) + data  # data - ..., see SGD


class AdamW(Adam):
    """Adam with decoupled weight decay: the weights shrink by ``lr * weight_decay`` each step,
    outside the adaptive scaling, so decay acts evenly on every weight (PyTorch's default 0.01)."""

    _decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize)


class RMSprop(Optimizer):
    """RMSprop (Hinton): divide by a running root-mean-square of the gradient; optional momentum,
    and ``centered`` subtracts the running mean first (an estimate of the variance)."""

    _state_names = ("square_averages",)
    _optional_state_names = ("momentum_buffers", "grad_averages")

    alpha = _hyperparameter("alpha")
    eps = _hyperparameter("eps")
    weight_decay = _hyperparameter("weight_decay")
    momentum = _hyperparameter("momentum")
    centered = _hyperparameter("centered")
    maximize = _hyperparameter("maximize")

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize))

    def _check_group(self, group, name):
        super()._check_group(group, name)
        group["alpha"] = check_number(group["alpha"], f"{name} alpha", low=0.0, high=1.0)
        group["eps"] = check_number(group["eps"], f"{name} eps", low=0.0, low_inclusive=False)
        group["weight_decay"] = check_number(group["weight_decay"], f"{name} weight_decay", low=0.0)
        group["momentum"] = check_number(group["momentum"], f"{name} momentum", low=0.0)
        group["centered"] = check_flag(group["centered"], f"{name} centered")
        self._keep_used_state(group)

    def _keep_used_state(self, group):
        if group["momentum"] > 0:
            self._keep_state("momentum_buffers")
        if group["centered"]:
            self._keep_state("grad_averages")

    def _update(self, group, index, data, grad, in_place=False):  # always a new array
        xp = namespace_of(data, grad, names=("parameter", "gradient"))
        alpha, momentum = group["alpha"], group["momentum"]
        self._keep_used_state(group)  # in case the group's momentum or centered was switched on since
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * data
        square = self.square_averages[index]
        square = (1 - alpha) * grad * grad if square is None else alpha * square + (1 - alpha) * grad * grad
        self.square_averages[index] = square
        if group["centered"]:
            mean = self.grad_averages[index]
            mean = (1 - alpha) * grad if mean is None else mean + (1 - alpha) * (grad - mean)  # PyTorch's lerp
            self.grad_averages[index] = mean
            denominator = xp.sqrt(square - mean * mean) + group["eps"]
        else:
            denominator = xp.sqrt(square) + group["eps"]
        step = grad / denominator
        if momentum > 0:
            previous = self.momentum_buffers[index]
            step = step if previous is None else momentum * previous + step
            self.momentum_buffers[index] = step
        return -group["lr"] * step + data


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.): each weight's rate shrinks with the sum of its squared gradients;
    ``lr_decay`` also shrinks the rate with the parameter's step count, as in PyTorch.

    The sums start at the constructor's ``initial_accumulator_value`` for
    every group (PyTorch ignores a group's own value there, and so does this).
    """

    _state_names = ("square_sums",)
    _counts_steps = True

    lr_decay = _hyperparameter("lr_decay")
    weight_decay = _hyperparameter("weight_decay")
    initial_accumulator_value = _hyperparameter("initial_accumulator_value")
    eps = _hyperparameter("eps")
    maximize = _hyperparameter("maximize")

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize))

    def _check_group(self, group, name):
        super()._check_group(group, name)
        group["lr_decay"] = check_number(group["lr_decay"], f"{name} lr_decay", low=0.0)
        group["weight_decay"] = check_number(group["weight_decay"], f"{name} weight_decay", low=0.0)
        group["initial_accumulator_value"] = check_number(
            group["initial_accumulator_value"], f"{name} initial_accumulator_value", low=0.0)
        group["eps"] = check_number(group["eps"], f"{name} eps", low=0.0, low_inclusive=False)

    def _update(self, group, index, data, grad, in_place=False):  # always a new array
        xp = namespace_of(data, grad, names=("parameter", "gradient"))
        if group["maximize"]:
            grad = -grad
        if group["weight_decay"]:
            grad = grad + group["weight_decay"] * data
        rate = group["lr"] / (1 + (self._steps_taken(index) - 1) * group["lr_decay"])
        total = self.square_sums[index]
        if total is None:
            # The constructor's value even where a group names its own, as PyTorch does.
            initial = self.defaults["initial_accumulator_value"]
            total = initial + grad * grad if initial else grad * grad
        else:
            total = total + grad * grad
        self.square_sums[index] = total
        return -rate * (grad / (xp.sqrt(total) + group["eps"])) + data


# --------------------------------------------------------------------------
# learning-rate schedulers


def _check_optimizer(scheduler, optimizer) -> None:
    if not isinstance(optimizer, Optimizer):
        raise ArgumentTypeError(
            f"{type(scheduler).__name__} takes an optimizer (e.g. SGD(model.parameters(), lr=0.01)), "
            f"got {type(optimizer).__name__}")


def _positive_int(value, name: str) -> int:
    try:
        number = as_int(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an int, got {value!r}") from None
    if number < 1:
        raise ArgumentError(f"{name} must be >= 1, got {value!r}")
    return number


def _per_group(value, optimizer, name: str, check) -> list:
    """One value per parameter group: a list of them, or one for all (PyTorch's ``_format_param``)."""
    count = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ArgumentError(f"{name} has {len(value)} values but the optimizer has {count} parameter groups")
        return [check(v) for v in value]
    return [check(value)] * count


class LRScheduler:
    """Base class of the learning-rate schedulers (PyTorch's name and protocol).

    A subclass sets its options, calls ``super().__init__(optimizer)``, and
    either

    * implements ``factor(epoch)``: the rate is the group's initial rate times
      the factor (a closed form, e.g. ``0.5 ** (epoch // 10)``), or
    * implements ``get_lr()``: the new rate of every group, computed from
      ``self.last_epoch``, ``self.base_lrs`` and, for a recursive schedule,
      the current ``group["lr"]``, as PyTorch's own schedulers do.

    Construction performs step 0 (``last_epoch`` becomes 0 and every group's
    ``lr`` the schedule's first value); each ``step()``, usually once per
    epoch after the epoch's ``optimizer.step()`` calls, moves on by one.
    """

    def __init__(self, optimizer: Optimizer):
        _check_optimizer(self, optimizer)
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self._initial_step()

    # True during the step the constructor performs: PyTorch's recursive
    # formulas must then keep the rates the optimizer (or an earlier
    # scheduler) already set.
    _is_initial = False

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            del self._is_initial  # back to the class's False, and out of the state dict

    def factor(self, epoch: int) -> float:
        """The multiplier of the initial rate at ``epoch``, for closed-form schedules."""
        raise NotImplementedError(
            f"{type(self).__name__} must define get_lr() (the new rate of every parameter group) or "
            "factor(epoch) (the multiplier of the initial rate)")

    def get_lr(self) -> list[float]:
        """The rates for ``self.last_epoch``, one per parameter group."""
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        """The rates at ``last_epoch`` from the initial rates alone (SequentialLR restarts a schedule with it)."""
        return self.get_lr()

    def step(self) -> None:
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch: int | None = None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            values = self._get_closed_form_lr()
        self._set_lrs(values, f"{type(self).__name__}.get_lr()'s result")

    def _set_lrs(self, values, source: str, error=UsageError) -> None:
        groups = self.optimizer.param_groups
        if not isinstance(values, (list, tuple)) or len(values) != len(groups) or not all(
                is_real_number(v) for v in values):
            raise error(f"{source} must be a list with one learning rate (a number) per parameter group "
                        f"({len(groups)}), got {values!r}")
        for group, lr in zip(groups, values):
            group["lr"] = float(lr)  # a NumPy scalar would promote float32 parameters to float64
        self._last_lr = [group["lr"] for group in groups]

    def get_last_lr(self) -> list[float]:
        """The rates the last ``step()`` set, one per parameter group."""
        return list(self._last_lr)

    @property
    def base_lr(self) -> float:
        """The initial rate of the only parameter group (``base_lrs`` holds every group's)."""
        if len(self.base_lrs) != 1:
            raise UsageError(f"{type(self).__name__} schedules {len(self.base_lrs)} parameter groups; read base_lrs")
        return self.base_lrs[0]

    # -- state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        """Every attribute but the optimizer, as PyTorch's; the built-in schedulers' are JSON-able."""
        return {key: value for key, value in vars(self).items() if key != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output (or StepLR/ExponentialLR state saved before parameter groups).

        Unlike PyTorch's, it also sets the optimizer's rates to the restored
        schedule's last ones, so a scheduler restored without its optimizer
        does not leave a stale rate behind.
        """
        state = {key: value for key, value in state.items() if key not in ("optimizer", "type")}
        if "base_lr" in state and "base_lrs" not in state:  # saved before parameter groups: one group
            state["base_lrs"] = [state.pop("base_lr")]
        groups = self.optimizer.param_groups
        name = type(self).__name__
        for key in ("base_lrs", "_last_lr"):
            values = state.get(key)
            if values is not None and not (isinstance(values, (list, tuple)) and len(values) == len(groups)
                                           and all(is_real_number(v) for v in values)):
                raise CheckpointError(f"{name} state {key} is {values!r}, not one number per parameter group of "
                                      f"the optimizer ({len(groups)})")
        if not isinstance(state.get("last_epoch", 0), int) or isinstance(state.get("last_epoch"), bool):
            raise CheckpointError(f"{name} state last_epoch is {state['last_epoch']!r}, not an int")
        self.__dict__.update(state)
        self.base_lrs = [float(lr) for lr in self.base_lrs]
        for group, base_lr in zip(groups, self.base_lrs):
            group["initial_lr"] = base_lr
        last = state.get("_last_lr")
        self._set_lrs(self._get_closed_form_lr() if last is None else last, f"{name} state", CheckpointError)


class StepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        if isinstance(step_size, bool) or not isinstance(step_size, int):
            raise ArgumentTypeError(f"StepLR step_size must be an int (epochs), got {step_size!r}")
        if step_size < 1:
            raise ArgumentError(f"StepLR step_size must be >= 1, got {step_size!r}")
        self.step_size = step_size
        self.gamma = check_number(gamma, "StepLR gamma", low=0.0, low_inclusive=False)
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [group["lr"] for group in groups]
        return [group["lr"] * self.gamma for group in groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` at each milestone epoch (a milestone listed twice, twice)."""

    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1):
        try:
            self.milestones = Counter(as_int(m) for m in milestones)
        except TypeError:
            raise ArgumentTypeError(f"MultiStepLR milestones must be a list of ints (epochs), got {milestones!r}") \
                from None
        self.gamma = check_number(gamma, "MultiStepLR gamma", low=0.0, low_inclusive=False)
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch not in self.milestones:
            return [group["lr"] for group in groups]
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch] for group in groups]

    def _get_closed_form_lr(self):
        milestones = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect_right(milestones, self.last_epoch) for base_lr in self.base_lrs]

    def state_dict(self):
        state = super().state_dict()
        state["milestones"] = sorted(self.milestones.elements())  # JSON has no Counter (nor int keys)
        return state

    def load_state_dict(self, state):
        state = dict(state)
        if "milestones" in state:
            state["milestones"] = Counter(int(m) for m in state["milestones"])
        super().load_state_dict(state)


class ExponentialLR(LRScheduler):
    """Multiply the learning rate by ``gamma`` every epoch."""

    def __init__(self, optimizer: Optimizer, gamma: float):
        self.gamma = check_number(gamma, "ExponentialLR gamma", low=0.0, low_inclusive=False)
        super().__init__(optimizer)

    def get_lr(self):
        if self._is_initial:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self):
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """Anneal from the initial rate to ``eta_min`` along half a cosine over ``T_max`` epochs (SGDR without
    restarts); past ``T_max`` the cosine carries on, rising again, as in PyTorch."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803 - PyTorch's name
        self.T_max = _positive_int(T_max, "CosineAnnealingLR T_max")
        self.eta_min = check_number(eta_min, "CosineAnnealingLR eta_min", low=0.0)
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self._is_initial:
            return [group["lr"] for group in groups]
        if self._step_count == 1 and self.last_epoch > 0:
            return self._get_closed_form_lr()
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            # The recursion divides by 1 + cos(pi) = 0 here: step up from the bottom directly.
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min
                for group in groups]

    def _get_closed_form_lr(self):
        return [self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class LambdaLR(LRScheduler):
    """The initial rate times ``lr_lambda(epoch)``: one function for every group, or a list of one per group.

    A checkpoint cannot hold a function: ``state_dict()`` keeps None for
    each plain function (and the attributes of a callable object), so
    resuming needs the same ``lr_lambda`` passed to the new LambdaLR.
    """

    def __init__(self, optimizer: Optimizer, lr_lambda):
        _check_optimizer(self, optimizer)
        count = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != count:
                raise ArgumentError(f"LambdaLR got {len(lr_lambda)} lr_lambdas but the optimizer has {count} "
                                    "parameter groups")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * count
        for index, function in enumerate(self.lr_lambdas):
            if not callable(function):
                raise ArgumentTypeError(f"LambdaLR lr_lambda must be a function of the epoch (or a list of them), "
                                        f"item {index} is {function!r}")
        super().__init__(optimizer)

    def get_lr(self):
        return [base_lr * function(self.last_epoch) for function, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self):
        state = {key: value for key, value in super().state_dict().items() if key != "lr_lambdas"}
        state["lr_lambdas"] = [None if isinstance(function, types.FunctionType) else dict(vars(function))
                               for function in self.lr_lambdas]
        return state

    def load_state_dict(self, state):
        state = dict(state)
        saved = state.pop("lr_lambdas", None) or []
        super().load_state_dict(state)
        for function, attributes in zip(self.lr_lambdas, saved):
            if attributes is not None:
                vars(function).update(attributes)


class LinearLR(LRScheduler):
    """Scale the initial rate by a factor moving linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, then keep it (a warm-up, usually followed by another schedule in SequentialLR)."""

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5):
        self.start_factor = check_number(start_factor, "LinearLR start_factor", low=0.0, high=1.0,
                                         low_inclusive=False)
        self.end_factor = check_number(end_factor, "LinearLR end_factor", low=0.0, high=1.0)
        self.total_iters = _positive_int(total_iters, "LinearLR total_iters")
        super().__init__(optimizer)

    def get_lr(self):
        groups = self.optimizer.param_groups
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return [group["lr"] for group in groups]
        change = self.end_factor - self.start_factor
        return [group["lr"] * (1.0 + change / (self.total_iters * self.start_factor + (self.last_epoch - 1) * change))
                for group in groups]

    def _get_closed_form_lr(self):
        return [base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                           * min(self.total_iters, self.last_epoch) / self.total_iters)
                for base_lr in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin), stepped once per batch: the rate rises from
    ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of ``total_steps``, then anneals to
    ``initial / final_div_factor``; momentum (SGD's and RMSprop's ``momentum``, Adam's first beta) moves
    the opposite way between ``max_momentum`` and ``base_momentum`` unless ``cycle_momentum=False``.

    ``total_steps``, or ``epochs`` and ``steps_per_epoch``, fix the length;
    stepping past it is an error, as in PyTorch.
    """

    def __init__(self, optimizer: Optimizer, max_lr, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum=0.85, max_momentum=0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False):
        _check_optimizer(self, optimizer)
        if total_steps is not None:
            self.total_steps = _positive_int(total_steps, "OneCycleLR total_steps")
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_positive_int(epochs, "OneCycleLR epochs")
                                * _positive_int(steps_per_epoch, "OneCycleLR steps_per_epoch"))
        else:
            raise ArgumentError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
        pct_start = check_number(pct_start, "OneCycleLR pct_start", low=0.0, high=1.0)
        self._anneal_func_type = check_choice(anneal_strategy, "OneCycleLR anneal_strategy", ("cos", "linear"))
        div_factor = check_number(div_factor, "OneCycleLR div_factor", low=0.0, low_inclusive=False)
        final_div_factor = check_number(final_div_factor, "OneCycleLR final_div_factor", low=0.0,
                                        low_inclusive=False)
        up = float(pct_start * self.total_steps) - 1
        if check_flag(three_phase, "OneCycleLR three_phase"):
            self._schedule_phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(float(2 * pct_start * self.total_steps) - 2, "max_lr", "initial_lr", "base_momentum",
                       "max_momentum"),
                _phase(self.total_steps - 1, "initial_lr", "min_lr", "max_momentum", "max_momentum"),
            ]
        else:
            self._schedule_phases = [
                _phase(up, "initial_lr", "max_lr", "max_momentum", "base_momentum"),
                _phase(self.total_steps - 1, "max_lr", "min_lr", "base_momentum", "max_momentum"),
            ]
        max_lrs = _per_group(max_lr, optimizer, "OneCycleLR max_lr",
                             lambda v: check_number(v, "OneCycleLR max_lr", low=0.0, low_inclusive=False))
        self.cycle_momentum = check_flag(cycle_momentum, "OneCycleLR cycle_momentum")
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ArgumentError(f"OneCycleLR cycles momentum, but {type(optimizer).__name__} has none; pass "
                                    "cycle_momentum=False")
            self.use_beta1 = "betas" in optimizer.defaults
            max_momenta = _per_group(max_momentum, optimizer, "OneCycleLR max_momentum",
                                     lambda v: check_number(v, "OneCycleLR max_momentum", low=0.0, high=1.0))
            base_momenta = _per_group(base_momentum, optimizer, "OneCycleLR base_momentum",
                                      lambda v: check_number(v, "OneCycleLR base_momentum", low=0.0, high=1.0))
        for index, group in enumerate(optimizer.param_groups):
            group["initial_lr"] = max_lrs[index] / div_factor
            group["max_lr"] = max_lrs[index]
            group["min_lr"] = group["initial_lr"] / final_div_factor
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (max_momenta[index], *group["betas"][1:])
                else:
                    group["momentum"] = max_momenta[index]
                group["max_momentum"] = max_momenta[index]
                group["base_momentum"] = base_momenta[index]
        super().__init__(optimizer)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise UsageError(f"OneCycleLR was stepped {step} times but total_steps is {self.total_steps}; step "
                             "it once per batch, and size it for every batch of every epoch")
        lrs = []
        for group in self.optimizer.param_groups:
            start = 0.0
            for index, phase in enumerate(self._schedule_phases):
                end = phase["end_step"]
                if step <= end or index == len(self._schedule_phases) - 1:
                    pct = (step - start) / (end - start)
                    lr = self._anneal(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        momentum = self._anneal(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                    break
                start = phase["end_step"]
            lrs.append(lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum
        return lrs


def _phase(end_step, start_lr, end_lr, start_momentum, end_momentum) -> dict:
    """One phase of OneCycleLR: the group keys it moves between (PyTorch's ``_schedule_phases``)."""
    return {"end_step": end_step, "start_lr": start_lr, "end_lr": end_lr, "start_momentum": start_momentum,
            "end_momentum": end_momentum}


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after another, switching at the ``milestones`` epochs: e.g. a LinearLR
    warm-up for 5 epochs, then CosineAnnealingLR. Each later schedule restarts from the initial rates."""

    def __init__(self, optimizer: Optimizer, schedulers, milestones):
        _check_optimizer(self, optimizer)
        schedulers = list(schedulers) if isinstance(schedulers, (list, tuple)) else schedulers
        if not isinstance(schedulers, list) or not schedulers:
            raise ArgumentTypeError(f"SequentialLR schedulers must be a non-empty list of schedulers, "
                                    f"got {schedulers!r}")
        for index, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler):
                raise ArgumentTypeError(f"SequentialLR schedulers[{index}] is a {type(scheduler).__name__}, "
                                        "not a scheduler")
            if scheduler.optimizer is not optimizer:
                raise ArgumentError(f"SequentialLR schedulers[{index}] ({type(scheduler).__name__}) schedules "
                                    "another optimizer; build every scheduler on the one passed to SequentialLR")
        try:
            milestones = [as_int(m) for m in milestones]
        except TypeError:
            raise ArgumentTypeError(f"SequentialLR milestones must be a list of ints (epochs), "
                                    f"got {milestones!r}") from None
        if len(milestones) != len(schedulers) - 1:
            raise ArgumentError(f"SequentialLR needs one milestone fewer than schedulers: got {len(schedulers)} "
                                f"schedulers and {len(milestones)} milestones")
        if any(m < 1 for m in milestones) or any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ArgumentError(f"SequentialLR milestones must be increasing epochs >= 1, got {milestones}")
        self.optimizer = optimizer
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = 0
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        # Each scheduler's constructor already made its step 0 and moved the
        # rates: put them back and replay only the first schedule's step 0.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        _undo_initial_steps(self)
        index = bisect_right(self._milestones, 0)
        self._schedulers[index]._initial_step()
        self._last_lr = self._schedulers[index].get_last_lr()

    def step(self) -> None:
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def _get_closed_form_lr(self):
        raise UsageError("SequentialLR has no closed form: it cannot be nested as a later stage of another "
                         "SequentialLR")

    def state_dict(self):
        state = {key: value for key, value in super().state_dict().items() if key != "_schedulers"}
        state["_schedulers"] = [dict(s.state_dict(), type=type(s).__name__) for s in self._schedulers]
        return state

    def load_state_dict(self, state):
        state = dict(state)
        saved = state.pop("_schedulers", None)
        if not isinstance(saved, list) or len(saved) != len(self._schedulers):
            raise CheckpointError(f"SequentialLR state holds {len(saved) if isinstance(saved, list) else 'no'} "
                                  f"schedulers but this SequentialLR has {len(self._schedulers)}")
        for index, (scheduler, sub_state) in enumerate(zip(self._schedulers, saved)):
            saved_type = sub_state.get("type")
            if saved_type is not None and saved_type != type(scheduler).__name__:
                raise CheckpointError(f"SequentialLR state holds a {saved_type} as scheduler {index} but this one "
                                      f"has a {type(scheduler).__name__}")
        for scheduler, sub_state in zip(self._schedulers, saved):
            scheduler.load_state_dict(sub_state)
        super().load_state_dict(state)


def _undo_initial_steps(scheduler) -> None:
    """Take back the step 0 every (nested) scheduler made when it was built (PyTorch's ``recursive_undo``)."""
    if isinstance(scheduler, SequentialLR):
        for inner in scheduler._schedulers:
            _undo_initial_steps(inner)
    else:
        scheduler.last_epoch -= 1
