"""Derived runs: a run that reuses another run's train_cam and select_prompts outputs and re-runs the
stages after them with the chosen words corrected by a person (ml/spec/overrides.py says how).

This module says what a derived run may change of its parent's config, and builds its config: the
parent's with the changes on top and the `derive` section naming the parent and the exact overrides
applied. Torch-free: the API checks a derived job with it; ml/derive.py prepares the run directory.
"""

from __future__ import annotations

from ml.spec.config import ConfigError, PipelineConfig, config_to_dict, resolve_config
from ml.spec.registry import stages_for

REUSED_STAGES = ("train_cam", "select_prompts")
# What the reused stages read besides their own sections: a derived run that changed one of them would
# pair the parent's outputs with a config that did not make them. (make_cams' scales also shaped the
# parent's selection masks; changing them is allowed, since they matter for the maps made from now on.)
REUSED_SETTINGS = (
    "seed",
    "train_split",
    "models.cam_backbone",
    "models.cam_weights",
    "models.clip_model",
    "models.clip_pretrained",
)


def derived_config(
    parent: dict, preset: str | None, changes: dict, parent_name: str, overrides: list[dict]
) -> PipelineConfig:
    """The config of a run derived from the run whose resolved config is `parent`: the parent's (or
    `preset`'s, when one is named) with `changes` on top, and a `derive` section naming `parent_name`
    and `overrides`. Raises ConfigError naming each reused setting the result would change."""
    if "derive" in changes:
        raise ConfigError("derive is set from the parent run and its overrides, never by a config; remove it")
    own = {key: value for key, value in parent.items() if key != "derive"}
    config = resolve_config(preset, changes) if preset else resolve_config(parent["preset"], own, changes)
    resolved = config_to_dict(config)
    changed = [key for key in (*REUSED_STAGES, *REUSED_SETTINGS) if _at(resolved, key) != _at(parent, key)]
    if changed:
        raise ConfigError(
            f"a derived run reuses its parent's {' and '.join(REUSED_STAGES)} outputs, so it keeps the "
            f"parent's {', '.join(changed)}; change only the stages after select_prompts"
            + (
                f" (preset {preset!r} differs there: leave preset out to start from the parent's config)"
                if preset
                else ""
            )
        )
    if "select_prompts" not in stages_for(config):
        raise ConfigError(
            "a derived run re-runs train_pole with the corrected words: keep train_pole.enabled true and "
            "train_pole.prompt a strategy that uses the chosen words (pole)"
        )
    return resolve_config(config.preset, resolved, {"derive": {"parent": parent_name, "overrides": overrides}})


def _at(config: dict, dotted: str):
    value = config
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value
