"""A Python client of the pole REST API.

    from pole.client import Client, PoleApiError

    with Client("http://127.0.0.1:8000") as pole:  # the key from POLE_API_KEY, or key="pole_..."
        dataset = pole.upload_dataset("shapes/", progress=True)  # a folder is zipped first; returned once checked
        job = pole.create_job(dataset["id"], preset="cpu-small", idempotency_key="shapes-1")
        job = pole.wait_for_job(job["id"], progress=True)  # a bar: stage, its fraction, overall progress
        if job["state"] == "succeeded":
            pole.download_archive(job["id"], "masks.zip", progress=True)
            pole.download_archive(job["id"], "masks_coco.zip", export_format="coco")  # built on demand
            for selection in pole.list_selections(job["id"]):
                print(selection["image"], selection["class"], selection["chosen"])
            # a word corrected, then a job derived from this one that re-runs from train_pole with it
            pole.add_override(job["id"], "circle", "use", "disc")
            derived = pole.create_job(parent_job_id=job["id"])
            # new images, no tags: labelled by the segmenter of a job run with train_seg.enabled
            run = pole.create_prediction(job["id"], "new_images.zip")
            if pole.wait_for_prediction(job["id"], run["id"])["state"] == "succeeded":
                pole.download_prediction_archive(job["id"], run["id"], "predicted.zip", export_format="coco")

Every method returns the API's JSON as plain dicts. A refusal (any 4xx or 5xx answer) raises
PoleApiError with the HTTP status, the API's `detail` and, for a dataset, its `problems`; a service
that cannot be reached raises httpx's own transport errors. Lists are iterators that fetch the next
page, by `next_cursor`, only when the previous one is used up.

`progress` on a file sent or received: True draws a bar on stderr (pole/progress.py); a callable is
called as progress(bytes done, bytes in all or None) after each chunk. On a wait: True draws the bar
of stages; a callable is called with each state polled.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path

import httpx

FINAL_STATES = ("succeeded", "failed", "cancelled")
API_KEY_VARIABLE = "POLE_API_KEY"
DEFAULT_TIMEOUT_S = 120.0  # an older API unpacks and checks an upload before it answers
DEFAULT_RETRY_AFTER_S = 5.0  # the wait before asking again for an archive being built, if the API names none
SHOWN_PROBLEMS = 5  # problems of an invalid dataset quoted in the error's message; all are in `problems`

ByteProgress = bool | Callable[[int, int | None], None]
StateProgress = bool | Callable[[dict], None]


class PoleApiError(RuntimeError):
    """The API refused a request: `status` is the HTTP status, `detail` the API's words on what to fix,
    `problems` each problem of a refused dataset ({"file", "line", "message"}; empty otherwise)."""

    def __init__(self, action: str, status: int, path: str, detail: str, problems: list[dict] | None = None):
        super().__init__(f"{action}: HTTP {status} from {path}: {detail}")
        self.action, self.status, self.path, self.detail = action, status, path, detail
        self.problems = problems or []


class DatasetInvalid(PoleApiError):
    """The upload was taken, then refused by the checks the server runs in the background. Raised as the
    422 that a server checking uploads before it answers gives, so one `except PoleApiError` serves both."""

    def __init__(self, dataset: dict):
        problems = dataset.get("problems") or []
        shown = "; ".join(problem_text(p) for p in problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        detail = f"dataset {dataset['id']} is invalid: {len(problems)} problem(s): {shown}{more}"
        super().__init__("upload", 422, f"/v1/datasets/{dataset['id']}", detail, problems)
        self.dataset = dataset


class Client:
    """One API key's view of a pole service at `base_url`; use as a context manager, or call close().

    `key` None reads the key from the POLE_API_KEY environment variable."""

    def __init__(self, base_url: str, key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT_S):
        key = key or os.environ.get(API_KEY_VARIABLE)
        if not key:
            raise ValueError(
                f"no API key: pass key=, or set {API_KEY_VARIABLE} (an operator creates one with "
                "`pole keys create --name NAME` on the server)"
            )
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)
        self._owns_http = True

    @classmethod
    def over(cls, http: httpx.Client) -> Client:
        """A client sending through `http`, whose base URL and Authorization header it uses as they are;
        closing the client leaves `http` open, for its owner to close."""
        client = object.__new__(cls)
        client.http, client._owns_http = http, False
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    # --- datasets --------------------------------------------------------------------------------

    def upload_dataset(
        self, path: str | Path, *, wait: bool = True, progress: ByteProgress = False, poll_seconds: float = 0.5
    ) -> dict:
        """Upload a dataset (manifest or VOC layout): a .zip, streamed from disk, or a folder, zipped to a
        temporary file first. With `wait`, returns it once the server has checked it (`ready`), and raises
        DatasetInvalid, with every problem, when the checks refuse it; otherwise as the API first answers
        (`validating` on a server that checks uploads in the background). `progress=True` also draws the
        server's checks."""
        with ExitStack() as stack:
            path = Path(path)
            if path.is_dir():
                from ml.data.archive import zip_folder

                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pole-upload-")))
                path = zip_folder(path, folder / f"{path.resolve().name}.zip")
            dataset = _json(self.send_dataset(path, progress=progress), "upload")
        if dataset.get("state") == "invalid":
            raise DatasetInvalid(dataset)
        if wait and dataset.get("state") == "validating":
            return self.wait_for_dataset(dataset["id"], progress=progress is True, poll_seconds=poll_seconds)
        return dataset

    def send_dataset(self, zip_path: str | Path, *, progress: ByteProgress = False) -> httpx.Response:
        """POST a dataset .zip, streamed from disk, and return the API's answer as it is (201 or 202 with the
        dataset, or a refusal): for a caller that looks at the answer itself. upload_dataset does the rest."""
        return self._send_file("/v1/datasets", zip_path, "application/zip", progress)

    def get_dataset(self, dataset_id: str) -> dict:
        return _json(self.http.get(f"/v1/datasets/{dataset_id}"), "dataset")

    def wait_for_dataset(
        self,
        dataset_id: str,
        *,
        progress: StateProgress = False,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
    ) -> dict:
        """The dataset once the server's checks have ended: returned when `ready`; DatasetInvalid, with its
        problems, when `invalid`. A dataset from a server without background checks is ready at once."""
        checked = self._wait(lambda: self.get_dataset(dataset_id), _checked, progress, poll_seconds, timeout)
        if checked.get("state") == "invalid":
            raise DatasetInvalid(checked)
        return checked

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
        dataset_id: str | None = None,
        preset: str | None = None,
        config: dict | None = None,
        *,
        synonyms: dict[str, list[str]] | None = None,
        parent_job_id: str | None = None,
        overrides: list[dict] | None = None,
        idempotency_key: str | None = None,
    ) -> dict:
        """Queue a pipeline run on a dataset, or one derived from job `parent_job_id` (its words, with the
        overrides stored on it and `overrides` added first: dicts as add_override takes them, "class"
        for the class name). With an `idempotency_key`, sending the same request again returns the job
        the first one created instead of a second job (and the same key with another body is a 409)."""
        body: dict = {}
        for name, value in (
            ("dataset_id", dataset_id),
            ("parent_job_id", parent_job_id),
            ("overrides", overrides),
            ("preset", preset),
            ("config", config),
            ("synonyms", synonyms),
        ):
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

    def wait_for_job(
        self, job_id: str, *, progress: StateProgress = False, poll_seconds: float = 0.5, timeout: float | None = None
    ) -> dict:
        """The job once it has ended (succeeded, failed or cancelled); TimeoutError after `timeout` seconds."""
        return self._wait(lambda: self.get_job(job_id), _ended, progress, poll_seconds, timeout)

    # --- what a succeeded job produced -------------------------------------------------------------

    def download_archive(
        self, job_id: str, target: str | Path, export_format: str | None = None, *, progress: ByteProgress = False
    ) -> Path:
        """Stream the job's mask archive (.zip) to `target`, in `export_format` (any of the server's export
        formats; default: the job's first; another is built on the server first, waited for here)."""
        return self._download_archive(f"/v1/jobs/{job_id}/archive", target, export_format, progress)

    def get_metrics(self, job_id: str) -> dict:
        return _json(self.http.get(f"/v1/jobs/{job_id}/metrics"), "metrics")

    def list_selections(
        self, job_id: str, image: str | None = None, class_name: str | None = None, page_size: int | None = None
    ) -> Iterator[dict]:
        """The word chosen for each (image, class) with every candidate's score, optionally filtered."""
        filters = {name: value for name, value in (("image", image), ("class", class_name)) if value}
        return self._pages(f"/v1/jobs/{job_id}/selections", "selections", page_size, filters)

    # --- reviewing the chosen words: overrides, applied by a job derived from this one --------------

    def get_words(self, job_id: str) -> dict:
        """Per class, each chosen word with its share of the class's images, and the overrides so far."""
        return _json(self.http.get(f"/v1/jobs/{job_id}/words"), "words")

    def list_overrides(self, job_id: str) -> list[dict]:
        """The job's word overrides, oldest first (the order a derived job applies them in)."""
        return _json(self.http.get(f"/v1/jobs/{job_id}/overrides"), "overrides")

    def add_override(self, job_id: str, class_name: str, action: str, word: str, image: str | None = None) -> dict:
        """`action` "use": `word` for `image`'s class, or for every image of the class when `image` is None;
        "drop": never `word` for the class. Applied by a job derived from this one (create_job)."""
        body = {"class": class_name, "action": action, "word": word, **({"image": image} if image else {})}
        return _json(self.http.post(f"/v1/jobs/{job_id}/overrides", json=body), "override")

    def remove_override(self, job_id: str, override_id: int) -> None:
        _check(self.http.delete(f"/v1/jobs/{job_id}/overrides/{override_id}"), "remove override")

    # --- predictions: new images labelled by a job's trained segmenter, no tags needed -----------------

    def create_prediction(self, job_id: str, path: str | Path, *, progress: ByteProgress = False) -> dict:
        """Upload one image or a .zip of images, streamed from disk, for the segmenter of job `job_id` (a
        job run with train_seg.enabled; 409 otherwise) to label; returns the queued prediction run."""
        response = self._send_file(f"/v1/jobs/{job_id}/predictions", path, "application/octet-stream", progress)
        return _json(response, "prediction")

    def get_prediction(self, job_id: str, prediction_id: str) -> dict:
        return _json(self.http.get(f"/v1/jobs/{job_id}/predictions/{prediction_id}"), "prediction")

    def list_predictions(self, job_id: str, page_size: int | None = None) -> Iterator[dict]:
        """The job's prediction runs, newest first."""
        return self._pages(f"/v1/jobs/{job_id}/predictions", "predictions", page_size)

    def follow_prediction(self, job_id: str, prediction_id: str, poll_seconds: float = 0.5) -> Iterator[dict]:
        """Yield the prediction run every `poll_seconds` until it has ended, its final state last."""
        return _follow(lambda: self.get_prediction(job_id, prediction_id), poll_seconds)

    def wait_for_prediction(
        self,
        job_id: str,
        prediction_id: str,
        *,
        progress: StateProgress = False,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
    ) -> dict:
        """The prediction run once it has ended (succeeded or failed)."""
        return self._wait(lambda: self.get_prediction(job_id, prediction_id), _ended, progress, poll_seconds, timeout)

    def download_prediction_archive(
        self,
        job_id: str,
        prediction_id: str,
        target: str | Path,
        export_format: str | None = None,
        *,
        progress: ByteProgress = False,
    ) -> Path:
        """Stream the run's masks (.zip) to `target`, in `export_format` (default: the one the run wrote;
        another is built on the server first, waited for here); returns `target`."""
        path = f"/v1/jobs/{job_id}/predictions/{prediction_id}/archive"
        return self._download_archive(path, target, export_format, progress)

    # --- the ways of talking to the API --------------------------------------------------------------

    def _send_file(self, path: str, file: str | Path, content_type: str, progress: ByteProgress) -> httpx.Response:
        """POST `file` as the multipart field `file`, read from disk chunk by chunk as httpx sends it."""
        file = Path(file)
        with _byte_progress(progress, f"upload {file.name}") as report, _ReportingFile(file, report) as f:
            return self.http.post(path, files={"file": (file.name, f, content_type)})

    def _download_archive(
        self, path: str, target: str | Path, export_format: str | None, progress: ByteProgress
    ) -> Path:
        """Stream the archive at `path` to `target`. A format the run did not write is answered 202 while a
        worker builds it: asked for again after the answer's Retry-After seconds, until the zip comes."""
        target = Path(target)
        params = {"format": export_format} if export_format else {}
        with _byte_progress(progress, f"download {target.name}") as report:
            while True:
                with self.http.stream("GET", path, params=params) as response:
                    if response.status_code != 202:
                        if response.is_error:
                            response.read()
                            _check(response, "archive")
                        _save(response, target, report)
                        return target
                    wait = float(response.headers.get("Retry-After", DEFAULT_RETRY_AFTER_S))
                time.sleep(wait)

    def _wait(
        self,
        get: Callable[[], dict],
        done: Callable[[dict], bool],
        progress: StateProgress,
        poll_seconds: float,
        timeout: float | None,
    ) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        with _state_progress(progress) as report:
            while True:
                current = get()
                report(current)
                if done(current):
                    return current
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"still {current['state']} after {timeout:g} s: {current['id']}")
                time.sleep(poll_seconds)

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


