"""Training the tiny CLIP shipped as "pole-tiny"/"pole-world" (`pole world train-clip`), and its export.

No pretrained CLIP can be downloaded here, so pole trains open_clip's own model classes and tokenizer
on views of rendered world scenes, contrastively against captions made of the world's words.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from ml.runtime import sha256_file, write_json
from ml.weights import register_shipped_clip_configs
from ml.world.views import TEMPLATE, VOCABULARY, captions_for, render_pool, sample_views


@dataclass
class ClipTrainConfig:
    model: str = "pole-tiny"
    seed: int = 0
    world_seed: int = 1000  # training scenes; evaluation scenes use world_seed + 1
    scenes: int = 8000  # rendered once, then viewed through random crops and masks
    scene_size: int = 128
    steps: int = 3500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 150
    eval_scenes: int = 400
    threads: int = 0  # torch CPU threads; 0 keeps torch's setting


# --- loss and model inputs ------------------------------------------------------------------------


def contrastive_loss(image_features, text_features, logit_scale, fit) -> torch.Tensor:
    """Symmetric cross-entropy with soft targets: each view's captions weighted by fit, and back."""
    logits = logit_scale * image_features @ text_features.T  # (B, C)
    loss = logits.new_zeros(())
    for scores, targets in ((logits, fit), (logits.T, fit.T)):
        total = targets.sum(dim=1)
        rows = total > 0
        if rows.any():
            p = targets[rows] / total[rows, None]
            loss = loss + (-(p * F.log_softmax(scores[rows], dim=1)).sum(dim=1)).mean() / 2
    return loss


class TokenCache:
    """open_clip's tokenizer is pure python; the same few hundred captions recur every step."""

    def __init__(self, model_name: str):
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.tokenizer(missing), strict=True))
        return torch.stack([self.cache[t] for t in texts])


def input_size(model) -> int:
    size = model.visual.image_size
    return size if isinstance(size, int) else size[0]


def normalise(pixels: torch.Tensor, model) -> torch.Tensor:
    cfg = model.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (pixels - mean) / std


# --- training ------------------------------------------------------------------------------------

ProgressFn = Callable[[int, int, float], None]  # (step, steps, loss)


def create_model(name: str):
    register_shipped_clip_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"CLIP model {name!r} unknown; ship its config in ml/assets/ or pick from open_clip's list")
    return open_clip.create_model(name, pretrained=None)


def train_clip(config: ClipTrainConfig, on_progress: ProgressFn | None = None):
    """Train from scratch; returns (model in eval mode, record of what was done)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    started, cpu_started = time.monotonic(), time.process_time()
    pool = render_pool(config.scenes, config.world_seed, config.scene_size)
    render_seconds = time.monotonic() - started
    model = create_model(config.model)
    tokens = TokenCache(config.model)
    out_size = input_size(model)
    optimizer = _optimizer(model, config)
    losses = []
    model.train()
    for step in range(config.steps):
        lr = _lr(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        views = sample_views(pool, config.batch_size, out_size, gen)
        captions, fit = captions_for(views.weights, gen)
        image_features = F.normalize(model.encode_image(normalise(views.pixels, model)), dim=-1)
        text_features = F.normalize(model.encode_text(tokens(captions)), dim=-1)
        loss = contrastive_loss(image_features, text_features, model.logit_scale.exp(), fit)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if on_progress:
            on_progress(step + 1, config.steps, float(np.mean(losses[-50:])))
    model.eval()
    record = {
        "train_config": asdict(config),
        "render_seconds": round(render_seconds, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "loss_curve": [round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)],
        "torch_threads": torch.get_num_threads(),
    }
    return model, record


def _optimizer(model, config: ClipTrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def _lr(step: int, config: ClipTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


# --- export --------------------------------------------------------------------------------------


def export(model, path: str | Path, record: dict, evaluation: dict) -> dict:
    """Write the fp16 checkpoint (open_clip loads it as `pretrained=path`) and its provenance JSON beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    name = record["train_config"]["model"]
    state = {k: v.detach().half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "model": name, "model_cfg": open_clip.get_model_config(name)}, path)
    provenance = {
        "model": name,
        "model_cfg": open_clip.get_model_config(name),
        "checkpoint": path.name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "dtype": "float16",
        "preprocess": {k: list(v) if isinstance(v, tuple) else v for k, v in model.visual.preprocess_cfg.items()},
        "template": TEMPLATE,
        "vocabulary": list(VOCABULARY),
        "data": {
            "generator": "ml.world.scenes",
            "train_scenes": {"seed": record["train_config"]["world_seed"], "count": record["train_config"]["scenes"]},
            "eval_scenes": {
                "seed": record["train_config"]["world_seed"] + 1,
                "count": record["train_config"]["eval_scenes"],
            },
        },
        **record,
        "zero_shot": evaluation,
    }
    write_json(path.with_suffix(".json"), provenance)
    return provenance
