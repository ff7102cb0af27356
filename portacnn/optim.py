"""Optimizers and learning-rate schedulers with PyTorch's update rules.

Updates rebind ``param.data`` (``p = p - lr * g``) instead of writing in
place, so they work on immutable arrays (JAX) as well as mutable ones.
Parameters without a gradient (frozen with ``requires_grad_(False)``, or
not used by the loss) are left as they are.
"""

from __future__ import annotations

from ._arrays import namespace_of
from .errors import ArgumentError, ArgumentTypeError, CheckpointError
from ._checks import check_number

__all__ = ["SGD", "Adam", "StepLR", "ExponentialLR"]


class Optimizer:
    def __init__(self, params, lr: float):
        from .autograd import Tensor
        from .nn import Module

        if isinstance(params, Module):
            raise ArgumentTypeError(
                f"{type(self).__name__} takes the model's parameters, not the model: pass model.parameters()")
        try:
            self.params = list(params)
        except TypeError:
            raise ArgumentTypeError(f"{type(self).__name__} params must be a list of Parameters (model.parameters()), "
                                    f"got {type(params).__name__}") from None
        if not self.params:
            raise ArgumentError("optimizer got an empty parameter list; pass model.parameters()")
        seen = {}
        for index, param in enumerate(self.params):
            if not isinstance(param, Tensor) or not param.is_leaf:
                what = "an op's result Tensor" if isinstance(param, Tensor) else f"a {type(param).__name__}"
                raise ArgumentTypeError(
                    f"{type(self).__name__} params must be Parameters (pass model.parameters()), item {index} is "
                    f"{what}")
            if id(param) in seen:
                raise ArgumentError(
                    f"{type(self).__name__} got the same parameter twice (items {seen[id(param)]} and {index}) and "
                    "would update it twice per step; pass each parameter once, e.g. model.parameters()")
            seen[id(param)] = index
        self.lr = check_number(lr, "learning rate lr", low=0.0, low_inclusive=False)
        self.step_count = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        self.step_count += 1
        for index, param in enumerate(self.params):
            if param.grad is not None:
                param.data = self._update(index, param.data, param.grad)

    def _update(self, index, data, grad):
        raise NotImplementedError

    # Per-parameter state lives in lists named in ``_state_names``; a state
    # dict flattens them to "<name>.<index>" so it can be saved as arrays.
    _state_names: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        state = {"lr": self.lr, "step_count": self.step_count}
        for name in self._state_names:
            for index, value in enumerate(getattr(self, name)):
                if value is not None:
                    state[f"{name}.{index}"] = value
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore from ``state_dict()`` output; arrays are moved to each parameter's device."""
        from .backends import placement_of, to_device

        self.lr = float(state["lr"])
        self.step_count = int(state["step_count"])
        for name in self._state_names:
            values = []
            for index, param in enumerate(self.params):
                value = state.get(f"{name}.{index}")
                if value is not None:
                    if tuple(value.shape) != tuple(param.data.shape):
                        raise CheckpointError(
                            f"optimizer state {name}.{index} has shape {tuple(value.shape)} but the parameter "
                            f"has {tuple(param.data.shape)}; the optimizer state belongs to another model")
                    value = to_device(value, placement_of(param.data))
                values.append(value)
            setattr(self, name, values)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay."""

    _state_names = ("momentum_buffers",)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr)
        check_number(momentum, "SGD momentum", low=0.0)
        check_number(weight_decay, "SGD weight_decay", low=0.0)
        if nesterov and momentum == 0:
            raise ArgumentError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.momentum_buffers = [None] * len(self.params)

    def _update(self, index, data, grad):
        if self.weight_decay:
            grad = grad + self.weight_decay * data
        if self.momentum:
            previous = self.momentum_buffers[index]
            buffer = grad if previous is None else self.momentum * previous + grad
            self.momentum_buffers[index] = buffer
            grad = grad + self.momentum * buffer if self.nesterov else buffer
        # The same bits as data - lr * grad, but NumPy adds into the temporary
        # -lr * grad instead of allocating the result (it can only reuse the
        # left operand of a subtraction): one 1.6 MB allocation less for fc1.
        return -self.lr * grad + data


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; weight decay is added to the gradient, as in PyTorch's Adam."""

    _state_names = ("first_moments", "second_moments")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not (hasattr(betas, "__len__") and len(betas) == 2):
            raise ArgumentTypeError(f"Adam betas must be a pair of numbers such as (0.9, 0.999), got {betas!r}")
        for beta in betas:
            check_number(beta, "Adam betas", low=0.0, high=1.0)
            if beta == 1.0:
                raise ArgumentError(f"Adam betas must be in [0, 1), got {betas!r}")
        check_number(eps, "Adam eps", low=0.0, low_inclusive=False)
        check_number(weight_decay, "Adam weight_decay", low=0.0)
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        self.first_moments = [None] * len(self.params)
        self.second_moments = [None] * len(self.params)

    def _update(self, index, data, grad):
        xp = namespace_of(data, grad, names=("parameter", "gradient"))
        beta1, beta2 = self.betas
        if self.weight_decay:
            grad = grad + self.weight_decay * data
        m = self.first_moments[index]
        v = self.second_moments[index]
        m = (1 - beta1) * grad if m is None else beta1 * m + (1 - beta1) * grad
        v = (1 - beta2) * grad * grad if v is None else beta2 * v + (1 - beta2) * grad * grad
        self.first_moments[index], self.second_moments[index] = m, v
        m_hat = m / (1 - beta1 ** self.step_count)
        v_hat = v / (1 - beta2 ** self.step_count)
        return -self.lr * m_hat / (xp.sqrt(v_hat) + self.eps) + data  # data - ..., see SGD


class _Scheduler:
    """Sets ``optimizer.lr`` from the initial rate and the number of ``step()`` calls (epochs)."""

    def __init__(self, optimizer: Optimizer):
        if not isinstance(optimizer, Optimizer):
            raise ArgumentTypeError(
                f"{type(self).__name__} takes an optimizer (e.g. SGD(model.parameters(), lr=0.01)), "
                f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0

    def factor(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self):
        self.last_epoch += 1
        self.optimizer.lr = self.base_lr * self.factor(self.last_epoch)

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self.optimizer.lr = self.base_lr * self.factor(self.last_epoch)


class StepLR(_Scheduler):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        super().__init__(optimizer)
        if isinstance(step_size, bool) or not isinstance(step_size, int):
            raise ArgumentTypeError(f"StepLR step_size must be an int (epochs), got {step_size!r}")
        if step_size < 1:
            raise ArgumentError(f"StepLR step_size must be >= 1, got {step_size!r}")
        check_number(gamma, "StepLR gamma", low=0.0, low_inclusive=False)
        self.step_size, self.gamma = step_size, gamma

    def factor(self, epoch: int) -> float:
        return self.gamma ** (epoch // self.step_size)


class ExponentialLR(_Scheduler):
    """Multiply the learning rate by ``gamma`` every epoch."""

    def __init__(self, optimizer: Optimizer, gamma: float):
        super().__init__(optimizer)
        check_number(gamma, "ExponentialLR gamma", low=0.0, low_inclusive=False)
        self.gamma = gamma

    def factor(self, epoch: int) -> float:
        return self.gamma ** epoch
