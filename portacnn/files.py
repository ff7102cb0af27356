"""Writing files atomically: checkpoints, metrics, plots and downloads all go through here.

A reader (or a crash) never sees a half-written file: the data goes to a
temp file beside the target, is flushed to disk, and then replaces the target
in one rename.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import CheckpointError

__all__ = ["atomic_write"]


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (temp files get 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write) -> Path:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync it, then move it over ``path``.

    On any failure (including one ``write`` raises) the temp file is removed
    and ``path`` is untouched. The parent folder is created if needed, and the
    file ends up with the permissions a plainly created one would have.
    Returns ``path`` as a ``Path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the folder {path.parent}: {exc.strerror or exc}") from exc
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, _new_file_mode())
        os.replace(handle.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
    # Make the rename itself durable where the platform allows it.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path
