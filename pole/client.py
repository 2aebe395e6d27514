"""A Python client of the pole REST API.

    from pole.client import PoleApiError, PoleClient

    with PoleClient("http://127.0.0.1:8000", key="pole_...") as pole:
        dataset = pole.upload_dataset("shapes.zip")
        job = pole.create_job(dataset["id"], preset="cpu-small", idempotency_key="shapes-1")
        for job in pole.follow_job(job["id"]):
            print(job["state"], f"{job['progress']:.0%}")
        if job["state"] == "succeeded":
            pole.download_archive(job["id"], "masks.zip")
            for selection in pole.list_selections(job["id"]):
                print(selection["image"], selection["class"], selection["chosen"])
            # new images, no tags: labelled by the segmenter of a job run with train_seg.enabled
            run = pole.create_prediction(job["id"], "new_images.zip")
            if pole.wait_for_prediction(job["id"], run["id"])["state"] == "succeeded":
                pole.download_prediction_archive(job["id"], run["id"], "predicted.zip", export_format="coco")

Every method returns the API's JSON as plain dicts. A refusal (any 4xx or 5xx answer) raises
PoleApiError with the HTTP status and the API's `detail`; a service that cannot be reached raises
httpx's own transport errors. Lists are iterators that fetch the next page, by `next_cursor`, only
when the previous one is used up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

FINAL_STATES = ("succeeded", "failed", "cancelled")
DEFAULT_TIMEOUT_S = 120.0  # an upload is unpacked and checked before the API answers
DEFAULT_RETRY_AFTER_S = 5.0  # the wait before asking again for an archive being built, if the API names none


class PoleApiError(RuntimeError):
    """The API refused a request: `status` is the HTTP status, `detail` the API's words on what to fix."""

    def __init__(self, action: str, status: int, path: str, detail: str):
        super().__init__(f"{action}: HTTP {status} from {path}: {detail}")
        self.action, self.status, self.path, self.detail = action, status, path, detail


