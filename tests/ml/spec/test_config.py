from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ml.spec import registry
from ml.spec.config import (
    PROMPT_STRATEGIES,
    ConfigError,
    available_presets,
    config_from_dict,
    config_to_dict,
    load_config_file,
    resolve_config,
)


def test_paper_preset_is_the_method_numbers():
    config = resolve_config("paper")
    assert config.train_cam.epochs == 5 and config.train_cam.augment.crop_size == 512
    assert (config.train_pole.loss.otm, config.train_pole.loss.btm, config.train_pole.loss.cbs) == (10, 25, 1)
    assert config.train_pole.optim.momentum == 0.0  # the public code's in effect (tests/ml/spec/test_public_code.py)
    assert config.make_cams.scales == (1.0, 0.5, 1.5, 2.0)
    assert config.refine.beta == 10 and config.refine.exp_times == 8 and config.refine.radius == 5
    assert config.export.formats == ("cvat",)
    assert (config.models.seg_arch, config.models.seg_weights) == ("deeplabv3_resnet101", "imagenet")
    seg = config.train_seg
    assert seg.enabled and (seg.epochs, seg.batch_size, seg.lr, seg.augment.crop_size) == (30, 16, 0.01, 512)
    assert (seg.optim.momentum, seg.optim.poly_power) == (0.9, 0.9)


def test_the_segmenter_trains_in_the_paper_and_demo_presets_not_in_the_tests_one():
    assert resolve_config("paper").train_seg.enabled and resolve_config("demo").train_seg.enabled
    assert not resolve_config("cpu-small").train_seg.enabled
    assert resolve_config("demo").models.seg_weights == "random"  # no ImageNet weights offline


def test_segmenter_choices_come_from_the_registry():
    for arch in registry.SEGMENTER_BACKBONES:
        assert resolve_config("paper", {"models": {"seg_arch": arch}}).models.seg_arch == arch
    with pytest.raises(ConfigError) as caught:
        resolve_config("paper", {"models": {"seg_arch": "fcn_resnet50"}})
    assert f"models.seg_arch: choose one of {', '.join(registry.SEGMENTER_BACKBONES)}" in str(caught.value)


def test_overrides_apply_in_order_and_round_trip():
    config = resolve_config("cpu-small", {"seed": 3, "train_pole": {"loss": {"reg": 0.2}}}, {"seed": 7})
    assert config.seed == 7 and config.preset == "cpu-small"
    assert config.train_pole.loss.reg == 0.2 and config.train_pole.loss.btm == 25
    data = config_to_dict(config)
    assert config_from_dict(json.loads(json.dumps(data))) == config


@pytest.mark.parametrize("preset", ["paper", "cpu-small", "demo"])
def test_every_shipped_preset_resolves_and_round_trips(preset):
    assert preset in available_presets()
    config = resolve_config(preset)
    data = config_to_dict(config)
    assert json.loads(json.dumps(data)) == data  # JSON-able as it is: tuples came out as lists
    assert config_from_dict(data) == config and config_to_dict(config_from_dict(data)) == data


def test_sections_stay_dataclasses_with_tuples_and_mutable_fields():
    config = resolve_config("cpu-small", {"make_cams": {"scales": [1, 2]}})
    assert config.make_cams.scales == (1.0, 2.0) and all(isinstance(s, float) for s in config.make_cams.scales)
    assert config_to_dict(config.train_pole)["augment"]["resize_long"] == [96, 160]
    config.train_cam.epochs = 1
    assert config.train_cam.epochs == 1
    smaller = dataclasses.replace(config.train_cam.augment, crop_size=64)
    assert smaller.crop_size == 64 and smaller.resize_long == config.train_cam.augment.resize_long


def test_synonyms_are_replaced_not_merged():
    first = {"select_prompts": {"synonyms": {"cat": ["kitty"], "dog": ["hound"]}}}
    config = resolve_config("paper", first, {"select_prompts": {"synonyms": {"cat": ["feline"]}}})
    assert config.select_prompts.synonyms == {"cat": ["feline"]}


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="train_pole.epoch.*valid here:.*epochs"):
        resolve_config("paper", {"train_pole": {"epoch": 3}})


