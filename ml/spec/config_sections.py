"""The config's sections: one per stage, defaults the paper's numbers (METHOD.md).

Each section is a pydantic dataclass: checked when built and on every assignment, unknown keys
refused, and still a plain dataclass to the code that reads it (`dataclasses.asdict`, `replace`).
The value types and their ranges are in ml/spec/config_fields.py.
"""

from __future__ import annotations

from dataclasses import field

from pydantic import ConfigDict, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

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
    RunName,
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
    WordOverrides,
    Words,
    Workers,
    choice,
    distinct_choices,
)

SECTION = ConfigDict(extra="forbid", validate_assignment=True)

PROMPT_STRATEGIES: tuple[str, ...] = tuple(registry.PROMPT_STRATEGIES)
ADAPTORS = ("none", "learnable", "fixed")
# Settings where pole may depart from the public CLIMS/POLE code (README: "Where pole may depart
# from the public code"); each one's default is the public behaviour.
BATCHNORM_MODES = ("batch", "frozen")
CLIP_FILLS = ("mean", "black")
CBS_FEATURES = ("raw", "adapted")
SELECTION_CAMS = ("multiscale", "single")
# The arithmetic of the inference passes: "auto" or a torch dtype's name (ml/device.py DTYPES).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

# The momentum the public CLIMS/IRNet/POLE code trains with: its SGD wrapper (torchutils.PolyOptimizer)
# calls SGD(params, lr, weight_decay), which puts weight decay in the momentum slot, so every published
# figure was trained with momentum 1e-4, none in effect. 0 is the closest to that code: a step is lr
# times the gradient. Real momentum 0.9 at the same learning rates takes steps about 10x larger
# (1 / (1 - 0.9)): the demo presets' choice. The other way to take the published steps is 0.9 with
# every learning rate divided by 10 (train_cam.lr, train_pole.backbone_lr and head_lr, train_irn.lr).
PUBLIC_CODE_MOMENTUM = 0.0

# Seed and random-walk thresholds of the two public codes (METHOD.md steps 6 and 8). POLE's figures
# came from CLIMS's (run_sample.py), so they are the paper's; IRNet's are its own paper's.
PAPER_THRESHOLDS = "clims"
SEED_THRESHOLDS = {
    "clims": {"fg_threshold": 0.30, "bg_threshold": 0.10},
    "irn": {"fg_threshold": 0.30, "bg_threshold": 0.05},
}
WALK_THRESHOLDS = {"clims": {"bg_threshold": 0.2}, "irn": {"bg_threshold": 0.25}}
THRESHOLD_SETS = (*SEED_THRESHOLDS, "custom")

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
BatchNormMode = choice(BATCHNORM_MODES)
ClipFill = choice(CLIP_FILLS)
CbsFeatures = choice(CBS_FEATURES)
SelectionCam = choice(SELECTION_CAMS)
PrecisionName = choice(PRECISIONS)
ThresholdSet = choice(THRESHOLD_SETS)
SegmenterName = choice(registry.SEGMENTER_BACKBONES)


def settle_thresholds(section, sets: dict[str, dict[str, float]]) -> None:
    """Fill in and name a section's thresholds, in place (the rules are in MakeSeedsConfig's comment)."""
    named = section.thresholds in sets
    numbers = sets[section.thresholds if named else PAPER_THRESHOLDS]
    for key, value in numbers.items():
        given = getattr(section, key)
        if given is None:
            object.__setattr__(section, key, value)  # not setattr: that would validate the section again
        elif named and given != value:
            raise PydanticCustomError(
                "threshold_set",
                "{key} is {given}, but thresholds '{name}' means {value}; set thresholds to 'custom' to use "
                "your own numbers, or {key} to null to use the set's",
                {"key": key, "given": given, "name": section.thresholds, "value": value},
            )
    if section.thresholds is None:
        used = {key: getattr(section, key) for key in numbers}
        object.__setattr__(
            section, "thresholds", next((name for name, of_set in sets.items() if of_set == used), "custom")
        )


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
    # train_seg's network (a key of registry.SEGMENTER_BACKBONES) and its backbone's classification
    # weights, as cam_weights: never torchvision's segmentation weights, which have seen pixel labels.
    seg_arch: SegmenterName = "deeplabv3_resnet101"
    seg_weights: ModelName = "imagenet"


@dataclass(config=SECTION)
class OptimConfig:
    # Poly-decay SGD with real momentum, as DeepLab trains (train_seg).
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 1e-4
    poly_power: PolyPower = 0.9


