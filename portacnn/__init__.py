"""portacnn: a readable CNN library written once against the Python array API.

The math (``portacnn.functional``, ``portacnn.nn``, ``portacnn.optim``)
follows the namespace and device of its inputs; ``portacnn.backends`` picks
where new parameters live and moves arrays between backends.
"""

from .backends import available_backends, to_device, to_numpy

__version__ = "0.1.0"

__all__ = ["available_backends", "to_device", "to_numpy", "__version__"]