class PoleClient:
    """One API key's view of a pole service at `base_url`; use as a context manager, or call close()."""

    def __init__(self, base_url: str, key: str, *, timeout: float = DEFAULT_TIMEOUT_S):
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)

    def __enter__(self) -> PoleClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # --- datasets --------------------------------------------------------------------------------

    def upload_dataset(self, zip_path: str | Path) -> dict:
        """Upload a dataset .zip (manifest or VOC layout); returns the stored dataset."""
        zip_path = Path(zip_path)
        with open(zip_path, "rb") as f:
            files = {"file": (zip_path.name, f, "application/zip")}
            return _json(self.http.post("/v1/datasets", files=files), "upload")

    def get_dataset(self, dataset_id: str) -> dict:
        return _json(self.http.get(f"/v1/datasets/{dataset_id}"), "dataset")

    def list_datasets(self, page_size: int | None = None) -> Iterator[dict]:
        """Your datasets, newest first."""
        return self._pages("/v1/datasets", "datasets", page_size)

    def list_images(self, dataset_id: str, page_size: int | None = None) -> Iterator[dict]:
        """A dataset's images with their tags and split, in upload order."""
        return self._pages(f"/v1/datasets/{dataset_id}/images", "images", page_size)

    def delete_dataset(self, dataset_id: str, cascade: bool = False) -> None:
        """Delete a dataset. Refused (409) while it has jobs, unless `cascade`: then its finished jobs
        and their results go with it. A job still queued or running refuses it either way."""
        params = {"cascade": "true"} if cascade else {}
        _check(self.http.delete(f"/v1/datasets/{dataset_id}", params=params), "delete dataset")

    # --- jobs ------------------------------------------------------------------------------------

    def create_job(
        self,
        dataset_id: str,
        preset: str | None = None,
        config: dict | None = None,
        *,
        synonyms: dict[str, list[str]] | None = None,
        idempotency_key: str | None = None,
    ) -> dict:
        """Queue a pipeline run. With an `idempotency_key`, sending the same request again returns the
        job the first one created instead of a second job (and the same key with another body is a 409)."""
        body: dict = {"dataset_id": dataset_id}
        for name, value in (("preset", preset), ("config", config), ("synonyms", synonyms)):
            if value is not None:
                body[name] = value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return _json(self.http.post("/v1/jobs", json=body, headers=headers), "job")

    def get_job(self, job_id: str) -> dict:
        return _json(self.http.get(f"/v1/jobs/{job_id}"), "job")

    def list_jobs(
        self, dataset_id: str | None = None, state: str | None = None, page_size: int | None = None
    ) -> Iterator[dict]:
        """Your jobs, newest first, optionally only those of one dataset or in one state."""
        filters = {name: value for name, value in (("dataset_id", dataset_id), ("state", state)) if value}
        return self._pages("/v1/jobs", "jobs", page_size, filters)

    def cancel_job(self, job_id: str) -> dict:
        """A queued job ends at once; a running one at its next batch boundary (follow it to see when)."""
        return _json(self.http.post(f"/v1/jobs/{job_id}/cancel"), "cancel")

    def follow_job(self, job_id: str, poll_seconds: float = 0.5) -> Iterator[dict]:
        """Yield the job every `poll_seconds` until it has ended; the last one yielded is its final state."""
        return _follow(lambda: self.get_job(job_id), poll_seconds)

    # --- what a succeeded job produced -------------------------------------------------------------

    def download_archive(self, job_id: str, target: str | Path, export_format: str | None = None) -> Path:
        """Stream the job's mask archive (.zip) to `target`, in `export_format` (default: the job's first
        export format; another is built on the server first, waited for here); returns `target`."""
        return self._download_archive(f"/v1/jobs/{job_id}/archive", target, export_format)

    def get_metrics(self, job_id: str) -> dict:
        return _json(self.http.get(f"/v1/jobs/{job_id}/metrics"), "metrics")

    def list_selections(
        self, job_id: str, image: str | None = None, class_name: str | None = None, page_size: int | None = None
    ) -> Iterator[dict]:
        """The word chosen for each (image, class) with every candidate's score, optionally filtered."""
        filters = {name: value for name, value in (("image", image), ("class", class_name)) if value}
        return self._pages(f"/v1/jobs/{job_id}/selections", "selections", page_size, filters)

    # --- predictions: new images labelled by a job's trained segmenter, no tags needed -----------------

    def create_prediction(self, job_id: str, path: str | Path) -> dict:
        """Upload one image or a .zip of images, streamed from disk, for the segmenter of job `job_id` (a
        job run with train_seg.enabled; 409 otherwise) to label; returns the queued prediction run."""
        path = Path(path)
        with open(path, "rb") as f:
            files = {"file": (path.name, f, "application/octet-stream")}
            return _json(self.http.post(f"/v1/jobs/{job_id}/predictions", files=files), "prediction")

    def get_prediction(self, job_id: str, prediction_id: str) -> dict:
        return _json(self.http.get(f"/v1/jobs/{job_id}/predictions/{prediction_id}"), "prediction")

    def list_predictions(self, job_id: str, page_size: int | None = None) -> Iterator[dict]:
        """The job's prediction runs, newest first."""
        return self._pages(f"/v1/jobs/{job_id}/predictions", "predictions", page_size)

    def follow_prediction(self, job_id: str, prediction_id: str, poll_seconds: float = 0.5) -> Iterator[dict]:
        """Yield the prediction run every `poll_seconds` until it has ended, its final state last."""
        return _follow(lambda: self.get_prediction(job_id, prediction_id), poll_seconds)

    def wait_for_prediction(self, job_id: str, prediction_id: str, poll_seconds: float = 0.5) -> dict:
        """The prediction run once it has ended (succeeded or failed)."""
        *_, final = self.follow_prediction(job_id, prediction_id, poll_seconds)
        return final

    def download_prediction_archive(
        self, job_id: str, prediction_id: str, target: str | Path, export_format: str | None = None
    ) -> Path:
        """Stream the run's masks (.zip) to `target`, in `export_format` (default: the one the run wrote;
        another is built on the server first, waited for here); returns `target`."""
        path = f"/v1/jobs/{job_id}/predictions/{prediction_id}/archive"
        return self._download_archive(path, target, export_format)

    def _download_archive(self, path: str, target: str | Path, export_format: str | None) -> Path:
        """Stream the archive at `path` to `target`. A format the run did not write is answered 202 while a
        worker builds it: asked for again after the answer's Retry-After seconds, until the zip comes."""
        target = Path(target)
        params = {"format": export_format} if export_format else {}
        while True:
            with self.http.stream("GET", path, params=params) as response:
                if response.status_code != 202:
                    if response.is_error:
                        response.read()
                        _check(response, "archive")
                    with open(target, "wb") as f:
                        for chunk in response.iter_bytes():
                            f.write(chunk)
                    return target
                wait = float(response.headers.get("Retry-After", DEFAULT_RETRY_AFTER_S))
            time.sleep(wait)

    def _pages(self, path: str, action: str, page_size: int | None, filters: dict | None = None) -> Iterator[dict]:
        """The items of every page of a list; `page_size` None leaves the size to the server."""
        params = {**(filters or {}), **({"limit": page_size} if page_size else {})}
        cursor = None
        while True:
            page = _json(self.http.get(path, params={**params, **({"cursor": cursor} if cursor else {})}), action)
            yield from page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return


def _follow(get: Callable[[], dict], poll_seconds: float) -> Iterator[dict]:
    """Yield `get()` every `poll_seconds` until what it returns has ended; its final state last."""
    while True:
        current = get()
        yield current
        if current["state"] in FINAL_STATES:
            return
        time.sleep(poll_seconds)


def _check(response: httpx.Response, action: str) -> None:
    if not response.is_error:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body["detail"] if isinstance(body, dict) and "detail" in body else response.text
    raise PoleApiError(action, response.status_code, response.request.url.path, str(detail))


def _json(response: httpx.Response, action: str) -> dict:
    _check(response, action)
    return response.json()
