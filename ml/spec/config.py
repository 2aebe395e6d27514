"""Typed pipeline configuration: one section per stage, presets as JSON data.

Defaults are the paper's numbers (METHOD.md); a preset (`ml/spec/presets/<name>.json`) overrides some of
them, a user's config file or a job's overrides go on top. `resolve_config` returns the object with
every default filled in; `config_to_dict` is what gets saved beside every output and in every
checkpoint, so a run can be rebuilt from its files alone.

The sections are in ml/spec/config_sections.py, the kinds of value and their ranges in
ml/spec/config_fields.py. This module imports no torch: the API validates job configs with it.
"""

from __future__ import annotations

import dataclasses
import json
import reprlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ml.spec.config_fields import PRESET_NAME
from ml.spec.config_sections import (
    ADAPTORS,
    DEFAULT_BACKGROUND_WORDS,
    PROMPT_STRATEGIES,
    AugmentConfig,
    CrfConfig,
    CrfParams,
    DeriveConfig,
    EvalConfig,
    ExportConfig,
    LossWeights,
    MakeCamsConfig,
    MakeSeedsConfig,
    ModelsConfig,
    OptimConfig,
    PipelineConfig,
    PublicCodeOptimConfig,
    RefineConfig,
    SelectPromptsConfig,
    TrainCamConfig,
    TrainIrnConfig,
    TrainPoleConfig,
    TrainSegConfig,
)

__all__ = [
    "ADAPTORS",
    "DEFAULT_BACKGROUND_WORDS",
    "PRESETS_DIR",
    "PROMPT_STRATEGIES",
    "AugmentConfig",
    "ConfigError",
    "CrfConfig",
    "CrfParams",
    "DeriveConfig",
    "EvalConfig",
    "ExportConfig",
    "LossWeights",
    "MakeCamsConfig",
    "MakeSeedsConfig",
    "ModelsConfig",
    "OptimConfig",
    "PipelineConfig",
    "PublicCodeOptimConfig",
    "RefineConfig",
    "SelectPromptsConfig",
    "TrainCamConfig",
    "TrainIrnConfig",
    "TrainPoleConfig",
    "TrainSegConfig",
    "available_presets",
    "config_from_dict",
    "config_to_dict",
    "load_config_file",
    "resolve_config",
]

PRESETS_DIR = Path(__file__).parent / "presets"
SHOWN_CHARS = 60  # of an offending value or key in a message: job documents are the user's, not the log's
MAX_PROBLEMS = 30  # listed in one message; past that only their number

_PIPELINE = TypeAdapter(PipelineConfig)
_REPR = reprlib.Repr()  # a bounded repr: a huge list or number is not rendered whole only to be clipped
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = SHOWN_CHARS

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "dict_type": "a mapping",
    "dataclass_type": "a mapping",
}
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}
_LENGTHS = {
    "too_short": ("min_length", "at least", "item"),
    "too_long": ("max_length", "at most", "item"),
    "string_too_short": ("min_length", "at least", "character"),
    "string_too_long": ("max_length", "at most", "character"),
}


class ConfigError(ValueError):
    """A config value or key the pipeline cannot use; the message says which and what is valid."""


def available_presets() -> list[str]:
    return sorted(_preset_files())


def resolve_config(preset: str = "paper", *overrides: dict | None) -> PipelineConfig:
    """Defaults <- preset file <- each override dict in order; every key and value checked."""
    merged = _deep_merge({}, _read_preset(preset))
    for number, extra in enumerate(overrides, 1):
        if not extra:
            continue
        if not isinstance(extra, Mapping):
            raise ConfigError(f"override {number}: expected a mapping of config sections, got {_shown(extra)}")
        merged = _deep_merge(merged, extra)
    merged["preset"] = preset
    return _validated(merged)


