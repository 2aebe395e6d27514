"""Quality in the sample world: mIoU of CAMs, refined masks and the segmenter trained on them, per method.

    .venv/bin/python bench/quality.py [--n 600 --world-seed 1 --seeds 0 1 2 --jobs 2 --out bench-output/quality]

Every method is the `demo` preset (shipped tiny CLIP, ResNet-18 trained from scratch, IRNet on the
frozen CAM backbone, training on the world's "train" split) with one change to train_pole:
  baseline        train_pole.enabled = false (CAMs straight from the classifier)
  clims           prompt manual (the class name), adaptor none, loss (10, 24, 1, 0.2)
  pole            prompt pole (the word chosen per image), adaptor none
  pole+adaptors   prompt pole, learnable adaptors
  coop            prompt coop (learned context), adaptor none
(`--methods` also knows defo and target.) Inference and evaluation cover every image; the table
reports the "val" split, which no training stage sees.

Each run also trains the preset's segmenter on its masks (train_seg, scored by eval_seg); per seed,
the same segmenter trained on the ground-truth masks of the same training images gives the fully
supervised figure the table compares them with (in a run directory whose stages before train_seg
count as done, with the ground truth where the final masks would be).

Work is shared where it is identical: for a seed, train_cam (and select_prompts, for the methods
that select words) runs once and its finished directory is copied into the other runs, so their
pipelines skip it. Runs resume: re-running the command finishes what an interrupted one left.
Writes quality.json (every figure per seed, the chosen words) and quality.md (the table) into
--results (bench/results, kept in the repository); with --readme FILE it also puts the table between
the markers of FILE, so the README's figures are always a run's; worlds and runs go to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from ml.spec.config import PipelineConfig, config_to_dict, resolve_config
from ml.spec.layout import RunLayout
from ml.spec.registry import final_masks_stage, stages_for

PRESET = "demo"
CLIMS_LOSS = {"otm": 10.0, "btm": 24.0, "cbs": 1.0, "reg": 0.2}
METHODS: dict[str, dict] = {
    "baseline": {"enabled": False},
    "clims": {"prompt": "manual", "adaptor": "none", "loss": CLIMS_LOSS},
    "pole": {"prompt": "pole", "adaptor": "none"},
    "pole+adaptors": {"prompt": "pole", "adaptor": "learnable"},
    "coop": {"prompt": "coop", "adaptor": "none"},
    "defo": {"prompt": "defo", "adaptor": "none"},
    "target": {"prompt": "target", "adaptor": "none"},
}
DEFAULT_METHODS = ("baseline", "clims", "pole", "pole+adaptors", "coop")
SHARED_STAGES = ("train_cam", "select_prompts")  # they run before train_pole, so its settings cannot change them
SPLIT = "val"
GROUND_TRUTH = "ground_truth"  # the run directory, per seed, of the segmenter trained on the ground truth
README_MARKERS = ("<!-- bench/quality.py: start -->", "<!-- bench/quality.py: end -->")


def method_config(method: str, seed: int, extra: dict) -> PipelineConfig:
    return resolve_config(PRESET, extra, {"seed": seed, "train_pole": METHODS[method]})


def run_dir(out: Path, seed: int, method: str) -> Path:
    return out / f"seed{seed}" / method.replace("+", "_")


def ground_truth_config(seed: int, extra: dict) -> PipelineConfig:
    """The preset's config: only its train_seg and models sections matter to a ground-truth run."""
    return resolve_config(PRESET, extra, {"seed": seed})


def prepare_ground_truth_run(world: Path, run: Path, config: PipelineConfig) -> None:
    """A run directory whose stages before train_seg count as done, with the ground-truth masks of the
    training images where the final masks would be: its pipeline trains the segmenter on them."""
    from ml.data import load_dataset
    from ml.data.images import read_mask
    from ml.data.palette import save_mask_png
    from ml.runtime import write_json

    layout = RunLayout(run)
    names = stages_for(config)
    for stage in names[: names.index("train_seg")]:
        layout.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    for record in load_dataset(world).split(config.train_split):
        save_mask_png(read_mask(record.mask), layout.mask(final_masks_stage(config), record.id))
    write_json(layout.preflight, {"warnings": []})


