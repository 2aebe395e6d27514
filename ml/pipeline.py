"""The whole method as an ordered list of stages, run with resume.

`run_pipeline` is what `pole run` and the worker call. Each stage module in ml/stages exposes
`run(ctx)`; a stage whose output directory exists is skipped, so calling this again after a crash
or a cancel picks up at the first unfinished stage.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from ml.data import Dataset
from ml.runtime import CancelFn, ProgressFn, StageContext, stage_done, write_json
from ml.spec.config import PipelineConfig, config_to_dict

log = logging.getLogger("pole")

# Order of execution, with a rough share of the run's time (for one overall progress figure).
STAGES: dict[str, float] = {
    "train_cam": 0.15,
    "select_prompts": 0.05,
    "train_pole": 0.35,
    "make_cams": 0.10,
    "eval_cams": 0.02,
    "make_seeds": 0.05,
    "train_irn": 0.15,
    "refine": 0.08,
    "crf": 0.02,
    "eval_masks": 0.01,
    "export": 0.02,
}


class RunDirError(ValueError):
    """The run directory belongs to a run with another config."""


StageEventFn = Callable[[str, str], None]  # (stage, "start" | "end" | "skip")


def stages_for(config: PipelineConfig) -> list[str]:
    """The stages a config asks for, in order."""
    names = list(STAGES)
    if not config.train_pole.enabled:
        names.remove("train_pole")
    if not config.train_pole.enabled or config.train_pole.prompt != "pole":
        names.remove("select_prompts")
    if not config.crf.enabled:
        names.remove("crf")
    return names


def overall_progress(config: PipelineConfig, stage: str, fraction: float) -> float:
    names = stages_for(config)
    total = sum(STAGES[n] for n in names)
    done = sum(STAGES[n] for n in names[: names.index(stage)])
    return (done + STAGES[stage] * fraction) / total


def run_pipeline(
    dataset: Dataset,
    out: Path,
    config: PipelineConfig,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    on_stage: StageEventFn | None = None,
    until: str | None = None,
) -> dict:
    """Run every unfinished stage (up to and including `until`); return the run summary."""
    check_weights(config, [n for n in stages_for(config) if not stage_done(out, n)])
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(out, config)
    failed_path = out / "failed_images.json"
    failed = json.loads(failed_path.read_text()) if failed_path.exists() else {}
    ctx = StageContext(
        dataset=dataset,
        out=out,
        config=config,
        on_progress=on_progress,
        should_cancel=should_cancel,
        failed_images=failed,
    )
    timings = {}
    for name in stages_for(config):
        if stage_done(out, name):
            log.info("stage %s: already done, skipped", name)
            if on_stage:
                on_stage(name, "skip")
        else:
            ctx.stage, ctx._last_report = name, 0.0
            if on_stage:
                on_stage(name, "start")
            ctx.check_cancel()
            started = time.monotonic()
            log.info("stage %s: started", name)
            importlib.import_module(f"ml.stages.{name}").run(ctx)
            timings[name] = round(time.monotonic() - started, 2)
            log.info("stage %s: finished in %.1fs", name, timings[name])
            ctx.progress(1.0, "done", force=True)
            if on_stage:
                on_stage(name, "end")
        if name == until:
            break
    return summarize(out, timings)


def check_weights(config: PipelineConfig, pending: list[str]) -> None:
    """Resolve every weight file the pending stages will load, before the first of them starts.

    A missing CLIP checkpoint must not surface only after hours of CAM training.
    """
    from ml.weights import resolve_backbone, resolve_clip

    models = config.models
    if "train_cam" in pending:
        resolve_backbone(models.cam_backbone, models.cam_weights)
    if {"select_prompts", "train_pole"} & set(pending):
        resolve_clip(models.clip_model, models.clip_pretrained)
    if "train_irn" in pending and models.irn_weights != "cam":
        resolve_backbone(models.irn_backbone, models.irn_weights)


def summarize(out: Path, timings: dict | None = None) -> dict:
    """Metrics, failed images and provenance gathered from a run directory."""
    summary: dict = {"out": str(out)}
    if timings:
        summary["stage_seconds"] = timings
    for stage in ("eval_cams", "eval_masks"):
        path = out / stage / "metrics.json"
        if path.exists():
            summary[stage] = json.loads(path.read_text())
    failed = out / "failed_images.json"
    summary["failed_images"] = json.loads(failed.read_text()) if failed.exists() else {}
    summary["provenance"] = provenance(out)
    return summary


def provenance(out: Path) -> dict:
    """Seeds, model names and weight/checkpoint hashes that produced a run, from its stage.json files."""
    record = {}
    for path in sorted(out.glob("*/stage.json")):
        data = json.loads(path.read_text())
        record[path.parent.name] = {k: data[k] for k in ("seed", "weights", "checkpoints") if k in data}
    return record


def _check_same_config(out: Path, config: PipelineConfig) -> None:
    """Resuming is only sound with the config that started the run."""
    path = out / "config.json"
    resolved = config_to_dict(config)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != resolved:
            changed = sorted(k for k in resolved if saved.get(k) != resolved[k])
            raise RunDirError(
                f"{out} holds a run with a different config (sections differ: {', '.join(changed)}); "
                "use a new --out directory or the original config"
            )
    else:
        write_json(path, resolved)
