"""Where user files live: a content-addressed store under the user data directory.

An uploaded model, weights or dataset is kept as ``<sha256><suffix>``: the same bytes are stored
once, a subject names them by hash (so a shared link works while the server still holds them),
and nothing is ever overwritten. The store has a size quota; the oldest files go first when a
new one would not fit. Files given by path (the CLI, an app started on local files) are only
*registered*: hashed and remembered, never copied.

``PRUNING_EXPLORER_HOME`` overrides the location (default: platformdirs' user data directory).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path

from explorer.engine.limits import MAX_UPLOAD_ENV, env_megabytes, max_upload_bytes
from explorer.engine.subject import HASH_PREFIX, STORE_PREFIX, file_digest

HOME_ENV = "PRUNING_EXPLORER_HOME"
QUOTA_ENV = "PRUNING_EXPLORER_STORE_QUOTA_MB"
DEFAULT_QUOTA_MB = 2048


def home() -> Path:
    """The project's data directory (created on first use)."""
    override = os.environ.get(HOME_ENV)
    if override:
        path = Path(override).expanduser()
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("pruning-explorer", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


class Store:
    """Content-addressed files: ``put`` bytes, ``register`` a local path, ``path`` by hash."""

    def __init__(self, root: Path | None = None, quota_bytes: int | None = None) -> None:
        self.root = (root or home() / "store").resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.quota = quota_bytes or env_megabytes(QUOTA_ENV, DEFAULT_QUOTA_MB)
        self._registered: dict[str, Path] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes, suffix: str = "") -> str:
        """Keep ``data``; returns its reference ``store:<sha256><suffix>``."""
        if len(data) > max_upload_bytes():
            raise ValueError(
                f"the file is {len(data) / 2**20:,.1f} MB, over the limit of "
                f"{max_upload_bytes() / 2**20:,.0f} MB ({MAX_UPLOAD_ENV})"
            )
        suffix = _clean_suffix(suffix)
        name = hashlib.sha256(data).hexdigest() + suffix
        target = self.root / name
        with self._lock:
            if not target.exists():
                self._make_room(len(data))
                # write then rename: a reader never sees half a file
                with tempfile.NamedTemporaryFile(dir=self.root, delete=False) as handle:
                    handle.write(data)
                os.replace(handle.name, target)
        return STORE_PREFIX + name

    def register(self, path: str | Path) -> str:
        """Remember a local file by its hash (no copy); returns ``"sha256:<hex>"``."""
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        digest = file_digest(path)
        with self._lock:
            self._registered[digest] = path
        return digest

    def path(self, ref: str) -> Path:
        """The file behind ``store:<hex><suffix>``, a ``sha256:<hex>`` digest, or a plain path."""
        if ref.startswith(STORE_PREFIX):
            name = ref[len(STORE_PREFIX) :]
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"not a store reference: {ref!r}")
            target = self.root / name
            if not target.is_file():
                raise FileNotFoundError(
                    f"this server no longer holds {name[:12]}…: upload the file again"
                )
            return target
        if ref.startswith(HASH_PREFIX):
            digest = ref[len(HASH_PREFIX) :]
            with self._lock:
                known = self._registered.get(ref)
            if known is not None and known.is_file():
                return known
            matches = sorted(self.root.glob(f"{digest}*"))
            if not matches:
                raise FileNotFoundError(
                    f"this server holds no file with hash {digest[:12]}…: upload it again"
                )
            return matches[0]
        return Path(ref).expanduser()

    def digest(self, ref: str) -> str:
        """``"sha256:<hex>"`` of the file behind ``ref``."""
        if ref.startswith(STORE_PREFIX):
            return HASH_PREFIX + Path(ref[len(STORE_PREFIX) :]).stem.split(".")[0]
        return file_digest(self.path(ref))

    def _make_room(self, incoming: int) -> None:
        if incoming > self.quota:
            raise ValueError(
                f"the file ({incoming / 2**20:,.1f} MB) is larger than the whole store's quota "
                f"({self.quota / 2**20:,.0f} MB, {QUOTA_ENV})"
            )
        files = sorted(
            (p for p in self.root.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime
        )
        used = sum(p.stat().st_size for p in files)
        for old in files:
            if used + incoming <= self.quota:
                break
            used -= old.stat().st_size
            old.unlink(missing_ok=True)


def _clean_suffix(suffix: str) -> str:
    """A suffix such as ``.onnx`` or ``.tar.gz``, reduced to safe characters."""
    suffix = suffix.lower()
    if not suffix:
        return ""
    if not suffix.startswith(".") or len(suffix) > 16:
        raise ValueError(f"not a file suffix: {suffix!r}")
    if not all(c.isalnum() or c == "." for c in suffix[1:]):
        raise ValueError(f"not a file suffix: {suffix!r}")
    return suffix


_default: Store | None = None
_default_lock = threading.Lock()


def default_store() -> Store:
    """The process's store (one per ``PRUNING_EXPLORER_HOME``)."""
    global _default
    with _default_lock:
        if _default is None or _default.root != (home() / "store").resolve():
            _default = Store()
        return _default