class _ReportingFile(io.FileIO):
    """A file opened for reading that calls `report(bytes read so far, size)` after each read: httpx reads
    an upload chunk by chunk as it sends it, so this is the upload's progress."""

    def __init__(self, path: Path, report: Callable[[int, int | None], None]):
        super().__init__(path, "rb")
        self.size = os.fstat(self.fileno()).st_size
        self.report = report

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        self.report(self.tell(), self.size)
        return chunk


def _save(response: httpx.Response, target: Path, report: Callable[[int, int | None], None]) -> None:
    total = int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
    with open(target, "wb") as f:
        for chunk in response.iter_bytes():
            f.write(chunk)
            report(response.num_bytes_downloaded, total)


def _byte_progress(progress: ByteProgress, description: str) -> AbstractContextManager[Callable]:
    if progress is True:
        from pole.progress import transfer_bar

        return transfer_bar(description)
    return nullcontext(progress or _ignore)


def _state_progress(progress: StateProgress) -> AbstractContextManager[Callable]:
    if progress is True:
        from pole.progress import state_bar

        return state_bar()
    return nullcontext(progress or _ignore)


def _ignore(*_) -> None:
    return None


def _ended(state: dict) -> bool:
    return state["state"] in FINAL_STATES


def _checked(dataset: dict) -> bool:
    """The server's checks of the dataset have ended (a server without background checks has no state)."""
    return dataset.get("state", "ready") != "validating"


def _follow(get: Callable[[], dict], poll_seconds: float) -> Iterator[dict]:
    """Yield `get()` every `poll_seconds` until what it returns has ended; its final state last."""
    while True:
        current = get()
        yield current
        if _ended(current):
            return
        time.sleep(poll_seconds)


def problem_text(problem: dict) -> str:
    """ "file:line: message" of one problem of a refused dataset."""
    where = problem.get("file") or "the dataset"
    if problem.get("line"):
        where += f":{problem['line']}"
    return f"{where}: {problem.get('message', '')}"


def _check(response: httpx.Response, action: str) -> None:
    if not response.is_error:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body["detail"] if isinstance(body, dict) and "detail" in body else response.text
    problems = body.get("problems") if isinstance(body, dict) else None
    raise PoleApiError(action, response.status_code, response.request.url.path, str(detail), problems)


def _json(response: httpx.Response, action: str) -> dict:
    _check(response, action)
    return response.json()
