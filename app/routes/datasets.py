"""/v1/datasets: upload (streamed, validated before anything is kept), list, show, images, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app.dataset_service import remove_dataset
from app.deps import CurrentKey, OwnedDataset, PageParams, SessionDep, SettingsDep
from app.ingest import store_dataset
from app.models import Dataset, Image
from app.openapi import error_responses
from app.pagination import paginate
from app.schemas import DatasetOut, ImageOut, Page
from app.storage import new_upload_path, receive_file, remove_path

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": "the dataset .zip"}},
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_BODY,
    responses=error_responses(400, 413, 415, 422),
)
async def upload_dataset(request: Request, key: CurrentKey, session: SessionDep, settings: SettingsDep) -> Dataset:
    """Upload a .zip in the manifest or VOC layout as the multipart field `file`."""
    upload = new_upload_path(settings, ".zip")
    try:
        name = await receive_file(request, upload, settings.max_upload_bytes)
        return await run_in_threadpool(store_dataset, session, settings, owner_id=key.id, upload=upload, name=name)
    finally:
        remove_path(upload)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(key: CurrentKey, session: SessionDep, page: PageParams) -> dict:
    query = select(Dataset).where(Dataset.owner_id == key.id)
    items, next_cursor = paginate(session, query, (Dataset.created_at, Dataset.id), *page, descending=True)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset: OwnedDataset) -> Dataset:
    return dataset


@router.get("/{dataset_id}/images", response_model=Page[ImageOut])
def list_images(dataset: OwnedDataset, session: SessionDep, page: PageParams) -> dict:
    query = select(Image).where(Image.dataset_id == dataset.id)
    rows, next_cursor = paginate(session, query, (Image.pk,), *page)
    items = [ImageOut(id=r.image_id, file=r.file, tags=r.tags, split=r.split, has_mask=r.has_mask) for r in rows]
    return {"items": items, "next_cursor": next_cursor}


@router.delete("/{dataset_id}", status_code=204, responses=error_responses(409))
def delete_dataset(
    dataset: OwnedDataset,
    session: SessionDep,
    settings: SettingsDep,
    cascade: Annotated[bool, Query(description="also delete the dataset's finished jobs and their results")] = False,
) -> Response:
    """Delete the dataset and its images. Refused (409) while it has jobs, saying how many: with
    `?cascade=true` its finished jobs go too, with their results (archives, masks, run folders) and
    the prediction runs made with their segmenters, which the refusal counts. A job or prediction run
    still queued or running refuses it either way; cancel the job, or wait for it or the run to end."""
    remove_dataset(session, settings, dataset, cascade=cascade)
    return Response(status_code=204)
