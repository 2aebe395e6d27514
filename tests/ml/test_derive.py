"""Derived runs: what word overrides do to a run's selections, the config a derived run may have, and
the run directory prepared for it (the parent's outputs linked, the overridden selections written)."""

from __future__ import annotations

import json
import re

import pytest

from ml.derive import DeriveError, prepare_derived_run
from ml.spec.config import ConfigError, config_to_dict, resolve_config
from ml.spec.derived_runs import derived_config
from ml.spec.layout import RunLayout
from ml.spec.overrides import OverrideError, apply_overrides, word_problem


def selection(image: str, name: str, scores: list[float], candidates: list[str]) -> dict:
    best = max(range(len(scores)), key=scores.__getitem__)
    label = {"cat": 1, "dog": 2}[name]
    return {"image": image, "label": label, "class": name, "candidates": candidates, "scores": scores,
            "chosen": candidates[best]}  # fmt: skip


CAT_WORDS, DOG_WORDS = ["cat", "kitty", "feline"], ["dog", "puppy"]
SELECTIONS = [
    selection("a", "cat", [0.30, 0.25, 0.20], CAT_WORDS),  # cat
    selection("b", "cat", [0.20, 0.31, 0.26], CAT_WORDS),  # kitty, feline next
    selection("c", "cat", [0.22, 0.35, 0.10], CAT_WORDS),  # kitty, cat next
    selection("b", "dog", [0.40, 0.10], DOG_WORDS),  # dog
    selection("d", "dog", [0.10, 0.40], DOG_WORDS),  # puppy
]


def use(name: str, word: str, image: str | None = None) -> dict:
    return {"image": image, "class": name, "action": "use", "word": word}


def drop(name: str, word: str) -> dict:
    return {"image": None, "class": name, "action": "drop", "word": word}


def chosen(records: list[dict]) -> dict[tuple[str, str], tuple[str, bool]]:
    return {(r["image"], r["class"]): (r["chosen"], r["overridden"]) for r in records}


def test_no_overrides_keep_every_word_and_mark_none():
    applied = apply_overrides(SELECTIONS, [])
    assert [r["chosen"] for r in applied] == [r["chosen"] for r in SELECTIONS]
    assert not any(r["overridden"] for r in applied)


def test_drop_rechooses_the_best_remaining_candidate_by_the_recorded_scores():
    applied = apply_overrides(SELECTIONS, [drop("cat", "kitty")])
    assert chosen(applied) == {
        ("a", "cat"): ("cat", False),  # never had kitty
        ("b", "cat"): ("feline", True),  # 0.26 beats cat's 0.20
        ("c", "cat"): ("cat", True),  # 0.22 beats feline's 0.10
        ("b", "dog"): ("dog", False),
        ("d", "dog"): ("puppy", False),
    }
    assert [(r["candidates"], r["scores"]) for r in applied] == [(r["candidates"], r["scores"]) for r in SELECTIONS]


def test_two_drops_and_a_case_insensitive_word():
    applied = apply_overrides(SELECTIONS, [drop("cat", "KITTY"), drop("cat", "cat")])
    assert {r["chosen"] for r in applied if r["class"] == "cat"} == {"feline"}


def test_class_use_sets_every_image_of_the_class_and_the_last_one_counts():
    applied = apply_overrides(SELECTIONS, [use("dog", "hound"), use("dog", "canine")])
    assert chosen(applied)[("b", "dog")] == ("canine", True) and chosen(applied)[("d", "dog")] == ("canine", True)
    assert all(not r["overridden"] for r in applied if r["class"] == "cat")


def test_image_use_wins_over_class_use_and_over_a_drop_in_any_order():
    overrides = [use("cat", "tabby", image="b"), use("cat", "kitten"), drop("cat", "kitty")]
    for ordered in (overrides, overrides[::-1]):
        assert {k: v for k, v in chosen(apply_overrides(SELECTIONS, ordered)).items() if k[1] == "cat"} == {
            ("a", "cat"): ("kitten", True),
            ("b", "cat"): ("tabby", True),
            ("c", "cat"): ("kitten", True),
        }


def test_a_parent_runs_overridden_mark_is_kept():
    once = apply_overrides(SELECTIONS, [use("dog", "hound", image="d")])
    twice = apply_overrides(once, [drop("cat", "kitty")])
    assert chosen(twice)[("d", "dog")] == ("hound", True)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (use("horse", "pony"), "no image has a chosen word for class 'horse'"),
        (use("cat", "tabby", image="d"), "image 'd' has no chosen word for class 'cat'"),
        (drop("dog", "wolf"), "'wolf' is not a candidate of 'dog' (dog, puppy)"),
        ({**use("cat", "x"), "action": "keep"}, "action must be one of use, drop"),
        (use("cat", "  "), "the word is empty"),
    ],
)
def test_overrides_naming_nothing_are_refused(override, message):
    with pytest.raises(OverrideError, match=re.escape(message)):
        apply_overrides(SELECTIONS, [override])


def test_dropping_every_candidate_is_refused_unless_a_word_is_used():
    every = [drop("dog", "dog"), drop("dog", "puppy")]
    with pytest.raises(OverrideError, match="every candidate of class 'dog' is dropped"):
        apply_overrides(SELECTIONS, every)
    assert {r["chosen"] for r in apply_overrides(SELECTIONS, [*every, use("dog", "hound")]) if r["class"] == "dog"} == {
        "hound"
    }


