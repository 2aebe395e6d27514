"""Zip archives: writing one from a folder, and extracting an uploaded one without trusting it.

When extracting, sizes are counted while the bytes stream out, never taken from the headers (the
declared sizes only serve to refuse early); names are checked before anything is written; and the
archive is extracted into a temporary folder beside `dest` that is renamed only when everything
passed, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IGNORED_FOLDERS = ("__MACOSX",)  # resource forks added by macOS's "Compress"
IGNORED_FILES = (".DS_Store",)
_CHUNK = 1 << 20
_MAX_NAME_BYTES = 255  # longest file name common filesystems accept


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 20_000  # entries in the archive, folders and ignored files included
    max_total_bytes: int = 4 << 30  # uncompressed bytes of all members together
    max_member_bytes: int = 256 << 20  # uncompressed bytes of one member
    max_ratio: float = 100.0  # uncompressed / compressed bytes of one member; images barely compress
    ratio_grace_bytes: int = 1 << 20  # the ratio is only judged past this many bytes (small text files compress well)
    max_depth: int = 8  # folders in a member's path, plus one for the file


class ArchiveError(ValueError):
    """An archive refused as a whole; the message names the member and what to fix."""


def _member_parts(name: str) -> tuple[str, ...]:
    """Path components of a member name, refusing any name that could land outside the destination."""
    if "\\" in name:
        raise ArchiveError(f"member {name!r} uses backslashes; zip the folder with a tool that writes '/' paths")
    if any(ord(ch) < 32 for ch in name):
        raise ArchiveError(f"member {name!r} has control characters in its name; rename it")
    if name.startswith("/"):
        raise ArchiveError(f"member {name!r} has an absolute path; archive paths must be relative")
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if parts and len(parts[0]) >= 2 and parts[0][1] == ":":
        raise ArchiveError(f"member {name!r} starts with a drive letter; archive paths must be relative")
    if ".." in parts:
        raise ArchiveError(f"member {name!r} has a '..' component; archive paths must stay inside the archive")
    if any(len(part.encode()) > _MAX_NAME_BYTES for part in parts):
        raise ArchiveError(f"member {name!r} has a name longer than {_MAX_NAME_BYTES} bytes; shorten it")
    return parts


def _check_member_kind(info: zipfile.ZipInfo) -> None:
    mode = info.external_attr >> 16  # Unix mode bits, when the archiver recorded them
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"member {info.filename!r} is a symbolic link; archive the file it points to instead")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise ArchiveError(f"member {info.filename!r} is a device, pipe or socket, not a regular file")
    if info.flag_bits & 0x1:
        raise ArchiveError(f"member {info.filename!r} is encrypted; upload an archive without a password")


def _is_ignored(parts: tuple[str, ...]) -> bool:
    return any(part in IGNORED_FOLDERS for part in parts[:-1]) or parts[-1] in IGNORED_FILES


def _plan(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Check every entry's name and kind; return the regular files to extract with their path parts."""
    entries = archive.infolist()
    if len(entries) > limits.max_members:
        raise ArchiveError(f"archive has {len(entries)} members, more than the limit of {limits.max_members}")
    files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
    seen: set[tuple[str, ...]] = set()
    for info in entries:
        parts = _member_parts(info.filename)
        _check_member_kind(info)
        if not parts or info.is_dir() or _is_ignored(parts):
            continue
        if len(parts) > limits.max_depth:
            raise ArchiveError(
                f"member {info.filename!r} is nested {len(parts)} levels deep, more than {limits.max_depth}"
            )
        if parts in seen:
            raise ArchiveError(f"member {info.filename!r} appears twice in the archive; keep one copy")
        seen.add(parts)
        files.append((info, parts))
    if not files:
        raise ArchiveError("archive is empty: it holds no files")
    folders = {parts[:depth] for parts in seen for depth in range(1, len(parts))}
    clash = sorted(seen & folders)
    if clash:
        raise ArchiveError(f"'{'/'.join(clash[0])}' is both a file and a folder in the archive")
    declared = sum(info.file_size for info, _ in files)
    if declared > limits.max_total_bytes:
        raise ArchiveError(
            f"archive unpacks to {declared} bytes, more than the limit of {limits.max_total_bytes} bytes"
        )
    return files


