"""How a job's results are shown to its owner: the chosen words, and each image with its result links."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.models import Image, Job, JobState, Selection
from app.pagination import paginate
from app.schemas import JobImageOut, SelectionOut


def selections_page(
    session: Session, job: Job, cursor: str | None, limit: int, *, image: str | None, class_name: str | None
) -> dict:
    """One page of the job's selections, optionally of one image and one class of its dataset."""
    query = select(Selection).where(Selection.job_id == job.id)
    if image:
        query = query.where(Selection.image_id == image)
    if class_name:
        query = query.where(Selection.class_name == dataset_class(job, class_name))
    rows, next_cursor = paginate(session, query, (Selection.pk,), cursor, limit)
    return {"items": [selection_out(r) for r in rows], "next_cursor": next_cursor}


def dataset_class(job: Job, asked: str) -> str:
    """The class of the job's dataset that `asked` names, ignoring case as the dataset readers do. A name
    that is none of them is refused (422) with the list, rather than answered with an empty page."""
    classes = job.dataset.classes
    matches = [name for name in classes if name.casefold() == asked.strip().casefold()]
    if not matches:
        raise ApiError(422, f"this job's dataset has no class {asked[:40]!r}; its classes: {', '.join(classes)}")
    return matches[0]


def selection_out(row: Selection) -> SelectionOut:
    return SelectionOut(
        image=row.image_id,
        label=row.label,
        class_name=row.class_name,
        chosen=row.chosen,
        candidates=row.candidates,
        scores=row.scores,
        overridden=row.overridden,
    )


def job_image(session: Session, job: Job, image_id: str) -> Image:
    row = session.scalar(select(Image).where(Image.dataset_id == job.dataset_id, Image.image_id == image_id))
    if row is None:
        raise ApiError(404, f"no image {image_id!r} in this job's dataset; GET /v1/datasets/{job.dataset_id}/images")
    return row


def job_image_out(session: Session, job: Job, image_id: str) -> JobImageOut:
    return _image_views(session, job, [job_image(session, job, image_id)])[0]


def job_images_page(session: Session, job: Job, cursor: str | None, limit: int) -> dict:
    """One page of the job's images in upload order, as GET /v1/jobs/{id}/images/{image} shows each."""
    query = select(Image).where(Image.dataset_id == job.dataset_id)
    rows, next_cursor = paginate(session, query, (Image.pk,), cursor, limit)
    return {"items": _image_views(session, job, rows), "next_cursor": next_cursor}


def _image_views(session: Session, job: Job, rows: list[Image]) -> list[JobImageOut]:
    """Each image's tags, chosen words and result links; the words of all of them in one query."""
    selections = defaultdict(list)
    query = select(Selection).where(Selection.job_id == job.id, Selection.image_id.in_([r.image_id for r in rows]))
    for selection in session.scalars(query.order_by(Selection.pk)):
        selections[selection.image_id].append(selection_out(selection))
    return [_image_view(job, row, selections[row.image_id]) for row in rows]


def _image_view(job: Job, row: Image, selections: list[SelectionOut]) -> JobImageOut:
    failed = job.failed_images.get(row.image_id)
    base = f"/v1/jobs/{job.id}/images/{row.image_id}"
    links = {}
    # The result files exist once the job has succeeded, for the images it did not drop.
    if job.state == JobState.succeeded and not failed:
        links = {"mask": f"{base}/mask.png", "overlay": f"{base}/overlay.png", "cams": f"{base}/cams.png"}
    return JobImageOut(
        image=row.image_id, tags=row.tags, split=row.split, failed=failed, selections=selections, links=links
    )
