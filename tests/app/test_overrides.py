"""Reviewing a job's words and overriding them, and deriving a job from it, over real HTTP on a job
finished as a worker would (tests/app/finished_job.py: per tag of each image a selection with the
candidates [tag, "thing"], the tag chosen; img05 dropped). Classes: square, circle, triangle."""

from __future__ import annotations

import time

import pytest

from app.storage import run_layout
from tests.app.conftest import new_key
from tests.app.finished_job import finish_job
from tests.app.service import FAST_CONFIG, ApiServer, upload

DROPPED = "img05"


def ready_dataset(client, zip_path) -> str:
    """The id of the uploaded dataset, once it is accepted (validated in the background, or at once)."""
    response = upload(client, zip_path)
    assert response.is_success, response.text
    dataset_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while response.json().get("state", "ready") == "validating" and time.monotonic() < deadline:
        time.sleep(0.2)
        response = client.get(f"/v1/datasets/{dataset_id}")
    assert response.json().get("state", "ready") == "ready", response.text
    return dataset_id


@pytest.fixture
def dataset_id(alice, dataset_zip):
    return ready_dataset(alice, dataset_zip)


def new_job(client, dataset_id: str, **extra) -> dict:
    response = client.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "cpu-small", **extra})
    assert response.status_code == 201, response.text
    return response.json()


def finished(settings, client, dataset_id: str) -> str:
    """A succeeded job whose train_cam and select_prompts folders exist, as a derived job needs them."""
    job_id = new_job(client, dataset_id, config=FAST_CONFIG)["id"]
    finish_job(settings, job_id, failed_image=DROPPED)
    layout = run_layout(settings, job_id)
    for stage in ("train_cam", "select_prompts"):
        layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    return job_id


@pytest.fixture
def job_id(settings, alice, dataset_id):
    return finished(settings, alice, dataset_id)


def override(client, job_id: str, name: str, action: str, word: str, image: str | None = None):
    body = {"class": name, "action": action, "word": word, **({"image": image} if image else {})}
    return client.post(f"/v1/jobs/{job_id}/overrides", json=body)


def listed(client, job_id: str) -> list[tuple]:
    response = client.get(f"/v1/jobs/{job_id}/overrides")
    assert response.status_code == 200, response.text
    return [(o["image"], o["class"], o["action"], o["word"]) for o in response.json()]


def test_word_summary_gives_each_words_count_share_and_examples(backend, dataset_zip):
    """On both databases: the examples come from a window function."""
    with ApiServer(backend) as api, api.client(new_key(backend, "alice")) as alice:
        job_id = finished(backend, alice, ready_dataset(alice, dataset_zip))
        assert override(alice, job_id, "square", "use", "block", image="img03").status_code == 201

        summary = alice.get(f"/v1/jobs/{job_id}/words", params={"examples": 2})
        assert summary.status_code == 200, summary.text
        classes = {c["class"]: c for c in summary.json()["classes"]}
        assert list(classes) == ["square", "circle", "triangle"]  # the dataset's order
        circle = classes["circle"]
        assert circle["images"] == 3 and circle["candidates"] == ["circle", "thing"]
        assert circle["words"] == [{"word": "circle", "count": 3, "share": 1.0, "examples": ["img01", "img03"]}]
        # The reviewed job's own words: an override changes them only in a derived job.
        assert [w["word"] for w in classes["square"]["words"]] == ["square"]
        assert [(o["class"], o["word"]) for o in summary.json()["overrides"]] == [("square", "block")]


def test_words_are_refused_until_the_job_has_chosen_them(alice, dataset_id):
    queued = new_job(alice, dataset_id)["id"]
    for response in (alice.get(f"/v1/jobs/{queued}/words"), override(alice, queued, "circle", "use", "ring")):
        assert response.status_code == 409
        assert response.json()["detail"].startswith("job is queued and has no chosen words yet")


