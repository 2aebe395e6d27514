"""/v1/datasets: upload (streamed to disk, validated in the background), list, show, images, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from app.dataset_service import remove_dataset, require_ready
from app.deps import CurrentKey, OwnedDataset, PageParams, SessionDep, SettingsDep
from app.models import Dataset, Image, new_id
from app.openapi import error_responses
from app.pagination import paginate
from app.schemas import DatasetOut, ImageOut, Page, SynonymPreviewOut
from app.storage import new_upload_path, receive_file, remove_path
from app.synonym_service import synonym_preview
from app.upload_validation import UploadValidations

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


async def get_validations(request: Request) -> UploadValidations:
    return request.app.state.validations


@router.post(
    "",
    status_code=202,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_BODY,
    responses=error_responses(400, 413, 415, 422),
)
async def upload_dataset(
    request: Request,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    validations: Annotated[UploadValidations, Depends(get_validations)],
) -> Dataset:
    """Upload a .zip in the manifest or VOC layout as the multipart field `file`.

    The answer comes once the file is on disk and its listing checked (400 for an archive refused from it):
    the dataset in state `validating`. Every image is then decoded in the background; poll
    GET /v1/datasets/{dataset_id} until `state` is `ready`, or `invalid` with every problem listed."""
    dataset_id = new_id()
    upload = new_upload_path(settings, ".zip", upload_id=dataset_id)
    try:
        name = await receive_file(request, upload, settings.max_upload_bytes)
        return await run_in_threadpool(validations.accept, session, dataset_id=dataset_id, owner_id=key.id, name=name)
    except BaseException:
        remove_path(upload)
        raise


@router.get("", response_model=Page[DatasetOut])
def list_datasets(key: CurrentKey, session: SessionDep, page: PageParams) -> dict:
    query = select(Dataset).where(Dataset.owner_id == key.id)
    items, next_cursor = paginate(session, query, (Dataset.created_at, Dataset.id), *page, descending=True)
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset: OwnedDataset) -> Dataset:
    return dataset


@router.get("/{dataset_id}/images", response_model=Page[ImageOut], responses=error_responses(409))
def list_images(dataset: OwnedDataset, session: SessionDep, page: PageParams) -> dict:
    """The dataset's images with their tags and split, in upload order; 409 until the dataset is ready."""
    require_ready(dataset)
    query = select(Image).where(Image.dataset_id == dataset.id)
    rows, next_cursor = paginate(session, query, (Image.pk,), *page)
    items = [ImageOut(id=r.image_id, file=r.file, tags=r.tags, split=r.split, has_mask=r.has_mask) for r in rows]
    return {"items": items, "next_cursor": next_cursor}


@router.get("/{dataset_id}/synonyms", response_model=SynonymPreviewOut, responses=error_responses(409))
def preview_synonyms(
    dataset: OwnedDataset,
    settings: SettingsDep,
    num_synonyms: Annotated[
        int | None, Query(ge=0, le=100, description="m, as select_prompts.num_synonyms; default: the preset's")
    ] = None,
) -> SynonymPreviewOut:
    """The candidate words of each class before any job uses them, source by source: the dataset's
    synonyms.csv, pole's built-in table, WordNet and the language model (POLE_SYNONYM_LLM_URL), and
    which of them a job of the server's default preset takes. The language model is asked as a job asks
    it (within POLE_SYNONYM_LLM_TIMEOUT_SECONDS, through the same cache, so a job then uses the words
    shown); when it fails, its entry holds the error instead. 409 until the dataset is ready."""
    return synonym_preview(settings, dataset, num_synonyms)


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
    still queued or running refuses it either way; cancel the job, or wait for it or the run to end.
    A dataset still validating has no jobs: deleting it cancels the validation, and its files go as
    soon as the validation notices (within a second once it has started)."""
    remove_dataset(session, settings, dataset, cascade=cascade)
    return Response(status_code=204)
