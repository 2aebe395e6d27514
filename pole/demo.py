"""`pole demo`: the whole product on this machine, driven the way a user drives it.

Starts `pole serve` (the API and one worker) on a fresh data directory inside the output folder,
makes a sample-world dataset, uploads it over REST, runs a job with the `demo` preset while a bar
follows its progress, downloads the mask archive, prints the CAM and mask mIoU and the words chosen
per class, and writes a contact sheet of masks and a radar plot of the chosen words. The service is
stopped on every way out: success, an error, Ctrl-C or SIGTERM.

This process imports no torch: the training happens in the service's worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx

DEFAULT_IMAGES = 800
DEFAULT_SIZE = 96
SHEET_IMAGES = 8
FINAL_STATES = ("succeeded", "failed", "cancelled")
START_TIMEOUT_S = 120  # the API answers /readyz (migrations, imports)
STOP_TIMEOUT_S = 60  # serve stops its worker (up to 30 s) before exiting
# Settings that say where weights come from; every other POLE_* variable is left out so the demo
# always runs on its own embedded database and queue.
PASSED_SETTINGS = ("POLE_OFFLINE", "POLE_WEIGHTS_DIR")


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what happened and where to look."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="start the service, upload a sample-world dataset, run a job over REST, report mIoU and chosen words",
    )
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default ./demo-output)")
    p.add_argument("--n", type=int, default=DEFAULT_IMAGES, help=f"world images (default {DEFAULT_IMAGES})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"image side in pixels (default {DEFAULT_SIZE})")
    p.add_argument("--seed", type=int, default=0, help="world and job seed (default 0)")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    p.add_argument("--preset", default="demo", help="job preset (default demo)")
    p.add_argument("--config", type=Path, help="JSON file of job config overrides, same keys as config.json")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        overrides = json.loads(args.config.read_text()) if args.config else {}
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: --config {args.config}: {err}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    try:
        with _sigterm_as_exit():
            prepare_output(out)
            port = args.port or free_port()
            print(f"starting the service on port {port} (data in {out / 'service'}, log in {out / 'service.log'})")
            with EmbeddedService(out / "service", port, out / "service.log") as service:
                key = service.create_key("demo")
                with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as api:
                    report = run_job(api, out, args, overrides)
    except KeyboardInterrupt:
        print("\ninterrupted; the service is stopped", file=sys.stderr)
        return 130
    except DemoError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    minutes = (time.monotonic() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min; everything is in {out}:")
    for name, path in report["files"].items():
        print(f"  {name:<9} {path}")
    return 0


def run_job(api: httpx.Client, out: Path, args: argparse.Namespace, overrides: dict) -> dict:
    """World -> upload -> job -> archive, metrics, selections and figures; returns what was written."""
    from ml.data.world import make_world

    print(f"making a sample world of {args.n} images ({args.size} px, seed {args.seed})")
    make_world(out / "world", args.n, seed=args.seed, size=args.size)
    zip_path = zip_folder(out / "world", out / "world.zip")
    with open(zip_path, "rb") as f:
        dataset = _ok(api.post("/v1/datasets", files={"file": (zip_path.name, f, "application/zip")}), "upload")
    print(f"uploaded dataset {dataset['id']}: {dataset['image_count']} images, classes {', '.join(dataset['classes'])}")

    config = {**overrides, "seed": overrides.get("seed", args.seed)}
    job = _ok(api.post("/v1/jobs", json={"dataset_id": dataset["id"], "preset": args.preset, "config": config}), "job")
    print(f"job {job['id']} queued (preset {job['preset']}; models {json.dumps(job['models'])})")
    job = follow(api, job["id"])
    if job["state"] != "succeeded":
        raise DemoError(f"job {job['id']} {job['state']}: {job['error'] or job['message']} (see {out / 'service.log'})")

    archive = download(api, f"/v1/jobs/{job['id']}/archive", out / f"pole_masks_{job['id']}.zip")
    metrics = _ok(api.get(f"/v1/jobs/{job['id']}/metrics"), "metrics")
    selections = list(paginate(api, f"/v1/jobs/{job['id']}/selections"))
    images = list(paginate(api, f"/v1/datasets/{dataset['id']}/images"))
    files = {"archive": archive}
    files.update(write_figures(out, archive, images, selections, dataset["classes"]))
    summary = print_report(
        metrics, archive, selections, dataset["classes"], floor=background_floor(out, images, dataset)
    )
    files["summary"] = out / "summary.json"
    (out / "summary.json").write_text(json.dumps({"job": job["id"], **summary}, indent=2) + "\n")
    return {"job": job, "files": files}


# --- the service -------------------------------------------------------------------------------------


class EmbeddedService:
    """`pole serve` in its own session, on `data_dir`, logging to `log_path`; stopped like a Ctrl-C on exit."""

    def __init__(self, data_dir: Path, port: int, log_path: Path):
        self.data_dir, self.port, self.log_path = data_dir, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("POLE_") or k in PASSED_SETTINGS}
        self.env["POLE_DATA_DIR"] = str(data_dir)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> EmbeddedService:
        with open(self.log_path, "ab") as log:
            # Its own session: a Ctrl-C reaches the demo alone, which then stops the service in order.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pole.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            if self.process.poll() is not None:
                raise DemoError(f"the service exited at start (code {self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"the service was not ready after {START_TIMEOUT_S}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def create_key(self, name: str) -> str:
        """`pole keys create`, as an operator would run it; the key is printed once on stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "pole.cli", "keys", "create", "--name", name],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise DemoError(f"`pole keys create` failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def stop(self) -> None:
        """SIGINT, as Ctrl-C on `pole serve`: it stops its worker, then itself. SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            print(f"warning: the service did not stop within {STOP_TIMEOUT_S}s and was killed", file=sys.stderr)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the service is stopped by the same `with` blocks."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def prepare_output(out: Path) -> None:
    """Clear what an earlier demo left in `out` (its own service data and world), keep the rest."""
    out.mkdir(parents=True, exist_ok=True)
    service = out / "service"
    if service.exists() and any(service.iterdir()) and not (service / "pole.db").exists():
        raise DemoError(f"{service} exists and is not a demo's data directory; choose another --out")
    for path in (service, out / "world", out / "masks"):
        shutil.rmtree(path, ignore_errors=True)
    for path in (out / "world.zip", out / "service.log", *out.glob("pole_masks_*.zip")):
        path.unlink(missing_ok=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- REST ----------------------------------------------------------------------------------------------


def _ok(response: httpx.Response, what: str) -> dict:
    if response.is_error:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise DemoError(f"{what}: HTTP {response.status_code} from {response.request.url.path}: {detail}")
    return response.json()


def paginate(api: httpx.Client, path: str, limit: int = 500) -> Iterator[dict]:
    cursor = None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = _ok(api.get(path, params=params), path)
        yield from page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return


def follow(api: httpx.Client, job_id: str, poll_seconds: float = 0.5) -> dict:
    """A bar driven by the job's overall progress, its stage and the stage's own fraction, until it ends."""
    from tqdm import tqdm

    with tqdm(total=1000, file=sys.stderr, bar_format="{desc:<34}{bar}| {elapsed}<{remaining}") as bar:
        while True:
            job = _ok(api.get(f"/v1/jobs/{job_id}"), "job")
            stage = f"{job['stage']} {job['stage_progress']:4.0%}" if job["stage"] else job["state"]
            bar.set_description(stage, refresh=False)
            bar.n = round(1000 * job["progress"])
            bar.refresh()
            if job["state"] in FINAL_STATES:
                return job
            time.sleep(poll_seconds)


def download(api: httpx.Client, path: str, target: Path) -> Path:
    with api.stream("GET", path) as response:
        if response.is_error:
            response.read()
            _ok(response, "archive")
        with open(target, "wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    return target


def zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path


# --- what the job produced ----------------------------------------------------------------------


def background_floor(out: Path, images: list[dict], dataset: dict) -> float | None:
    """mIoU of calling every pixel background, on the world's ground truth: what the masks must beat."""
    from ml.data.images import read_mask
    from ml.reports import background_only_miou

    truths = (read_mask(out / "world" / "masks" / f"{im['id']}.png") for im in images if im["has_mask"])
    return background_only_miou(truths, dataset["classes"])


def print_report(
    metrics: dict, archive: Path, selections: list[dict], classes: list[str], floor: float | None = None
) -> dict:
    """CAM and mask mIoU (all images, then per split) and the word shares per class; returns them."""
    from ml.reports import miou_table, word_share_table, word_shares

    stages = {
        label: {"miou": metrics["stages"][stage]["miou"], "iou": metrics["stages"][stage]["per_class_iou"]}
        for stage, label in (("eval_cams", "CAM"), ("eval_masks", "mask"))
        if stage in metrics["stages"]
    }
    if not stages:
        raise DemoError("the job reported no mIoU; does the dataset have ground-truth masks?")
    print("\nIoU over all images (CAM: fixed background threshold; mask: after the random walk)")
    print(miou_table(stages, classes))
    if floor is not None:
        print(f"(for reference, calling every pixel background scores {_percent(floor)} mIoU)")
    with zipfile.ZipFile(archive) as zf:
        archived = json.loads(zf.read("metrics.json"))
    splits = {}
    for name, scores in archived.get("splits", {}).items():
        cams = archived.get("cams", {}).get("splits", {}).get(name, {})
        splits[name] = {"cam_miou": cams.get("miou"), "mask_miou": scores["miou"], "images": scores["images"]}
        print(
            f"split {name} ({scores['images']} images): CAM mIoU {_percent(cams.get('miou'))}, "
            f"mask mIoU {_percent(scores['miou'])}"
        )
    shares = word_shares(selections, classes)
    if shares:
        print("\nwords chosen for each class (share of the images tagged with it)")
        print(word_share_table(shares))
    return {"miou": stages, "background_only_miou": floor, "splits": splits, "word_shares": shares}


def write_figures(out: Path, archive: Path, images: list[dict], selections: list[dict], classes: list[str]) -> dict:
    """The contact sheet (held-out images first) and the radar of chosen words; returns their paths."""
    from ml.data.images import read_image, read_mask
    from ml.data.overlays import png_bytes
    from ml.reports import SheetRow, contact_sheet, figure_png, radar_figure, word_shares

    shown = sorted(images, key=lambda im: (im["split"] != "val", im["id"]))[:SHEET_IMAGES]
    masks = out / "masks"
    shutil.rmtree(masks, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(masks)  # our own service's archive, written by the export stage
    rows = []
    for image in shown:
        mask = read_mask(masks / "SegmentationClass" / f"{image['id']}.png")
        truth = read_mask(out / "world" / "masks" / f"{image['id']}.png") if image["has_mask"] else None
        picture = read_image(out / "world" / image["file"])
        rows.append(SheetRow(f"{image['id']} ({image['split']})", picture, truth, mask))
    files = {"masks": masks, "overlays": out / "overlays.png"}
    files["overlays"].write_bytes(png_bytes(contact_sheet(rows, classes)))
    shares = word_shares(selections, classes)
    if shares:
        files["radar"] = out / "chosen_words_radar.png"
        files["radar"].write_bytes(figure_png(radar_figure(shares, title="share of images choosing each word")))
    return files


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"
