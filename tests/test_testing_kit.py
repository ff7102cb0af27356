"""portacnn.testing catches what it exists for: each planted bug fails with a useful message, each correct version passes."""

import numpy as np
import pytest
from support import Swish

import portacnn
from portacnn import Function, nn
from portacnn import functional as F
from portacnn._arrays import namespace_of
from portacnn.backends import placement_of, to_device
from portacnn.testing import assert_backends_agree, assert_close, default_backend_specs, gradcheck

SPECS = default_backend_specs()
X = np.random.default_rng(0).standard_normal((3, 5))


class SwishSignError(Swish):
    def backward(self, grad):
        s = F.sigmoid(self.x)
        return grad * (s - self.x * s * (1.0 - s))


class SwishMissingFactor(Swish):
    def backward(self, grad):
        s = F.sigmoid(self.x)
        return grad * (s + self.x * (1.0 - s))


class MatMul(Function):
    """``x @ weight.T``; the planted bug returns the weight gradient transposed."""

    transpose_weight_grad = False

    def forward(self, x, weight):
        self.xp, self.x, self.weight = namespace_of(x, weight), x, weight
        return self.xp.matmul(x, self.weight.T)

    def backward(self, grad):
        grad_weight = self.xp.matmul(grad.T, self.x)
        return self.xp.matmul(grad, self.weight), grad_weight.T if self.transpose_weight_grad else grad_weight


class MatMulTransposedGradient(MatMul):
    transpose_weight_grad = True


class Doubling(Function):
    def forward(self, x):
        return x * 2.0

    def backward(self, grad):
        return grad * 2.0


class DoublingWritesIntoInput(Doubling):
    def forward(self, x):
        self.x = x
        return x * 2.0

    def backward(self, grad):
        self.x *= 0.0  # the planted bug: clobbers the caller's array
        return grad * 2.0


class DoublingOnDefaultDevice(Doubling):
    def forward(self, x):
        return to_device(x * 2.0, placement_of(x).backend)  # the backend's default device, not x's


class DoublingInFloat64(Doubling):
    def forward(self, x):
        xp = namespace_of(x)
        return xp.astype(x, xp.float64) * 2.0

    def backward(self, grad):
        xp = namespace_of(grad)
        return xp.astype(grad * 2.0, xp.float32) if grad.dtype == xp.float64 else grad * 2.0


class DoublingThroughNumPy(Doubling):
    def forward(self, x):
        return np.asarray(x) * 2.0  # the planted bug: a NumPy-only call inside the math


# --------------------------------------------------------------------------
# gradcheck


@pytest.mark.parametrize("correct", [Swish, nn.Linear(5, 4, rng=0, dtype="float64"),
                                     lambda x: (F.tanh(x) * x).sum(axis=0)], ids=["Function", "Module", "function"])
def test_gradcheck_passes_correct_code_on_every_backend(correct):
    assert gradcheck(correct, X, backends=SPECS)


@pytest.mark.parametrize("broken, what", [(SwishSignError, "sign error"), (SwishMissingFactor, "missing factor")])
def test_gradcheck_catches_a_wrong_backward(broken, what):
    with pytest.raises(AssertionError) as error:
        gradcheck(broken, X)
    message = str(error.value)
    for part in (broken.__name__, "numpy", "input 0", "at index (", "finite difference", "tape", "relative error"):
        assert part in message, (what, message)


def test_gradcheck_catches_a_transposed_weight_gradient():
    weight = np.random.default_rng(1).standard_normal((5, 5))
    assert gradcheck(MatMul, X, weight)
    with pytest.raises(AssertionError, match=r"MatMulTransposedGradient .*gradient of input 1 at index"):
        gradcheck(MatMulTransposedGradient, X, weight)


