"""The lists pole keeps one of each: its stages in order, its prompt strategies, its export formats,
the segmentation networks train_seg trains.

Every entry names where its code lives as "module:attribute", imported only when it is used (`load`),
so this module stays torch-free: the API lists and checks names with it, the pipeline runs them.
Adding a stage, a prompt strategy or an export format is one entry here and one module there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def load(target: str) -> Any:
    """ "package.module:attribute" -> the attribute (imports the module)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class PromptStrategy:
    name: str
    summary: str
    builder: str  # "module:function" building the prompts module (see ml.models.prompt_learners)
    uses_selected_words: bool = False  # needs the select_prompts stage
    learnable: bool = False  # trains context vectors (at train_pole.prompt_lr_mult x backbone lr)


PROMPT_STRATEGIES: dict[str, PromptStrategy] = {
    p.name: p
    for p in (
        PromptStrategy("manual", "the class name in the template (CLIMS)", "ml.models.prompt_learners:manual_prompts"),
        PromptStrategy(
            "pole",
            "the word select_prompts chose for each image and class (POLE)",
            "ml.models.prompt_learners:selected_word_prompts",
            uses_selected_words=True,
        ),
        PromptStrategy(
            "coop", "learned context shared by all classes", "ml.models.prompt_learners:learned_prompts", learnable=True
        ),
        PromptStrategy(
            "defo", "learned context per class (DeFo)", "ml.models.prompt_learners:learned_prompts", learnable=True
        ),
        PromptStrategy(
            "target",
            "the class word's own embedding learned",
            "ml.models.prompt_learners:learned_prompts",
            learnable=True,
        ),
    )
}


@dataclass(frozen=True)
class ExportFormat:
    name: str
    summary: str
    writer: str  # "module:function" (folder, ExportedMasks) -> None, see ml.exports


EXPORT_FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "cvat",
            'CVAT "Segmentation mask 1.1": palette PNGs, labelmap.txt, ImageSets/Segmentation/default.txt',
            "ml.exports.cvat:write_cvat",
        ),
        ExportFormat(
            "coco",
            "COCO instances JSON per split: one RLE annotation per image and class (pycocotools, detectron2)",
            "ml.exports.coco:write_coco",
        ),
        ExportFormat(
            "index_png",
            "single-channel index PNGs (255 ignore), id lists per split, classes.txt (mmsegmentation, torchvision)",
            "ml.exports.index_png:write_index_png",
        ),
    )
}


# The segmentation networks train_seg can train (torchvision.models.segmentation names), each with the
# torchvision classification network its backbone is: models.seg_weights are that network's weights.
SEGMENTER_BACKBONES: dict[str, str] = {
    "lraspp_mobilenet_v3_large": "mobilenet_v3_large",
    "deeplabv3_mobilenet_v3_large": "mobilenet_v3_large",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_resnet101": "resnet101",
}


def _always(_config) -> bool:
    return True


def _selects_words(config) -> bool:
    return config.train_pole.enabled and PROMPT_STRATEGIES[config.train_pole.prompt].uses_selected_words


@dataclass(frozen=True)
class Stage:
    name: str
    weight: float  # rough share of a run's time, for one overall progress figure
    section: str | None  # the config section it reads (recorded in its stage.json)
    evaluation: bool = False  # writes metrics.json, recorded per job
    enabled: Callable[[Any], bool] = _always  # (PipelineConfig) -> whether the run has this stage
    enabled_when: str = ""  # for messages: the settings that turn an optional stage on

    @property
    def module(self) -> str:
        return f"ml.stages.{self.name}"

    @property
    def command_name(self) -> str:
        return self.name.replace("_", "-")


STAGES: tuple[Stage, ...] = (
    Stage("train_cam", 0.15, "train_cam"),
    Stage(
        "select_prompts",
        0.05,
        "select_prompts",
        enabled=_selects_words,
        enabled_when="train_pole.enabled is true and train_pole.prompt uses selected words (pole)",
    ),
    Stage(
        "train_pole",
        0.35,
        "train_pole",
        enabled=lambda c: c.train_pole.enabled,
        enabled_when="train_pole.enabled is true",
    ),
    Stage("make_cams", 0.10, "make_cams"),
    Stage("eval_cams", 0.02, "eval", evaluation=True),
    Stage("make_seeds", 0.05, "make_seeds"),
    Stage("train_irn", 0.15, "train_irn"),
    Stage("refine", 0.08, "refine"),
    Stage("crf", 0.02, "crf", enabled=lambda c: c.crf.enabled, enabled_when="crf.enabled is true"),
    Stage("eval_masks", 0.01, "eval", evaluation=True),
    Stage(
        "train_seg",
        0.10,
        "train_seg",
        enabled=lambda c: c.train_seg.enabled,
        enabled_when="train_seg.enabled is true",
    ),
    Stage(
        "eval_seg",
        0.02,
        "train_seg",
        evaluation=True,
        enabled=lambda c: c.train_seg.enabled,
        enabled_when="train_seg.enabled is true",
    ),
    Stage("export", 0.02, "export"),
)
STAGE_BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
EVALUATION_STAGES: tuple[str, ...] = tuple(s.name for s in STAGES if s.evaluation)


def stages_for(config) -> list[str]:
    """The stages a config asks for, in order."""
    return [s.name for s in STAGES if s.enabled(config)]


def overall_progress(config, stage: str, fraction: float) -> float:
    names = stages_for(config)
    total = sum(STAGE_BY_NAME[n].weight for n in names)
    done = sum(STAGE_BY_NAME[n].weight for n in names[: names.index(stage)])
    return (done + STAGE_BY_NAME[stage].weight * fraction) / total


def final_cam_stage(config) -> str:
    """The stage whose CAM network the method ends with: train_pole's, or train_cam's for the baseline."""
    return "train_pole" if config.train_pole.enabled else "train_cam"


def final_masks_stage(config) -> str:
    """The stage whose masks are the run's result: the CRF post-process when enabled, else the random walk."""
    return "crf" if config.crf.enabled else "refine"
