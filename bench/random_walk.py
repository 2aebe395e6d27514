"""The sparse random walk (refine) against the dense formulation, on the same inputs.

    .venv/bin/python bench/random_walk.py [--height 375 --width 500 --classes 20]

A 500x375 image gives a stride-4 grid of 125 x 94 (N = 11,750 nodes). Each formulation runs in a
fresh process, so its peak memory (resident set above what the process held before the walk) is
its own. Prints time, peak memory, their ratios and the largest difference of the results; the
goal is at least 100x faster and under 1/20 of the dense peak memory. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time


def inputs(args) -> tuple:
    """Smooth class scores and a boundary map with a few strong edges, the same in every process."""
    import torch
    import torch.nn.functional as F

    height, width = -(-args.height // 4), -(-args.width // 4)
    gen = torch.Generator().manual_seed(args.seed)
    coarse = torch.rand(1, args.classes, height // 8 + 1, width // 8 + 1, generator=gen)
    scores = F.interpolate(coarse, (height, width), mode="bilinear", align_corners=False)[0]
    boundary = torch.rand(height, width, generator=gen) ** 6  # mostly weak
    for _ in range(6):  # a few strong straight edges
        if torch.rand(1, generator=gen) < 0.5:
            boundary[int(torch.randint(height, (1,), generator=gen))] = 0.95
        else:
            boundary[:, int(torch.randint(width, (1,), generator=gen))] = 0.95
    return scores, boundary


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Linux: make the high-water mark (VmHWM) the current resident size, so it measures what follows."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(method: str, args) -> dict:
    """Run one formulation in this (fresh) process: seconds, peak extra memory, the result."""
    from ml.random_walk import dense_random_walk, random_walk

    walk = {"sparse": random_walk, "dense": dense_random_walk}[method]
    scores, boundary = inputs(args)
    # Warm-up on a tiny grid, so the library code a walk first touches is resident before measuring.
    walk(scores[:, :8, :8], boundary[:8, :8], args.beta, args.exp_times, args.radius)
    reset_peak()
    before = resident_bytes()
    started = time.perf_counter()
    result = walk(scores, boundary, args.beta, args.exp_times, args.radius)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_bytes": max(peak_bytes() - before, 0), "result": result.numpy()}


def run_fresh(method: str, args) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, (method, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import numpy as np

    from ml.models.irn import displacements

    height, width = -(-args.height // 4), -(-args.width // 4)
    nodes = height * width
    pairs = 2 * len(displacements(args.radius)) + 1
    print(f"image {args.width}x{args.height} -> grid {width}x{height}, N={nodes}, {args.classes} classes")
    print(f"walk: beta {args.beta}, {2**args.exp_times} steps, radius {args.radius} ({pairs} entries per row at most)")
    dense_flops = 2 * nodes**3 * args.exp_times
    sparse_flops = 2 * nodes * pairs * args.classes * 2**args.exp_times
    print(f"FLOPs: dense {dense_flops:.2e} (squarings), sparse ~{sparse_flops:.2e}")
    sparse = run_fresh("sparse", args)
    print(f"sparse: {sparse['seconds']:8.2f} s   peak {sparse['peak_bytes'] / 2**20:8.1f} MiB")
    dense = run_fresh("dense", args)
    print(f"dense:  {dense['seconds']:8.2f} s   peak {dense['peak_bytes'] / 2**20:8.1f} MiB")
    difference = np.abs(sparse["result"].astype(np.float64) - dense["result"])
    relative = difference / np.maximum(np.abs(dense["result"]), 1e-30)
    same_argmax = (sparse["result"].argmax(0) == dense["result"].argmax(0)).mean()
    print(f"speed-up {dense['seconds'] / sparse['seconds']:.0f}x (goal >= 100x)")
    print(f"memory   {sparse['peak_bytes'] / max(dense['peak_bytes'], 1):.4f} of dense (goal < 0.05)")
    print(f"max |difference| {difference.max():.2e}, max relative {relative.max():.2e}, same argmax {same_argmax:.2%}")


if __name__ == "__main__":
    main()
