"""train_cam in float32 against bfloat16 autocast on a CPU: seconds per step and the loss curve.

    .venv/bin/python bench/train_precision.py [--n 400 --steps 300 --seeds 0 1 2 --out bench-output/train-precision]

The `demo` preset's train_cam (a ResNet-18 from random weights, batches of 16 crops of 64 px) on a
sample world of --n images of 96 px (world seed 1, its "train" split), through the stage's own
parts (its data, loss and optimizer). Per seed, one network per variant starts from the same weights
and sees the same batches: float32 as the stage runs it, float32 channels-last, and bfloat16
autocast channels-last. Their steps interleave (each step's variants in a rotating order), so that
other load on a shared machine falls on every variant alike. Prints, per variant, the compute
seconds of a step (forward, backward, optimizer; the data loading is the same for all) as the
median over steps and seeds, its ratio to float32 with the spread of the per-seed ratios, and the
mean loss of the last 50 steps per seed beside float32's. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch

from ml.data import load_dataset
from ml.loaders import TrainImages, train_loader
from ml.models.cam_net import CamNet
from ml.spec.config import resolve_config
from ml.stages.train_cam import batch_loss, cam_optimizer
from ml.world.writer import make_world

VARIANTS = ("float32", "float32 channels-last", "bfloat16 channels-last")
TAIL = 50  # steps whose mean loss is the run's final loss


def batches(records, num_classes: int, section, seed: int):
    """The stage's batches, epoch after epoch, forever."""
    data = TrainImages(records, num_classes, section.augment, seed=seed)
    loader = train_loader(data, section.batch_size, torch.Generator().manual_seed(seed))
    epoch = 0
    while True:
        data.epoch = epoch
        yield from loader
        epoch += 1


def one_seed(records, num_classes: int, section, seed: int, steps: int) -> dict[str, dict[str, list[float]]]:
    """{variant: {"seconds": per step, "loss": per step}} of the variants trained side by side."""
    torch.manual_seed(seed)
    start = CamNet("resnet18", num_classes, "random")
    nets, optimizers = {}, {}
    for variant in VARIANTS:
        net = copy.deepcopy(start).train()
        if "channels-last" in variant:
            net = net.to(memory_format=torch.channels_last)
        nets[variant] = net
        optimizers[variant] = cam_optimizer(net, section, steps)
    runs = {variant: {"seconds": [], "loss": []} for variant in VARIANTS}
    stream = batches(records, num_classes, section, seed)
    for step in range(steps):
        batch = next(stream)
        order = VARIANTS[step % len(VARIANTS) :] + VARIANTS[: step % len(VARIANTS)]
        for variant in order:
            x01 = batch["image"]
            if "channels-last" in variant:
                x01 = x01.contiguous(memory_format=torch.channels_last)
            precision = (
                torch.autocast("cpu", dtype=torch.bfloat16) if "bfloat16" in variant else contextlib.nullcontext()
            )
            optimizer, schedule = optimizers[variant]
            started = time.perf_counter()
            with precision:
                loss = batch_loss(nets[variant], x01, batch["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            runs[variant]["seconds"].append(time.perf_counter() - started)
            runs[variant]["loss"].append(float(loss.detach()))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="images in the world")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench-output/train-precision"))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    world = args.out / f"world-{args.n}"
    if not (world / "tags.csv").is_file():
        make_world(world, args.n, seed=1, size=96)
    dataset = load_dataset(world)
    records = [image for image in dataset.images if image.split == "train"]
    section = resolve_config("demo").train_cam
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(records)} training images")
    print(f"train_cam of the demo preset: batch {section.batch_size}, crops {section.augment.crop_size} px")

    per_seed = {}
    for seed in args.seeds:
        runs = one_seed(records, dataset.num_classes, section, seed, args.steps)
        per_seed[seed] = runs
        losses = ", ".join(f"{v} {statistics.fmean(r['loss'][-TAIL:]):.4f}" for v, r in runs.items())
        print(f"seed {seed}: final loss (mean of the last {TAIL} steps) {losses}")

    print(f"compute per step over {args.steps} steps x {len(args.seeds)} seeds:")
    for variant in VARIANTS:
        seconds = [s for runs in per_seed.values() for s in runs[variant]["seconds"]]
        ratios = [
            statistics.median(runs["float32"]["seconds"]) / statistics.median(runs[variant]["seconds"])
            for runs in per_seed.values()
        ]
        finals = [statistics.fmean(runs[variant]["loss"][-TAIL:]) for runs in per_seed.values()]
        spread = f" ± {statistics.stdev(finals):.4f}" if len(finals) > 1 else ""
        print(
            f"  {variant:24s} {statistics.median(seconds):6.3f} s/step  x{statistics.fmean(ratios):4.2f} of float32's "
            f"speed (per seed {min(ratios):.2f}-{max(ratios):.2f})  final loss {statistics.fmean(finals):.4f}{spread}"
        )


if __name__ == "__main__":
    main()