def test_overrides_are_stored_canonical_and_a_newer_use_replaces_the_older(alice, job_id):
    created = override(alice, job_id, "CIRCLE", "use", "ring")
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["class"], body["word"], body["image"], body["job_id"]) == ("circle", "ring", None, job_id)
    assert override(alice, job_id, "circle", "use", "Thing", image="img03").json()["word"] == "thing"  # the candidate
    assert override(alice, job_id, "circle", "use", " disc ").status_code == 201
    assert override(alice, job_id, "square", "drop", "thing").status_code == 201
    again = override(alice, job_id, "square", "drop", "THING")
    assert again.status_code == 201 and listed(alice, job_id).count((None, "square", "drop", "thing")) == 1
    assert listed(alice, job_id) == [
        ("img03", "circle", "use", "thing"),
        (None, "circle", "use", "disc"),
        (None, "square", "drop", "thing"),
    ]

    assert alice.delete(f"/v1/jobs/{job_id}/overrides/{again.json()['id']}").status_code == 204
    assert alice.delete(f"/v1/jobs/{job_id}/overrides/{again.json()['id']}").status_code == 404
    assert (None, "square", "drop", "thing") not in listed(alice, job_id)


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (("dogg", "use", "x"), 422, "this job's dataset has no class 'dogg'; its classes: square, circle, triangle"),
        (("circle", "use", "ring", "nope"), 404, "no image 'nope' in this job's dataset"),
        (("circle", "use", "ring", "img00"), 422, "image 'img00' is not tagged 'circle' (its tags: square)"),
        (("square", "use", "block", DROPPED), 409, f"the job dropped image {DROPPED!r} (not a decodable image)"),
        (("circle", "drop", "ring"), 422, "'ring' is not a candidate of class 'circle'; its candidates: circle, thing"),
        (("circle", "drop", "thing", "img01"), 422, "`drop` applies to a whole class"),
        (("circle", "use", "r" * 61), 422, "the word has 61 characters; at most 60"),
        (("circle", "use", "ri\nng"), 422, "the word holds control characters ('\\n')"),
        (("circle", "use", "   "), 422, "the word is empty"),
    ],
)
def test_overrides_that_name_nothing_of_the_job_are_refused(alice, job_id, body, status, detail):
    response = override(alice, job_id, *body)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert listed(alice, job_id) == []


def test_contradicting_overrides_are_refused(alice, job_id):
    assert override(alice, job_id, "circle", "drop", "thing").status_code == 201
    used = override(alice, job_id, "circle", "use", "thing", image="img01")
    assert used.status_code == 409 and "'thing' is dropped for class 'circle'" in used.json()["detail"]
    last = override(alice, job_id, "circle", "drop", "circle")
    assert last.status_code == 409 and "would leave class 'circle' no candidate" in last.json()["detail"]

    use = override(alice, job_id, "square", "use", "square", image="img00").json()
    refused = override(alice, job_id, "square", "drop", "square")
    assert refused.status_code == 409
    assert f"override {use['id']} uses 'square'" in refused.json()["detail"]
    assert f"DELETE /v1/jobs/{job_id}/overrides/{use['id']}" in refused.json()["detail"]


def test_another_key_sees_no_overrides_words_or_parent(api, settings, alice, job_id):
    created = override(alice, job_id, "circle", "use", "ring").json()
    with api.client(new_key(settings, "bob")) as bob:
        base = f"/v1/jobs/{job_id}"
        for response in (
            bob.get(f"{base}/words"),
            bob.get(f"{base}/overrides"),
            bob.post(f"{base}/overrides", json={"class": "circle", "action": "use", "word": "x"}),
            bob.delete(f"{base}/overrides/{created['id']}"),
            bob.post("/v1/jobs", json={"parent_job_id": job_id}),
        ):
            assert response.status_code == 404, response.text
    assert listed(alice, job_id) == [(None, "circle", "use", "ring")]


