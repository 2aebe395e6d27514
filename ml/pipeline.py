"""The whole method as an ordered list of stages, run with resume.

`run_pipeline` is what `pole run` and the worker call. Each stage module in ml/stages exposes
`run(ctx)`; a stage whose output directory exists is skipped, so calling this again after a crash
or a cancel picks up at the first unfinished stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ml.data import Dataset
from ml.runtime import CancelFn, ProgressFn, StageContext, write_json
from ml.spec.config import PipelineConfig, config_to_dict
from ml.spec.layout import RunLayout
from ml.spec.registry import EVALUATION_STAGES, STAGE_BY_NAME, STAGES, load, stages_for
from ml.spec.weight_tags import BACKBONE, CLIP, weights_needed
from ml.synonym_llm import LlmEndpoint

log = logging.getLogger("pole")


class RunDirError(ValueError):
    """The run directory belongs to a run with another config."""


StageEventFn = Callable[[str, str], None]  # (stage, "start" | "end" | "skip")


def run_pipeline(
    dataset: Dataset,
    out: Path,
    config: PipelineConfig,
    on_progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    on_stage: StageEventFn | None = None,
    until: str | None = None,
    synonym_llm: LlmEndpoint | None = None,
) -> dict:
    """Run every unfinished stage (up to and including `until`); return the run summary. `synonym_llm` is the
    language model select_prompts asks for synonyms (the caller's settings; none asked without it)."""
    layout = RunLayout(out)
    check_weights(config, [n for n in stages_for(config) if not layout.stage_done(n)])
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(layout, config)
    if layout.read_preflight() is None:
        from ml.preflight import run_preflight

        found = run_preflight(dataset, config)
        write_json(layout.preflight, {"warnings": found})
        _log_warnings("preflight", found)
    ctx = StageContext(
        dataset=dataset,
        out=out,
        config=config,
        on_progress=on_progress,
        should_cancel=should_cancel,
        failed_images=layout.read_failed_images(),
        synonym_llm=synonym_llm,
    )
    timings = {}
    for name in stages_for(config):
        if layout.stage_done(name):
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
            load(f"{STAGE_BY_NAME[name].module}:run")(ctx)
            timings[name] = round(time.monotonic() - started, 2)
            log.info("stage %s: finished in %.1fs", name, timings[name])
            _log_warnings(name, layout.read_stage_warnings(name))
            ctx.progress(1.0, "done", force=True)
            if on_stage:
                on_stage(name, "end")
        if name == until:
            break
    return summarize(layout, timings)


def check_weights(config: PipelineConfig, pending: list[str]) -> None:
    """Resolve every weight file the pending stages will load, before the first of them starts.

    A missing CLIP checkpoint must not surface only after hours of CAM training.
    """
    from ml.weights import resolve_backbone, resolve_clip

    resolvers = {BACKBONE: resolve_backbone, CLIP: resolve_clip}
    for need in weights_needed(config, pending):
        resolvers[need.kind](need.model, need.weights)


def summarize(layout: RunLayout, timings: dict | None = None) -> dict:
    """What a run produced, for its callers to record: metrics of each evaluation stage that ran, the
    failed images, the chosen words and the provenance (seeds, weight and checkpoint hashes)."""
    summary: dict = {"out": str(layout.root)}
    if timings:
        summary["stage_seconds"] = timings
    for stage in EVALUATION_STAGES:
        metrics = layout.read_metrics(stage)
        if metrics is not None:
            summary[stage] = metrics
    summary["failed_images"] = layout.read_failed_images()
    summary["selections"] = layout.read_selections()
    summary["provenance"] = layout.provenance()
    summary["warnings"] = layout.read_warnings([stage.name for stage in STAGES])
    return summary


def _log_warnings(stage: str, found: list[dict]) -> None:
    for item in found:
        log.warning("%s: %s", stage, item["message"])


def _check_same_config(layout: RunLayout, config: PipelineConfig) -> None:
    """Resuming is only sound with the config that started the run."""
    resolved = config_to_dict(config)
    saved = layout.read_config()
    if saved is None:
        write_json(layout.config, resolved)
    elif saved != resolved:
        changed = sorted(k for k in resolved if saved.get(k) != resolved[k])
        raise RunDirError(
            f"{layout.root} holds a run with a different config (sections differ: {', '.join(changed)}); "
            "use a new --out directory or the original config"
        )
