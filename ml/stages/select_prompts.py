"""Stage 2 (POLE): choose, per image and tag, the class word CLIP finds closest to the CAM-masked image.

For every image and tag k: P_k = the baseline CAM of k at full size, divided by its max: make_cams'
multi-scale, flipped map (`cam` "multiscale", with make_cams.scales and make_cams.flip, as the public
POLE selection masks with the baseline's `high_res` CAM) or one pass at scale 1 ("single"). M_k is
the RGB image in [0, 1] masked by P_k, black or ImageNet's mean grey where P_k is 0 (`clip_fill`,
ml/models/clip_encoder.py), in float maths (the public code's uint8 cast of image*cam*255
overflows, and it reads BGR); encode M_k with CLIP, encode template.format(w) for every candidate w
of class k, and keep the word with the highest cosine.

Writes select_prompts/selections.jsonl (one object per (image, class): image, label, class,
candidates, scores, chosen), candidates.json (per class: words, scores, source) and stage.json (with
`synonym_llm`: the language model asked, the classes it answered and why it did not for the others).
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from ml.cams import NORM_EPS, cam_precision, multiscale_cams
from ml.device import pick_device, seed_everything
from ml.health_checks import selection_warnings, warning
from ml.loaders import to_tensor01
from ml.models.backbone import imagenet_normalize
from ml.models.cam_net import CamNet, load_cam_net
from ml.models.clip_encoder import FrozenClip, cosine, masked_for_clip
from ml.runtime import StageContext, atomic_dir, sha256_file, write_json, write_stage_record
from ml.spec.config import PipelineConfig
from ml.spec.layout import CANDIDATES, CHECKPOINT, SELECTIONS
from ml.synonym_llm import LlmSynonyms, ask_synonyms, open_to_llm, with_llm_words
from ml.synonyms import Candidates, gather_candidates, rank_candidates
from ml.training import autocast


def class_candidates(clip: FrozenClip, ctx: StageContext) -> tuple[dict[str, Candidates], LlmSynonyms | None]:
    """Per class, S_k: the class name, then its m synonyms (job > dataset > built-in > WordNet, with a language
    model's added where one is set) that are closest to it by CLIP text similarity; and what the model gave."""
    section = ctx.config.select_prompts

    def similarity(name: str, words: list[str]) -> list[float]:
        prompts = clip.encode_text([section.template.format(w) for w in [name, *words]])  # (1 + n, D)
        return cosine(prompts[:1], prompts[1:])[0].tolist()

    gathered = {
        name: gather_candidates(name, section.synonyms, ctx.dataset.synonyms, section.use_wordnet)
        for name in ctx.dataset.classes
    }
    llm = None
    if section.llm_synonyms and ctx.synonym_llm is not None:
        asked = [name for name, (words, source) in gathered.items() if open_to_llm(words, source)]
        llm = ask_synonyms(ctx.synonym_llm, asked, section.num_synonyms)
        gathered = {name: with_llm_words(name, *found, llm) for name, found in gathered.items()}
    ranked = {
        name: rank_candidates(name, words, similarity, section.num_synonyms, source)
        for name, (words, source) in gathered.items()
    }
    return ranked, llm


def selection_scales(config: PipelineConfig) -> tuple[tuple[float, ...], bool]:
    """(scales, flip) of the CAMs that mask the images: make_cams' for "multiscale", else scale 1 alone."""
    if config.select_prompts.cam == "multiscale":
        return config.make_cams.scales, config.make_cams.flip
    return (1.0,), False


def tag_cams(net: CamNet, rgb: np.ndarray, tags: list[int], config: PipelineConfig) -> torch.Tensor:
    """(H, W, 3) uint8 image -> (T, H, W) CAMs of its tags at full size, each divided by its max."""
    if config.select_prompts.cam == "multiscale":
        scales, flip = selection_scales(config)
        precision = cam_precision(config, next(net.parameters()).device)
        ((cams, _),) = multiscale_cams(net, [rgb], [tags], scales, flip, precision)
        return cams
    device = next(net.parameters()).device
    x01 = to_tensor01(rgb).to(device)
    rows = torch.tensor(tags, device=device) - 1
    with torch.no_grad(), autocast(device):
        cams = net.cams(imagenet_normalize(x01[None]))[0, rows].float()  # (T, h, w)
        cams = F.interpolate(cams[None], size=x01.shape[-2:], mode="bilinear", align_corners=False)[0]
        return cams / (cams.flatten(1).amax(1)[:, None, None] + NORM_EPS)


def masked_images(x01: torch.Tensor, cams: torch.Tensor, size: tuple[int, int], fill: str) -> torch.Tensor:
    """(3, H, W) image in [0, 1] and (T, H, W) CAMs in [0, 1] -> (T, 3, *size): the image masked by
    each CAM (`fill` where it is 0), at CLIP's input size."""
    masked = masked_for_clip(x01[None], cams[:, None], fill)  # (T, 3, H, W)
    return F.interpolate(masked, size=size, mode="bilinear", align_corners=False, antialias=True)


def choose_words(
    clip: FrozenClip,
    pixels: torch.Tensor,
    pairs: list[tuple[str, int]],
    classes: list[str],
    words: dict[str, list[str]],
    word_features: dict[str, torch.Tensor],
) -> list[dict]:
    """(P, 3, S, S) masked images of P (image id, label) pairs -> one selection record per pair."""
    with torch.no_grad(), autocast(pixels.device):
        features = clip.encode_images(pixels)  # (P, D)
    records = []
    for (image_id, label), feature in zip(pairs, features, strict=True):
        name = classes[label - 1]
        scores = cosine(feature[None], word_features[name])[0].tolist()
        best = max(range(len(scores)), key=scores.__getitem__)
        records.append(
            {
                "image": image_id,
                "label": label,
                "class": name,
                "candidates": words[name],
                "scores": scores,
                "chosen": words[name][best],
            }
        )
    return records


def run(ctx: StageContext) -> None:
    if ctx.layout.stage_done(ctx.stage):
        return
    config, section = ctx.config, ctx.config.select_prompts
    classes = ctx.dataset.classes
    device = pick_device(config.device)
    seed_everything(config.seed)
    cam_path = ctx.checkpoint("train_cam")
    net, _ = load_cam_net(cam_path, device)
    clip = FrozenClip(config.models.clip_model, config.models.clip_pretrained, device)
    ranked, llm = class_candidates(clip, ctx)
    words = {name: ranked[name].words for name in classes}
    word_features = {name: clip.encode_text([section.template.format(w) for w in ws]) for name, ws in words.items()}
    scales, flip = selection_scales(config)
    records: list[dict] = []
    pairs: list[tuple[str, int]] = []  # (image id, label) pairs waiting for one batched CLIP encode
    pixels: list[torch.Tensor] = []
    for image, rgb in ctx.each_image():
        cams = tag_cams(net, rgb, list(image.tags), config)
        with torch.no_grad(), autocast(device):
            pixels.append(masked_images(to_tensor01(rgb).to(device), cams, clip.image_size, section.clip_fill))
        pairs.extend((image.id, label) for label in image.tags)
        if len(pairs) >= section.batch_size:
            records += choose_words(clip, torch.cat(pixels), pairs, classes, words, word_features)
            pairs, pixels = [], []
    if pairs:
        records += choose_words(clip, torch.cat(pixels), pairs, classes, words, word_features)
    with atomic_dir(ctx.stage_dir()) as scratch:
        (scratch / SELECTIONS).write_text("".join(json.dumps(r) + "\n" for r in records))
        write_json(
            scratch / CANDIDATES,
            {name: {"words": c.words, "scores": c.scores, "source": c.source} for name, c in ranked.items()},
        )
        notes = selection_warnings(records)
        if clip.weights.source == "random":
            notes.append(warning("random_clip", "CLIP weights are random: the chosen words are arbitrary"))
        if llm is not None and llm.errors:
            notes.append(warning("synonym_llm_failed", llm.failure_message(), list(llm.errors)))
        write_stage_record(
            scratch,
            ctx,
            weights={"clip": clip.weights.record()},
            inputs={f"train_cam/{CHECKPOINT}": sha256_file(cam_path)},
            cams={"scales": list(scales), "flip": flip},
            images=len({r["image"] for r in records}),
            warnings=notes,
            synonym_llm=llm.record() if llm is not None else None,
        )
