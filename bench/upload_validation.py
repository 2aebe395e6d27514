"""How large an upload the API takes and validates in the background, and what that costs the API process.

    .venv/bin/python bench/upload_validation.py [--images 20000 --size 64 --masks]
    .venv/bin/python bench/upload_validation.py --images 200                    # smoke run, about 20 s

Writes a manifest dataset of --images PNGs (--size pixels square, grey noise with a coloured square;
--distinct different files repeated, so that writing the zip stays quick: every file is still
extracted and decoded), zipped without compression (PNGs do not shrink). Starts a real `pole serve`
(API + worker, SQLite and the file queue) on a fresh temporary data directory and a free 127.0.0.1 port,
streams the zip to POST /v1/datasets and times the 202, then polls the dataset until it is `ready`
while a prober asks GET /healthz every 0.1 s (the API's answers while it validates) and the API
process's resident memory is sampled. Prints the time until 202, the upload's MB/s, the validation's
time and images/s, the progress seen, /healthz latency percentiles during the validation, the API's
RSS before the upload, its peak while sampled and its lifetime peak (VmHWM), and the CPU. Everything
stops by itself; the service is stopped and the directory removed on every way out (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from machine import cpu_model
from PIL import Image

from pole.service_process import EmbeddedService, ServiceError, free_port, sigterm_as_interrupt

VALIDATION_TIMEOUT_S = 1800
PROBE_INTERVAL_S = 0.1
POLL_INTERVAL_S = 0.25
MiB = 1 << 20


@dataclass
class Probe:
    """/healthz latencies and API RSS samples, taken on a thread until `stop` is set."""

    pid: int
    url: str
    stop: threading.Event = field(default_factory=threading.Event)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    rss_mib: list[float] = field(default_factory=list)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    self.errors += 1
                self.rss_mib.append(memory_kib(self.pid, "VmRSS") / 1024)
                self.stop.wait(PROBE_INTERVAL_S)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20_000, help="images in the dataset, 10-49000 (default 20000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels, 16-1024 (default 64)")
    p.add_argument("--distinct", type=int, default=256, help="different image files, repeated (default 256)")
    p.add_argument("--masks", action="store_true", help="a ground-truth mask beside every image (twice the files)")
    args = p.parse_args(argv)
    # 49000: with --masks and the two list files the zip stays under the default POLE_MAX_ARCHIVE_MEMBERS.
    bounds = {"images": (10, 49_000 if not args.masks else 24_999), "size": (16, 1024), "distinct": (1, 10_000)}
    for name, (low, high) in bounds.items():
        if not low <= getattr(args, name) <= high:
            p.error(f"--{name} must be within {low}-{high}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} usable cores")
    try:
        with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="pole-upload-validation-") as tmp:
            zip_path = write_dataset(Path(tmp) / "dataset.zip", args)
            with EmbeddedService(Path(tmp) / "data", free_port(), Path(tmp) / "service.log") as service:
                try:
                    run(service, zip_path, args)
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


def write_dataset(zip_path: Path, args: argparse.Namespace) -> Path:
    started = time.monotonic()
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(min(args.distinct, args.images)):
        pixels = rng.integers(90, 150, size=(args.size, args.size, 3), dtype=np.uint8)
        mask = np.zeros((args.size, args.size), dtype=np.uint8)
        x, y = (int(v) for v in rng.integers(0, args.size // 2, size=2))
        side = args.size // 3
        pixels[y : y + side, x : x + side] = (200, 40, 40)
        mask[y : y + side, x : x + side] = 1
        images.append(png(Image.fromarray(pixels, "RGB")))
        masks.append(png(Image.fromarray(mask, "L")))
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("classes.txt", "square\n")
        archive.writestr("tags.csv", "image,tags\n" + "".join(f"{i:06d}.png,square\n" for i in range(args.images)))
        for index in range(args.images):
            archive.writestr(f"images/{index:06d}.png", images[index % len(images)])
            if args.masks:
                archive.writestr(f"masks/{index:06d}.png", masks[index % len(masks)])
    size_mib = zip_path.stat().st_size / MiB
    print(
        f"dataset: {args.images} images of {args.size}x{args.size}{' with masks' if args.masks else ''}, "
        f"zip {size_mib:.1f} MiB, written in {time.monotonic() - started:.1f} s"
    )
    return zip_path


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def run(service: EmbeddedService, zip_path: Path, args: argparse.Namespace) -> None:
    key = service.create_key("upload-validation")
    probe = Probe(service.process.pid, service.url)
    rss_before = memory_kib(probe.pid, "VmRSS") / 1024
    prober = threading.Thread(target=probe.run, daemon=True)
    prober.start()
    try:
        with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=600) as client:
            started = time.monotonic()
            with open(zip_path, "rb") as f:
                answer = client.post("/v1/datasets", files={"file": (zip_path.name, f, "application/zip")})
            accepted_s = time.monotonic() - started
            if answer.status_code != 202:
                raise RuntimeError(f"upload answered {answer.status_code}: {answer.text[:500]}")
            dataset, progress = follow(client, answer.json()["id"])
            validated_s = time.monotonic() - started - accepted_s
    finally:
        probe.stop.set()
        prober.join(timeout=30)
    if dataset["state"] != "ready" or dataset["image_count"] != args.images:
        raise RuntimeError(f"dataset ended {dataset['state']}: {(dataset['problems'] or [])[:5]}")
    report(args, zip_path, accepted_s, validated_s, progress, probe, rss_before)


def follow(client: httpx.Client, dataset_id: str) -> tuple[dict, list[float]]:
    """The dataset once it left `validating`, and the progress values seen until then."""
    deadline = time.monotonic() + VALIDATION_TIMEOUT_S
    seen = []
    while True:
        response = client.get(f"/v1/datasets/{dataset_id}")
        response.raise_for_status()
        dataset = response.json()
        if dataset["state"] != "validating":
            return dataset, seen
        seen.append(dataset["progress"])
        if time.monotonic() > deadline:
            raise RuntimeError(f"dataset {dataset_id} still validating after {VALIDATION_TIMEOUT_S}s")
        time.sleep(POLL_INTERVAL_S)


def report(args, zip_path: Path, accepted_s: float, validated_s: float, progress, probe: Probe, rss_before) -> None:
    size_mib = zip_path.stat().st_size / MiB
    moving = sorted({p for p in progress if 0 < p < 1})
    print(f"202 after {accepted_s:.2f} s (upload {size_mib / accepted_s:.0f} MiB/s, listing checked)")
    print(f"validated in {validated_s:.1f} s after the 202: {args.images / validated_s:.0f} images/s")
    shown = ", ".join(f"{p:.0%}" for p in moving[:: max(1, len(moving) // 8)])
    print(f"progress seen while validating: {len(progress)} polls, {len(moving)} distinct values ({shown})")
    print(
        f"/healthz during upload and validation: {len(probe.latencies_ms)} answers, errors {probe.errors}, "
        f"latency ms: p50 {probe.percentile(0.5):.1f}, p99 {probe.percentile(0.99):.1f}, "
        f"max {max(probe.latencies_ms, default=float('nan')):.1f}"
    )
    print(
        f"API process RSS: {rss_before:.0f} MiB before the upload, peak sampled {max(probe.rss_mib):.0f} MiB, "
        f"lifetime peak (VmHWM) {memory_kib(probe.pid, 'VmHWM') / 1024:.0f} MiB"
    )
    print(f"CPU: {cpu_model()}")


def memory_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for process {pid}")


if __name__ == "__main__":
    sys.exit(main())
