"""`pole world make` and `pole world train-clip`: the sample world and its tiny CLIP from a terminal.

Argument parsing only at import (torch loads inside `train-clip`), like the pipeline commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("world", help="the sample world: make a dataset, train its tiny CLIP")
    commands = group.add_subparsers(dest="world_command", metavar="COMMAND", required=True)

    p = commands.add_parser("make", help="write a world dataset (manifest layout, exact masks)")
    p.add_argument("out", type=Path, help="folder to write (created)")
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of images in the 'val' split (default 0.2)")
    p.set_defaults(func=cmd_make)

    p = commands.add_parser("train-clip", help="train the tiny CLIP on world scenes; writes FILE and FILE.json")
    p.add_argument("--out", type=Path, default=Path("pole-tiny-world.pt"), help="checkpoint path (fp16)")
    p.add_argument("--model", default="pole-tiny", help="open_clip model config (default pole-tiny)")
    p.add_argument("--steps", type=int, help="optimisation steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--scenes", type=int, help="rendered training scenes")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-scenes", type=int, help="held-out scenes for the zero-shot figures")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.set_defaults(func=cmd_train_clip)


def cmd_make(args: argparse.Namespace) -> int:
    import time

    from ml.world.writer import make_world

    started = time.monotonic()
    try:
        summary = make_world(args.out, args.n, seed=args.seed, size=args.size, holdout=args.holdout)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    print(f"wrote {args.n} images ({splits}) to {args.out} in {time.monotonic() - started:.1f}s")
    return 0


def cmd_train_clip(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ml.world.clip_eval import evaluate
    from ml.world.clip_training import ClipTrainConfig, export, train_clip
    from ml.world.views import render_pool
    from pole.progress import progress_bar

    overrides = {
        "model": args.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "scenes": args.scenes,
        "lr": args.lr,
        "seed": args.seed,
        "eval_scenes": args.eval_scenes,
        "threads": args.threads,
    }
    config = replace(ClipTrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    print(f"training {config.model} for {config.steps} steps on {config.scenes} scenes", file=sys.stderr)
    with progress_bar(config.steps, description_width=len(f"step {config.steps}/{config.steps}")) as bar:

        def show(step: int, steps: int, loss: float) -> None:
            bar.n = step
            bar.set_description_str(f"step {step}/{steps}", refresh=False)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.refresh()

        model, record = train_clip(config, show)
    pool = render_pool(config.eval_scenes, config.world_seed + 1, config.scene_size)
    evaluation = evaluate(model, pool, config.model)
    provenance = export(model, args.out, record, evaluation)
    print(f"trained in {record['wall_seconds'] / 60:.1f} min wall, {record['cpu_seconds'] / 60:.1f} min CPU")
    for key, what in (("crops", "object crops"), ("masked", "masked objects"), ("cam_masked", "CAM-masked objects")):
        figures = evaluation[key]
        print(
            f"zero-shot on {figures['objects']} held-out {what}: class {100 * figures['class_accuracy']:.1f}%, "
            f"variant {100 * figures['variant_accuracy']:.1f}%"
        )
    print(f"context patches: {100 * evaluation['context_patches']['context_accuracy']:.1f}%")
    print(f"wrote {args.out} ({provenance['bytes'] / 2**20:.1f} MiB, sha256 {provenance['sha256'][:16]}...)")
    print(f"provenance (config, data, timings, all figures): {args.out.with_suffix('.json')}")
    return 0
