"""The signed-in key's datasets, and each dataset's images with their tags and thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.dashboard.auth import SignedIn
from app.dashboard.pictures import thumbnail_png
from app.dashboard.templates import page
from app.deps import SessionDep, SettingsDep, get_owned_dataset
from app.errors import ApiError
from app.models import Image
from app.routes.datasets import list_datasets, list_images
from app.routes.jobs import list_jobs
from app.storage import dataset_dir

router = APIRouter()

Cursor = Annotated[str | None, Query(max_length=1024)]
PRIVATE_IMAGE = {"Cache-Control": "private, max-age=3600"}


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(
    request: Request, key: SignedIn, session: SessionDep, settings: SettingsDep, cursor: Cursor = None
) -> HTMLResponse:
    listed = list_datasets(key, session, (cursor, settings.page_size))
    return page(request, "datasets.html", key=key, datasets=listed["items"], next_cursor=listed["next_cursor"])


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(
    request: Request, dataset_id: str, key: SignedIn, session: SessionDep, settings: SettingsDep, cursor: Cursor = None
) -> HTMLResponse:
    dataset = get_owned_dataset(dataset_id, key, session)
    # Images are listed once the upload has passed its checks; until then the page shows its state.
    ready = dataset.state == "ready"
    images = (
        list_images(dataset, session, (cursor, settings.page_size)) if ready else {"items": [], "next_cursor": None}
    )
    jobs = list_jobs(key, session, (None, settings.page_size), dataset_id=dataset.id)["items"]
    return page(
        request,
        "dataset.html",
        key=key,
        dataset=dataset,
        images=images["items"],
        next_cursor=images["next_cursor"],
        jobs=jobs,
    )


@router.get("/datasets/{dataset_id}/images/{image_id}/thumbnail.png")
def dataset_thumbnail(
    dataset_id: str, image_id: str, key: SignedIn, session: SessionDep, settings: SettingsDep
) -> Response:
    dataset = get_owned_dataset(dataset_id, key, session)
    row = session.scalar(select(Image).where(Image.dataset_id == dataset.id, Image.image_id == image_id))
    if row is None:
        raise ApiError(404, f"no image {image_id[:80]!r} in this dataset")
    picture = thumbnail_png(dataset_dir(settings, dataset.path) / row.file, settings.max_image_pixels)
    return Response(picture, media_type="image/png", headers=PRIVATE_IMAGE)
