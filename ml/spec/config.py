"""Typed pipeline configuration: one dataclass per stage, presets as JSON data.

Defaults are the paper's numbers (METHOD.md); a preset (`ml/spec/presets/<name>.json`) overrides some of
them, a user's config file or a job's overrides go on top. `resolve_config` returns the object with
every default filled in; `config_to_dict` is what gets saved beside every output and in every
checkpoint, so a run can be rebuilt from its files alone.

This module imports no torch: the API validates job configs with it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

PRESETS_DIR = Path(__file__).parent / "presets"

# CBS background prompts of CLIMS ("a photo of {word}.").
DEFAULT_BACKGROUND_WORDS = (
    "tree",
    "river",
    "sea",
    "lake",
    "water",
    "railway",
    "railroad",
    "track",
    "stone",
    "rocks",
)


class ConfigError(ValueError):
    """A config value or key the pipeline cannot use; the message says which and what is valid."""


@dataclass
class ModelsConfig:
    # CLIP: an open_clip model name and a pretrained tag ("openai"), a local checkpoint file, or
    # "random" (explicitly untrained; tests only). See ml/weights.py for the resolution order.
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    # torchvision backbones: "imagenet", a local .pth file, or "random".
    cam_backbone: str = "resnet50"
    cam_weights: str = "imagenet"
    irn_backbone: str = "resnet50"
    # "cam" reuses the trained CAM backbone (frozen) where no ImageNet weights exist.
    irn_weights: str = "imagenet"


@dataclass
class OptimConfig:
    # Poly-decay SGD. momentum is a real 0.9: the public CLIMS/IRNet wrapper passes weight decay
    # into the momentum slot (momentum 1e-4 in effect); we do not copy that.
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9


@dataclass
class AugmentConfig:
    resize_long: tuple[int, int] = (320, 640)  # random long side, then flip, then random crop
    crop_size: int = 512
    hflip: bool = True


@dataclass
class TrainCamConfig:
    epochs: int = 5
    batch_size: int = 16
    lr: float = 0.1
    classifier_lr_mult: float = 10.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class SelectPromptsConfig:
    template: str = "a photo of {}."
    num_synonyms: int = 3  # m: candidates kept per class, plus the class name itself
    synonyms: dict[str, list[str]] = field(default_factory=dict)  # the job's own lists win
    use_wordnet: bool = True  # lexical fallback for classes with no list anywhere
    batch_size: int = 32


@dataclass
class LossWeights:
    otm: float = 10.0
    btm: float = 25.0
    cbs: float = 1.0
    reg: float = 0.0  # POLE; CLIMS uses (10, 24, 1, 0.2)


@dataclass
class TrainPoleConfig:
    # False gives the baseline method: CAMs come straight from the train_cam classifier.
    enabled: bool = True
    prompt: str = "pole"  # manual | pole | coop | defo | target
    template: str = "a photo of {}."
    epochs: int = 15
    batch_size: int = 16
    backbone_lr: float = 2.5e-4
    head_lr: float = 2.5e-3
    prompt_lr_mult: float = 0.001  # learnable prompt parts (coop/defo/target), x backbone_lr
    context_length: int = 3  # learnable context vectors (coop/defo), initialised from the template
    adaptor: str = "learnable"  # none | learnable (ratio vector) | fixed (scalar ratio)
    adaptor_ratio: float = 0.2
    loss: LossWeights = field(default_factory=LossWeights)
    cbs_threshold: float = 0.26
    # Largest global gradient norm per step; 0 = no clipping (the paper's setting). With batch
    # normalisation frozen nothing bounds the features' scale, and a backbone trained from scratch
    # can take one huge step that saturates every map for good (0 everywhere, or 1).
    max_grad_norm: float = 0.0
    background_words: tuple[str, ...] = DEFAULT_BACKGROUND_WORDS
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class MakeCamsConfig:
    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    batch_images: int = 1  # images per forward batch (all their scales/flips go together)
    half_precision: bool = True  # autocast on CUDA; maps are stored as float16 either way


@dataclass
class EvalConfig:
    cam_bg_threshold: float = 0.15
    sweep: tuple[float, float, float] = (0.05, 0.75, 0.05)  # start, stop (inclusive), step


@dataclass
class CrfParams:
    gt_prob: float = 0.7
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    iterations: int = 10


@dataclass
class MakeSeedsConfig:
    fg_threshold: float = 0.30
    bg_threshold: float = 0.05  # IRNet; CLIMS uses 0.10
    crf: CrfParams = field(default_factory=CrfParams)


@dataclass
class TrainIrnConfig:
    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.1
    radius: int = 10
    rescale: tuple[float, float] = (0.5, 1.5)
    crop_size: int = 512
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class RefineConfig:
    beta: float = 10.0
    exp_times: int = 8  # the walk takes 2**exp_times steps
    radius: int = 5
    bg_threshold: float = 0.25


@dataclass
class CrfConfig:
    enabled: bool = False
    params: CrfParams = field(default_factory=CrfParams)


@dataclass
class PipelineConfig:
    preset: str = "paper"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0  # DataLoader workers
    # Training stages use images of this split only ("" = every image); inference covers all.
    train_split: str = ""
    skip_bad_images: bool = False
    models: ModelsConfig = field(default_factory=ModelsConfig)
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    select_prompts: SelectPromptsConfig = field(default_factory=SelectPromptsConfig)
    train_pole: TrainPoleConfig = field(default_factory=TrainPoleConfig)
    make_cams: MakeCamsConfig = field(default_factory=MakeCamsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    make_seeds: MakeSeedsConfig = field(default_factory=MakeSeedsConfig)
    train_irn: TrainIrnConfig = field(default_factory=TrainIrnConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    crf: CrfConfig = field(default_factory=CrfConfig)


PROMPT_STRATEGIES = ("manual", "pole", "coop", "defo", "target")
ADAPTORS = ("none", "learnable", "fixed")


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def resolve_config(preset: str = "paper", *overrides: dict | None) -> PipelineConfig:
    """Defaults <- preset file <- each override dict in order; every key checked."""
    path = PRESETS_DIR / f"{preset}.json"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
    merged = _deep_merge({}, json.loads(path.read_text()))
    for extra in overrides:
        if extra:
            merged = _deep_merge(merged, extra)
    merged["preset"] = preset
    config = _build(PipelineConfig, merged, "")
    validate(config)
    return config


def load_config_file(path: str | Path) -> dict:
    """A user's override file: JSON or YAML, the same nested keys as `config_to_dict`."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def config_to_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(data: dict) -> PipelineConfig:
    """Rebuild a saved, fully resolved config (e.g. from a checkpoint)."""
    return _build(PipelineConfig, data, "")