def test_gradcheck_checks_module_parameters_and_names_them():
    class BiasSignError(nn.Module):
        def __init__(self):
            self.linear = nn.Linear(5, 2, rng=0, dtype="float64")

        def forward(self, x):
            return self.linear(x) - 2.0 * self.linear.bias  # d/d bias is -1 per output: correct

    assert gradcheck(BiasSignError(), X)

    class WeightGradientDropped(Function):
        def forward(self, x, weight):
            self.weight = weight
            return namespace_of(x).matmul(x, weight.T)

        def backward(self, grad):
            return namespace_of(grad).matmul(grad, self.weight), None  # forgets the weight's gradient

    class Layer(nn.Module):
        def __init__(self):
            self.weight = nn.Parameter(np.random.default_rng(0).standard_normal((2, 5)))

        def forward(self, x):
            return WeightGradientDropped.apply(x, self.weight)

    with pytest.raises(AssertionError, match=r"parameter 'weight'"):
        gradcheck(Layer(), X)


def test_gradcheck_samples_large_inputs():
    big = np.random.default_rng(2).standard_normal((40, 50))
    with pytest.raises(AssertionError, match=r"of 7 checked entries"):
        gradcheck(SwishSignError, big, max_checks=7)


def test_gradcheck_refuses_code_without_a_gradient():
    with pytest.raises(AssertionError, match="does not depend"):
        gradcheck(lambda labels: portacnn.tensor(np.ones(2)), np.arange(3))


def test_gradcheck_leaves_the_module_it_checks_unchanged():
    layer = nn.Linear(5, 4, rng=0, dtype="float64")
    before = layer.weight.data.copy()
    gradcheck(layer, X, backends=["numpy", "torch"] if "torch" in SPECS else ["numpy"])
    np.testing.assert_array_equal(layer.weight.data, before)
    assert layer.weight.grad is None


# --------------------------------------------------------------------------
# assert_backends_agree


@pytest.mark.parametrize("correct", [Swish, Doubling, lambda x: F.relu(x) * 3.0,
                                     lambda device, dtype: nn.Conv2d(2, 3, 3, rng=0, device=device, dtype=dtype)],
                         ids=["Function", "Function2", "function", "model factory"])
def test_backends_agree_on_correct_code(correct):
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 6))
    assert_backends_agree(correct, x)


def test_backends_agree_covers_a_model_and_its_parameters():
    class Net(nn.Module):
        def __init__(self, device=None, dtype="float32"):
            # Unseeded: every backend still gets the same values. No bias: before
            # BatchNorm its gradient is zero up to rounding, which no rtol can judge.
            self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False, device=device, dtype=dtype)
            self.norm = nn.BatchNorm2d(3, device=device, dtype=dtype)

        def forward(self, x):
            return F.relu(self.norm(self.conv(x))) + x[:, :1]

    assert_backends_agree(Net, np.random.default_rng(4).standard_normal((3, 2, 4, 5)))


def _failure(code, *inputs, backends=SPECS, dtypes=("float64", "float32")):
    with pytest.raises(AssertionError) as error:
        assert_backends_agree(code, *inputs, backends=backends, dtypes=dtypes)
    return str(error.value)


def test_backends_agree_catches_a_wrong_backward_on_one_backend_only():
    class WrongOnTorchOnly(Swish):
        def backward(self, grad):
            right = super().backward(grad)
            return right * 1.5 if "torch" in type(grad).__module__ else right

    pytest.importorskip("torch")
    message = _failure(WrongOnTorchOnly, X)
    assert "[torch" in message and "gradient of input 0" in message and "worst at index" in message
    assert "[numpy" not in message


def test_backends_agree_catches_a_write_into_an_input():
    message = _failure(DoublingWritesIntoInput, X)
    assert "[numpy float64] raised ValueError" in message and "wrote into an input" in message
    if "torch" in SPECS:
        assert "[torch float64] input 0 was changed by the call" in message