def _strip_common_folder(files: list[tuple[zipfile.ZipInfo, tuple[str, ...]]]) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Drop one top-level folder that wraps everything (users zip the dataset folder itself)."""
    tops = {parts[0] for _, parts in files}
    wrapped = len(tops) == 1 and all(len(parts) > 1 for _, parts in files)
    return [(info, Path(*(parts[1:] if wrapped else parts))) for info, parts in files]


def _copy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: ArchiveLimits, total_so_far: int
) -> int:
    """Stream one member to `target`, counting real bytes against the limits; returns the bytes written."""
    written = 0
    compressed = max(info.compress_size, 1)
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, open(target, "xb") as out:
        while chunk := _read_member(source, info):
            written += len(chunk)
            if written > limits.max_member_bytes:
                raise ArchiveError(
                    f"member {info.filename!r} unpacks to more than the limit of {limits.max_member_bytes} bytes"
                )
            if total_so_far + written > limits.max_total_bytes:
                raise ArchiveError(f"archive unpacks to more than the limit of {limits.max_total_bytes} bytes")
            if written > limits.ratio_grace_bytes and written / compressed > limits.max_ratio:
                raise ArchiveError(
                    f"member {info.filename!r} expands more than {limits.max_ratio:g}x (a compression bomb?)"
                )
            out.write(chunk)
    return written


def _read_member(source, info: zipfile.ZipInfo) -> bytes:
    try:
        return source.read(_CHUNK)
    except (OSError, lzma.LZMAError) as err:  # how the bzip2 and LZMA decompressors report bad data
        raise ArchiveError(f"member {info.filename!r} is damaged ({err}); re-create the zip") from err


def check_archive(zip_path: str | Path, limits: ArchiveLimits | None = None) -> int:
    """Check what the listing of `zip_path` alone tells, extracting nothing; returns the files it holds.

    The refusals of `safe_extract` that need no member's data (not a zip or empty, too many members
    or declared bytes, unsafe names, links and devices, duplicates, encryption): a fraction of a
    second however large the archive, so an upload can be answered at once.
    """
    try:
        with _open_archive(zip_path) as archive:
            return len(_plan(archive, limits or ArchiveLimits()))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, UnicodeDecodeError) as err:
        raise _damaged(err) from err


def safe_extract(
    zip_path: str | Path,
    dest: str | Path,
    limits: ArchiveLimits | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Extract the regular files of `zip_path` into the new folder `dest`; returns their paths, sorted.

    Raises ArchiveError (leaving nothing at `dest`) for anything unsafe: not a zip or empty, more
    members or bytes than `limits`, a member expanding more than the ratio limit, absolute or
    escaping paths, drive letters or backslashes, symlinks, devices or pipes, duplicate names,
    encryption, damaged data. `dest` must not exist; its parent must. `progress(done, total)` is
    called after each file; an exception it raises stops the extraction, leaving nothing either.
    """
    limits = limits or ArchiveLimits()
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists; extract into a new folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with _open_archive(zip_path) as archive:
            members = _strip_common_folder(_plan(archive, limits))
            total = 0
            for done, (info, relative) in enumerate(members, start=1):
                total += _copy_member(archive, info, staging / relative, limits, total)
                if progress is not None:
                    progress(done, len(members))
        os.rename(staging, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, UnicodeDecodeError) as err:
        raise _damaged(err) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a successful rename there is nothing left here
    return sorted(dest / relative for _, relative in members)


def _open_archive(zip_path: str | Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(zip_path):
        raise ArchiveError("not a zip archive; upload the dataset as a .zip file")
    return zipfile.ZipFile(zip_path)


def _damaged(err: Exception) -> ArchiveError:
    if isinstance(err, UnicodeDecodeError):  # zipfile decodes every member name as it opens the archive
        return ArchiveError("a member name is marked as UTF-8 but is not; re-create the zip")
    return ArchiveError(f"archive is damaged or uses an unsupported feature ({err}); re-create the zip")


def zip_folder(folder: str | Path, archive_path: str | Path) -> Path:
    """Deflate every file under `folder` into `archive_path`, named relative to `folder` with '/' separators.

    Members are written in sorted path order so that the same folder always yields the same listing.
    Returns `archive_path`.
    """
    folder, archive_path = Path(folder), Path(archive_path)
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return archive_path
