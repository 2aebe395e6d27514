"""GET /v1/datasets/{id}/synonyms: each class's words, source by source, the language model's included,
before a job uses them; the model is a real HTTP server speaking the chat completions protocol
(tests/chat_server.py) and the API is uvicorn on a free port."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from ml.synonym_llm import ask_synonyms
from ml.synonyms import wordnet_words
from tests.app.conftest import new_key
from tests.app.service import ApiServer, make_dataset_zip, make_settings, small_dataset, upload
from tests.chat_server import ChatServer, closed_port_url

KEY = "sk-preview-41b7d2e09c"
WORDS = {"square": ["quadrilateral", "block"], "circle": ["round shape", "disc"], "triangle": ["trigon", "wedge"]}
TIMEOUT = 1.0


@pytest.fixture
def chat():
    with ChatServer(WORDS, delay=5 * TIMEOUT) as server:
        yield server


def dataset_with_synonyms(tmp_path):
    folder = small_dataset(tmp_path / "small")
    (folder / "synonyms.csv").write_text("class,word\nsquare,box\ntriangle\n")  # triangle: no synonyms, on purpose
    return make_dataset_zip(folder, tmp_path / "small.zip")


def preview_of(settings, tmp_path):
    """(the preview's status and body, the dataset id, the settings' key for the API) on a fresh server."""
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        dataset_id = upload(alice, dataset_with_synonyms(tmp_path)).json()["id"]
        started = time.monotonic()
        response = alice.get(f"/v1/datasets/{dataset_id}/synonyms")
        return response, time.monotonic() - started, dataset_id


def by_class(body) -> dict:
    return {c["class"]: c for c in body["classes"]}


def test_the_preview_shows_every_source_and_a_job_then_uses_the_same_words(chat, tmp_path):
    settings = make_settings(
        tmp_path / "data",
        synonym_llm_url=chat.url("good"),
        synonym_llm_model="test-model",
        synonym_llm_key=KEY,
        synonym_llm_timeout_seconds=TIMEOUT,
    )
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        dataset_id = upload(alice, dataset_with_synonyms(tmp_path)).json()["id"]
        response = alice.get(f"/v1/datasets/{dataset_id}/synonyms")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["dataset_id"], body["preset"], body["num_synonyms"]) == (dataset_id, "paper", 3)
        assert body["llm_model"] == "test-model"
        classes = by_class(body)
        square = {s["source"]: s for s in classes["square"]["sources"]}
        assert list(square) == ["dataset", "wordnet", "llm"]  # the order a job looks them up
        assert square["dataset"]["words"] == ["box"] and square["llm"] == {
            "source": "llm",
            "words": WORDS["square"],
            "error": None,
        }
        assert classes["square"]["used_source"] == "dataset+llm"
        assert classes["square"]["candidates"] == ["box", *WORDS["square"]]
        # WordNet knows circle; the model's words join it (the paper preset looks WordNet up).
        assert classes["circle"]["used_source"] == "wordnet+llm"
        assert set(WORDS["circle"]) <= set(classes["circle"]["candidates"])
        # A table row with no synonyms means none: the model is not asked for triangle.
        assert classes["triangle"]["used_source"] == "dataset" and classes["triangle"]["candidates"] == []
        assert "llm" not in {s["source"] for s in classes["triangle"]["sources"]}
        assert sorted(r.asked_class for r in chat.received) == ["circle", "square"]
        assert all(r.authorization == f"Bearer {KEY}" for r in chat.received)

        assert alice.get(f"/v1/datasets/{dataset_id}/synonyms").json() == body
        assert chat.count() == 2  # shown again from the cache
        with api.client(new_key(settings, "bob")) as bob:
            assert bob.get(f"/v1/datasets/{dataset_id}/synonyms").status_code == 404
        assert alice.get(f"/v1/datasets/{dataset_id}/synonyms", params={"num_synonyms": 101}).status_code == 422

    # What a job's worker asks with the same settings comes from that cache: the words shown, no endpoint needed.
    used = ask_synonyms(replace(settings.synonym_llm(), url=closed_port_url()), ["square", "circle"], m=3)
    assert (used.words, used.errors) == ({"square": WORDS["square"], "circle": WORDS["circle"]}, {})
    stored = [p for p in settings.data_dir.rglob("*") if p.is_file()]
    assert stored and not any(KEY.encode() in p.read_bytes() for p in stored)


@pytest.fixture
def wordnet_loaded():
    """WordNet loaded in this process (the API's thread shares it), so a timing measures the model alone."""
    wordnet_words("dog")


@pytest.mark.parametrize("behaviour", ["unreachable", "slow", "not_json"])
def test_a_failing_model_is_shown_as_its_error_never_a_server_error(chat, tmp_path, wordnet_loaded, behaviour):
    url = closed_port_url() if behaviour == "unreachable" else chat.url(behaviour)
    settings = make_settings(
        tmp_path / "data", synonym_llm_url=url, synonym_llm_model="test-model", synonym_llm_timeout_seconds=TIMEOUT
    )
    response, elapsed, _ = preview_of(settings, tmp_path)
    assert response.status_code == 200, response.text
    assert elapsed < TIMEOUT + 2, elapsed  # the model's timeout and a margin, however the model fails
    reason = {
        "unreachable": "cannot reach http://127.0.0.1:",
        "slow": f"no answer within {TIMEOUT:g} s",
        "not_json": "malformed answer: the message is not JSON",
    }[behaviour]
    classes = by_class(response.json())
    for name in ("square", "circle"):
        (llm,) = [s for s in classes[name]["sources"] if s["source"] == "llm"]
        assert llm["words"] == [] and reason in llm["error"]
        assert "+llm" not in classes[name]["used_source"]
    assert classes["square"]["candidates"] == ["box"]


def test_without_a_model_the_preview_shows_the_other_sources(tmp_path):
    response, _, _ = preview_of(make_settings(tmp_path / "data"), tmp_path)
    body = response.json()
    assert body["llm_model"] is None
    assert all(s["source"] != "llm" for c in body["classes"] for s in c["sources"])
    assert by_class(body)["square"]["used_source"] == "dataset"
