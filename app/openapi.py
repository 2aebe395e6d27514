"""The OpenAPI document as the API really answers: one error body, and every status each operation can give.

FastAPI's generated document advertises its own list-of-errors body for 422 (app.errors answers
`{"detail": ...}`) and nothing for the refusals raised as ApiError. Routes declare the statuses only
they raise with `error_responses(...)`; what an operation's inputs imply is added here, so that no
route can forget it: an API key (401 when missing or revoked), a dataset, job or prediction run id in
the path (404 for ids that are not yours), path or query parameters (400 for a NUL character in them, or a forged
page cursor), a request body (400 when it does not parse), and the 500 any operation may answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.schemas import ErrorOut

ERROR_STATUSES = {
    400: "the request cannot be read: a NUL character in the URL, a body that does not parse, a forged cursor",
    401: "the API key is missing, invalid or revoked",
    404: "no such dataset, job, prediction run, image or export format among yours (another key's are never shown)",
    409: "the dataset, job or prediction run is in a state that refuses this; `detail` says which",
    410: "the file is gone from the server's data directory",
    413: "the upload is larger than the server's limit",
    415: "the upload is not multipart/form-data",
    422: "the request, its config or the uploaded dataset or images are invalid; `detail` says what to fix",
    500: "an unexpected error; `detail` names the incident to look up in the server log",
    503: "the job queue cannot be reached; nothing was created",
}

# Resolved by app.deps among the key's own.
OWNED_ID_PARAMETERS = {("path", "dataset_id"), ("path", "job_id"), ("path", "prediction_id")}

ERROR_REF = {"$ref": f"#/components/schemas/{ErrorOut.__name__}"}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries of the error statuses a route raises itself."""
    return {status: {"model": ErrorOut, "description": ERROR_STATUSES[status]} for status in statuses}


BINARY = {"schema": {"type": "string", "format": "binary"}}


def archive_responses(unbuilt: str) -> dict[int | str, dict[str, Any]]:
    """The responses of an archive route: the zip, 202 while a format `unbuilt` ("the job did not
    export", say) is built, and its errors."""
    from app.schemas import ArchivePendingOut

    return {
        200: {"content": {"application/zip": BINARY}},
        202: {"model": ArchivePendingOut, "description": f"a format {unbuilt}, being built"},
        **error_responses(409, 410, 503),
    }


def install_openapi(app: FastAPI) -> None:
    """Serve FastAPI's document with the error responses completed."""

    def openapi() -> dict[str, Any]:
        # FastAPI caches its document (and rebuilds it when routes change); completing it is idempotent.
        return _declare_errors(FastAPI.openapi(app))

    app.openapi = openapi


def _declare_errors(document: dict[str, Any]) -> dict[str, Any]:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    schemas.update(error_schema.pop("$defs", {}))
    schemas[ErrorOut.__name__] = error_schema
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation["responses"]
            for status in sorted(_implied_statuses(operation)):
                responses.setdefault(str(status), _error_response(status))
            if "422" in responses:  # FastAPI's own names its list-of-errors body, which app.errors replaces
                responses["422"] = _error_response(422)
            operation["responses"] = dict(sorted(responses.items()))
    return document


def _implied_statuses(operation: dict[str, Any]) -> set[int]:
    parameters = {(p["in"], p["name"]) for p in operation.get("parameters", [])}
    statuses = {500}
    if operation.get("security"):
        statuses.add(401)
    if parameters & OWNED_ID_PARAMETERS:
        statuses.add(404)
    if any(location in ("path", "query") for location, _ in parameters) or "requestBody" in operation:
        statuses.add(400)
    return statuses


def _error_response(status: int) -> dict[str, Any]:
    return {"description": ERROR_STATUSES[status], "content": {"application/json": {"schema": ERROR_REF}}}
