"""A job's chosen words and per-image views over real HTTP, on a job finished as a worker would
(tests/app/finished_job.py: a selection per tag of each image, img05 dropped)."""

from __future__ import annotations

import pytest

from tests.app.finished_job import finish_job
from tests.app.service import upload

DROPPED = "img05"


@pytest.fixture
def dataset_id(alice, dataset_zip):
    response = upload(alice, dataset_zip)
    assert response.status_code == 200 and response.json()["state"] == "ready", response.text
    return response.json()["id"]


def new_job(client, dataset_id: str) -> str:
    response = client.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture
def finished_job(alice, settings, dataset_id):
    job_id = new_job(alice, dataset_id)
    finish_job(settings, job_id, failed_image=DROPPED)
    return job_id


def all_pages(client, path: str, **params) -> list[dict]:
    items, cursor = [], None
    while True:
        page = client.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


@pytest.mark.parametrize("asked", ["circle", "CIRCLE", "Circle"])
def test_selections_of_a_class_match_it_in_any_case_page_by_page(alice, finished_job, asked):
    selections = all_pages(alice, f"/v1/jobs/{finished_job}/selections", **{"class": asked, "limit": 1})
    assert [s["image"] for s in selections] == ["img01", "img03", "img04"]
    assert {s["class"] for s in selections} == {"circle"}


def test_a_class_the_dataset_lacks_is_refused_with_its_classes(alice, finished_job):
    refused = alice.get(f"/v1/jobs/{finished_job}/selections", params={"class": "dogg"})
    assert refused.status_code == 422
    assert refused.json()["detail"] == "this job's dataset has no class 'dogg'; its classes: square, circle, triangle"


def test_a_succeeded_jobs_images_are_listed_page_by_page_as_each_is_shown(alice, finished_job, dataset_id):
    listed = all_pages(alice, f"/v1/jobs/{finished_job}/images", limit=4)
    image_ids = [image["id"] for image in all_pages(alice, f"/v1/datasets/{dataset_id}/images")]
    assert [image["image"] for image in listed] == image_ids
    assert listed == [alice.get(f"/v1/jobs/{finished_job}/images/{image}").json() for image in image_ids]
    dropped = next(image for image in listed if image["image"] == DROPPED)
    assert dropped["failed"] and dropped["links"] == {}
    kept = next(image for image in listed if image["image"] == "img03")
    assert kept["failed"] is None and [s["class"] for s in kept["selections"]] == ["square", "circle"]
    for link in kept["links"].values():
        result = alice.get(link)
        assert result.status_code == 200 and result.headers["content-type"] == "image/png", link


def test_a_job_not_succeeded_yet_lists_its_images_without_result_links(alice, dataset_id):
    job_id = new_job(alice, dataset_id)
    listed = alice.get(f"/v1/jobs/{job_id}/images").json()["items"]
    assert len(listed) == 6
    assert all(image["links"] == {} and image["failed"] is None and image["selections"] == [] for image in listed)


def test_another_keys_job_images_are_not_found(alice, bob, finished_job):
    refused = bob.get(f"/v1/jobs/{finished_job}/images")
    assert refused.status_code == 404 and "GET /v1/jobs lists yours" in refused.json()["detail"]
