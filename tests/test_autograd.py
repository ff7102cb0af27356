"""The tape: gradients of whole graphs against PyTorch autograd, on every backend, and its rules."""

import gc
import tracemalloc
import weakref

import numpy as np
import pytest
from conftest import case_params
from support import Swish

import portacnn
from portacnn import Function, Tensor, cat, nn, no_grad
from portacnn import functional as F
from portacnn.backends import to_numpy
from portacnn.errors import BackendMismatchError, DTypeError, PortacnnError, ShapeError, UsageError
from portacnn.models import lenet
from portacnn.optim import SGD

torch = pytest.importorskip("torch")

#: The issue's bar for gradients against PyTorch autograd in float64.
RTOL, ATOL = 1e-9, 1e-12


def _host(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


# --------------------------------------------------------------------------
# graphs a straight Sequential walk got wrong or could not express, each
# defined twice (portacnn and torch.nn) with the same parameter names


class LayerUsedTwice:
    input_shape = (2, 4, 6, 5)

    @staticmethod
    def ours(spec):
        conv = nn.Conv2d(4, 4, 3, padding=1, rng=0, dtype="float64", device=spec)
        return nn.Sequential(conv, nn.ReLU(), conv)

    @staticmethod
    def theirs():
        conv = torch.nn.Conv2d(4, 4, 3, padding=1).double()
        return torch.nn.Sequential(conv, torch.nn.ReLU(), conv)


class ResidualBlock(nn.Module):
    """A residual block written with ``forward`` only."""

    input_shape = (3, 4, 5, 6)

    def __init__(self, spec=None):
        options = dict(dtype="float64", device=spec)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1, bias=False, rng=1, **options)
        self.bn1 = nn.BatchNorm2d(4, **options)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False, rng=2, **options)
        self.bn2 = nn.BatchNorm2d(4, **options)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)

    @staticmethod
    def ours(spec):
        return ResidualBlock(spec)

    @staticmethod
    def theirs():
        class TorchResidual(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
                self.bn1 = torch.nn.BatchNorm2d(4)
                self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
                self.bn2 = torch.nn.BatchNorm2d(4)
                self.relu = torch.nn.ReLU()

            def forward(self, x):
                return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)
        return TorchResidual().double()


