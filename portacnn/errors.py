"""The exceptions portacnn raises on purpose.

Each subclasses the built-in exception a Python user would expect
(``ValueError`` or ``TypeError``; ``IndexError`` and ``KeyError`` for the
containers) so ``except ValueError`` keeps working, and
``PortacnnError`` so callers can tell our deliberate checks from a crash deep
inside an array library.
"""


class PortacnnError(Exception):
    """Base class of every error portacnn raises deliberately."""


class ArgumentError(PortacnnError, ValueError):
    """A hyper-parameter or option has an invalid value (kernel_size=0, stride=-1, p=1.5, lr=0, ...)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """A hyper-parameter or option has the wrong type (kernel_size=2.5, padding='same', ...).

    Both a ``ValueError`` (it is an :class:`ArgumentError`) and a ``TypeError``,
    so either ``except`` clause a caller already has catches it.
    """


class UsageError(PortacnnError, RuntimeError):
    """A method was called out of order, e.g. ``backward`` before ``forward``."""


class BackendError(PortacnnError, ValueError):
    """A backend specifier is malformed, unknown, or not usable on this machine."""


class BackendMismatchError(PortacnnError, ValueError):
    """Arrays from different backends or devices met in one call."""


class ShapeError(PortacnnError, ValueError):
    """An array has the wrong number of dimensions or the wrong size."""


class DTypeError(PortacnnError, TypeError):
    """An array has a dtype the operation does not accept."""


class ModuleIndexError(PortacnnError, IndexError):
    """An index past the end of a ``Sequential`` or ``ModuleList`` (an ``IndexError``, so loops and ``except`` work)."""


class ModuleKeyError(PortacnnError, KeyError):
    """A key a ``ModuleDict`` does not hold (a ``KeyError``, as for a dict)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""  # KeyError would quote the message


class NonFiniteError(PortacnnError, RuntimeError):
    """A value that must be finite is inf or NaN (``clip_grad_norm_(..., error_if_nonfinite=True)``).

    A RuntimeError, as PyTorch raises there.
    """


class CheckpointError(PortacnnError, ValueError):
    """A checkpoint or state dict cannot be loaded into this model."""


class DatasetError(PortacnnError, ValueError):
    """A dataset file is missing, corrupt, or cannot be downloaded."""


class ExportError(PortacnnError, ValueError):
    """A model cannot be exported (``portacnn.onnx``): an op with no ONNX form, or the exporter is missing."""
