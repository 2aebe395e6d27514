"""Accepting a dataset upload: validated whole before anything is kept, nothing kept on refusal.

The archive is extracted with `ml.data.archive.safe_extract` (names, kinds, sizes and compression
ratio measured while extracting) and read with `ml.data.readers.read_dataset`, which decodes every image
with the same checks the pipeline uses. Only then is the folder moved into place and the rows
written; if the rows cannot be written the folder goes again.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from sqlalchemy.orm import Session

from app.errors import ApiError
from app.models import Dataset, Image, new_id
from app.settings import Settings
from app.storage import new_upload_path, remove_path, upload_done
from ml.data import DatasetError
from ml.data.archive import ArchiveError, safe_extract
from ml.data.readers import read_dataset


def store_dataset(session: Session, settings: Settings, *, owner_id: int, upload: Path, name: str) -> Dataset:
    """Validate the uploaded zip at `upload` and keep it as a new dataset of `owner_id`.

    Raises ApiError (400 for a refused archive, 422 for dataset problems, listed) and leaves no
    files and no rows behind. The upload file itself is the caller's to remove.
    """
    staging = new_upload_path(settings, ".d")
    try:
        safe_extract(upload, staging, settings.archive_limits())
        dataset = read_dataset(staging, max_pixels=settings.max_image_pixels)
    except ArchiveError as err:
        remove_path(staging)
        raise ApiError(400, f"archive refused: {err}") from err
    except DatasetError as err:
        remove_path(staging)
        raise ApiError(
            422,
            f"dataset refused: {err}",
            problems=[{"file": p.file, "line": p.line, "message": p.message} for p in err.problems],
        ) from err
    except BaseException:
        remove_path(staging)
        raise

    row = Dataset(
        id=new_id(),
        owner_id=owner_id,
        name=name[:255],
        layout=dataset.layout,
        classes=list(dataset.classes),
        image_count=len(dataset.images),
        tag_counts=_tag_counts(dataset),
        gt_count=sum(im.mask is not None for im in dataset.images),
        size_bytes=_folder_bytes(staging),
    )
    row.path = str(settings.datasets_dir.joinpath(row.id).relative_to(settings.data_dir))
    row.images = [
        Image(
            image_id=im.id,
            file=str(im.image.relative_to(staging)),
            tags=[dataset.classes[t - 1] for t in im.tags],
            split=im.split,
            has_mask=im.mask is not None,
        )
        for im in dataset.images
    ]
    final = settings.data_dir / row.path
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    upload_done(staging)
    try:
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        remove_path(final)
        raise
    return row


def _tag_counts(dataset) -> dict[str, int]:
    counts = Counter(t for im in dataset.images for t in im.tags)
    return {name: counts.get(label, 0) for label, name in enumerate(dataset.classes, start=1)}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
