"""The suite's backend cases come from portacnn's own pytest plugin (``portacnn.testing.plugin``).

Every test that takes the ``case`` fixture runs once per (backend, dtype)
pair, and every test that takes ``backend`` (or ``xp``) once per backend;
ids read like ``numpy-float64``, ``array_api_strict-device1-float32``,
``torch-float32``. ``--portacnn-backends=numpy,torch`` (or
``PORTACNN_TEST_BACKENDS``) runs a subset. See ``portacnn/testing/cases.py``
for the cases and their helpers (``case.put``, ``case.ref``,
``case.assert_close``). Helpers shared by several test files (offline
MNIST, checkpoint rewriting, the directional finite-difference check, ...)
live in ``support.py``.

The plugin is registered by the package's ``pytest11`` entry point; it is
named here as well so the suite also runs from a checkout that was not
installed with pip.
"""

import importlib.metadata

from portacnn.testing.cases import (ALL_BACKEND_IDS, DTYPES, TOLERANCES, BackendCase, Case, assert_close,
                                    backend_params, case_params, gpu_available)


def _plugin_registered() -> bool:
    return any(entry.value == "portacnn.testing.plugin"
               for entry in importlib.metadata.entry_points(group="pytest11"))


pytest_plugins = [] if _plugin_registered() else ["portacnn.testing.plugin"]

__all__ = [
    "ALL_BACKEND_IDS", "DTYPES", "TOLERANCES", "BackendCase", "Case", "assert_close", "backend_params",
    "case_params", "gpu_available",
]
