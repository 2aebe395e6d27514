import json

import pytest

from ml.spec.config import ConfigError, available_presets, config_from_dict, config_to_dict, resolve_config


def test_paper_preset_is_the_method_numbers():
    config = resolve_config("paper")
    assert config.train_cam.epochs == 5 and config.train_cam.augment.crop_size == 512
    assert (config.train_pole.loss.otm, config.train_pole.loss.btm, config.train_pole.loss.cbs) == (10, 25, 1)
    assert config.train_pole.optim.momentum == 0.9
    assert config.make_cams.scales == (1.0, 0.5, 1.5, 2.0)
    assert config.refine.beta == 10 and config.refine.exp_times == 8 and config.refine.radius == 5


def test_overrides_apply_in_order_and_round_trip():
    config = resolve_config("cpu-small", {"seed": 3, "train_pole": {"loss": {"reg": 0.2}}}, {"seed": 7})
    assert config.seed == 7 and config.preset == "cpu-small"
    assert config.train_pole.loss.reg == 0.2 and config.train_pole.loss.btm == 25
    data = config_to_dict(config)
    assert config_from_dict(json.loads(json.dumps(data))) == config


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="train_pole.epoch.*valid here:.*epochs"):
        resolve_config("paper", {"train_pole": {"epoch": 3}})


def test_wrong_type_and_bad_choice_are_refused():
    with pytest.raises(ConfigError, match="train_cam.epochs: expected an integer"):
        resolve_config("paper", {"train_cam": {"epochs": "five"}})
    with pytest.raises(ConfigError, match="choose one of manual, pole, coop, defo, target"):
        resolve_config("paper", {"train_pole": {"prompt": "clip"}})


def test_unknown_preset_lists_available():
    assert {"paper", "cpu-small"} <= set(available_presets())
    with pytest.raises(ConfigError, match="available: .*cpu-small"):
        resolve_config("huge")


def test_negative_gradient_clipping_is_refused():
    with pytest.raises(ConfigError, match="max_grad_norm must be >= 0"):
        resolve_config("paper", {"train_pole": {"max_grad_norm": -1}})
