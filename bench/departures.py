"""What each departure from the public CLIMS/POLE code changes: mIoU in the sample world, per setting.

    .venv/bin/python bench/departures.py [--n 600 --world-seed 1 --seeds 0 1 2 --jobs 2 --out bench-output/departures]
    smoke run: --n 40 --epochs 1 --seeds 0 --out bench-output/departures-smoke --results bench-output/departures-smoke

The setting of bench/quality.py: its world (made by its code) and its `demo` preset (the shipped tiny
CLIP, a ResNet-18 trained from scratch, IRNet on the frozen CAM backbone, training on the world's
"train" split), scored on the held-out "val" split, which no training stage sees; the runs stop at
eval_masks (no segmenter). The demo preset keeps pole's earlier choice on every item of the README's
table "Where pole may depart from the public code"; every other run changes one item of it, to the
public code's choice (the `paper` default, marked "paper") or to another value, and the last run
takes every choice of `paper` at once. Each runs with every seed of --seeds.

Work is shared where it is identical: per seed the demo run goes first, and another run starts from
a copy of its finished stages up to the first stage whose config differs (a threshold run retrains
nothing before make_seeds). Seconds are a run's own stages plus the copied ones', so that runs
compare. Runs resume: re-running the command finishes what an interrupted one left.

Prints one table (setting, CAM and mask mIoU as mean ± standard deviation over the seeds, seconds per
run) with the CPU (lscpu) and the machine's load average, and writes it with every figure per seed
to departures.md and departures.json in --results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from machine import cpu_model
from quality import PRESET, SPLIT, add_world_arguments, mean_spread, run_one, sample_world, split_scores

from ml.spec.config import PipelineConfig, config_to_dict, resolve_config
from ml.spec.registry import stages_for

LAST_STAGE = "eval_masks"
NO_SEGMENTER = {"train_seg": {"enabled": False}}  # the masks are scored, not a segmenter trained on them
TRAINING = ("train_cam", "train_pole", "train_irn")
DEMO = "demo (pole's choices)"
# What each stage reads of the config, in pipeline order: a run shares the demo run's stages up to the
# first one whose sections (or an earlier stage's) differ.
STAGE_SECTIONS = (
    ("train_cam", ("seed", "models", "train_split", "train_cam")),
    ("select_prompts", ("select_prompts", "make_cams")),
    ("train_pole", ("train_pole",)),
    ("make_cams", ("make_cams",)),
    ("eval_cams", ("eval",)),
    ("make_seeds", ("make_seeds",)),
    ("train_irn", ("train_irn",)),
    ("refine", ("refine",)),
    ("crf", ("crf",)),
    ("eval_masks", ()),
)


def thresholds(name: str) -> dict:
    """A named threshold set for make_seeds and refine, in place of the preset's own numbers."""
    return {
        "make_seeds": {"thresholds": name, "fg_threshold": None, "bg_threshold": None},
        "refine": {"thresholds": name, "bg_threshold": None},
    }


PAPER_CHOICES = {
    "optim.momentum 0 (paper)": {section: {"optim": {"momentum": 0.0}} for section in TRAINING},
    "train_pole.max_grad_norm 0 (paper)": {"train_pole": {"max_grad_norm": 0.0}},
    "train_pole.batchnorm batch (paper)": {"train_pole": {"batchnorm": "batch"}},
    "train_pole.clip_fill mean (paper)": {"train_pole": {"clip_fill": "mean"}},
    "train_pole.cbs_features raw (paper)": {"train_pole": {"cbs_features": "raw"}},
    "select_prompts.cam multiscale (paper)": {"select_prompts": {"cam": "multiscale"}},
    "thresholds clims (paper)": thresholds("clims"),
}


def settings(demo: PipelineConfig) -> dict[str, list[dict]]:
    """Every measured setting as the overrides it puts on the demo preset (`demo`, resolved)."""
    tenth = {
        "train_cam": {"lr": demo.train_cam.lr / 10},
        "train_pole": {"backbone_lr": demo.train_pole.backbone_lr / 10, "head_lr": demo.train_pole.head_lr / 10},
        "train_irn": {"lr": demo.train_irn.lr / 10},
    }
    return {
        DEMO: [],
        **{name: [overrides] for name, overrides in PAPER_CHOICES.items()},
        "optim.momentum 0.9, learning rates / 10": [tenth],
        "select_prompts.clip_fill mean": [{"select_prompts": {"clip_fill": "mean"}}],
        "thresholds irn": [thresholds("irn")],
        "every paper choice": list(PAPER_CHOICES.values()),
    }


def setting_config(overrides: list[dict], seed: int, epochs: int | None) -> PipelineConfig:
    shorter = {section: {"epochs": epochs} for section in TRAINING} if epochs else {}
    return resolve_config(PRESET, NO_SEGMENTER, shorter, *overrides, {"seed": seed})


def run_dir(out: Path, seed: int, setting: str) -> Path:
    return out / f"seed{seed}" / re.sub(r"[^a-z0-9]+", "-", setting.lower()).strip("-")