def run_one(world: str, out: str, config: dict, threads: int, until: str | None = None) -> dict:
    """One pipeline run in this (worker) process; returns its stage timings."""
    import torch

    from ml.data import load_dataset
    from ml.pipeline import run_pipeline
    from ml.spec.config import config_from_dict

    torch.set_num_threads(threads)
    summary = run_pipeline(load_dataset(Path(world)), Path(out), config_from_dict(config), until=until)
    return summary.get("stage_seconds", {})


def shared_stages(config: PipelineConfig) -> list[str]:
    return [stage for stage in SHARED_STAGES if stage in stages_for(config)]


def share_stages(donor: Path, run: Path, config: PipelineConfig) -> None:
    """Copy the donor's finished shared stages into `run`, so its pipeline skips them."""
    for stage in shared_stages(config):
        if donor != run and (donor / stage).is_dir() and not (run / stage).exists():
            run.mkdir(parents=True, exist_ok=True)
            shutil.copytree(donor / stage, run / stage)


def split_scores(run: Path, stage: str) -> dict:
    """The held-out split's scores from an evaluation stage's metrics.json (mIoU and IoU per label)."""
    path = RunLayout(run).metrics(stage)
    metrics = json.loads(path.read_text())
    if SPLIT not in metrics.get("splits", {}):
        raise RuntimeError(f"{path} has no {SPLIT!r} split; is the world made with a holdout?")
    return metrics["splits"][SPLIT]


def best_threshold(run: Path, world: Path) -> dict:
    """The CAM threshold sweep on the held-out split alone: the best mIoU any fixed threshold gets.

    A report, not a method: picking the threshold this way looks at the ground truth.
    """
    from ml.data import load_dataset
    from ml.data.images import read_mask
    from ml.metrics import ThresholdSweep, sweep_thresholds
    from ml.spec.config import config_from_dict

    dataset = load_dataset(world)
    layout = RunLayout(run)
    config = config_from_dict(layout.read_config())
    sweep = ThresholdSweep(sweep_thresholds(*config.eval.sweep), dataset.num_classes + 1)
    for record in dataset.split(SPLIT):
        cams = layout.read_cams(record.id)
        sweep.add(read_mask(record.mask), cams.cam, cams.keys)
    return sweep.report(dataset.classes)["best"]


def read_selections_rows(run: Path) -> list[dict]:
    """select_prompts' rows (image, class, chosen word, scores); empty when the run selected no words."""
    return RunLayout(run).read_selections()


def selection_agreement(rows: list[dict], world_info: dict) -> dict:
    """Per class, how select_prompts' choices relate to the objects the world really drew.

    Each image is re-rendered from (world seed, index) to learn the variant of every object:
    "variant" = the word of a variant present in the image, "other" = the other variant's word,
    "class" = the class name. A CLIP that reads the objects picks "variant" far more than "other".
    """
    from ml.world.scenes import render_scene, scene_rng

    counts = {name: {"variant": 0, "other": 0, "class": 0} for name in world_info["classes"]}
    scenes = {}
    for row in rows:
        index = int(row["image"].removeprefix("img"))
        if index not in scenes:
            scenes[index] = render_scene(scene_rng(world_info["seed"], index), world_info["size"])
        present = {o.variant for o in scenes[index].objects if o.class_name == row["class"]}
        kind = "class" if row["chosen"] == row["class"] else "variant" if row["chosen"] in present else "other"
        counts[row["class"]][kind] += 1
    return {name: {k: v / max(sum(c.values()), 1) for k, v in c.items()} for name, c in counts.items()}


def update_readme(path: Path, table: str) -> bool:
    """Replace what lies between the README's markers with the table; False when it has no markers."""
    text = path.read_text() if path.is_file() else ""
    start, end = README_MARKERS
    if start not in text or end not in text:
        return False
    before, rest = text.split(start, 1)
    path.write_text(f"{before}{start}\n{table}{end}{rest.split(end, 1)[1]}")
    return True