class TwoBranches(nn.Module):
    """Two branches joined by ``cat``, then a third added with ``+``."""

    input_shape = (2, 3, 7, 5)

    def __init__(self, spec=None):
        options = dict(dtype="float64", device=spec)
        self.wide = nn.Conv2d(3, 4, 3, padding=1, rng=3, **options)
        self.narrow = nn.Conv2d(3, 2, 1, rng=4, **options)
        self.skip = nn.Conv2d(3, 6, 1, rng=5, **options)

    def forward(self, x):
        joined = cat([F.relu(self.wide(x)), self.narrow(x)], axis=1)
        return joined + self.skip(x)

    @staticmethod
    def ours(spec):
        return TwoBranches(spec)

    @staticmethod
    def theirs():
        class TorchTwoBranches(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.wide = torch.nn.Conv2d(3, 4, 3, padding=1)
                self.narrow = torch.nn.Conv2d(3, 2, 1)
                self.skip = torch.nn.Conv2d(3, 6, 1)

            def forward(self, x):
                return torch.cat([torch.relu(self.wide(x)), self.narrow(x)], dim=1) + self.skip(x)
        return TorchTwoBranches().double()


class SharedParameter(nn.Module):
    """One weight used by two Linear layers (a tied embedding)."""

    input_shape = (4, 5)

    def __init__(self, spec=None):
        self.first = nn.Linear(5, 5, rng=6, dtype="float64", device=spec)
        self.second = nn.Linear(5, 5, rng=7, dtype="float64", device=spec)
        self.second.weight = self.first.weight
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.second(self.relu(self.first(x)))

    @staticmethod
    def ours(spec):
        return SharedParameter(spec)

    @staticmethod
    def theirs():
        class TorchShared(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.first = torch.nn.Linear(5, 5)
                self.second = torch.nn.Linear(5, 5)
                self.second.weight = self.first.weight
                self.relu = torch.nn.ReLU()

            def forward(self, x):
                return self.second(self.relu(self.first(x)))
        return TorchShared().double()


class IntermediateUsedTwice(nn.Module):
    """The output depends on one intermediate along three paths (product, sum and slice)."""

    input_shape = (3, 6)

    def __init__(self, spec=None):
        self.linear = nn.Linear(6, 4, rng=8, dtype="float64", device=spec)

    def forward(self, x):
        h = F.tanh(self.linear(x))
        return h * h + h.sum(axis=1, keepdims=True) / 3.0 - 2.0 * h[:, 1:2]

    @staticmethod
    def ours(spec):
        return IntermediateUsedTwice(spec)

    @staticmethod
    def theirs():
        class TorchIntermediate(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(6, 4)

            def forward(self, x):
                h = torch.tanh(self.linear(x))
                return h * h + h.sum(dim=1, keepdim=True) / 3.0 - 2.0 * h[:, 1:2]
        return TorchIntermediate().double()


GRAPHS = [LayerUsedTwice, ResidualBlock, TwoBranches, SharedParameter, IntermediateUsedTwice]


def _run_both(graph, case, train=True):
    """Forward and backward of ``graph`` on ``case``'s backend and in torch; returns both sides' results."""
    ours = graph.ours(case.spec).train(train)
    theirs = graph.theirs().train(train)
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            theirs.get_parameter(name).copy_(torch.from_numpy(to_numpy(parameter.data)))
    x_host = _host(graph.input_shape, 1)
    x = portacnn.tensor(case.put(x_host), requires_grad=True)
    out = ours(x)
    grad_out = _host(out.shape, 2)
    out.backward(case.put(grad_out))

    xt = torch.tensor(x_host, requires_grad=True)
    out_t = theirs(xt)
    out_t.backward(torch.from_numpy(grad_out))
    return ours, theirs, x, xt, out, out_t


@pytest.mark.parametrize("case", case_params(dtypes=("float64",)))
@pytest.mark.parametrize("graph", GRAPHS, ids=lambda g: g.__name__)
def test_graph_gradients_match_torch_autograd(graph, case):
    ours, theirs, x, xt, out, out_t = _run_both(graph, case)
    case.assert_close(out.data, out_t.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg="output")
    case.assert_close(x.grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg="input gradient")
    names = [name for name, _ in ours.named_parameters()]
    assert names == [name for name, _ in theirs.named_parameters()], "each parameter listed once, as in torch"
    for name, parameter in ours.named_parameters():
        case.assert_close(parameter.grad, theirs.get_parameter(name).grad.numpy(), rtol=RTOL, atol=ATOL,
                          err_msg=name)


def test_residual_block_running_statistics_follow_torch():
    case = case_params(dtypes=("float64",))[0].values[0]
    ours, theirs, *_ = _run_both(ResidualBlock, case)
    for name in ("bn1", "bn2"):
        np.testing.assert_allclose(getattr(ours, name).running_var.data,
                                   getattr(theirs, name).running_var.numpy(), rtol=1e-12)


def test_residual_block_in_eval_mode_matches_torch():
    case = case_params(dtypes=("float64",))[0].values[0]
    ours, theirs, x, xt, out, out_t = _run_both(ResidualBlock, case, train=False)
    np.testing.assert_allclose(x.grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ours.conv1.weight.grad, theirs.conv1.weight.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_layer_used_twice_is_listed_once_and_updated_once():
    model = LayerUsedTwice.ours("numpy")
    assert len(model.parameters()) == 2
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"], "as torch's state_dict"
    before = model[0].weight.data.copy()
    optimizer = SGD(model.parameters(), lr=0.1)
    model(_host(LayerUsedTwice.input_shape, 0)).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(model[0].weight.data, before - 0.1 * model[0].weight.grad, rtol=1e-15)


def test_optimizer_refuses_a_parameter_listed_twice():
    layer = nn.Linear(2, 2)
    with pytest.raises(PortacnnError, match="same parameter twice"):
        SGD([layer.weight, layer.weight], lr=0.1)


def test_second_forward_before_backward_keeps_each_graph_its_own():
    layer = nn.Linear(3, 2, rng=0, dtype="float64")
    torch_layer = torch.nn.Linear(3, 2).double()
    with torch.no_grad():
        torch_layer.weight.copy_(torch.from_numpy(layer.weight.data))
        torch_layer.bias.copy_(torch.from_numpy(layer.bias.data))
    x1, x2, g1 = _host((4, 3), 1), _host((4, 3), 2), _host((4, 2), 3)
    out1 = layer(x1)
    layer(x2)
    out1.backward(g1)
    torch_layer(torch.from_numpy(x1)).backward(torch.from_numpy(g1))
    np.testing.assert_allclose(layer.weight.grad, torch_layer.weight.grad.numpy(), rtol=RTOL)


# --------------------------------------------------------------------------
# Tensor arithmetic against torch


ARITHMETIC = {
    "add_broadcast": (lambda a, b: a + b, [(3, 4), (4,)]),
    "sub_scalar_left": (lambda a, b: 2.5 - a - b, [(3, 4), (3, 1)]),
    "mul": (lambda a, b: a * b * 3.0, [(2, 3, 4), (1, 3, 1)]),
    "div": (lambda a, b: a / b + 1.0 / b, [(3, 4), (3, 4)]),
    "neg_pow": (lambda a, b: -(a ** 2) + b ** 3, [(5,), (5,)]),
    "matmul_2d": (lambda a, b: a @ b, [(3, 4), (4, 2)]),
    "matmul_batched": (lambda a, b: a @ b, [(2, 3, 4), (4, 5)]),
    "matmul_vector": (lambda a, b: a @ b, [(3, 4), (4,)]),
    "vector_matmul": (lambda a, b: a @ b, [(4,), (4, 3)]),
    "sum_mean_axes": (lambda a, b: a.sum(axis=0) + b.mean(axis=(0, 2)), [(3, 4), (2, 4, 3)]),
    "mean_all_keepdims": (lambda a, b: a.mean(axis=None, keepdims=True) * b if isinstance(a, Tensor)
                          else a.mean(dim=(0, 1), keepdim=True) * b, [(3, 4), (3, 4)]),
    "reshape_slice": (lambda a, b: a.reshape(4, 3)[1:, ::2] + b[..., 0], [(3, 4), (3, 2, 2)]),
    "index_newaxis": (lambda a, b: a[None, 1, :] * b[:, None, :][0, ...], [(3, 4), (2, 4)]),
    "cat_last_axis": (lambda a, b, cat=None: cat([a, b], axis=-1), [(3, 2), (3, 5)]),
}


@pytest.mark.parametrize("case", case_params(dtypes=("float64",)))
@pytest.mark.parametrize("name", list(ARITHMETIC))
def test_tensor_arithmetic_gradients_match_torch(name, case):
    expression, shapes = ARITHMETIC[name]
    hosts = [_host(shape, seed) + (3.0 if name == "div" else 0.0) for seed, shape in enumerate(shapes)]
    ours = [portacnn.tensor(case.put(h), requires_grad=True) for h in hosts]
    theirs = [torch.tensor(h, requires_grad=True) for h in hosts]
    if name.startswith("cat"):
        out, out_t = expression(*ours, cat=cat), torch.cat(theirs, dim=-1)
    else:
        out, out_t = expression(*ours), expression(*theirs)
    grad = _host(out.shape, 9)
    out.backward(case.put(grad))
    out_t.backward(torch.from_numpy(grad))
    case.assert_close(out.data, out_t.detach().numpy(), rtol=RTOL, atol=ATOL)
    for index, (a, at) in enumerate(zip(ours, theirs)):
        case.assert_close(a.grad, at.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"operand {index}")


def test_arithmetic_with_a_constant_array_on_either_side():
    a = portacnn.tensor(np.array([1.0, 2.0]), requires_grad=True)
    constant = np.array([3.0, 4.0])
    out = constant * a + a * constant - constant
    assert isinstance(out, Tensor), "ndarray on the left must not swallow the Tensor"
    out.sum().backward()
    np.testing.assert_array_equal(a.grad, 2 * constant)


def test_indexing_with_an_array_is_refused_with_a_hint():
    t = portacnn.tensor(np.zeros((3, 2)), requires_grad=True)
    with pytest.raises(PortacnnError, match="basic indexing"):
        t[np.array([0, 2])]


# --------------------------------------------------------------------------
# a user-defined Function


class ScaledSum(Function):
    """Two inputs, an option, and a non-differentiable constant in between."""

    def forward(self, a, constant, b, *, scale):
        self.scale = scale
        return (a + constant) * scale + b

    def backward(self, grad):
        return grad * self.scale, None, grad


@pytest.mark.parametrize("case", case_params(dtypes=("float64",)))
def test_user_function_gradients_match_torch(case):
    x_host = _host((3, 5), 0)
    x = portacnn.tensor(case.put(x_host), requires_grad=True)
    out = Swish.apply(nn.Linear(5, 5, rng=0, dtype="float64", device=case.spec)(x))
    out.sum().backward()
    xt = torch.tensor(x_host, requires_grad=True)
    linear = torch.nn.Linear(5, 5).double()
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(nn.Linear(5, 5, rng=0, dtype="float64").weight.data))
        linear.bias.zero_()
    torch.nn.functional.silu(linear(xt)).sum().backward()
    case.assert_close(x.grad, xt.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_function_with_a_constant_input_and_options():
    a = portacnn.tensor(np.ones(3), requires_grad=True)
    b = portacnn.tensor(np.full(3, 2.0), requires_grad=True)
    out = ScaledSum.apply(a, np.full(3, 5.0), b, scale=4.0)
    np.testing.assert_array_equal(out.data, np.full(3, 26.0))
    out.sum().backward()
    np.testing.assert_array_equal(a.grad, np.full(3, 4.0))
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_function_returning_the_wrong_number_of_gradients_says_so():
    class Broken(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, grad):
            return grad

    a = portacnn.tensor(np.ones(2), requires_grad=True)
    with pytest.raises(UsageError, match="returned 1 gradient"):
        Broken.apply(a, a).sum().backward()


def test_function_returning_a_wrong_shape_says_so():
    class Broken(Function):
        def forward(self, a):
            return a * 2

        def backward(self, grad):
            return grad[:1]

    a = portacnn.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ShapeError, match="Broken.backward returned a gradient of shape"):
        Broken.apply(a).sum().backward()


def test_function_sees_which_inputs_need_gradients():
    seen = []

    class Spy(Function):
        def forward(self, a, b):
            seen.append(self.needs_input_grad)
            return a * b

        def backward(self, grad):
            return grad, grad

    Spy.apply(portacnn.tensor(np.ones(2), requires_grad=True), np.ones(2))
    with no_grad():
        Spy.apply(portacnn.tensor(np.ones(2), requires_grad=True), np.ones(2))
    assert seen == [(True, False), (False, False)]


# --------------------------------------------------------------------------
# the rules of the tape


def _loss(model, seed=0):
    rng = np.random.default_rng(seed)
    return nn.CrossEntropyLoss()(model(rng.standard_normal((2, 1, 28, 28))), np.array([3, 7]))


def test_backward_twice_raises_unless_the_graph_is_retained():
    model = lenet(dtype="float64")
    loss = _loss(model)
    loss.backward()
    first = [p.grad.copy() for p in model.parameters()]
    with pytest.raises(UsageError, match="retain_graph=True"):
        loss.backward()
    for p, g in zip(model.parameters(), first):
        np.testing.assert_array_equal(p.grad, g, err_msg="a refused backward must not touch the gradients")

    model.zero_grad()
    retained = _loss(model)
    retained.backward(retain_graph=True)
    retained.backward()
    for p, g in zip(model.parameters(), first):
        np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-15)


def test_backward_after_an_in_place_step_refuses_where_the_kept_weights_changed():
    # PyTorch's version counters: the second backward would use the stepped weights with the old activations.
    model = lenet(dtype="float64")
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = _loss(model)
    loss.backward(retain_graph=True)
    first = [p.grad.copy() for p in model.parameters()]
    optimizer.step()
    assert all(p._version == 1 for p in model.parameters())
    with pytest.raises(UsageError, match=r"modified in place since .*backward\(\) before optimizer.step\(\)"):
        loss.backward()
    # Rebinding leaves the arrays the graph kept as they were: its gradients are still the forward's.
    model = lenet(dtype="float64")
    optimizer = SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer.in_place = False
    loss = _loss(model)
    loss.backward(retain_graph=True)
    optimizer.step()
    assert all(p._version == 0 for p in model.parameters())
    model.zero_grad()
    loss.backward()
    for p, g in zip(model.parameters(), first):
        np.testing.assert_array_equal(p.grad, g)


def test_a_parameter_an_op_did_not_keep_may_change_before_backward():
    # Addition keeps neither input, so its gradient does not depend on the bias's value (as in PyTorch).
    weight, bias = nn.Parameter(np.ones((3, 3))), nn.Parameter(np.zeros(3))
    out = (portacnn.tensor(np.eye(3)) @ weight + bias).sum()
    bias.grad = np.ones(3)
    SGD([bias], lr=1.0).step()
    assert bias._version == 1
    out.backward()
    np.testing.assert_array_equal(bias.grad, np.ones(3) + 3.0)
    np.testing.assert_array_equal(weight.grad, np.ones((3, 3)))


def test_gradients_accumulate_across_backwards_until_zero_grad():
    model = lenet(dtype="float64")
    _loss(model, 0).backward()
    first = [p.grad.copy() for p in model.parameters()]
    _loss(model, 1).backward()
    model.zero_grad()
    _loss(model, 1).backward()
    second = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    _loss(model, 0).backward()
    _loss(model, 1).backward()
    for p, a, b in zip(model.parameters(), first, second):
        np.testing.assert_allclose(p.grad, a + b, rtol=1e-12)


def test_backward_on_a_tensor_without_gradient_says_why():
    with pytest.raises(UsageError, match="does not require a gradient"):
        portacnn.tensor(np.ones(1)).backward()
    with no_grad():
        loss = _loss(lenet(dtype="float64"))
    with pytest.raises(UsageError, match="no_grad"):
        loss.backward()


def test_backward_of_a_non_scalar_needs_its_gradient():
    out = nn.Linear(2, 3)(np.ones((4, 2), dtype=np.float32))
    with pytest.raises(UsageError, match="single-element"):
        out.backward()
    with pytest.raises(ShapeError, match="must match"):
        out.backward(np.ones((4, 2), dtype=np.float32))
    with pytest.raises(DTypeError, match="dtype"):
        out.backward(np.ones((4, 3), dtype=np.float64))


def test_item_reads_one_element_and_refuses_more():
    assert _loss(lenet(dtype="float64")).item() > 0
    assert portacnn.tensor(np.array([[2.5]])).item() == 2.5
    with pytest.raises(ShapeError, match="exactly one element"):
        portacnn.tensor(np.ones(3)).item()


def test_mixing_backends_in_one_graph_names_both_sides():
    strict = pytest.importorskip("array_api_strict")
    a = portacnn.tensor(np.ones(3), requires_grad=True)
    b = portacnn.tensor(strict.ones(3, dtype=strict.float64), requires_grad=True)
    with pytest.raises(BackendMismatchError) as error:
        a + b
    assert "numpy" in str(error.value) and "array_api_strict" in str(error.value)
    layer = nn.Linear(3, 2, dtype="float64")
    with pytest.raises(BackendMismatchError, match="array_api_strict"):
        layer(b)


def test_integer_tensors_cannot_require_gradients():
    with pytest.raises(DTypeError, match="floating-point"):
        portacnn.tensor(np.arange(3), requires_grad=True)


def test_no_grad_records_nothing_and_keeps_nothing():
    model = lenet(dtype="float64")
    with no_grad():
        out = model(np.ones((1, 1, 28, 28)))
    assert not out.requires_grad and out.grad_fn is None
    assert portacnn.is_grad_enabled()

    @no_grad()
    def infer(x):
        assert not portacnn.is_grad_enabled()
        return model(x)
    assert infer(np.ones((1, 1, 28, 28))).grad_fn is None
    with no_grad(), portacnn.enable_grad():
        assert model(np.ones((1, 1, 28, 28))).requires_grad


def test_detach_cuts_the_graph():
    layer = nn.Linear(2, 2, dtype="float64")
    hidden = layer(np.ones((1, 2)))
    out = (hidden.detach() * hidden).sum()
    out.backward()
    # Only the undetached factor carries a gradient: d/dW of sum(c * (W x + b)) with c = hidden held fixed.
    np.testing.assert_allclose(layer.bias.grad, hidden.data[0], rtol=1e-15)
    assert hidden.detach().grad_fn is None and not hidden.detach().requires_grad


def test_frozen_parameter_gets_no_gradient_and_no_update():
    model = lenet(dtype="float64")
    model[0].requires_grad_(False)
    before = model[0].weight.data.copy()
    optimizer = SGD(model.parameters(), lr=0.1)
    _loss(model).backward()
    optimizer.step()
    assert model[0].weight.grad is None and model[3].weight.grad is not None
    np.testing.assert_array_equal(model[0].weight.data, before)


def test_backward_frees_what_the_nodes_saved():
    conv = nn.Conv2d(2, 3, 3, dtype="float64")
    out = conv(np.ones((1, 2, 5, 5)))
    node = out.grad_fn
    patches = weakref.ref(node.patches)
    out.sum().backward()
    gc.collect()
    assert patches() is None, "the patch matrix must be freed after backward"


def test_memory_stays_flat_over_many_training_steps():
    model = lenet(dtype="float32")
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, 8)

    def step():
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(3):
        step()
    tracemalloc.start()
    try:
        step()
        gc.collect()
        baseline = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            step()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024, f"memory grew by {grown} bytes over 20 steps"


def test_module_backward_points_to_loss_backward():
    with pytest.raises(UsageError, match="loss.backward"):
        nn.Linear(2, 2).backward(np.ones((1, 2), dtype=np.float32))


def test_functional_ops_stay_array_functions_on_arrays_and_record_on_tensors():
    x = _host((2, 3, 6, 6), 0)
    assert isinstance(F.max_pool2d(x, 2), np.ndarray)
    t = portacnn.tensor(x, requires_grad=True)
    out = F.max_pool2d(t, 2)
    assert isinstance(out, Tensor) and out.grad_fn is not None
    out.backward(np.ones(out.shape))
    np.testing.assert_array_equal(t.grad, F.max_pool2d_backward(np.ones(out.shape), x, 2))


def test_tensor_attributes():
    t = portacnn.tensor(np.zeros((2, 3), dtype=np.float32), requires_grad=True)
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.ndim == 2 and len(t) == 2
    assert t.is_leaf and t.grad is None and "requires_grad=True" in repr(t)
    assert not (t * 2).is_leaf


# --------------------------------------------------------------------------
# JAX: a whole step written with the tape traces under jax.jit


def test_a_tape_training_step_traces_under_jax_jit():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    model = lenet(seed=0, dtype="float64", device="jax")
    loss_fn = nn.CrossEntropyLoss(check_labels=False)  # a label check reads values: not traceable
    params = model.parameters()
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.standard_normal((4, 1, 28, 28)))
    y = jax.numpy.asarray(rng.integers(0, 10, 4))

    def loss_and_grads(arrays, x, y):
        for param, array in zip(params, arrays):
            param.data, param.grad = array, None
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss.data, [param.grad for param in params]

    initial = [p.data for p in params]
    traced_loss, traced_grads = jax.jit(loss_and_grads)(initial, x, y)
    eager_loss, eager_grads = loss_and_grads(initial, x, y)
    np.testing.assert_allclose(np.asarray(traced_loss), np.asarray(eager_loss), rtol=1e-12)
    for traced, eager in zip(traced_grads, eager_grads):
        np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), rtol=1e-9, atol=1e-12)


def test_to_numpy_takes_a_tensor_and_to_device_asks_for_its_array():
    out = nn.Linear(3, 2, dtype="float64")(np.ones((1, 3)))
    np.testing.assert_array_equal(portacnn.to_numpy(out), out.data)
    with pytest.raises(DTypeError, match=r"x\.data"):
        portacnn.to_device(out, "numpy")
