"""Polling latency of `GET /v1/jobs/{id}` on the embedded service while a job trains on the same machine.

    .venv/bin/python bench/api_load.py [--clients 50 --seconds 60 --interval 0.5 --baseline]
    .venv/bin/python bench/api_load.py --clients 5 --seconds 5 --images 24     # smoke run, about 30 s

Starts a real `pole serve` (API + one worker, SQLite and the file queue) on a fresh temporary data
directory and a free 127.0.0.1 port, uploads a sample world, starts a job (--preset) whose CAM training
lasts far longer than the measurement, waits until it trains, then runs --clients concurrent pollers
(asyncio, one keep-alive connection each) for --seconds. Each poller asks once per --interval
(start to start, as `Client.follow_job` does; 0 asks again as soon as the answer is in). Prints
requests, errors by kind, latency percentiles, throughput, the job's progress over the run (the proof
that it trained) and the cores the API, the worker, this load generator and everything else on the
machine used. --baseline then cancels the job and measures the same polling with nothing training,
and prints the ratios. POLE_WORKER_NICE and POLE_WORKER_THREADS reach the service's worker, to compare
settings. Everything stops by itself, and the service is stopped and the directory removed on every
way out (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from machine import cpu_model

from ml.data.archive import zip_folder
from pole.client import FINAL_STATES, Client
from pole.service_process import EmbeddedService, ServiceError, free_port, sigterm_as_interrupt

TRAINING_STAGE = "train_cam"  # every preset's first stage, and a long one with these epochs
TRAINING_EPOCHS = 200  # minutes on 2 cores, past any measurement (and within the default POLE_MAX_EPOCHS)
START_TIMEOUT_S = 300  # upload, queueing, torch import and dataset reading before training starts
CANCEL_TIMEOUT_S = 120
JOB_FIELDS = ("state", "stage", "stage_progress", "message")  # kept from the answers, to show the job moved


@dataclass
class Measurement:
    """What the pollers saw during one timed window."""

    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    first: tuple[float, dict] | None = None  # (time sent, job) of the earliest and the latest 200 answer
    last: tuple[float, dict] | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds used in the window

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50, help="concurrent pollers, 1-500 (default 50)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each measurement, 1-600 (default 60)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between a poller's requests (default 0.5)")
    p.add_argument("--max-requests", type=int, default=200_000, help="stop a window after this many (default 200k)")
    p.add_argument("--timeout", type=float, default=10.0, help="a request slower than this is an error (default 10)")
    p.add_argument("--images", type=int, default=300, help="sample-world images, 12-5000 (default 300)")
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.add_argument("--preset", default="demo", help="the training job's preset (default demo; cpu-small is heavier)")
    p.add_argument("--baseline", action="store_true", help="also measure with no job training, and compare")
    args = p.parse_args(argv)
    bounds = {"clients": (1, 500), "seconds": (1, 600), "interval": (0, 10), "images": (12, 5000)}
    for name, (low, high) in bounds.items():
        if not low <= getattr(args, name) <= high:
            p.error(f"--{name} must be within {low}-{high}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} usable cores")
    try:
        with (
            sigterm_as_interrupt(),
            tempfile.TemporaryDirectory(prefix="pole-api-load-") as tmp,
            EmbeddedService(Path(tmp) / "data", free_port(), Path(tmp) / "service.log") as service,
        ):
            try:
                run(service, args, Path(tmp))
            except BaseException:
                print(f"service log (last lines):\n{service.log_tail()}", file=sys.stderr)
                raise
    except KeyboardInterrupt:
        print("\ninterrupted; the service is stopped", file=sys.stderr)
        return 130
    except (ServiceError, RuntimeError, httpx.HTTPError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def run(service: EmbeddedService, args: argparse.Namespace, tmp: Path) -> None:
    from ml.world.writer import make_world

    key = service.create_key("api-load")
    make_world(tmp / "world", args.images, seed=0, size=args.size)
    with Client(service.url, key) as client:
        dataset = client.upload_dataset(zip_folder(tmp / "world", tmp / "world.zip"))
        config = {TRAINING_STAGE: {"epochs": TRAINING_EPOCHS}}
        job = client.create_job(dataset["id"], preset=args.preset, config=config)
        print(f"job {job['id']} on {dataset['image_count']} images; waiting until it trains ({TRAINING_STAGE})")
        wait_for(client, job["id"], lambda j: j["stage"] == TRAINING_STAGE and j["stage_progress"] > 0)
        loaded = asyncio.run(measure(service, key, job["id"], args))
        report("while a job trains", loaded, args)
        check_trained(loaded)
        client.cancel_job(job["id"])
        wait_for(client, job["id"], lambda j: j["state"] in FINAL_STATES, CANCEL_TIMEOUT_S)
    if args.baseline:
        idle = asyncio.run(measure(service, key, job["id"], args))
        report("with no job running", idle, args)
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            print(f"{name} while training / idle: {loaded.percentile(q) / idle.percentile(q):.2f}x")


def wait_for(client: Client, job_id: str, condition, timeout: float = START_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    for job in client.follow_job(job_id, poll_seconds=0.5):
        if condition(job):
            return job
        if job["state"] in FINAL_STATES:
            raise RuntimeError(f"job {job_id} ended ({job['state']}: {job['error'] or job['message']})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['state']} in {job['stage']} after {timeout:.0f}s")
    raise RuntimeError(f"job {job_id} stopped being followed")


async def measure(service: EmbeddedService, key: str, job_id: str, args: argparse.Namespace) -> Measurement:
    """--clients pollers of the job for --seconds; CPU use of every process is taken around the window."""
    result = Measurement(seconds=args.seconds)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    headers = {"Authorization": f"Bearer {key}"}
    clients = [
        httpx.AsyncClient(base_url=service.url, headers=headers, timeout=args.timeout, limits=limits)
        for _ in range(args.clients)
    ]
    # Long-lived objects out of the collector's way: a full collection over them stalls every poller
    # at once (seen: 200-280 ms pauses, counted as server latency).
    gc.collect()
    gc.freeze()
    cpu_before = process_cpu(service.process.pid)
    started = time.monotonic()
    deadline = started + args.seconds
    try:
        await asyncio.gather(
            *(poll(c, f"/v1/jobs/{job_id}", i * args.interval / args.clients, deadline, args, result)
              for i, c in enumerate(clients))
        )  # fmt: skip
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    result.seconds = time.monotonic() - started
    cpu_after = process_cpu(service.process.pid)
    result.cpu_s = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    return result


async def poll(
    client: httpx.AsyncClient, path: str, offset: float, deadline: float, args: argparse.Namespace, into: Measurement
) -> None:
    """One poller: a request every args.interval from `offset` on (spread so the pollers do not ask in step)."""
    await asyncio.sleep(offset)
    next_at = time.monotonic()
    while time.monotonic() < deadline and into.requests < args.max_requests:
        sent = time.monotonic()
        try:
            response = await client.get(path)
        except httpx.TimeoutException:
            into.errors["timeout"] += 1
        except httpx.RemoteProtocolError:
            into.errors["closed without a response"] += 1
        except httpx.TransportError as err:
            into.errors[type(err).__name__] += 1
        else:
            if response.status_code == 200:
                into.latencies_ms.append(1000 * (time.monotonic() - sent))
                job = response.json()
                seen = (sent, {name: job[name] for name in JOB_FIELDS})
                into.first = seen if into.first is None or sent < into.first[0] else into.first
                into.last = seen if into.last is None or sent > into.last[0] else into.last
            else:
                into.errors[f"HTTP {response.status_code}"] += 1
        next_at = max(next_at + args.interval, time.monotonic())
        await asyncio.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))


def report(title: str, m: Measurement, args: argparse.Namespace) -> None:
    errors = ", ".join(f"{n} {kind}" for kind, n in m.errors.items()) or "none"
    print(f"\n{title}: {args.clients} clients, {m.seconds:.1f} s, a request every {args.interval} s per client")
    print(f"  requests {m.requests}, errors {sum(m.errors.values())} ({errors}), {m.requests / m.seconds:.1f} req/s")
    if m.latencies_ms:
        p50, p90, p99 = (m.percentile(q) for q in (0.5, 0.9, 0.99))
        print(f"  latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  max {max(m.latencies_ms):.1f}")
    if m.first and m.last:
        print(f"  job: {job_line(m.first[1])}  ->  {job_line(m.last[1])}")
    cores = ", ".join(f"{name} {max(cpu, 0.0) / m.seconds:.2f}" for name, cpu in m.cpu_s.items())
    print(f"  CPU used, in cores: {cores}")
    print(f"  CPU: {cpu_model()}")


def job_line(job: dict) -> str:
    return f"{job['state']} {job['stage']} {job['stage_progress']:.2%} ({job['message']})"


def check_trained(m: Measurement) -> None:
    """The comparison means nothing unless the job kept training through the window."""
    if not (m.first and m.last):
        return
    first, last = m.first[1], m.last[1]
    if not (last["stage"] == TRAINING_STAGE and last["stage_progress"] > first["stage_progress"]):
        print(f"warning: the job did not train during the window ({job_line(last)})", file=sys.stderr)


def process_cpu(root_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of `root_pid` ("api"), its descendants ("worker"), this process and
    all the other processes of the machine together."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        pid = int(stat.parent.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    workers = [pid for pid in parents if _descends_from(pid, root_pid, parents)]
    figures = {"api": cpu.get(root_pid, 0.0), "worker": sum(cpu[pid] for pid in workers)}
    figures["load generator"] = time.process_time()
    # Other processes on the machine skew every figure here; their share says by how much.
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in Path("/proc/stat").read_text().split()[1:8])
    figures["everything else"] = (user + nice + system + irq + softirq) / tick - sum(figures.values())
    return figures


def _descends_from(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    while pid in parents and pid not in (0, 1):
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
