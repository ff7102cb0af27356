"""portacnn-dask: run portacnn on ``dask.array`` (``lenet(device="dask")``).

The entry point ``dask = "portacnn_dask:backend"`` in the group
``portacnn.backends`` is all portacnn needs to find it; ``backend`` is the
module ``portacnn_dask.backend``.
"""

from . import backend

__all__ = ["backend"]