def validate(config: PipelineConfig) -> None:
    if config.train_pole.prompt not in PROMPT_STRATEGIES:
        raise ConfigError(
            f"train_pole.prompt={config.train_pole.prompt!r}; choose one of {', '.join(PROMPT_STRATEGIES)}"
        )
    if config.train_pole.adaptor not in ADAPTORS:
        raise ConfigError(f"train_pole.adaptor={config.train_pole.adaptor!r}; choose one of {', '.join(ADAPTORS)}")
    for name in ("template",):
        for section in (config.train_pole, config.select_prompts):
            if getattr(section, name).count("{}") != 1:
                raise ConfigError(f"{type(section).__name__}.{name} must contain exactly one '{{}}' for the class word")
    if config.train_pole.max_grad_norm < 0:
        raise ConfigError("train_pole.max_grad_norm must be >= 0 (0 turns clipping off)")
    if not config.make_cams.scales:
        raise ConfigError("make_cams.scales must list at least one scale")
    if config.refine.exp_times < 0 or config.refine.radius < 1:
        raise ConfigError("refine.exp_times must be >= 0 and refine.radius >= 1")


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "synonyms":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; valid here: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{where}{name}")
    return cls(**kwargs)


def _coerce(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where + ".")
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, v, where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): [str(w) for w in v] for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