def shareable_stages(demo: PipelineConfig, config: PipelineConfig) -> list[str]:
    """The demo run's stages `config` would redo identically: those before the first that differs."""
    ours, theirs = config_to_dict(config), config_to_dict(demo)
    stages = stages_for(config)
    shared = []
    for stage, sections in STAGE_SECTIONS:
        if any(ours[section] != theirs[section] for section in sections):
            break
        if stage in stages:
            shared.append(stage)
    return shared


def markdown(results: dict) -> str:
    seeds = ", ".join(str(s) for s in results["seeds"])
    machine = results["machine"]
    lines = [
        f"mIoU (%) on the held-out `{SPLIT}` split ({results['world']['splits'][SPLIT]} images) of the sample "
        f"world ({results['world']['images']} images, world seed {results['world']['seed']}), `{PRESET}` preset "
        f"with one setting changed, mean ± standard deviation over seeds {seeds}"
        + (f", {results['epochs']} epoch(s) per training stage" if results["epochs"] else "")
        + "; seconds per run.",
        "",
        "| setting | CAM mIoU | mask mIoU | seconds |",
        "|---|---|---|---|",
    ]
    for name, row in results["settings"].items():
        cam, mask = row["cam"], row["mask"]
        lines.append(
            f"| {name} | {cam['mean']:.1f} ± {cam['std']:.1f} | {mask['mean']:.1f} ± {mask['std']:.1f} "
            f"| {row['seconds']:.0f} |"
        )
    lines += [
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {results['jobs']} run(s) at a time; load average (1 min) "
        f"{machine['load_at_start']:.2f} at the start, {machine['load_at_end']:.2f} at the end; "
        f"{results['minutes']:.0f} min for this invocation (finished runs are not redone).",
        f"Made by `{results['command'].strip()}`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output/departures"), help="world and run directories")
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="where departures.json/.md go")
    add_world_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="epochs of every training stage (the preset's when left out)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once; torch threads are split between them")
    args = parser.parse_args(argv)
    command = ".venv/bin/python bench/departures.py " + " ".join(argv if argv is not None else sys.argv[1:])

    # Idle OpenMP threads sleep instead of spinning: the runs share the cores (the `pole` command does the same).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started, load_at_start = time.monotonic(), os.getloadavg()[0]
    world = args.out / "world"
    world_info = sample_world(world, args)
    if world_info is None:
        return 2
    named = settings(resolve_config(PRESET))
    configs = {(seed, name): setting_config(named[name], seed, args.epochs) for seed in args.seeds for name in named}
    seconds_file = args.out / "seconds.json"  # stage seconds per run directory, kept for resumed runs
    seconds = json.loads(seconds_file.read_text()) if seconds_file.is_file() else {}

    def record(run: Path, timings: dict) -> None:
        seconds[str(run)] = {**seconds.get(str(run), {}), **timings}
        seconds_file.write_text(json.dumps(seconds, indent=2) + "\n")

    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        demos = {}
        for seed in args.seeds:
            run = run_dir(args.out, seed, DEMO)
            config = config_to_dict(configs[seed, DEMO])
            demos[seed] = pool.submit(run_one, str(world), str(run), config, threads, LAST_STAGE)
        futures = {}
        for seed, future in demos.items():
            demo_run = run_dir(args.out, seed, DEMO)
            record(demo_run, future.result())
            print(f"seed {seed}: {DEMO} done", flush=True)
            for name in named:
                if name == DEMO:
                    continue
                run = run_dir(args.out, seed, name)
                copied = {}
                for stage in shareable_stages(configs[seed, DEMO], configs[seed, name]):
                    if not (run / stage).exists():
                        shutil.copytree(demo_run / stage, run / stage)
                        copied[stage] = seconds[str(demo_run)][stage]
                record(run, copied)
                config = config_to_dict(configs[seed, name])
                futures[seed, name] = pool.submit(run_one, str(world), str(run), config, threads, LAST_STAGE)
        for (seed, name), future in futures.items():
            record(run_dir(args.out, seed, name), future.result())
            print(f"seed {seed}: {name} done", flush=True)

    results = {
        "preset": PRESET,
        "world": world_info,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "jobs": args.jobs,
        "split": SPLIT,
        "settings": {},
        "command": command,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "load_at_start": load_at_start,
            "load_at_end": os.getloadavg()[0],
        },
        "minutes": (time.monotonic() - started) / 60,
    }
    for name in named:
        runs = {seed: run_dir(args.out, seed, name) for seed in args.seeds}
        per_seed = {
            seed: {
                "cam": split_scores(run, "eval_cams")["miou"],
                "mask": split_scores(run, "eval_masks")["miou"],
                "seconds": sum(seconds[str(run)].values()),
            }
            for seed, run in runs.items()
        }
        results["settings"][name] = {
            "overrides": named[name],
            "cam": mean_spread([r["cam"] for r in per_seed.values()]),
            "mask": mean_spread([r["mask"] for r in per_seed.values()]),
            "seconds": sum(r["seconds"] for r in per_seed.values()) / len(per_seed),
            "per_seed": per_seed,
        }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "departures.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.results / "departures.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
