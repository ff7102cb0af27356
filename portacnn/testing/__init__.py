"""Testing your own layers: gradients against finite differences, and every backend against NumPy float64.

* :func:`gradcheck` — the tape's gradient of a ``Function``, a ``Module``
  (inputs and parameters) or any function of Tensors against central finite
  differences, in float64, on one backend or several.
* :func:`assert_backends_agree` — forward and backward on every backend from
  the same host inputs, against NumPy float64: values, device, dtype, and
  inputs left unchanged.
* :func:`assert_close` — arrays of any backend against a reference, with the
  worst entry in the report.
* A pytest plugin (``portacnn.testing.plugin``, registered through the
  ``pytest11`` entry point): ``backend`` and ``xp`` fixtures over every
  usable backend, ``--portacnn-backends``, and markers for backends without
  float64 or without writable views.
"""

from .agree import assert_backends_agree, default_backend_specs
from .compare import TOLERANCES, assert_close
from .gradcheck import gradcheck

__all__ = ["gradcheck", "assert_backends_agree", "assert_close", "TOLERANCES", "default_backend_specs"]
