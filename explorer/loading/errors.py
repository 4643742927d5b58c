"""The one error type of loading, and the checks every loader makes before reading a file."""

from __future__ import annotations

from pathlib import Path

from explorer.engine.limits import MAX_UPLOAD_ENV, max_upload_bytes


class LoadError(ValueError):
    """A file or setting that cannot be used, with a message meant for the user (one line)."""


def check_file(path: str | Path, what: str, max_bytes: int | None = None) -> Path:
    """``path`` as an existing regular file within the size limit, or a ``LoadError``.

    Args:
        path: the file.
        what: what it should be, for the message, e.g. ``"weights file"``.
        max_bytes: size limit (default: the upload limit, ``PRUNING_EXPLORER_MAX_UPLOAD_MB``).
    """
    path = Path(path)
    if not path.exists():
        raise LoadError(f"{what} {path} does not exist")
    if path.is_dir():
        raise LoadError(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise LoadError(f"{what} {path} is not a regular file")
    limit = max_upload_bytes() if max_bytes is None else max_bytes
    size = path.stat().st_size
    if size > limit:
        raise LoadError(
            f"{what} {path.name} is {size / 2**20:,.1f} MB, over the limit of "
            f"{limit / 2**20:,.0f} MB ({MAX_UPLOAD_ENV})"
        )
    if size == 0:
        raise LoadError(f"{what} {path.name} is empty")
    return path