@pytest.mark.parametrize(
    ("word", "problem"),
    [
        ("", "empty"),
        ("x" * 61, "61 characters; at most 60"),
        ("tab\tby", "control characters"),
        ("line\u2028break", "control characters"),
        ("zero\u200bwidth", "control characters"),
    ],
)
def test_word_problems(word, problem):
    assert problem in word_problem(word)


def test_plain_words_have_no_problem():
    assert word_problem("traffic light") is None and word_problem("chat noir é") is None


# --- the config of a derived run -------------------------------------------------------------------


@pytest.fixture
def parent_config() -> dict:
    return config_to_dict(resolve_config("cpu-small", {"train_pole": {"epochs": 2}}))


def test_derived_config_is_the_parents_with_the_changes_and_the_derive_section(parent_config):
    overrides = [use("cat", "kitten")]
    config = config_to_dict(derived_config(parent_config, None, {"train_irn": {"epochs": 7}}, "job1", overrides))
    assert config["derive"] == {"parent": "job1", "overrides": overrides}
    assert config["train_irn"]["epochs"] == 7
    unchanged = {k: v for k, v in config.items() if k not in ("derive", "train_irn")}
    assert unchanged == {k: v for k, v in parent_config.items() if k not in ("derive", "train_irn")}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"train_cam": {"epochs": 9}}, "train_cam"),
        ({"select_prompts": {"num_synonyms": 1}}, "select_prompts"),
        ({"seed": 5}, "seed"),
        ({"models": {"clip_model": "RN50"}}, "models.clip_model"),
    ],
)
def test_derived_config_refuses_changing_what_the_reused_stages_read(parent_config, changes, named):
    with pytest.raises(ConfigError, match=f"keeps the parent's {named}; change only the stages after"):
        derived_config(parent_config, None, changes, "job1", [])


def test_derived_config_refuses_a_preset_that_differs_before_train_pole(parent_config):
    with pytest.raises(ConfigError, match="preset 'paper' differs there"):
        derived_config(parent_config, "paper", {}, "job1", [])


def test_derived_config_must_still_select_words(parent_config):
    with pytest.raises(ConfigError, match="keep train_pole.enabled true"):
        derived_config(parent_config, None, {"train_pole": {"prompt": "manual"}}, "job1", [])
    with pytest.raises(ConfigError, match="derive is set from the parent run"):
        derived_config(parent_config, None, {"derive": {"parent": "x"}}, "job1", [])


# --- the derived run's directory -------------------------------------------------------------------


def make_parent_run(root) -> RunLayout:
    layout = RunLayout(root)
    for stage in ("train_cam", "select_prompts"):
        layout.stage_dir(stage).mkdir(parents=True)
    layout.checkpoint("train_cam").write_bytes(b"weights of the CAM network")
    layout.stage_record("train_cam").write_text(json.dumps({"stage": "train_cam", "checkpoints": {"model.pt": "ab"}}))
    layout.selections.write_text("".join(json.dumps(r) + "\n" for r in SELECTIONS))
    layout.candidates.write_text(json.dumps({"cat": {"words": CAT_WORDS}, "dog": {"words": DOG_WORDS}}))
    layout.stage_record("select_prompts").write_text(json.dumps({"stage": "select_prompts", "seed": 3}))
    layout.failed_images.write_text(json.dumps({"e": "not a decodable image"}))
    return layout


def test_prepare_derived_run_links_train_cam_and_writes_the_overridden_selections(tmp_path):
    parent = make_parent_run(tmp_path / "parent")
    derived = RunLayout(tmp_path / "derived")
    prepare_derived_run(parent.root, derived.root, [drop("cat", "kitty"), use("dog", "hound", image="d")])

    assert derived.stage_done("train_cam") and derived.stage_done("select_prompts")
    assert derived.checkpoint("train_cam").stat().st_ino == parent.checkpoint("train_cam").stat().st_ino
    assert derived.provenance()["train_cam"] == parent.provenance()["train_cam"]
    assert derived.candidates.read_text() == parent.candidates.read_text()
    assert derived.chosen_words() == {("a", 1): "cat", ("b", 1): "feline", ("c", 1): "cat", ("b", 2): "dog",
                                      ("d", 2): "hound"}  # fmt: skip
    assert [r["overridden"] for r in derived.read_selections()] == [False, True, True, False, True]
    record = json.loads(derived.stage_record("select_prompts").read_text())
    assert record["seed"] == 3 and record["derived_from"] == str(parent.root) and record["overridden"] == 3
    assert derived.read_failed_images() == parent.read_failed_images()
    assert parent.chosen_words() == {(r["image"], r["label"]): r["chosen"] for r in SELECTIONS}  # untouched

    # Deleting the parent leaves the derived run whole, and preparing again changes nothing.
    before = derived.read_selections()
    for path in sorted(parent.root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    assert derived.checkpoint("train_cam").read_bytes() == b"weights of the CAM network"
    prepare_derived_run(parent.root, derived.root, [use("cat", "something else")])
    assert derived.read_selections() == before


def test_prepare_derived_run_refuses_before_writing_anything(tmp_path):
    parent = make_parent_run(tmp_path / "parent")
    out = tmp_path / "derived"
    with pytest.raises(OverrideError, match="'wolf' is not a candidate"):
        prepare_derived_run(parent.root, out, [drop("dog", "wolf")])
    assert not out.exists()
    with pytest.raises(DeriveError, match="the parent run was deleted"):
        prepare_derived_run(None, out, [])
    (parent.stage_dir("select_prompts") / "selections.jsonl").unlink()
    parent.stage_dir("select_prompts").rename(parent.partial_dir("select_prompts"))
    with pytest.raises(DeriveError, match="has not finished select_prompts"):
        prepare_derived_run(parent.root, out, [])
