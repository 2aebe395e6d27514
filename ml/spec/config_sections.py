"""The config's sections: one per stage, defaults the paper's numbers (METHOD.md).

Each section is a pydantic dataclass: checked when built and on every assignment, unknown keys
refused, and still a plain dataclass to the code that reads it (`dataclasses.asdict`, `replace`).
The value types and their ranges are in ml/spec/config_fields.py.
"""

from __future__ import annotations

from dataclasses import field

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

from ml.spec import registry
from ml.spec.config_fields import (
    BatchSize,
    Beta,
    Compat,
    ContextLength,
    CropSize,
    Device,
    Epochs,
    ExpTimes,
    Flag,
    Fraction,
    GradNorm,
    Iterations,
    LearningRate,
    ModelName,
    Momentum,
    Multiplier,
    PolyPower,
    PresetName,
    Probability,
    Radius,
    ScaleRange,
    Scales,
    Seed,
    Similarity,
    SizeRange,
    SplitName,
    Sweep,
    SynonymCount,
    Synonyms,
    Template,
    WeightDecay,
    Width,
    Words,
    Workers,
    choice,
    distinct_choices,
)

SECTION = ConfigDict(extra="forbid", validate_assignment=True)

PROMPT_STRATEGIES: tuple[str, ...] = tuple(registry.PROMPT_STRATEGIES)
ADAPTORS = ("none", "learnable", "fixed")

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

PromptName = choice(registry.PROMPT_STRATEGIES)
AdaptorName = choice(ADAPTORS)
ExportFormatNames = distinct_choices(registry.EXPORT_FORMATS)


@dataclass(config=SECTION)
class ModelsConfig:
    # CLIP: an open_clip model name and a pretrained tag ("openai"), a local checkpoint file, or
    # "random" (explicitly untrained; tests only). See ml/weights.py for the resolution order.
    clip_model: ModelName = "ViT-B-32"
    clip_pretrained: ModelName = "openai"
    # torchvision backbones: "imagenet", a local .pth file, or "random".
    cam_backbone: ModelName = "resnet50"
    cam_weights: ModelName = "imagenet"
    irn_backbone: ModelName = "resnet50"
    # "cam" reuses the trained CAM backbone (frozen) where no ImageNet weights exist.
    irn_weights: ModelName = "imagenet"


@dataclass(config=SECTION)
class OptimConfig:
    # Poly-decay SGD. momentum is a real 0.9: the public CLIMS/IRNet wrapper passes weight decay
    # into the momentum slot (momentum 1e-4 in effect); we do not copy that.
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 1e-4
    poly_power: PolyPower = 0.9


@dataclass(config=SECTION)
class AugmentConfig:
    resize_long: SizeRange = (320, 640)  # random long side, then flip, then random crop
    crop_size: CropSize = 512
    hflip: Flag = True


@dataclass(config=SECTION)
class TrainCamConfig:
    epochs: Epochs = 5
    batch_size: BatchSize = 16
    lr: LearningRate = 0.1
    classifier_lr_mult: Multiplier = 10.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(config=SECTION)
class SelectPromptsConfig:
    template: Template = "a photo of {}."
    num_synonyms: SynonymCount = 3  # m: candidates kept per class, plus the class name itself
    synonyms: Synonyms = field(default_factory=dict)  # the job's own lists win
    use_wordnet: Flag = True  # lexical fallback for classes with no list anywhere
    batch_size: BatchSize = 32


@dataclass(config=SECTION)
class LossWeights:
    otm: Multiplier = 10.0
    btm: Multiplier = 25.0
    cbs: Multiplier = 1.0
    reg: Multiplier = 0.0  # POLE; CLIMS uses (10, 24, 1, 0.2)


@dataclass(config=SECTION)
class TrainPoleConfig:
    # False gives the baseline method: CAMs come straight from the train_cam classifier.
    enabled: Flag = True
    prompt: PromptName = "pole"  # a key of registry.PROMPT_STRATEGIES
    template: Template = "a photo of {}."
    epochs: Epochs = 15
    batch_size: BatchSize = 16
    backbone_lr: LearningRate = 2.5e-4
    head_lr: LearningRate = 2.5e-3
    prompt_lr_mult: Multiplier = 0.001  # learnable prompt parts (coop/defo/target), x backbone_lr
    context_length: ContextLength = 3  # learnable context vectors (coop/defo), initialised from the template
    adaptor: AdaptorName = "learnable"  # none | learnable (ratio vector) | fixed (scalar ratio)
    adaptor_ratio: Fraction = 0.2
    loss: LossWeights = field(default_factory=LossWeights)
    cbs_threshold: Similarity = 0.26
    # Largest global gradient norm per step; 0 = no clipping (the paper's setting). With batch
    # normalisation frozen nothing bounds the features' scale, and a backbone trained from scratch
    # can take one huge step that saturates every map for good (0 everywhere, or 1).
    max_grad_norm: GradNorm = 0.0
    background_words: Words = DEFAULT_BACKGROUND_WORDS
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(config=SECTION)
class MakeCamsConfig:
    scales: Scales = (1.0, 0.5, 1.5, 2.0)
    flip: Flag = True
    batch_images: BatchSize = 1  # images per forward batch (all their scales/flips go together)
    half_precision: Flag = True  # autocast on CUDA; maps are stored as float16 either way


@dataclass(config=SECTION)
class EvalConfig:
    cam_bg_threshold: Fraction = 0.15
    sweep: Sweep = (0.05, 0.75, 0.05)  # start, stop (inclusive), step


@dataclass(config=SECTION)
class CrfParams:
    gt_prob: Probability = 0.7
    gaussian_sxy: Width = 3.0
    gaussian_compat: Compat = 3.0
    bilateral_sxy: Width = 50.0
    bilateral_srgb: Width = 5.0
    bilateral_compat: Compat = 10.0
    iterations: Iterations = 10


@dataclass(config=SECTION)
class MakeSeedsConfig:
    fg_threshold: Fraction = 0.30
    bg_threshold: Fraction = 0.05  # IRNet; CLIMS uses 0.10
    crf: CrfParams = field(default_factory=CrfParams)


@dataclass(config=SECTION)
class TrainIrnConfig:
    epochs: Epochs = 3
    batch_size: BatchSize = 32
    lr: LearningRate = 0.1
    radius: Radius = 10
    rescale: ScaleRange = (0.5, 1.5)
    crop_size: CropSize = 512
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass(config=SECTION)
class RefineConfig:
    beta: Beta = 10.0
    exp_times: ExpTimes = 8  # the walk takes 2**exp_times steps
    radius: Radius = 5
    bg_threshold: Fraction = 0.25


@dataclass(config=SECTION)
class CrfConfig:
    enabled: Flag = False
    params: CrfParams = field(default_factory=CrfParams)


@dataclass(config=SECTION)
class ExportConfig:
    formats: ExportFormatNames = ("cvat",)  # keys of registry.EXPORT_FORMATS


@dataclass(config=SECTION)
class PipelineConfig:
    preset: PresetName = "paper"
    seed: Seed = 0
    device: Device = "auto"
    num_workers: Workers = 0  # DataLoader workers
    # Training stages use images of this split only ("" = every image); inference covers all.
    train_split: SplitName = ""
    skip_bad_images: Flag = False
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
    export: ExportConfig = field(default_factory=ExportConfig)
