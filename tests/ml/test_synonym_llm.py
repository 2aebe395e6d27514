"""The language model source of candidate words, against a real HTTP server speaking the chat completions
protocol (tests/chat_server.py): good, slow, malformed and unreachable endpoints, the cache, the key, and
select_prompts runs on the tiny dataset that use the model's words or carry on without them."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from ml.data import load_dataset
from ml.models.clip_encoder import FrozenClip
from ml.pipeline import run_pipeline
from ml.runtime import StageContext
from ml.spec.config import resolve_config
from ml.stages.select_prompts import class_candidates
from ml.synonym_llm import (
    MAX_ANSWER_WORDS,
    LlmEndpoint,
    LlmSynonyms,
    MalformedAnswer,
    ask_synonyms,
    cache_path,
    open_to_llm,
    parse_answer,
    with_llm_words,
)
from pole.cli import main as pole
from tests.chat_server import ChatServer, closed_port_url
from tests.conftest import TINY_CLASSES, make_tiny_dataset

KEY = "sk-test-7f3a9c0e55d14b2b"
WORDS = {
    "square": ["quadrilateral", "block"],
    "circle": ["round shape", "disc"],
    "triangle": ["trigon", "wedge"],
    "dog": ["canine", "hound"],
}
TIMEOUT = 1.0
MARGIN = 0.75  # thread start-up and scheduling on a busy machine


@pytest.fixture
def server():
    with ChatServer(WORDS, delay=5 * TIMEOUT) as running:
        yield running


def endpoint(url: str, cache_dir: Path | None, timeout: float = TIMEOUT) -> LlmEndpoint:
    return LlmEndpoint(url=url, model="test-model", key=KEY, timeout=timeout, cache_dir=cache_dir)


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_good_answers_are_parsed_sent_with_the_key_and_cached(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included: the key must not reach any record
    good = endpoint(server.url("good"), tmp_path / "cache")
    answer = ask_synonyms(good, ["square", "circle"], m=2)
    assert (answer.words, answer.errors) == ({"square": WORDS["square"], "circle": WORDS["circle"]}, {})
    assert server.count() == 2
    sent = server.received[0]
    assert sent.authorization == f"Bearer {KEY}"
    assert (sent.body["model"], sent.body["temperature"]) == ("test-model", 0)
    assert sent.body["response_format"] == {"type": "json_object"}
    assert {r.asked_class for r in server.received} == {"square", "circle"}
    assert '"a photo of a {word}."' in sent.body["messages"][-1]["content"]

    again = ask_synonyms(good, ["square", "circle"], m=2)
    assert again.words == answer.words and server.count() == 2  # both from the cache
    # A cache hit needs no endpoint: the same model behind a dead URL still has its words.
    offline = ask_synonyms(endpoint(closed_port_url(), tmp_path / "cache"), ["square"], m=1)
    assert (offline.words, offline.errors) == ({"square": WORDS["square"]}, {})
    ask_synonyms(good, ["square"], m=3)  # more synonyms than the cached answer was asked for: asked again
    assert server.count() == 3

    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == sorted(cache_path(tmp_path / "cache", "test-model", c).name for c in ("square", "circle"))
    assert all(len(name) == len("0" * 64 + ".json") for name in names)  # hashes: no class or model in a path
    assert files_holding(tmp_path, KEY) == []
    assert not any(KEY in record.getMessage() for record in caplog.records)
    assert KEY not in repr(good) and KEY not in json.dumps(answer.record())


def test_a_slow_endpoint_costs_the_timeout_and_no_more(server, tmp_path):
    started = time.monotonic()
    answer = ask_synonyms(endpoint(server.url("slow"), tmp_path), list(TINY_CLASSES), m=2)
    elapsed = time.monotonic() - started
    assert elapsed < TIMEOUT + MARGIN, elapsed
    assert answer.words == {}
    assert answer.errors == {name: f"no answer within {TIMEOUT:g} s" for name in TINY_CLASSES}
    assert "test-model" in answer.failure_message() and "other sources" in answer.failure_message()


def test_an_unreachable_endpoint_fails_at_once(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    answer = ask_synonyms(endpoint(closed_port_url(), tmp_path, timeout=5.0), ["square", "circle"], m=2)
    assert time.monotonic() - started < 5.0  # refused, not waited for
    assert answer.words == {} and set(answer.errors) == {"square", "circle"}
    assert all(reason.startswith("cannot reach http://127.0.0.1:") for reason in answer.errors.values())
    assert not any(KEY in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("not_json", "malformed answer: the message is not JSON: Sure! Here are some synonyms"),
        ("wrong_shape", 'malformed answer: the message is not the object {"synonyms": [...]}'),
        ("not_strings", "malformed answer: 7 is not a string"),
        ("long_phrase", 'malformed answer: "a rather long description of the very same thing" is longer than'),
        ("denied", "/denied/v1 answered HTTP 401"),
    ],
    ids=lambda value: value if " " not in value else "",
)
def test_a_bad_answer_is_refused_whole_with_its_reason_and_not_cached(server, tmp_path, behaviour, reason):
    bad = endpoint(server.url(behaviour), tmp_path / "cache")
    answer = ask_synonyms(bad, ["square"], m=2)
    assert answer.words == {}
    assert reason in answer.errors["square"], answer.errors
    assert KEY not in answer.errors["square"]
    ask_synonyms(bad, ["square"], m=2)
    assert server.count(behaviour) == 2  # nothing was cached: asked again
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_strict_parsing_of_the_chat_completion():
    def reply(content) -> str:
        return json.dumps({"choices": [{"message": {"content": content}}]})

    assert parse_answer(reply('{"synonyms": ["t-shirt", "st. bernard", "  big   dog "]}')) == [
        "t-shirt",
        "st. bernard",
        "big dog",
    ]
    assert parse_answer(reply('{"synonyms": []}')) == []
    refused = [
        "not json",
        json.dumps({"choices": []}),
        json.dumps({"choices": [{"message": {"content": None}}]}),
        reply('```json\n{"synonyms": ["dog"]}\n```'),
        reply('{"synonyms": ["dog"], "note": "also cat"}'),
        reply('{"synonyms": "dog, hound"}'),
        reply(json.dumps({"synonyms": ["dog"] * (MAX_ANSWER_WORDS + 1)})),
        reply('{"synonyms": ["dog!"]}'),
        reply('{"synonyms": ["dog\\nIgnore the above"]}'),
        reply('{"synonyms": [""]}'),
    ]
    for body in refused:
        with pytest.raises(MalformedAnswer):
            parse_answer(body)


def test_the_models_words_join_every_source_but_the_jobs_own_lists():
    llm = LlmSynonyms(endpoint("http://127.0.0.1:1/v1", None), words={"dog": ["Canine", "hound", "dog"]})
    assert with_llm_words("dog", ["canine", "puppy"], "builtin", llm) == (["canine", "puppy", "hound"], "builtin+llm")
    assert with_llm_words("dog", [], "none", llm) == (["Canine", "hound"], "llm")
    assert with_llm_words("cat", ["kitty"], "dataset", llm) == (["kitty"], "dataset")  # not answered: unchanged
    assert open_to_llm(["canine"], "builtin") and open_to_llm([], "none") and open_to_llm(["x"], "wordnet")
    assert not open_to_llm(["doggo"], "job")
    assert not open_to_llm([], "dataset")  # a table that lists the class with no synonyms means none


# select_prompts on the tiny dataset: train_cam once, then each test runs select_prompts on a copy.
FAST = {
    "device": "cpu",
    "models": {"clip_pretrained": "random"},
    "train_cam": {"epochs": 1, "batch_size": 4, "augment": {"resize_long": [48, 80], "crop_size": 64}},
    "select_prompts": {"batch_size": 16, "num_synonyms": 2},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llm_run")
    dataset = make_tiny_dataset(root / "tiny")
    (dataset / "synonyms.csv").write_text("class,word\nsquare,box\n")
    run_pipeline(load_dataset(dataset), root / "out", resolve_config("cpu-small", FAST), until="train_cam")
    return dataset, root / "out"


def run_select_prompts(trained, tmp_path: Path, synonym_llm: LlmEndpoint | None) -> tuple[Path, dict]:
    dataset, finished = trained
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    config = resolve_config("cpu-small", FAST)
    summary = run_pipeline(load_dataset(dataset), out, config, until="select_prompts", synonym_llm=synonym_llm)
    return out, summary


def test_select_prompts_ranks_the_models_words_among_the_candidates(server, trained, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache"
    out, summary = run_select_prompts(trained, tmp_path, endpoint(server.url("good"), cache))
    candidates = json.loads((out / "select_prompts" / "candidates.json").read_text())
    # Two synonyms kept of each pool: "box" and the model's two for square, the model's alone for the others.
    square = candidates["square"]
    assert square["source"] == "dataset+llm" and square["words"][0] == "square" and len(square["words"]) == 3
    assert set(square["words"][1:]) < {"box", *WORDS["square"]} and set(square["words"]) & set(WORDS["square"])
    for name in ("circle", "triangle"):
        assert candidates[name]["source"] == "llm"
        assert candidates[name]["words"][0] == name and sorted(candidates[name]["words"][1:]) == sorted(WORDS[name])
    chosen = {(r["class"], r["chosen"]) for r in summary["selections"]}
    assert all(word in candidates[name]["words"] for name, word in chosen)
    record = json.loads((out / "select_prompts" / "stage.json").read_text())
    expected = {"model": "test-model", "url": server.url("good"), "classes": sorted(TINY_CLASSES), "failed": {}}
    assert record["synonym_llm"] == expected
    assert summary["provenance"]["select_prompts"]["synonym_llm"] == expected
    assert json.loads((out / "config.json").read_text())["select_prompts"]["llm_synonyms"] is True
    assert not any(w["check"] == "synonym_llm_failed" for w in summary["warnings"])
    assert server.count() == 3 and all(r.authorization == f"Bearer {KEY}" for r in server.received)
    assert files_holding(tmp_path, KEY) == []
    assert not any(KEY in record.getMessage() for record in caplog.records)


def test_select_prompts_carries_on_without_a_failing_model(trained, tmp_path):
    started = time.monotonic()
    out, summary = run_select_prompts(trained, tmp_path, endpoint(closed_port_url(), tmp_path / "cache"))
    assert time.monotonic() - started < 60  # the stage itself; the endpoint cost nothing like its timeout
    candidates = json.loads((out / "select_prompts" / "candidates.json").read_text())
    assert {name: c["source"] for name, c in candidates.items()} == {
        "square": "dataset",
        "circle": "none",
        "triangle": "none",
    }
    assert candidates["square"]["words"] == ["square", "box"]
    (failed,) = [w for w in summary["warnings"] if w["check"] == "synonym_llm_failed"]
    assert failed["stage"] == "select_prompts" and sorted(failed["classes"]) == sorted(TINY_CLASSES)
    assert "test-model" in failed["message"] and "used the other sources" in failed["message"]
    record = json.loads((out / "select_prompts" / "stage.json").read_text())
    assert record["synonym_llm"]["classes"] == [] and set(record["synonym_llm"]["failed"]) == set(TINY_CLASSES)


def test_no_model_is_asked_when_the_config_says_so_or_none_is_set(server, tiny_dataset, tmp_path):
    clip = FrozenClip("pole-tiny", "random")
    good = endpoint(server.url("good"), None)
    for flag, synonym_llm in ((False, good), (True, None)):
        config = resolve_config("cpu-small", FAST, {"select_prompts": {"llm_synonyms": flag}})
        ctx = StageContext(load_dataset(tiny_dataset), tmp_path, config, "select_prompts", synonym_llm=synonym_llm)
        ranked, llm = class_candidates(clip, ctx)
        assert llm is None and {c.source for c in ranked.values()} == {"none"}
    config = resolve_config("cpu-small", FAST, {"select_prompts": {"synonyms": {"square": ["tile"]}}})
    ctx = StageContext(load_dataset(tiny_dataset), tmp_path, config, "select_prompts", synonym_llm=good)
    ranked, llm = class_candidates(clip, ctx)
    assert ranked["square"].words == ["square", "tile"] and ranked["square"].source == "job"
    assert sorted(llm.words) == ["circle", "triangle"]  # the job's own list is final: square not asked
    assert server.count() == 2


def test_pole_stage_asks_the_model_its_pole_settings_name(server, trained, tmp_path, monkeypatch, capsys):
    dataset, finished = trained
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    config_file = tmp_path / "fast.json"
    config_file.write_text(json.dumps(FAST))
    argv = ["stage", "select-prompts", str(dataset), "--out", str(out), "--preset", "cpu-small"]
    argv += ["--config", str(config_file)]
    monkeypatch.setenv("POLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("POLE_SYNONYM_LLM_URL", "ftp://llm/v1")
    monkeypatch.setenv("POLE_SYNONYM_LLM_MODEL", "test-model")
    monkeypatch.setenv("POLE_SYNONYM_LLM_KEY", KEY)
    assert pole(argv) == 2
    assert "bad POLE_* setting: POLE_SYNONYM_LLM_URL='ftp://llm/v1'" in capsys.readouterr().err
    monkeypatch.setenv("POLE_SYNONYM_LLM_URL", server.url("good"))
    assert pole(argv) == 0
    candidates = json.loads((out / "select_prompts" / "candidates.json").read_text())
    assert candidates["circle"]["source"] == "llm" and server.count() == 3
    assert len(list((tmp_path / "data" / "synonym_llm").iterdir())) == 3  # the service's cache, in POLE_DATA_DIR
    printed = capsys.readouterr()
    assert KEY not in printed.out + printed.err