def test_wrong_type_and_bad_choice_are_refused():
    with pytest.raises(ConfigError, match="train_cam.epochs: expected an integer"):
        resolve_config("paper", {"train_cam": {"epochs": "five"}})
    with pytest.raises(ConfigError, match="choose one of manual, pole, coop, defo, target"):
        resolve_config("paper", {"train_pole": {"prompt": "clip"}})


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ({"train_cam": {"epochs": "3"}}, "train_cam.epochs: expected an integer, got '3'"),
        ({"train_cam": {"epochs": 3.5}}, "train_cam.epochs: expected an integer, got 3.5"),
        ({"train_cam": {"epochs": True}}, "train_cam.epochs: expected an integer, got True"),
        ({"train_cam": {"lr": "0.1"}}, "train_cam.lr: expected a number, got '0.1'"),
        ({"crf": {"enabled": 1}}, "crf.enabled: expected true or false, got 1"),
        ({"models": {"clip_model": 7}}, "models.clip_model: expected a string, got 7"),
        ({"make_cams": {"scales": 1.0}}, "make_cams.scales: expected a list, got 1.0"),
        ({"select_prompts": {"synonyms": {"cat": "kitty"}}}, "select_prompts.synonyms.cat: expected a list"),
    ],
)
def test_types_are_strict(override, phrase):
    with pytest.raises(ConfigError) as caught:
        resolve_config("paper", override)
    assert phrase in str(caught.value)


def test_a_number_setting_takes_an_integer():
    assert resolve_config("paper", {"train_cam": {"lr": 1}}).train_cam.lr == 1.0


def test_template_needs_exactly_one_slot():
    for template in ("a photo.", "a {} of {}.", "a {} of {0}."):
        with pytest.raises(ConfigError, match=r"select_prompts.template: must contain '\{\}' exactly once"):
            resolve_config("paper", {"select_prompts": {"template": template}})


def test_negative_gradient_clipping_is_refused():
    with pytest.raises(ConfigError, match="max_grad_norm: must be >= 0"):
        resolve_config("paper", {"train_pole": {"max_grad_norm": -1}})


@pytest.mark.parametrize(
    ("override", "phrase"),
    [
        ({"train_cam": {"batch_size": -5}}, "train_cam.batch_size: must be >= 1, got -5"),
        ({"train_pole": {"epochs": 10**12}}, "train_pole.epochs: must be <= 10000, got 1000000000000"),
        ({"train_pole": {"epochs": 0}}, "train_pole.epochs: must be >= 1, got 0"),
        ({"num_workers": 100000}, "num_workers: must be <= 64, got 100000"),
        ({"device": "cuda:99"}, "device: expected auto, cpu, cuda or cuda:N with N from 0 to 63, got 'cuda:99'"),
        ({"device": "cuda:01"}, "got 'cuda:01'"),
        ({"device": "tpu"}, "got 'tpu'"),
        ({"train_cam": {"lr": math.nan}}, "train_cam.lr: expected a finite number, got nan"),
        ({"train_irn": {"lr": math.inf}}, "train_irn.lr: expected a finite number, got inf"),
        ({"train_pole": {"head_lr": 0}}, "train_pole.head_lr: must be > 0"),
        ({"seed": 10**30}, "seed: must be <= 4294967295"),
        ({"seed": -1}, "seed: must be >= 0, got -1"),
        ({"train_cam": {"optim": {"momentum": 1}}}, "train_cam.optim.momentum: must be < 1"),
        ({"train_irn": {"optim": {"weight_decay": -0.1}}}, "train_irn.optim.weight_decay: must be >= 0"),
        ({"make_seeds": {"fg_threshold": 1.5}}, "make_seeds.fg_threshold: must be <= 1"),
        ({"train_cam": {"augment": {"crop_size": 8}}}, "train_cam.augment.crop_size: must be >= 16, got 8"),
        ({"train_cam": {"augment": {"resize_long": [640, 320]}}}, "resize_long: expected [low, high] with low <= high"),
        ({"make_cams": {"scales": [1.0, -0.5]}}, "make_cams.scales[1]: must be > 0, got -0.5"),
        ({"make_cams": {"scales": []}}, "make_cams.scales: expected at least 1 item, got 0"),
        ({"refine": {"exp_times": 17}}, "refine.exp_times: must be <= 16, got 17"),
        ({"refine": {"radius": 0}}, "refine.radius: must be >= 1, got 0"),
        ({"make_seeds": {"crf": {"iterations": -1}}}, "make_seeds.crf.iterations: must be >= 0, got -1"),
        ({"eval": {"sweep": [0.5, 0.1, 0.05]}}, "eval.sweep: expected [start, stop, step] with start <= stop"),
        ({"train_irn": {"rescale": [1.0]}}, "train_irn.rescale[1]: missing"),
        ({"train_seg": {"epochs": 0}}, "train_seg.epochs: must be >= 1, got 0"),
        ({"train_seg": {"batch_size": 0}}, "train_seg.batch_size: must be >= 1, got 0"),
        ({"train_seg": {"lr": 0}}, "train_seg.lr: must be > 0"),
        ({"train_seg": {"optim": {"momentum": 1.5}}}, "train_seg.optim.momentum: must be < 1"),
        ({"train_seg": {"augment": {"crop_size": 4}}}, "train_seg.augment.crop_size: must be >= 16, got 4"),
        ({"train_seg": {"enabled": "yes"}}, "train_seg.enabled: expected true or false, got 'yes'"),
        ({"models": {"seg_weights": ""}}, "models.seg_weights: expected at least 1 character"),
    ],
)
def test_out_of_range_values_are_refused(override, phrase):
    with pytest.raises(ConfigError) as caught:
        resolve_config("paper", override)
    assert phrase in str(caught.value)


