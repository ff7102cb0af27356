"""``F.interpolate`` / ``interpolate_backward`` / ``nn.Upsample`` (issue 11): nearest and bilinear, against
torch in float64, by finite differences, through the tape, and on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from support import directional_check, t64, torch_forward_backward

import portacnn
from portacnn import functional as F
from portacnn import nn
from portacnn.errors import ArgumentError, ArgumentTypeError, ShapeError
from portacnn.testing import gradcheck

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


SHAPES = [(2, 3, 5, 7), (1, 2, 7, 4), (2, 1, 1, 3)]

#: (size, scale_factor): up, down, mixed, integer and fractional factors, and the out == in / out == 2 in
#: nearest special cases reached through a scale factor (3 * 1.2 -> 3, 5 * 2.1 -> 10 wide)
RESIZES = [
    ((9, 11), None), ((3, 2), None), ((8, 3), None), (6, None), ((1, 1), None),
    (None, 2), (None, 3), (None, 0.5), (None, 1.5), (None, (2.5, 0.7)), (None, (1.2, 2.1)), (None, (1.7, 1.3)),
    (None, 0.34), (None, (1.1, 2.1)),  # 7 * 1.1 -> 7 high: bilinear copies that axis
]
MODES = [("nearest", None), ("bilinear", False), ("bilinear", True), ("bilinear", None)]


def _out_ok(shape, size, scale_factor):
    if scale_factor is None:
        return True
    factors = scale_factor if isinstance(scale_factor, tuple) else (scale_factor,) * 2
    return all(int(n * s) >= 1 for n, s in zip(shape[2:], factors))


@pytest.mark.parametrize("mode, align_corners", MODES)
@pytest.mark.parametrize("size, scale_factor", RESIZES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_interpolate_vs_torch(shape, size, scale_factor, mode, align_corners):
    if not _out_ok(shape, size, scale_factor):
        pytest.skip("empty output")
    kw = {"size": size, "scale_factor": scale_factor, "mode": mode, "align_corners": align_corners}
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    out = F.interpolate(x, **kw)
    g = rng.standard_normal(out.shape)
    want, (want_grad,) = torch_forward_backward(lambda t: TF.interpolate(t, **kw), [x], g)
    assert out.shape == want.shape
    close(out, want)
    grad = F.interpolate_backward(g, x, **kw)
    close(grad, want_grad)
    directional_check(lambda x: F.interpolate(x, **kw), [x], {0: grad}, g, rng, name=f"interpolate {mode}")


def test_nearest_index_rule_on_many_sizes():
    """Every (in, out) pair up to 20 and a spread of scale factors: the chosen source indices match torch's."""
    for n in range(1, 21):
        x = np.arange(float(n)).reshape(1, 1, 1, n)
        for out in range(1, 21):
            close(F.interpolate(x, size=(1, out)), TF.interpolate(t64(x), size=(1, out)).numpy())
        for s in (0.3, 0.5, 0.75, 1.1, 1.25, 1.9, 2.0, 2.5, 3.0, 3.3):
            if int(n * s) >= 1:
                close(F.interpolate(x, scale_factor=(1, s)), TF.interpolate(t64(x), scale_factor=(1, s)).numpy())


def test_interpolate_keeps_dtype_and_does_not_touch_input():
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 4)).astype(np.float32)
    x.flags.writeable = False
    for mode in ("nearest", "bilinear"):
        y = F.interpolate(x, scale_factor=2, mode=mode)
        assert y.dtype == np.float32 and y.shape == (1, 2, 6, 8)
        np.testing.assert_allclose(y, TF.interpolate(torch.tensor(x), scale_factor=2, mode=mode).numpy(),
                                   rtol=1e-6, atol=1e-6)


def test_upsample_layer_through_the_tape():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5))
    for kw in ({"scale_factor": 2}, {"size": (7, 3), "mode": "bilinear"},
               {"scale_factor": 1.5, "mode": "bilinear", "align_corners": True}):
        layer = nn.Upsample(**kw)
        close(layer(x).data, torch.nn.Upsample(**kw)(t64(x)).numpy())
        assert gradcheck(layer, x, backends=["numpy"])
    t = portacnn.tensor(x, requires_grad=True)
    out = F.interpolate(t, scale_factor=(2, 1), mode="bilinear")
    assert out.shape == (2, 3, 8, 5) and out.requires_grad
    g = np.random.default_rng(3).standard_normal(out.shape)
    out.backward(g)
    close(t.grad, F.interpolate_backward(g, x, scale_factor=(2, 1), mode="bilinear"))
    assert repr(nn.Upsample(scale_factor=2, mode="bilinear")) == repr(torch.nn.Upsample(scale_factor=2, mode="bilinear"))
    assert repr(nn.Upsample(size=(3, 4))) == repr(torch.nn.Upsample(size=(3, 4)))


def test_interpolate_on_every_backend(case):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 4))
    for kw in ({"size": (7, 3)}, {"scale_factor": 1.5}, {"size": (3, 9), "mode": "bilinear"},
               {"scale_factor": (2, 0.5), "mode": "bilinear", "align_corners": True}):
        out = F.interpolate(case.ref(x), **kw)
        g = rng.standard_normal(out.shape)
        case.assert_close(F.interpolate(case.put(x), **kw), out)
        case.assert_close(F.interpolate_backward(case.put(g), case.put(x), **kw),
                          F.interpolate_backward(case.ref(g), case.ref(x), **kw))


def test_interpolate_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ArgumentError, match="exactly one of size and scale_factor"):
        F.interpolate(x)
    with pytest.raises(ArgumentError, match="exactly one of size and scale_factor"):
        F.interpolate(x, size=2, scale_factor=2)
    with pytest.raises(ArgumentError, match="exactly one"):
        nn.Upsample()
    with pytest.raises(ArgumentError, match="mode"):
        F.interpolate(x, size=2, mode="bicubic")
    with pytest.raises(ArgumentError, match="mode"):
        nn.Upsample(scale_factor=2, mode="linear")
    for align_corners in (False, True):
        with pytest.raises(ArgumentError, match="align_corners"):
            F.interpolate(x, size=2, align_corners=align_corners)
        with pytest.raises(ArgumentError, match="align_corners"):
            nn.Upsample(scale_factor=2, align_corners=align_corners)
    with pytest.raises(ArgumentTypeError, match="align_corners"):
        F.interpolate(x, size=2, mode="bilinear", align_corners=1)
    with pytest.raises(ShapeError, match="4"):
        F.interpolate(np.zeros((1, 4, 4)), size=2)
    with pytest.raises(ShapeError, match="4"):
        F.interpolate(portacnn.tensor(np.zeros((1, 1, 1, 4, 4))), scale_factor=2)
    for bad in (0, (2, -1)):
        with pytest.raises(ArgumentError, match="size"):
            F.interpolate(x, size=bad)
    for bad in ((2, 2, 2), 2.5, "2"):
        with pytest.raises(ArgumentTypeError, match="size"):
            F.interpolate(x, size=bad)
    for bad in (0, -1.5, (2, 0), float("inf"), float("nan")):
        with pytest.raises(ArgumentError, match="scale_factor"):
            F.interpolate(x, scale_factor=bad)
    for bad in ("2", (1, 2, 3), [2, None]):
        with pytest.raises(ArgumentTypeError, match="scale_factor"):
            F.interpolate(x, scale_factor=bad)
    with pytest.raises(ArgumentError, match="output size must be positive"):
        F.interpolate(x, scale_factor=0.2)
    with pytest.raises(ShapeError, match="grad_out"):
        F.interpolate_backward(np.zeros((1, 1, 3, 3)), x, size=2)
