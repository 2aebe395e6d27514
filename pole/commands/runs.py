"""`pole version`, `pole run` and `pole stage`: the pipeline from a terminal, no server needed.

Argument parsing only at import; torch and the stages load inside the handlers, so `pole --help`
and the service commands stay fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from ml.data import DatasetError
from ml.spec.config import ConfigError, available_presets, load_config_file, resolve_config
from ml.spec.layout import RunLayout
from ml.spec.registry import STAGE_BY_NAME, STAGES, stages_for


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("version", help="print pole, torch and device versions")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("run", help="run the whole pipeline on a dataset folder or .zip (resumes)")
    _dataset_args(p)
    p.add_argument("--until", metavar="STAGE", help="stop after this stage (e.g. train-pole)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stage", help="run one stage (earlier stages' outputs must be in --out)")
    p.add_argument("name", choices=[stage.command_name for stage in STAGES])
    _dataset_args(p)
    p.set_defaults(func=cmd_stage)


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset folder or .zip (manifest or VOC layout)")
    p.add_argument("--out", type=Path, required=True, help="run directory (created; reused to resume)")
    p.add_argument("--preset", default="paper", help=f"one of: {', '.join(available_presets())}")
    p.add_argument("--config", type=Path, help="JSON/YAML file of overrides, same keys as config.json")
    p.add_argument("--seed", type=int, help="overrides the config's seed")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--skip-bad", action="store_true", help="drop images with problems instead of refusing")


def cmd_version(args: argparse.Namespace) -> int:
    import torch

    from ml import __version__

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    print(f"pole {__version__}\ntorch {torch.__version__}\ndevice {device}")
    return 0


def cmd_run(args: argparse.Namespace, stage: str | None = None) -> int:
    """The whole pipeline (resuming), up to `--until`; or, with `stage`, that stage alone."""
    from ml.data.readers import resolve_dataset_path
    from ml.pipeline import run_pipeline

    until = stage or (args.until.replace("-", "_") if getattr(args, "until", None) else None)
    try:
        config = _config(args)
        problem = _stage_problem(config, until, args.out, alone=stage is not None) if until else None
        if problem:
            raise ConfigError(problem)
        dataset = _load(args, resolve_dataset_path(args.dataset, args.out), config.skip_bad_images)
        synonym_llm = _synonym_llm()
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ml.pipeline import RunDirError
    from ml.training import TrainingDiverged
    from ml.weights import WeightsError
    from pole.report import draw_run_figures, print_report, report_from_run

    try:
        with ProgressDisplay(config) as display:
            summary = run_pipeline(
                dataset,
                args.out,
                config,
                on_progress=display.update,
                on_stage=display.stage_event,
                until=until,
                synonym_llm=synonym_llm,
            )
    except (WeightsError, RunDirError, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume from the last finished stage in {args.out}")
        return 130
    layout = RunLayout(args.out)
    report = report_from_run(layout, dataset, config, summary)
    report.figures = draw_run_figures(layout, dataset, config, summary)
    print_report(report)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    return cmd_run(args, stage=args.name.replace("-", "_"))


def _stage_problem(config, stage: str, out: Path, alone: bool) -> str | None:
    """Why `stage` cannot run now: the config leaves it out, or (run alone) an earlier stage has not run."""
    names = stages_for(config)
    if stage not in names:
        known = STAGE_BY_NAME.get(stage)
        when = known.enabled_when if known else ""
        because = f": it runs when {when} (set it with --config)" if when else ""
        return f"no stage {stage!r} in this run{because}; this run's stages: {', '.join(names)}"
    missing = [name for name in names[: names.index(stage)] if not RunLayout(out).stage_done(name)] if alone else []
    if missing:
        command = stage.replace("_", "-")
        return (
            f"`pole stage {command}` runs that stage alone, on the outputs of the stages before it; "
            f"{out} lacks {', '.join(missing)}. Run `pole run ... --until {command}` to run them all"
        )
    return None


def _config(args: argparse.Namespace):
    overrides = load_config_file(args.config) if args.config else {}
    cli = {k: v for k, v in {"seed": args.seed, "device": args.device}.items() if v is not None}
    if args.skip_bad:
        cli["skip_bad_images"] = True
    return resolve_config(args.preset, overrides, cli)


def _synonym_llm():
    """The language model of POLE_SYNONYM_LLM_* (app/settings.py, as the service reads them), or None if unset."""
    from pydantic import ValidationError

    from app.settings import Settings

    try:
        return Settings().synonym_llm()
    except ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ConfigError(f"bad POLE_* setting: {problems}") from None


def _load(args: argparse.Namespace, path: Path, skip_bad: bool):
    from ml.data import load_dataset

    dataset = load_dataset(path, skip_bad=skip_bad)
    for problem in dataset.skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    return dataset


class ProgressDisplay:
    """One bar for the whole run: the stage and its own fraction in the description, the run's
    percentage by the bar; above it, a line for each stage as it finishes."""

    BAR_STEPS = 1000
    DESCRIPTION_WIDTH = 44

    def __init__(self, config):
        self.config = config
        self.started: dict[str, float] = {}
        self.skipped: list[str] = []  # finished by an earlier run: told in one line, not one each
        self.opened = ExitStack()

    def __enter__(self):
        from pole.progress import progress_bar

        self.bar = self.opened.enter_context(progress_bar(self.BAR_STEPS, self.DESCRIPTION_WIDTH))
        self.bar.set_description_str("starting")
        return self

    def __exit__(self, *exc):
        self._tell_skipped()
        return self.opened.__exit__(*exc)

    def update(self, stage: str, fraction: float, message: str) -> None:
        from ml.spec.registry import overall_progress

        self.bar.set_description_str(f"{stage} {fraction:4.0%} {message}", refresh=False)
        self.bar.n = int(self.BAR_STEPS * overall_progress(self.config, stage, fraction))
        self.bar.refresh()

    def stage_event(self, stage: str, event: str) -> None:
        from pole.report import duration

        if event == "skip":
            self.skipped.append(stage)
            self.update(stage, 1.0, "already done")
            self.bar.initial = self.bar.n  # work done by an earlier run says nothing of this one's pace
            return
        self._tell_skipped()
        if event == "start":
            self.started[stage] = time.monotonic()
        elif event == "end":
            self._write(f"{stage} finished in {duration(time.monotonic() - self.started[stage])}")

    def _tell_skipped(self) -> None:
        if self.skipped:
            self._write(f"already done: {', '.join(self.skipped)}")
            self.skipped = []

    def _write(self, line: str) -> None:
        self.bar.write(line, file=sys.stderr)