def test_a_derived_job_records_its_parent_and_every_override_applied(alice, job_id):
    parent = alice.get(f"/v1/jobs/{job_id}").json()
    assert parent["parent_id"] is None
    assert override(alice, job_id, "square", "drop", "thing").status_code == 201
    body = {
        "parent_job_id": job_id,
        "overrides": [{"class": "Circle", "action": "use", "word": "ring"}],
        "config": {"train_irn": {"epochs": 2}},
    }
    response = alice.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    derived = response.json()
    assert (derived["parent_id"], derived["dataset_id"], derived["preset"]) == (
        job_id,
        parent["dataset_id"],
        parent["preset"],
    )
    applied = [
        {"image": None, "class": "square", "action": "drop", "word": "thing"},
        {"image": None, "class": "circle", "action": "use", "word": "ring"},
    ]
    assert derived["config"]["derive"] == {"parent": job_id, "overrides": applied}
    assert derived["config"]["train_irn"]["epochs"] == 2
    same = {k: v for k, v in derived["config"].items() if k not in ("derive", "train_irn")}
    assert same == {k: v for k, v in parent["config"].items() if k not in ("derive", "train_irn")}
    assert listed(alice, job_id) == [(o["image"], o["class"], o["action"], o["word"]) for o in applied]

    # The derived job keeps the list it applied when the parent's changes.
    first = alice.get(f"/v1/jobs/{job_id}/overrides").json()[0]
    assert alice.delete(f"/v1/jobs/{job_id}/overrides/{first['id']}").status_code == 204
    assert alice.get(f"/v1/jobs/{derived['id']}").json()["config"]["derive"]["overrides"] == applied


@pytest.mark.parametrize(
    ("extra", "status", "detail"),
    [
        ({"config": {"train_cam": {"epochs": 3}}}, 422, "keeps the parent's train_cam; change only the stages after"),
        ({"preset": "paper"}, 422, "preset 'paper' differs there"),
        ({"config": {"seed": 9}}, 422, "keeps the parent's seed"),
        ({"config": {"train_pole": {"prompt": "manual"}}}, 422, "keep train_pole.enabled true"),
        ({"synonyms": {"circle": ["ring"]}}, 422, "synonyms choose select_prompts' candidates"),
        ({"config": {"derive": {"parent": "x"}}}, 422, "config.derive is set from parent_job_id"),
        ({"dataset_id": "other"}, 422, "is not the dataset of job"),
        ({"overrides": [{"class": "circle", "action": "drop", "word": "ring"}]}, 422, "not a candidate of class"),
    ],
)
def test_a_derived_job_that_would_change_the_reused_stages_is_refused(alice, job_id, extra, status, detail):
    response = alice.post("/v1/jobs", json={"parent_job_id": job_id, **extra})
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    assert [j["id"] for j in alice.get("/v1/jobs").json()["items"]] == [job_id]
    assert listed(alice, job_id) == []


def test_a_parent_without_its_reused_outputs_or_no_parent_is_refused(alice, dataset_id):
    queued = new_job(alice, dataset_id)["id"]
    response = alice.post("/v1/jobs", json={"parent_job_id": queued})
    assert response.status_code == 409
    assert response.json()["detail"].startswith(f"job {queued!r} is queued and has not finished train_cam and select")
    assert alice.post("/v1/jobs", json={"parent_job_id": "nope"}).status_code == 404
    neither = alice.post("/v1/jobs", json={"preset": "cpu-small"})
    assert neither.status_code == 422 and "give dataset_id, or parent_job_id" in neither.json()["detail"]
    alone = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "overrides": []})
    assert alone.status_code == 422 and "give parent_job_id too" in alone.json()["detail"]


def test_selections_say_whether_they_were_overridden(alice, job_id):
    items = alice.get(f"/v1/jobs/{job_id}/selections").json()["items"]
    assert items and all(item["overridden"] is False for item in items)
