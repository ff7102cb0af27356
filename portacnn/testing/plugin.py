"""The portacnn pytest plugin: run a test once per backend, with markers for what a backend lacks.

Installed with portacnn (the ``pytest11`` entry point), so in any project:

* ``backend`` — a fixture that runs the test once per usable backend case
  (``numpy``, ``numpy_readonly``, ``array_api_strict``,
  ``array_api_strict-device1``, ``torch``, ``jax``, ``cupy``, and each
  plugged-in backend when named in ``--portacnn-backends``); each has
  ``.spec`` (for ``model.to(spec)``, ``portacnn.to_device``), ``.xp``,
  ``.device``, ``.asarray(host)``, ``.to_numpy(x)`` and ``.check(x, dtype)``.
  A library that is not installed is skipped with a reason.
* ``xp`` — that backend's array-API namespace.
* ``case`` — one (backend, dtype) pair per run, for float32 and float64:
  ``case.put(host)`` (cast and move), ``case.ref(host)`` (the float64
  reference of exactly what the backend saw) and ``case.assert_close``.
* ``--portacnn-backends=numpy,torch,array_api_strict:device1`` (or
  ``$PORTACNN_TEST_BACKENDS``) picks the cases; by default, all of them.
* ``@pytest.mark.needs_float64`` and ``@pytest.mark.needs_writable_views``
  skip the cases that lack float64 or views that write through
  (JAX, array-api-strict); ``@pytest.mark.gpu`` needs CuPy and a GPU.

A fixture of the same name in your own conftest.py takes precedence.
"""

from __future__ import annotations

import os

import pytest

from . import cases

# Fixture parameters are fixed when this plugin loads, before the command
# line is read, so every plugged-in backend gets its cases here; those not
# asked for are dropped quietly in pytest_collection_modifyitems.
_ALL_BACKENDS = [pytest.param(cases._BACKENDS[s.id], id=s.id, marks=cases._marks(s)) for s in cases.all_specs()]
_ALL_CASES = [pytest.param(cases.Case(cases._BACKENDS[s.id], dtype), id=f"{s.id}-{dtype}", marks=cases._marks(s))
              for s in cases.all_specs() for dtype in cases.DTYPES]


def pytest_addoption(parser):
    group = parser.getgroup("portacnn")
    group.addoption("--portacnn-backends", default=None, metavar="IDS",
                    help="comma-separated backend cases for the backend/case/xp fixtures, e.g. "
                         f"numpy,torch,array_api_strict:device1 (default: all of {', '.join(cases.ALL_BACKEND_IDS)})")


def pytest_configure(config):
    cases.select(config.getoption("--portacnn-backends") or os.environ.get("PORTACNN_TEST_BACKENDS"))
    for line in (
        "gpu: needs an NVIDIA GPU with CuPy (skipped elsewhere)",
        "needs_float64: skip the backend cases without float64",
        "needs_writable_views: skip the backend cases whose slice views do not write through (JAX, array-api-strict)",
    ):
        config.addinivalue_line("markers", line)


@pytest.fixture(params=_ALL_BACKENDS)
def backend(request) -> cases.BackendCase:
    """Each selected backend case; see ``portacnn.testing.cases.BackendCase``."""
    return request.param


@pytest.fixture(params=_ALL_CASES)
def case(request) -> cases.Case:
    """Each selected (backend, dtype) pair; see ``portacnn.testing.cases.Case``."""
    return request.param


@pytest.fixture
def xp(backend):
    """The array-API namespace of ``backend``."""
    return backend.xp


def _backend_of(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    if isinstance(params.get("case"), cases.Case):
        return params["case"].backend
    if isinstance(params.get("backend"), cases.BackendCase):
        return params["backend"]
    return None


def pytest_collection_modifyitems(config, items):
    """Leave out the cases ``--portacnn-backends`` did not pick.

    A plugged-in backend's cases that were not asked for are dropped without
    a word (they are opt-in, not part of the default run); other cases not
    picked are reported as deselected.
    """
    selected = set(cases._selected_ids())
    kept, dropped, quiet = [], [], []
    for item in items:
        backend = _backend_of(item)
        if backend is None or backend.id in selected:
            kept.append(item)
        else:
            (quiet if backend.plugin else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    if dropped or quiet:
        items[:] = kept


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not cases.gpu_available():
        pytest.skip("needs CuPy and an NVIDIA GPU")
    backend = _backend_of(item)
    if backend is None:
        return
    if backend.plugin and cases.plugin_unusable(backend.spec) is not None:
        pytest.skip(cases.plugin_unusable(backend.spec))
    if item.get_closest_marker("needs_float64") is not None and not cases.supports_float64(backend):
        pytest.skip(f"{backend.id} has no float64")
    if item.get_closest_marker("needs_writable_views") is not None and not cases.writable_views(backend):
        pytest.skip(f"{backend.id}: in-place writes through slice views are not supported")
