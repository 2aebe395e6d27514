"""Which pretrained weights a run loads, and whether a worker's list of the weights it holds covers them.

The pipeline resolves these weights before its first stage (ml.pipeline.check_weights), and the API
compares them with what the live workers advertise before it accepts a job (app.job_service): both
read the one rule below, so the two never disagree on what a job needs.

A worker advertises the named tags whose files it has (ml.weights.held_weight_tags) as
`{"clip": [[model, tag], ...], "backbone": [[architecture, tag], ...]}`. Two kinds of value need no
advertisement: "random" loads no file, so every worker has it, and a file path names a file on the
worker's own disk, which no list of tags can cover: the worker's own check names it if it is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ml.spec.registry import SEGMENTER_BACKBONES

CLIP = "clip"
BACKBONE = "backbone"
RANDOM = "random"
_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class WeightNeed:
    """One pretrained model a run loads, with the settings that choose it."""

    kind: str  # CLIP or BACKBONE
    model_setting: str  # e.g. "models.cam_backbone"
    model: str
    weights_setting: str  # e.g. "models.cam_weights": the one to change when the weights cannot be had
    weights: str  # "random", a tag or a file path

    @property
    def needs_advertised_tag(self) -> bool:
        return self.weights != RANDOM and not looks_like_path(self.weights)


def weights_needed(config, stages: list[str]) -> list[WeightNeed]:
    """The weights `stages` of a run with `config` (a PipelineConfig) load, in the order they load them."""
    models = config.models
    needs = []
    if "train_cam" in stages:
        needs.append(
            WeightNeed(BACKBONE, "models.cam_backbone", models.cam_backbone, "models.cam_weights", models.cam_weights)
        )
    if {"select_prompts", "train_pole"} & set(stages):
        needs.append(
            WeightNeed(CLIP, "models.clip_model", models.clip_model, "models.clip_pretrained", models.clip_pretrained)
        )
    # "cam": train_irn reuses the trained CAM network's backbone, which is a checkpoint of the run.
    if "train_irn" in stages and models.irn_weights != "cam":
        needs.append(
            WeightNeed(BACKBONE, "models.irn_backbone", models.irn_backbone, "models.irn_weights", models.irn_weights)
        )
    # The segmenter's backbone is a classifier's, advertised under that classifier's name.
    if "train_seg" in stages:
        backbone = SEGMENTER_BACKBONES[models.seg_arch]
        needs.append(
            WeightNeed(BACKBONE, "models.seg_arch's backbone", backbone, "models.seg_weights", models.seg_weights)
        )
    return needs


def holds(advertised: dict, need: WeightNeed) -> bool:
    """Whether a worker that advertises `advertised` can load `need` without a network."""
    return not need.needs_advertised_tag or [need.model, need.weights] in advertised.get(need.kind, [])


def looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith(_PATH_SUFFIXES)