def load_config_file(path: str | Path) -> dict:
    """A user's override file: JSON or YAML, the same nested keys as `config_to_dict`."""
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise ConfigError(f"{path}: not valid YAML{f' (line {mark.line + 1})' if mark else ''}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def config_to_dict(config: Any) -> dict:
    """A whole config or one section -> plain JSON-able data (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(data: dict) -> PipelineConfig:
    """Rebuild a saved, fully resolved config (e.g. from a checkpoint)."""
    return _validated(data)


def _preset_files() -> dict[str, Path]:
    return {path.stem: path for path in PRESETS_DIR.glob("*.json") if PRESET_NAME.fullmatch(path.stem)}


def _read_preset(preset: object) -> dict:
    # The name picks one of the shipped files; a path is never built from it, so a job cannot name
    # another file on the host, and the message never quotes a file's content.
    shipped = _preset_files()
    if not isinstance(preset, str) or not PRESET_NAME.fullmatch(preset) or preset not in shipped:
        raise ConfigError(f"unknown preset {_shown(preset)}; available: {', '.join(sorted(shipped))}")
    try:
        data = json.loads(shipped[preset].read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"preset {preset!r} cannot be read ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"preset {preset!r}: expected a mapping of config sections")
    return data


def _deep_merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for key, value in extra.items():
        # A job's synonym lists replace the preset's whole table: merging would keep words it dropped.
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "synonyms":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _validated(data: object) -> PipelineConfig:
    try:
        return _PIPELINE.validate_python(data)
    except ValidationError as err:
        raise _config_error(err) from None


def _config_error(error: ValidationError) -> ConfigError:
    """Every problem at once: "<dotted.path>: <what is wrong>, got <the value>", unknown keys grouped
    by section with the keys valid there. Only offending values are quoted, and clipped."""
    unknown: dict[tuple, list[str]] = {}
    problems: list[str] = []
    for issue in error.errors(include_url=False):
        loc, kind, ctx = issue["loc"], issue["type"], issue.get("ctx", {})
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown.setdefault(loc[:-1], []).append(_path(loc))
            continue
        got = f", got {_shown(issue['input'])}"
        if kind in _EXPECTED:
            what = f"expected {_EXPECTED[kind]}"
        elif kind in _BOUNDS:
            key, sign = _BOUNDS[kind]
            bound = ctx[key]
            what = f"must be {sign} {int(bound) if isinstance(bound, float) and bound.is_integer() else bound}"
        elif kind in _LENGTHS:
            key, side, unit = _LENGTHS[kind]
            what = f"expected {side} {ctx[key]} {unit}{'' if ctx[key] == 1 else 's'}"
            got = f", got {ctx['actual_length']}" if "actual_length" in ctx else got
        elif kind == "missing":
            what, got = "missing: the list is too short", ""
        else:  # the sentences of our own checks; a check of a whole section names the values itself
            what = issue["msg"]
            got = "" if isinstance(issue["input"], Mapping) else got
        problems.append(f"{_path(loc)}: {what}{got}")
    groups = [f"unknown key(s) {_listed(keys, ', ')} (valid here: {_keys_at(loc)})" for loc, keys in unknown.items()]
    return ConfigError(_listed(groups + problems, "; "))


def _listed(items: list[str], separator: str) -> str:
    more = f" and {len(items) - MAX_PROBLEMS} more" if len(items) > MAX_PROBLEMS else ""
    return separator.join(items[:MAX_PROBLEMS]) + more


def _keys_at(loc: tuple) -> str:
    section: object = PipelineConfig()
    for part in loc:
        section = getattr(section, part, None) if isinstance(part, str) else None
    return ", ".join(f.name for f in dataclasses.fields(section)) if dataclasses.is_dataclass(section) else "none"


def _path(loc: tuple) -> str:
    path = ""
    for part in loc:
        name = _clip(str(part) if str(part).isprintable() else repr(part))
        path += f"[{part}]" if isinstance(part, int) else f".{name}" if path else name
    return path or "config"


def _shown(value: object) -> str:
    # A mapping is a section or a whole document: its shape is the problem, its content is not needed.
    return "a mapping" if isinstance(value, Mapping) else _clip(_REPR.repr(value))


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."