@dataclass(config=SECTION)
class PublicCodeOptimConfig(OptimConfig):
    # The SGD every published CLIMS/IRNet/POLE figure was trained with (train_cam, train_pole,
    # train_irn): no momentum in effect, see PUBLIC_CODE_MOMENTUM.
    momentum: Momentum = PUBLIC_CODE_MOMENTUM


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
    optim: PublicCodeOptimConfig = field(default_factory=PublicCodeOptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(config=SECTION)
class SelectPromptsConfig:
    template: Template = "a photo of {}."
    num_synonyms: SynonymCount = 3  # m: candidates kept per class, plus the class name itself
    synonyms: Synonyms = field(default_factory=dict)  # the job's own lists win
    use_wordnet: Flag = True  # lexical fallback for classes with no list anywhere
    # Add a language model's synonyms (as the paper made its lists) where the service or `pole run` has an
    # endpoint (POLE_SYNONYM_LLM_URL); no endpoint, or false: none asked. Never for the job's own lists.
    llm_synonyms: Flag = True
    batch_size: BatchSize = 32
    # The CAM that masks the image: "multiscale" is make_cams' map (its scales and flip, as the public
    # POLE selection masks with the baseline's multi-scale, flipped CAM), "single" one pass at scale 1.
    cam: SelectionCam = "multiscale"
    # What CLIP sees where the CAM is 0: "black" as in the public selection (clip_selection.py masks the
    # raw image and hands it to CLIP's own preprocessing), or ImageNet's "mean" grey as train_pole's
    # public code does (ml/models/clip_encoder.py has the maths).
    clip_fill: ClipFill = "black"


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
    # CBS compares the foreground images' "raw" CLIP features with the background prompts', as POLE's
    # public code does (its adaptors act on OTM and BTM only), or their "adapted" features.
    cbs_features: CbsFeatures = "raw"
    # BatchNorm of the CAM network while it trains: "batch" statistics, as the public CLIMS/POLE network
    # does (only conv1/bn1's parameters frozen), or the running statistics of train_cam kept "frozen".
    batchnorm: BatchNormMode = "batch"
    # What CLIP sees where a map is 0, and where the crop was padded: ImageNet's "mean" grey, as the
    # public code masks the ImageNet-normalised image, or "black" (the [0, 1] image masked).
    clip_fill: ClipFill = "mean"
    # Largest global gradient norm per step; 0 = no clipping (the public code's setting). With
    # batchnorm "frozen" nothing bounds the features' scale, and a backbone trained from scratch can
    # take one huge step that saturates every map for good (0 everywhere, or 1).
    max_grad_norm: GradNorm = 0.0
    background_words: Words = DEFAULT_BACKGROUND_WORDS
    optim: PublicCodeOptimConfig = field(default_factory=PublicCodeOptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(config=SECTION)
class MakeCamsConfig:
    scales: Scales = (1.0, 0.5, 1.5, 2.0)
    flip: Flag = True
    batch_images: BatchSize = 1  # images per forward batch (all their scales/flips go together)
    # False keeps this stage (and select_prompts' multi-scale CAMs) in float32 whatever `precision`
    # says; the maps are stored as float16 either way.
    half_precision: Flag = True


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
    # The background scores of the two CRF maps. `thresholds` names the set they come from
    # (SEED_THRESHOLDS): "clims" (the paper's), "irn", or "custom" (your own). A number left out (or
    # null) is the named set's, CLIMS's for "custom"; a number given must be the set's unless the name
    # is "custom" or left out. Resolved, the name is the set the numbers are ("custom" when none).
    thresholds: ThresholdSet | None = None
    fg_threshold: Fraction | None = None
    bg_threshold: Fraction | None = None
    crf: CrfParams = field(default_factory=CrfParams)

    @model_validator(mode="after")
    def _named_thresholds(self) -> MakeSeedsConfig:
        settle_thresholds(self, SEED_THRESHOLDS)
        return self


@dataclass(config=SECTION)
class TrainIrnConfig:
    epochs: Epochs = 3
    batch_size: BatchSize = 32
    lr: LearningRate = 0.1
    radius: Radius = 10
    rescale: ScaleRange = (0.5, 1.5)
    crop_size: CropSize = 512
    optim: PublicCodeOptimConfig = field(default_factory=PublicCodeOptimConfig)


@dataclass(config=SECTION)
class RefineConfig:
    beta: Beta = 10.0
    exp_times: ExpTimes = 8  # the walk takes 2**exp_times steps
    radius: Radius = 5
    # The background score against the walked maps (WALK_THRESHOLDS), named as in MakeSeedsConfig.
    thresholds: ThresholdSet | None = None
    bg_threshold: Fraction | None = None

    @model_validator(mode="after")
    def _named_thresholds(self) -> RefineConfig:
        settle_thresholds(self, WALK_THRESHOLDS)
        return self


@dataclass(config=SECTION)
class TrainSegConfig:
    # A segmentation network (models.seg_arch) trained on the final pseudo masks of the train_split
    # images, as WSSS papers train DeepLab on theirs; mask pixels of 255 add nothing to the loss.
    # 30 epochs of VOC's 10,582 train_aug images at batch 16 are about 20k iterations.
    enabled: Flag = True
    epochs: Epochs = 30
    batch_size: BatchSize = 16  # also the images predicted at once by eval_seg
    lr: LearningRate = 0.01
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # VOC's 500 px images scaled by 0.64-1.28


@dataclass(config=SECTION)
class CrfConfig:
    enabled: Flag = False
    params: CrfParams = field(default_factory=CrfParams)


@dataclass(config=SECTION)
class ExportConfig:
    formats: ExportFormatNames = ("cvat",)  # keys of registry.EXPORT_FORMATS


@dataclass(config=SECTION)
class DeriveConfig:
    # A derived run reuses the train_cam and select_prompts outputs of `parent` (a job id, or a run
    # directory for `pole run --parent`) and re-runs from train_pole with the chosen words corrected by
    # `overrides`, the exact list applied (ml/spec/overrides.py says what each means), so the run can be
    # rebuilt even after the parent's list has changed. parent "": not a derived run.
    parent: RunName = ""
    overrides: WordOverrides = ()


@dataclass(config=SECTION)
class PipelineConfig:
    preset: PresetName = "paper"
    seed: Seed = 0
    device: Device = "auto"
    # The arithmetic of the CAM networks' inference passes (make_cams): "auto" picks per device at run
    # time, float16 autocast on CUDA, bfloat16 on a CPU with AMX or AVX512-BF16 instructions, float32
    # elsewhere; "bfloat16" also runs on other CPUs, only slower. stage.json records what ran and why.
    precision: PrecisionName = "auto"
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
    train_seg: TrainSegConfig = field(default_factory=TrainSegConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    derive: DeriveConfig = field(default_factory=DeriveConfig)
