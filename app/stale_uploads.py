"""What uploads that never finished leave behind is removed: at the API's start, then periodically.

The uploads folder holds, per upload, `<id>.zip` (the body being received, then waiting for its
validation), `<id>.d` (the archive extracted, being validated) and `.<id>.d.<random>` (safe_extract's
staging folder beside it). A process that dies mid-upload leaves them there. An entry is removed once
its mtime is older than `upload_max_age_seconds`.

An upload in progress must never look that old, however slowly its client sends or however long
its validation takes: before each sweep, every API process touches the entries of its own uploads
in progress, and it sweeps SWEEPS_PER_MAX_AGE times per max age. So only entries no live process
owns grow old, even with several API processes on one data directory.

Before each sweep, `adopt_orphans` (app/upload_validation.py) takes over the validation of datasets
whose validating process died, so that their zips are in progress again before the sweep judges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from app.settings import Settings

log = logging.getLogger("pole.uploads")

SWEEPS_PER_MAX_AGE = 4


def upload_id(name: str) -> str:
    """The upload an entry of the uploads folder belongs to: `<id>.zip`, `<id>.d` and `.<id>.d.<random>` -> id."""
    return name.lstrip(".").split(".", 1)[0]


class UploadsInProgress:
    """The uploads this process is receiving or validating, by folder and upload id (thread-safe)."""

    def __init__(self) -> None:
        self._uploads: set[tuple[Path, str]] = set()
        self._lock = threading.Lock()

    def add(self, path: Path) -> None:
        with self._lock:
            self._uploads.add((path.parent, upload_id(path.name)))

    def discard(self, path: Path) -> None:
        with self._lock:
            self._uploads.discard((path.parent, upload_id(path.name)))

    def __contains__(self, path: Path) -> bool:
        with self._lock:
            return (path.parent, upload_id(path.name)) in self._uploads


UPLOADS_IN_PROGRESS = UploadsInProgress()


def sweep_stale_uploads(
    uploads_dir: Path, max_age_seconds: float, in_progress: UploadsInProgress = UPLOADS_IN_PROGRESS
) -> list[str]:
    """Touch the entries of the uploads in progress, remove every other entry older than `max_age_seconds`;
    returns the names removed."""
    removed = []
    now = time.time()
    for entry in sorted(uploads_dir.iterdir()) if uploads_dir.is_dir() else ():
        try:
            if entry in in_progress:
                os.utime(entry, follow_symlinks=False)
                continue
            info = entry.lstat()
            if now - info.st_mtime <= max_age_seconds:
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry.name)
        except FileNotFoundError:  # finished (moved or removed by its request) while we looked
            continue
        except OSError as err:  # the others are still worth removing; the next sweep tries this one again
            log.warning("could not remove %s (%s)", entry, err)
    return removed


@contextlib.asynccontextmanager
async def stale_upload_sweeps(settings: Settings, adopt_orphans: Callable[[], None]) -> AsyncIterator[None]:
    """Adopt orphans and sweep once before the block (the API's life), then every max age / SWEEPS_PER_MAX_AGE
    until it ends."""
    await asyncio.to_thread(_adopt_and_sweep, settings, adopt_orphans)
    task = asyncio.create_task(_sweep_periodically(settings, adopt_orphans))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _sweep_periodically(settings: Settings, adopt_orphans: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(settings.upload_max_age_seconds / SWEEPS_PER_MAX_AGE)
        await asyncio.to_thread(_adopt_and_sweep, settings, adopt_orphans)


def _adopt_and_sweep(settings: Settings, adopt_orphans: Callable[[], None]) -> None:
    try:
        adopt_orphans()
    except (OSError, SQLAlchemyError) as err:  # the sweep still runs; the next one tries again
        log.warning("could not look for uploads left validating (%s)", err)
    _sweep(settings)


def _sweep(settings: Settings) -> None:
    try:
        removed = sweep_stale_uploads(settings.uploads_dir, settings.upload_max_age_seconds)
    except OSError as err:  # an unreadable folder must not stop the API; the next sweep tries again
        log.warning("could not list %s (%s)", settings.uploads_dir, err)
        return
    if removed:
        log.info(
            "removed %d unfinished upload(s) older than %g s from %s: %s",
            len(removed),
            settings.upload_max_age_seconds,
            settings.uploads_dir,
            ", ".join(removed),
        )
