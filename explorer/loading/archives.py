"""Safe extraction of an uploaded ``.zip``: nothing lands outside the target folder, and an
archive that would expand without bound is refused before it is written.

``extract_zip`` checks the whole central directory first, then writes entry by entry, and
raises a ``LoadError`` naming the entry for:

- an absolute name (``/etc/x``, ``C:/x``, ``\\\\server\\x``) or a ``..`` component (zip-slip);
- a symbolic link (its target could point anywhere), or any entry that is not a plain file or
  folder;
- an entry whose resolved path would leave the target folder (the last line of defence);
- two entries with the same name (the second would silently replace the first);
- an encrypted entry;
- more than ``max_entries`` entries, or more than ``max_total_bytes`` uncompressed in all
  (counted from the headers, then again from the bytes actually written, since headers lie);
- an entry, or the archive as a whole, that expands more than ``max_ratio`` times
  (a zip bomb; only checked above ``RATIO_MIN_BYTES``, as small files compress oddly).

``check_members`` runs the same header checks on an open archive without extracting it (an
``.npz`` is a zip, and ``np.load`` would inflate a bomb in memory).
"""

from __future__ import annotations

import re
import stat
import zipfile
from pathlib import Path

from explorer.loading.errors import LoadError

#: Most entries (files and folders) an archive may hold.
MAX_ENTRIES = 100_000
#: Most bytes an archive may expand to, in all.
MAX_TOTAL_BYTES = 2 * 2**30
#: Highest uncompressed / compressed ratio of an entry (and of the whole archive). Images
#: (PNG, JPEG) barely compress; raw pixels (BMP, IDX) compress some 5-20 times.
MAX_RATIO = 200
#: Entries (and archives) smaller than this are not ratio-checked: tiny files compress oddly.
RATIO_MIN_BYTES = 2**20

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


def _size(count: int) -> str:
    return f"{count / 2**20:,.0f} MB" if count >= 2**20 else f"{count:,} bytes"


def _entry_parts(name: str) -> tuple[str, ...]:
    """The path components of an entry name, or a ``LoadError`` for an unsafe one."""
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise LoadError(f"the archive entry {name!r} has an absolute path; refusing to extract it")
    # Windows tools write backslashes; treat them as separators so that "..\\x" is caught too
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if ".." in parts:
        raise LoadError(
            f"the archive entry {name!r} points outside the archive ('..'); refusing to extract it"
        )
    if "\0" in name:
        raise LoadError(f"the archive entry {name!r} has a NUL character in its name")
    return parts


def _kind(info: zipfile.ZipInfo) -> str:
    """``"dir"``, ``"file"`` or a ``LoadError`` for links and other special entries."""
    # the Unix file type, when a Unix tool wrote the archive (0 when it only set permissions)
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise LoadError(f"the archive entry {info.filename!r} is a symbolic link; refusing it")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise LoadError(f"the archive entry {info.filename!r} is not a plain file or folder")
    return "dir" if info.is_dir() else "file"


def check_members(
    archive: zipfile.ZipFile,
    *,
    max_entries: int = MAX_ENTRIES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
) -> list[zipfile.ZipInfo]:
    """The archive's entries after the header checks (names, kinds, counts, sizes, ratios);
    a ``LoadError`` naming the first offending entry otherwise."""
    infos = archive.infolist()
    if len(infos) > max_entries:
        raise LoadError(
            f"the archive has {len(infos):,} entries, more than the limit of {max_entries:,}"
        )
    seen: set[tuple[str, ...]] = set()
    total = compressed = 0
    for info in infos:
        parts = _entry_parts(info.filename)
        kind = _kind(info)
        if info.flag_bits & 0x1:
            raise LoadError(f"the archive entry {info.filename!r} is encrypted")
        if kind == "file":
            if parts in seen:
                raise LoadError(f"the archive holds {info.filename!r} twice")
            seen.add(parts)
        total += info.file_size
        compressed += info.compress_size
        if total > max_total_bytes:
            raise LoadError(
                f"the archive expands to more than {_size(max_total_bytes)} "
                f"(at entry {info.filename!r})"
            )
        if info.file_size >= RATIO_MIN_BYTES and info.file_size > max_ratio * max(
            info.compress_size, 1
        ):
            raise LoadError(
                f"the archive entry {info.filename!r} expands "
                f"{info.file_size / max(info.compress_size, 1):,.0f} times "
                f"(over {max_ratio:,.0f}): refusing a possible zip bomb"
            )
    if total >= RATIO_MIN_BYTES and total > max_ratio * max(compressed, 1):
        worst = max(infos, key=lambda i: i.file_size / max(i.compress_size, 1))
        raise LoadError(
            f"the archive expands {total / max(compressed, 1):,.0f} times in all (over "
            f"{max_ratio:,.0f}; worst entry {worst.filename!r}): refusing a possible zip bomb"
        )
    return infos


def extract_zip(
    path: Path,
    target: Path,
    *,
    max_entries: int = MAX_ENTRIES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_ratio: float = MAX_RATIO,
) -> list[Path]:
    """Extract the zip at ``path`` into the existing, empty folder ``target``, safely.

    Args:
        path: the archive.
        target: where its entries go; nothing is ever written outside it.
        max_entries, max_total_bytes, max_ratio: the limits (see the module docstring).

    Returns:
        The files written, in archive order. Raises a ``LoadError`` (naming the entry) for
        anything unsafe or corrupt; what was written before the error stays in ``target``
        (a temporary folder, for the caller to remove).
    """
    root = target.resolve()
    try:
        archive = zipfile.ZipFile(path)
    except Exception as err:  # BadZipFile, OSError, NotImplementedError (version) …
        raise LoadError(f"{path.name} is not a valid zip archive: {err}") from None
    written: list[Path] = []
    budget = max_total_bytes
    with archive:
        infos = check_members(
            archive, max_entries=max_entries, max_total_bytes=max_total_bytes, max_ratio=max_ratio
        )
        for info in infos:
            parts = _entry_parts(info.filename)
            if not parts:
                continue
            destination = root.joinpath(*parts)
            # last line of defence: whatever the name checks missed, never leave the target
            if not destination.resolve().is_relative_to(root):
                raise LoadError(
                    f"the archive entry {info.filename!r} would be written outside the target"
                )
            try:
                if _kind(info) == "dir":
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
            except OSError:  # a file and a folder of the same name
                raise LoadError(
                    f"the archive entry {info.filename!r} clashes with another entry's name"
                ) from None
            budget -= _copy_entry(archive, info, destination, budget)
            written.append(destination)
    return written


def _copy_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, destination: Path, budget: int
) -> int:
    """Write one entry, counting real bytes (a header may understate them); returns the count."""
    size = 0
    try:
        # "xb": never replace a file, nor write through a link planted by an earlier entry
        with archive.open(info) as source, open(destination, "xb") as sink:
            while block := source.read(_CHUNK):
                size += len(block)
                if size > info.file_size or size > budget:
                    raise LoadError(
                        f"the archive entry {info.filename!r} expands beyond its declared size "
                        "or the archive's limit: refusing a possible zip bomb"
                    )
                sink.write(block)
    except LoadError:
        raise
    except (FileExistsError, IsADirectoryError):
        raise LoadError(f"the archive holds {info.filename!r} twice") from None
    except Exception as err:  # zipfile and zlib raise many types for corrupt data
        raise LoadError(f"the archive entry {info.filename!r} is corrupt: {err}") from None
    return size
