"""Checks before the first stage: is there anything for this run to learn from?

Hours of training on a CLIP that cannot tell the class words apart end in masks that look like
any other run's. What can be known before training is checked here, once per run directory, and
written to preflight.json (ml.spec.layout): untrained weights, a CLIP trained on another domain
(a shipped CLIP's provenance file lists the words it was trained on), classes with too few images,
and a zero-shot test of CLIP on a sample of the images: for each class, does the prompt of its
name rank the images tagged with it above the others? The judgments are in ml.health_checks.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ml.data import Dataset
from ml.data.images import READ_ERRORS, read_image
from ml.device import pick_device
from ml.health_checks import few_images_warnings, weight_warnings, zero_shot_warnings
from ml.loaders import to_tensor01
from ml.models.clip_encoder import FrozenClip, cosine
from ml.spec.config import PipelineConfig
from ml.weights import ResolvedWeights

ZERO_SHOT_IMAGES = 200  # enough for a per-class AUC, a minute at most for a ViT-B/16 on a CPU
MIN_EACH_SIDE = 3  # tagged and untagged images a class needs in the sample for its AUC to mean anything
BATCH = 32


def run_preflight(dataset: Dataset, config: PipelineConfig) -> list[dict]:
    """The warnings for this dataset and config; loads CLIP when the run uses it."""
    uses_clip = config.train_pole.enabled
    counts = {name: 0 for name in dataset.classes}
    for image in dataset.images:
        for label in image.tags:
            counts[dataset.classes[label - 1]] += 1
    found = few_images_warnings(counts)
    if not uses_clip:
        return weight_warnings(config.models, False, []) + found
    clip = FrozenClip(config.models.clip_model, config.models.clip_pretrained, pick_device(config.device))
    unknown = unknown_words(clip.weights, dataset.classes)
    found = weight_warnings(config.models, True, unknown) + found
    if clip.weights.source != "random":  # random CLIP is already warned about; its AUCs say nothing more
        found += zero_shot_check(clip, dataset, config.select_prompts.template)
    return found


def unknown_words(weights: ResolvedWeights, classes: list[str]) -> list[str]:
    """The classes with a word the CLIP's provenance file says it never saw; [] when the file lists no vocabulary."""
    provenance = weights.path.with_suffix(".json") if weights.path else None
    if provenance is None or not provenance.is_file():
        return []
    vocabulary = {word.casefold() for word in json.loads(provenance.read_text()).get("vocabulary", [])}
    if not vocabulary:
        return []
    return [name for name in classes if any(word not in vocabulary for word in name.casefold().split())]


def zero_shot_check(clip: FrozenClip, dataset: Dataset, template: str) -> list[dict]:
    """Per class, the AUC of CLIP's image-prompt similarity separating tagged from untagged images of a sample."""
    sample = dataset.images[:: max(1, len(dataset.images) // ZERO_SHOT_IMAGES)][:ZERO_SHOT_IMAGES]
    pixels, tags = [], []
    for record in sample:
        try:
            rgb = read_image(record.image)
        except READ_ERRORS:  # the stages list unreadable images; here one fewer sample image is all it costs
            continue
        pixels.append(torch.nn.functional.interpolate(to_tensor01(rgb)[None], size=clip.image_size, mode="bilinear"))
        tags.append(set(record.tags))
    if not pixels:
        return []
    prompts = clip.encode_text([template.format(name) for name in dataset.classes])  # (K, D)
    with torch.no_grad():
        features = torch.cat(
            [clip.encode_images(torch.cat(pixels[i : i + BATCH]).to(clip.device)) for i in range(0, len(pixels), BATCH)]
        )
    similarity = cosine(features, prompts).cpu().numpy()  # (N, K)
    auc = {}
    for index, name in enumerate(dataset.classes):
        tagged = np.array([index + 1 in t for t in tags])
        if tagged.sum() >= MIN_EACH_SIDE and (~tagged).sum() >= MIN_EACH_SIDE:
            auc[name] = rank_auc(similarity[tagged, index], similarity[~tagged, index])
    return zero_shot_warnings(auc, cosine(prompts, prompts).cpu().numpy(), dataset.classes)


def rank_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half: the area under the ROC curve."""
    above = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((above + 0.5 * ties) / (len(positives) * len(negatives)))
