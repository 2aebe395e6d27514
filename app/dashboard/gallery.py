"""A job's gallery: its images, optionally of one class, in upload order or by mask IoU, a page at a time.

Sorting by IoU needs the score of every image of the filter, so the pages are numbered (an offset into
the sorted list) rather than the REST API's cursors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.dashboard.image_scores import ImageScores
from app.models import Image, Job
from app.result_service import dataset_class, job_image_out
from app.schemas import JobImageOut

PAGE_SIZE = 12
Sort = Literal["upload", "iou", "-iou"]
SORTS: dict[str, str] = {"upload": "upload order", "iou": "mask IoU, worst first", "-iou": "mask IoU, best first"}


@dataclass(frozen=True)
class GalleryRow:
    image: JobImageOut
    has_mask: bool
    iou: float | None  # the mask's IoU against the ground truth, where both exist


@dataclass(frozen=True)
class Gallery:
    rows: list[GalleryRow]
    class_name: str | None
    sort: str
    page: int
    pages: int
    total: int  # images of the filter


def job_gallery(
    session: Session, scores: ImageScores, job: Job, *, class_name: str | None, sort: Sort, page: int
) -> Gallery:
    name = dataset_class(job, class_name) if class_name else None
    query = select(Image.image_id, Image.tags, Image.has_mask).where(Image.dataset_id == job.dataset_id)
    images = [row for row in session.execute(query.order_by(Image.pk)) if name is None or name in row.tags]
    has_mask = {row.image_id: row.has_mask for row in images}
    order = list(has_mask)
    if sort != "upload":
        ious = scores.scores(job, [image_id for image_id in order if has_mask[image_id]])
        scored = sorted((i for i in order if ious.get(i) is not None), key=ious.get, reverse=sort == "-iou")
        order = scored + [i for i in order if ious.get(i) is None]  # unscored last, in upload order
    pages = max(1, math.ceil(len(order) / PAGE_SIZE))
    page = min(page, pages)
    shown = order[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    ious = scores.scores(job, [image_id for image_id in shown if has_mask[image_id]])
    rows = [GalleryRow(job_image_out(session, job, i), has_mask[i], ious.get(i)) for i in shown]
    return Gallery(rows, name, sort, page, pages, len(order))