def test_every_bad_key_and_value_is_named_at_once():
    overrides = {
        "trian_cam": {},
        "seed": "7",
        "train_cam": {"epochs": 0, "batch_sizes": 4},
        "train_pole": {"prompt": "clip", "augment": {"crop_size": 1.5}},
    }
    with pytest.raises(ConfigError) as caught:
        resolve_config("paper", overrides)
    message = str(caught.value)
    for phrase in (
        "unknown key(s) trian_cam (valid here: preset, seed,",
        "unknown key(s) train_cam.batch_sizes (valid here: epochs, batch_size,",
        "seed: expected an integer, got '7'",
        "train_cam.epochs: must be >= 1, got 0",
        "train_pole.prompt: choose one of manual, pole, coop, defo, target, got 'clip'",
        "train_pole.augment.crop_size: expected an integer, got 1.5",
    ):
        assert phrase in message


def test_messages_quote_only_the_offending_value_clipped():
    long_value = "x" * 5000
    with pytest.raises(ConfigError) as caught:
        resolve_config("paper", {"models": {"clip_model": long_value}, "train_cam": {"augment": ["secret"] * 100}})
    message = str(caught.value)
    assert "models.clip_model: expected at most 1024 characters" in message
    assert "x" * 61 not in message and len(message) < 400
    with pytest.raises(ConfigError) as caught:
        resolve_config("paper", {"train_cam": {f"key{n}": n for n in range(1000)}})
    assert "key29, key30" not in str(caught.value) and "and 970 more" in str(caught.value)


def test_prompt_choices_come_from_the_registry():
    assert tuple(registry.PROMPT_STRATEGIES) == PROMPT_STRATEGIES
    for name in PROMPT_STRATEGIES:
        assert resolve_config("paper", {"train_pole": {"prompt": name}}).train_pole.prompt == name


@pytest.mark.parametrize(
    ("formats", "phrase"),
    [
        ([], "export.formats: expected at least 1 item"),
        (["cvat", "cvat"], "export.formats: lists a name more than once"),
        (["cvat", "yolo"], f"export.formats[1]: choose one of {', '.join(registry.EXPORT_FORMATS)}, got 'yolo'"),
        ("cvat", "export.formats: expected a list"),
    ],
)
def test_export_formats_are_checked(formats, phrase):
    with pytest.raises(ConfigError) as caught:
        resolve_config("paper", {"export": {"formats": formats}})
    assert phrase in str(caught.value)


def test_export_formats_resolve_to_a_tuple():
    formats = ["cvat", "coco", "index_png"]
    assert resolve_config("paper", {"export": {"formats": formats}}).export.formats == tuple(formats)


def test_unknown_preset_lists_available():
    assert {"paper", "cpu-small", "demo"} <= set(available_presets())
    with pytest.raises(ConfigError, match="available: .*cpu-small"):
        resolve_config("huge")


@pytest.mark.parametrize("shape", ["traversal", "absolute", "overlong", "nul", "uppercase", "not a string"])
def test_a_preset_is_a_shipped_name_never_a_path(tmp_path, monkeypatch, shape):
    secret = tmp_path / "loot.json"
    secret.write_text(json.dumps({"train_cam": {"epochs": "hunter2-secret"}, "hunter2-key": 1}))
    reads = []
    original_read_text = type(secret).read_text
    monkeypatch.setattr(type(secret), "read_text", lambda self, *a, **k: reads.append(self) or original_read_text(self))
    preset = {
        "traversal": "../" * 12 + str(secret.with_suffix("")).lstrip("/"),
        "absolute": str(secret.with_suffix("")),
        "overlong": "a" * 300,
        "nul": "paper\x00",
        "uppercase": "PAPER",
        "not a string": ["paper"],
    }[shape]
    with pytest.raises(ConfigError) as caught:
        resolve_config(preset)
    message = str(caught.value)
    assert message.startswith("unknown preset ") and message.endswith("available: cpu-small, demo, paper")
    assert "hunter2" not in message and len(message) < 150
    assert reads == []


def test_overrides_must_be_mappings():
    with pytest.raises(ConfigError, match="override 1: expected a mapping of config sections, got \\[1, 2\\]"):
        resolve_config("paper", [1, 2])
    with pytest.raises(ConfigError, match="config: expected a mapping"):
        config_from_dict([1, 2])


def test_config_files_that_are_not_json_say_so(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON \\(line 1"):
        load_config_file(broken)
    listed = tmp_path / "listed.json"
    listed.write_text("[1]")
    with pytest.raises(ConfigError, match="expected a mapping of config sections"):
        load_config_file(listed)
