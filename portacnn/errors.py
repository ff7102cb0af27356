"""The exceptions portacnn raises on purpose.

Each subclasses the built-in exception a Python user would expect
(``ValueError`` or ``TypeError``) so ``except ValueError`` keeps working, and
``PortacnnError`` so callers can tell our deliberate checks from a crash deep
inside an array library.
"""


class PortacnnError(Exception):
    """Base class of every error portacnn raises deliberately."""


class BackendError(PortacnnError, ValueError):
    """A backend specifier is malformed, unknown, or not usable on this machine."""


class BackendMismatchError(PortacnnError, ValueError):
    """Arrays from different backends or devices met in one call."""


class ShapeError(PortacnnError, ValueError):
    """An array has the wrong number of dimensions or the wrong size."""


class DTypeError(PortacnnError, TypeError):
    """An array has a dtype the operation does not accept."""


class CheckpointError(PortacnnError, ValueError):
    """A checkpoint or state dict cannot be loaded into this model."""


class DatasetError(PortacnnError, ValueError):
    """A dataset file is missing, corrupt, or cannot be downloaded."""