def mean_spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value), in mIoU points."""
    points = [100 * v for v in values]
    spread = statistics.stdev(points) if len(points) > 1 else 0.0
    return {"mean": statistics.fmean(points), "std": spread, "min": min(points), "max": max(points)}


def markdown(results: dict) -> str:
    seeds = ", ".join(str(s) for s in results["seeds"])
    supervised = results.get("ground_truth_segmenter")
    kinds = ["cam", "mask", "cam_best_threshold"]
    header = f"| method | CAM (threshold {results['cam_threshold']}) | mask (IRNet random walk) "
    header += "| CAM at its best threshold (peeks at the GT) |"
    if supervised:
        kinds.append("segmenter")
        header += " segmenter trained on the masks | its share of the fully supervised one |"
    lines = [
        f"mIoU (%) on the held-out `{SPLIT}` split ({results['world']['splits'][SPLIT]} images), "
        f"mean ± standard deviation over seeds {seeds}:",
        "",
        header,
        "|---" * header.count(" |") + "|",
    ]
    for name, method in results["methods"].items():
        cells = [f"{method[k]['mean']:.1f} ± {method[k]['std']:.1f}" for k in kinds]
        if supervised:
            cells.append(f"{100 * method['segmenter']['mean'] / supervised['mean']:.0f}%")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if supervised:
        lines += [
            "",
            f"The segmenter ({results['segmenter']}) trained on the ground-truth masks of the same training "
            f"images, the fully supervised upper bound: {supervised['mean']:.1f} ± {supervised['std']:.1f}.",
        ]
    shares = results.get("chosen_words", {})
    if shares:
        lines += [
            "",
            f"Words chosen by select_prompts (share of train+val (image, class) pairs, seed {results['seeds'][0]}):",
            "",
        ]
        agreement = results.get("selection_agreement", {})
        for name, words in shares.items():
            line = f"- {name}: " + ", ".join(f"{w} {100 * s:.0f}%" for w, s in words.items())
            if name in agreement:
                share = agreement[name]
                line += (
                    f" (a variant drawn in the image {100 * share['variant']:.0f}%, the other variant "
                    f"{100 * share['other']:.0f}%, the class name {100 * share['class']:.0f}%)"
                )
            lines.append(line)
    cost = f"{results['minutes']:.0f} min on {results['cpus']} CPU cores"
    lines += ["", f"Made by `{results['command'].strip()}` in {cost}."]
    return "\n".join(lines) + "\n"


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """--n, --size and --world-seed: the sample world the benchmark runs in."""
    parser.add_argument("--n", type=int, default=600, help="world images (20%% held out)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    # Not the demo's world seed 0, on whose train split the demo preset's thresholds were chosen.
    parser.add_argument("--world-seed", type=int, default=1)


def sample_world(world: Path, args: argparse.Namespace) -> dict | None:
    """The world of `add_world_arguments` in `world`, made there once; its world.json, or None (and a
    message) when `world` holds another world."""
    from ml.world.writer import make_world

    if not (world / "world.json").is_file():
        make_world(world, args.n, seed=args.world_seed, size=args.size)
    world_info = json.loads((world / "world.json").read_text())
    if (world_info["images"], world_info["size"], world_info["seed"]) != (args.n, args.size, args.world_seed):
        print(f"error: {world} holds another world; use a new --out", file=sys.stderr)
        return None
    return world_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output/quality"), help="world and run directories")
    parser.add_argument("--results", type=Path, default=Path("bench/results"), help="where quality.json/.md go")
    add_world_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--readme", type=Path, help="also write the table between this file's markers (README.md)")
    parser.add_argument("--config", type=Path, help="JSON overrides applied to every method (on the demo preset)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once; torch threads are split between them")
    args = parser.parse_args(argv)
    command = ".venv/bin/python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from ml.reports import word_shares

    # Idle OpenMP threads sleep instead of spinning: the runs share the cores (the `pole` command does the same).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.monotonic()
    extra = json.loads(args.config.read_text()) if args.config else {}
    world = args.out / "world"
    world_info = sample_world(world, args)
    if world_info is None:
        return 2
    configs = {(s, m): method_config(m, s, extra) for s in args.seeds for m in args.methods}
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        # Shared stages first, once per seed, in a run of the method that needs the most of them.
        donors = {}
        for seed in args.seeds:
            method = max(args.methods, key=lambda m: len(shared_stages(configs[seed, m])))
            run = run_dir(args.out, seed, method)
            until = shared_stages(configs[seed, method])[-1]
            donors[seed] = (
                run,
                pool.submit(run_one, str(world), str(run), config_to_dict(configs[seed, method]), threads, until),
            )
        for seed, (donor, future) in donors.items():
            future.result()
            print(f"seed {seed}: shared stages done", flush=True)
            for method in args.methods:
                share_stages(donor, run_dir(args.out, seed, method), configs[seed, method])
        futures = {
            key: pool.submit(run_one, str(world), str(run_dir(args.out, *key)), config_to_dict(config), threads)
            for key, config in configs.items()
        }
        segmenter = configs[args.seeds[0], args.methods[0]].train_seg.enabled
        for seed in args.seeds if segmenter else ():
            run, config = run_dir(args.out, seed, GROUND_TRUTH), ground_truth_config(seed, extra)
            if not RunLayout(run).stage_done("eval_seg"):
                prepare_ground_truth_run(world, run, config)
            futures[seed, GROUND_TRUTH] = pool.submit(
                run_one, str(world), str(run), config_to_dict(config), threads, "eval_seg"
            )
        timings = {}
        for (seed, method), future in futures.items():
            timings[f"seed{seed}/{method}"] = future.result()
            run = run_dir(args.out, seed, method)
            scores = [("segmenter", "eval_seg")] if segmenter else []
            if method != GROUND_TRUTH:
                scores = [("CAM", "eval_cams"), ("mask", "eval_masks"), *scores]
            shown = "  ".join(f"{label} {100 * split_scores(run, stage)['miou']:.1f}" for label, stage in scores)
            print(f"seed {seed} {method}: {shown}", flush=True)
    models = configs[args.seeds[0], args.methods[0]].models
    results = {
        "preset": PRESET,
        "overrides": extra,
        "world": world_info,
        "seeds": args.seeds,
        "split": SPLIT,
        "cam_threshold": configs[args.seeds[0], args.methods[0]].eval.cam_bg_threshold,
        "segmenter": f"{models.seg_arch}, {models.seg_weights} backbone weights" if segmenter else None,
        "methods": {},
        "chosen_words": {},
        "stage_seconds": timings,
        "command": command,
        "cpus": os.cpu_count(),
    }
    for method in args.methods:
        per_seed = {}
        for seed in args.seeds:
            run = run_dir(args.out, seed, method)
            per_seed[seed] = {
                "cam": split_scores(run, "eval_cams"),
                "cam_best_threshold": best_threshold(run, world),
                "mask": split_scores(run, "eval_masks"),
                **({"segmenter": split_scores(run, "eval_seg")} if segmenter else {}),
            }
        results["methods"][method] = {
            "train_pole": METHODS[method],
            **{kind: mean_spread([r[kind]["miou"] for r in per_seed.values()]) for kind in per_seed[args.seeds[0]]},
            "per_seed": per_seed,
        }
        rows = [] if results["chosen_words"] else read_selections_rows(run_dir(args.out, args.seeds[0], method))
        if rows:
            results["chosen_words"] = word_shares(rows, list(world_info["classes"]))
            results["selection_agreement"] = selection_agreement(rows, world_info)
    if segmenter:
        supervised = {seed: split_scores(run_dir(args.out, seed, GROUND_TRUTH), "eval_seg") for seed in args.seeds}
        results["ground_truth_segmenter"] = {
            **mean_spread([scores["miou"] for scores in supervised.values()]),
            "per_seed": supervised,
        }
    results["minutes"] = (time.monotonic() - started) / 60
    previous = args.results / "quality.json"
    if not any(timings.values()) and previous.is_file():
        # Every run was already finished: this only re-rendered, so the costs are the earlier run's.
        earlier = json.loads(previous.read_text())
        results["minutes"] = earlier.get("minutes", results["minutes"])
        results["stage_seconds"] = earlier.get("stage_seconds", timings)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.results / "quality.md").write_text(table)
    print(table)
    if args.readme and update_readme(args.readme, table):
        print(f"updated the table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
