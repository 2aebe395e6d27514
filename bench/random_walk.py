"""The sparse random walk (refine) against the dense formulation, on the same inputs.

    .venv/bin/python bench/random_walk.py [--height 375 --width 500 --classes 20] [--unflushed] [--squarings]

A 500x375 image gives a stride-4 grid of 125 x 94 (N = 11,750 nodes). Each formulation runs in a
fresh process, so its peak memory (resident set above what the process held before the walk) is
its own. Prints time, peak memory, their ratios and the largest difference of the results; the
goal is at least 100x faster and under 1/20 of the dense peak memory. Nothing is asserted.

The dense baseline flushes denormal floats to zero in every thread, as it would run at the matmul
rate on a GPU: its squarings drive far entries of T down to 1e-45, and on some CPUs (an Intel
Xeon: 1 s to 95 s a squaring at N = 4,800) each multiplication that makes a denormal costs a
microcode assist. The process sets the flag before torch starts its threads, which inherit it
(see `flush_denormals`), and checks that every thread flushes: a product whose every entry
underflows must come back with no denormal in it. `--unflushed` also times the dense walk without
flushing (the slow figure, for a footnote); `--squarings` times each squaring of T both ways.
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


def flush_denormals() -> None:
    """Flush denormals to zero (FTZ and DAZ) in this fresh process, before any torch op starts a thread.

    torch.set_flush_denormal sets the calling thread's floating-point control register (MXCSR on
    x86) only. A new thread starts with a copy of its creator's, so set here, first, it reaches
    every OpenMP and MKL thread torch starts later; set after them, it leaves their share of a
    product denormal (`denormals_made` counts half of it on 2 threads).
    """
    import torch

    if not torch.set_flush_denormal(True):
        raise RuntimeError("this CPU cannot flush denormals to zero (x86 without SSE3)")


def denormals_made(size: int = 1024) -> int:
    """Denormal entries in a (size, size) float32 product whose every entry underflows into them:
    0 when every thread that computes a block of it flushes denormals, size**2 when none does."""
    import torch

    product = torch.full((size, size), 1e-20) @ torch.full((size, size), 1e-22)  # entries size * 1e-42
    return int(((product != 0) & (product.abs() < torch.finfo(torch.float32).tiny)).sum())


def dense_transition(args):
    """The dense reference's T (N, N), built as ml.random_walk.dense_random_walk builds it."""
    import torch

    from ml.random_walk import affinity_pairs

    scores, boundary = inputs(args)
    size = boundary.numel()
    rows, cols, weights = affinity_pairs(boundary.to(scores.dtype), args.beta, args.radius)
    affinity = torch.zeros(size, size, dtype=scores.dtype)
    affinity[rows, cols] = weights
    return affinity / affinity.sum(dim=0, keepdim=True)


def squaring_times(args, flush: bool) -> dict:
    """In this fresh process: seconds of each of the dense walk's squarings of T, and the share of T's
    nonzero entries that are denormal after it."""
    if flush:
        flush_denormals()
    import torch

    transition = dense_transition(args)
    seconds, denormal = [], []
    for _ in range(args.exp_times):
        started = time.perf_counter()
        transition = transition @ transition
        seconds.append(time.perf_counter() - started)
        nonzero = transition[transition != 0].abs()
        denormal.append(float((nonzero < torch.finfo(torch.float32).tiny).float().mean()))
    return {"seconds": seconds, "denormal": denormal, "denormals_made": denormals_made()}


def measure(method: str, args, flush: bool = False) -> dict:
    """Run one formulation in this (fresh) process: seconds, peak extra memory, the result, and the
    denormals a test product still makes afterwards (0 where every thread flushes them)."""
    if flush:
        flush_denormals()
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
    return {
        "seconds": seconds,
        "peak_bytes": max(peak_bytes() - before, 0),
        "result": result.numpy(),
        "denormals_made": denormals_made(),
    }


def run_fresh(function, *arguments) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--beta", type=float, default=10.0)
    parser.add_argument("--exp-times", type=int, default=8)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unflushed", action="store_true", help="also time the dense walk without flushing")
    parser.add_argument("--squarings", action="store_true", help="time each dense squaring, flushed and not")
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
    import torch

    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    sparse = run_fresh(measure, "sparse", args)
    print(f"sparse: {sparse['seconds']:8.2f} s   peak {sparse['peak_bytes'] / 2**20:8.1f} MiB")
    dense = run_fresh(measure, "dense", args, True)
    print(
        f"dense:  {dense['seconds']:8.2f} s   peak {dense['peak_bytes'] / 2**20:8.1f} MiB   (denormals flushed in "
        f"every thread: a test product left {dense['denormals_made']} denormal entries, should be 0)"
    )
    difference = np.abs(sparse["result"].astype(np.float64) - dense["result"])
    relative = difference / np.maximum(np.abs(dense["result"]), 1e-30)
    same_argmax = (sparse["result"].argmax(0) == dense["result"].argmax(0)).mean()
    print(f"speed-up {dense['seconds'] / sparse['seconds']:.0f}x (goal >= 100x)")
    print(f"memory   {sparse['peak_bytes'] / max(dense['peak_bytes'], 1):.4f} of dense (goal < 0.05)")
    print(f"max |difference| {difference.max():.2e}, max relative {relative.max():.2e}, same argmax {same_argmax:.2%}")
    if args.unflushed:
        slow = run_fresh(measure, "dense", args, False)
        ratio = slow["seconds"] / dense["seconds"]
        print(
            f"footnote, dense without flushing denormals: {slow['seconds']:.2f} s, {ratio:.2f} x the flushed dense,"
            f" {slow['seconds'] / sparse['seconds']:.0f}x the sparse walk; max |difference| from the flushed result"
            f" {np.abs(slow['result'] - dense['result']).max():.1e}"
        )
    if args.squarings:
        flushed, unflushed = run_fresh(squaring_times, args, True), run_fresh(squaring_times, args, False)
        print("dense squarings of T (seconds; share of nonzero entries that are denormal after it):")
        for k, (fast, fast_share, slow, slow_share) in enumerate(
            zip(flushed["seconds"], flushed["denormal"], unflushed["seconds"], unflushed["denormal"], strict=True), 1
        ):
            print(f"  {k}: flushed {fast:7.2f} s ({fast_share:.3f})   unflushed {slow:7.2f} s ({slow_share:.3f})")
        print(f"  total: flushed {sum(flushed['seconds']):.1f} s, unflushed {sum(unflushed['seconds']):.1f} s")


def cpu_model() -> str:
    """The CPU's model name, as lscpu prints it (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
