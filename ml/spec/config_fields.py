"""The kinds of value a config setting holds, each with the range a worker can run with.

Types are strict: an integer setting refuses "3", 3.5 and true, a number setting takes integers, a
string setting refuses numbers; NaN and infinity are refused everywhere. Lists are accepted where a
tuple is kept, since JSON has no tuples. Upper bounds only stop values absurd on their face (a worker
would run out of memory or time on them); an operator's tighter ceilings are applied elsewhere.

A check of our own raises `PydanticCustomError` with the sentence the user reads; `ConfigError`'s
translation (ml/spec/config.py) puts the setting's dotted path in front and the offending value after.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field, Strict, with_config
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

MAX_WORDS = 1000  # background words, or synonyms of one class
MAX_CLASSES = 10_000
MAX_OVERRIDES = 100_000  # word overrides a derived run applies: at most one `use` per (image, class)
PRESET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
# auto | cpu | cuda | cuda:N, N a device index 0..63 without leading zeros
DEVICE = re.compile(r"auto|cpu|cuda|cuda:([0-9]|[1-5][0-9]|6[0-3])")


def integer(low: int, high: int) -> Any:
    return Annotated[int, Strict(), Field(ge=low, le=high)]


def number(
    *, ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> Any:
    return Annotated[float, Strict(), Field(ge=ge, gt=gt, le=le, lt=lt, allow_inf_nan=False)]


def text(min_length: int, max_length: int) -> Any:
    return Annotated[str, Strict(), Field(min_length=min_length, max_length=max_length)]


def choice(names: Collection[str]) -> Any:
    """A string that is one of `names`, checked at validation time so a registry's later entries count."""

    def check(value: str) -> str:
        if value not in names:
            raise PydanticCustomError("choice", "choose one of {choices}", {"choices": ", ".join(names)})
        return value

    return Annotated[str, Strict(), Field(max_length=64), AfterValidator(check)]


def _one_word_slot(template: str) -> str:
    # The stages fill it with str.format(word): any other brace would raise there, mid-run.
    if template.count("{}") != 1 or "{" in template.replace("{}", "", 1) or "}" in template.replace("{}", "", 1):
        raise PydanticCustomError("template", "must contain '{}' exactly once, for the class word, and no other brace")
    return template


def _known_device(device: str) -> str:
    if not DEVICE.fullmatch(device):
        raise PydanticCustomError("device", "expected auto, cpu, cuda or cuda:N with N from 0 to 63")
    return device


def _preset_name(name: str) -> str:
    if not PRESET_NAME.fullmatch(name):
        raise PydanticCustomError("preset", "expected a preset name (a-z, 0-9 and '-', at most 40 characters)")
    return name


def _ordered(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise PydanticCustomError("order", "expected [low, high] with low <= high")
    return pair


def _sweep(sweep: tuple[float, float, float]) -> tuple[float, float, float]:
    start, stop, step = sweep
    if start > stop or step <= 0:
        raise PydanticCustomError("sweep", "expected [start, stop, step] with start <= stop and step > 0")
    return sweep


def _distinct(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names):
        raise PydanticCustomError("duplicate", "lists a name more than once")
    return names


Flag = Annotated[bool, Strict()]
Epochs = integer(1, 10_000)
BatchSize = integer(1, 4096)
Workers = integer(0, 64)
Seed = integer(0, 2**32 - 1)  # numpy takes seeds below 2**32; databases store it as a 64-bit integer
CropSize = integer(16, 4096)
LongSide = integer(16, 8192)
Radius = integer(1, 64)
ExpTimes = integer(0, 16)  # the random walk takes 2**exp_times steps
Iterations = integer(0, 1000)
ContextLength = integer(1, 64)  # CLIP's text context is 77 tokens, the class word and template need some
SynonymCount = integer(0, 100)

LearningRate = number(gt=0, le=10)
Multiplier = number(ge=0, le=10_000)  # learning-rate multipliers and loss weights
Fraction = number(ge=0, le=1)  # thresholds and ratios
Momentum = number(ge=0, lt=1)
WeightDecay = number(ge=0, le=1)
PolyPower = number(ge=0, le=10)
GradNorm = number(ge=0)  # 0 turns clipping off
Similarity = number(ge=-1, le=1)  # a cosine similarity
Probability = number(gt=0, lt=1)  # 0 and 1 make the CRF's unary energy infinite
Width = number(gt=0, le=10_000)  # CRF kernel widths divide the features
Compat = number(ge=0, le=10_000)
Beta = number(gt=0, le=1000)
Scale = number(gt=0, le=8)

ModelName = text(1, 1024)  # a model name, a pretrained tag or a local weight file
SplitName = text(0, 64)
Word = text(1, 100)
Template = Annotated[str, Strict(), Field(max_length=200), AfterValidator(_one_word_slot)]
Device = Annotated[str, Strict(), Field(max_length=16), AfterValidator(_known_device)]
PresetName = Annotated[str, Strict(), Field(max_length=40), AfterValidator(_preset_name)]

SizeRange = Annotated[tuple[LongSide, LongSide], AfterValidator(_ordered)]
ScaleRange = Annotated[tuple[Scale, Scale], AfterValidator(_ordered)]
Sweep = Annotated[tuple[Fraction, Fraction, number(ge=0.001, le=1)], AfterValidator(_sweep)]
Scales = Annotated[tuple[Scale, ...], Field(min_length=1, max_length=16)]
Words = Annotated[tuple[Word, ...], Field(min_length=1, max_length=MAX_WORDS)]
Synonyms = Annotated[dict[Word, Annotated[list[Word], Field(max_length=MAX_WORDS)]], Field(max_length=MAX_CLASSES)]
RunName = text(0, 4096)  # a job id, or a run directory

# One word override as ml/spec/overrides.py applies it; "class" is a Python keyword, hence this form.
WordOverride = with_config(ConfigDict(extra="forbid"))(
    TypedDict(
        "WordOverride",
        {
            "image": Annotated[str, Strict(), Field(min_length=1, max_length=255)] | None,
            "class": Word,
            "action": choice(("use", "drop")),
            "word": Word,
        },
    )
)
WordOverrides = Annotated[tuple[WordOverride, ...], Field(max_length=MAX_OVERRIDES)]


def distinct_choices(names: Collection[str]) -> Any:
    """A non-empty tuple of names from `names`, each at most once."""
    return Annotated[tuple[choice(names), ...], Field(min_length=1, max_length=64), AfterValidator(_distinct)]
