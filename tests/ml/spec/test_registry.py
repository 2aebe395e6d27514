from __future__ import annotations

import importlib
import importlib.resources

import pytest

from ml.spec.config import resolve_config
from ml.spec.registry import (
    EXPORT_FORMATS,
    PROMPT_STRATEGIES,
    STAGES,
    final_cam_stage,
    final_masks_stage,
    load,
    overall_progress,
    stages_for,
)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_every_stage_resolves_to_a_module_with_run(stage):
    assert callable(load(f"{stage.module}:run"))


@pytest.mark.parametrize("name", PROMPT_STRATEGIES)
def test_every_prompt_strategy_resolves_to_a_builder(name):
    assert callable(load(PROMPT_STRATEGIES[name].builder))


@pytest.mark.parametrize("name", EXPORT_FORMATS)
def test_every_export_format_resolves_to_a_writer(name):
    assert callable(load(EXPORT_FORMATS[name].writer))


def test_every_stage_module_is_registered():
    stages = importlib.import_module("ml.stages")
    on_disk = {p.stem for p in importlib.resources.files(stages).iterdir() if p.name.endswith(".py")} - {"__init__"}
    assert on_disk == {s.name for s in STAGES}


def test_stages_follow_the_config():
    paper = resolve_config("paper")
    assert stages_for(paper)[:3] == ["train_cam", "select_prompts", "train_pole"] and "crf" not in stages_for(paper)
    clims = resolve_config("paper", {"train_pole": {"prompt": "manual"}})
    assert "select_prompts" not in stages_for(clims)
    baseline = resolve_config("paper", {"train_pole": {"enabled": False}, "crf": {"enabled": True}})
    assert "train_pole" not in stages_for(baseline) and "crf" in stages_for(baseline)
    assert (final_cam_stage(baseline), final_masks_stage(baseline)) == ("train_cam", "crf")
    assert (final_cam_stage(paper), final_masks_stage(paper)) == ("train_pole", "refine")


def test_overall_progress_runs_from_zero_to_one_in_stage_order():
    config = resolve_config("paper")
    names = stages_for(config)
    points = [overall_progress(config, name, f) for name in names for f in (0.0, 0.5, 1.0)]
    assert points[0] == 0.0 and points[-1] == pytest.approx(1.0)
    assert points == sorted(points)