def test_backends_agree_catches_an_output_moved_to_the_default_device():
    pytest.importorskip("array_api_strict")
    message = _failure(DoublingOnDefaultDevice, X, backends=["numpy", "array_api_strict:device1"])
    assert "[array_api_strict:device1 float64] output 0 landed on array_api_strict" in message
    assert "expected array_api_strict:device1" in message
    assert "[numpy" not in message


def test_backends_agree_catches_float64_math_on_float32_inputs():
    message = _failure(DoublingInFloat64, X, backends=["numpy"], dtypes=("float32",))
    assert "[numpy float32] output 0 has dtype float64, expected float32" in message


def test_backends_agree_catches_a_numpy_only_call():
    backends = [spec for spec in SPECS if not spec.startswith("numpy")]
    if not backends:
        pytest.skip("needs a backend besides NumPy")
    message = _failure(DoublingThroughNumPy, X, backends=backends)
    for spec in backends:
        assert f"[{spec} float64]" in message, message


# --------------------------------------------------------------------------
# assert_close


def test_assert_close_reports_the_worst_entry_on_any_backend():
    torch = pytest.importorskip("torch")
    expected = np.arange(6.0).reshape(2, 3)
    assert_close(torch.tensor(expected), expected)
    wrong = expected.copy()
    wrong[1, 2] += 0.5
    with pytest.raises(AssertionError, match=r"1 of 6 entries differ; worst at index \(1, 2\): got 5.5, expected 5 "):
        assert_close(torch.tensor(wrong), expected)
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.tensor(expected), expected.T)


def test_assert_close_uses_the_dtype_tolerance_and_matches_nans():
    expected = np.array([1.0, np.nan, np.inf])
    assert_close(np.array([1.0 + 1e-7, np.nan, np.inf], dtype=np.float32), expected)
    with pytest.raises(AssertionError):
        assert_close(np.array([1.0 + 1e-7, np.nan, np.inf]), expected)  # float64: 1e-7 is too much


# --------------------------------------------------------------------------
# the pytest plugin, as a user's project sees it


USER_TESTS = '''
import numpy as np
import pytest


def test_backend_and_xp(backend, xp):
    x = backend.asarray(np.ones(3))
    backend.check(x, "float64")
    assert xp.sum(x) == 3
    print("RAN", backend.id)


@pytest.mark.needs_writable_views
def test_views(backend):
    print("VIEWS", backend.id)


def test_case(case):
    case.assert_close(case.put(np.ones(2)) * 2, case.ref(np.ones(2)) * 2)
'''


def _run_user_tests(tmp_path, *options):
    import subprocess
    import sys

    (tmp_path / "test_user.py").write_text(USER_TESTS)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "-rs",
                             str(tmp_path / "test_user.py"), *options],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return result.returncode, result.stdout + result.stderr


def test_plugin_gives_a_project_backend_xp_and_case_fixtures_and_markers(tmp_path):
    pytest.importorskip("jax")
    code, output = _run_user_tests(tmp_path, "--portacnn-backends=numpy,jax,array_api_strict:device1")
    assert code == 0, output
    assert "RAN numpy" in output and "RAN jax" in output and "RAN array_api_strict-device1" in output
    assert "RAN torch" not in output, "only the chosen backends run"
    assert "VIEWS numpy" in output and "VIEWS jax" not in output
    assert "in-place writes through slice views are not supported" in output
    # 3 backends; the views test skips 2 of them; the case test runs each in float32 and float64.
    assert "10 passed, 2 skipped" in output, output


def test_plugin_refuses_an_unknown_backend(tmp_path):
    code, output = _run_user_tests(tmp_path, "--portacnn-backends=numpy,tensorflow")
    assert code != 0 and "tensorflow" in output and "valid:" in output


def test_assert_close_needs_the_same_infinity_and_takes_python_numbers():
    with pytest.raises(AssertionError, match="worst at index"):
        assert_close(np.array([0.0, -np.inf]), np.array([np.inf, np.inf]))
    assert_close(2.5, 2.5)
    with pytest.raises(AssertionError):
        assert_close(2.5, 2.6)
