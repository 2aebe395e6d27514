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
import json
import shutil
import sys
import time
from pathlib import Path

from ml.data.archive import zip_folder
from pole import demo_report
from pole.client import Client, PoleApiError
from pole.report import RunReport, print_report
from pole.service_process import EmbeddedService, ServiceError, free_port, sigterm_as_interrupt

DEFAULT_IMAGES = 800
DEFAULT_SIZE = 96
FRESH_IMAGES = 100  # new world images the demo's segmenter labels without their tags


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
        with sigterm_as_interrupt():
            prepare_output(out)
            port = args.port or free_port()
            print(f"starting the service on port {port} (data in {out / 'service'}, log in {out / 'service.log'})")
            with (
                EmbeddedService(out / "service", port, out / "service.log") as service,
                Client(service.url, service.create_key("demo")) as client,
            ):
                files = run_job(client, out, args, overrides)
    except KeyboardInterrupt:
        print("\ninterrupted; the service is stopped", file=sys.stderr)
        return 130
    except (DemoError, ServiceError, PoleApiError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    minutes = (time.monotonic() - started) / 60
    print(f"\ndemo finished in {minutes:.1f} min; everything is in {out}, including:")
    for name, path in files.items():
        print(f"  {name:<9} {path}")
    return 0


def run_job(client: Client, out: Path, args: argparse.Namespace, overrides: dict) -> dict[str, Path]:
    """World -> upload -> job -> archive, metrics, selections, report and figures; returns the files
    written besides the archive and the figures, which the report lists."""
    from ml.world.writer import make_world

    world = out / "world"
    print(f"making a sample world of {args.n} images ({args.size} px, seed {args.seed})")
    make_world(world, args.n, seed=args.seed, size=args.size)
    dataset = client.upload_dataset(zip_folder(world, out / "world.zip"))
    classes = dataset["classes"]
    print(f"uploaded dataset {dataset['id']}: {dataset['image_count']} images, classes {', '.join(classes)}")

    config = {**overrides, "seed": overrides.get("seed", args.seed)}
    job = client.create_job(dataset["id"], preset=args.preset, config=config)
    print(f"job {job['id']} queued (preset {job['preset']}; models {json.dumps(job['models'])})")
    job = client.wait_for_job(job["id"], progress=True)
    if job["state"] != "succeeded":
        raise DemoError(f"job {job['id']} {job['state']}: {job['error'] or job['message']} (see {out / 'service.log'})")

    archive = client.download_archive(job["id"], out / f"pole_masks_{job['id']}.zip")
    metrics = client.get_metrics(job["id"])
    scores = demo_report.job_scores(metrics)
    if not scores:
        raise DemoError("the job reported no mIoU; does the dataset have ground-truth masks?")
    selections = list(client.list_selections(job["id"]))
    images = list(client.list_images(dataset["id"]))
    report = RunReport(
        classes=classes,
        scores=scores,
        background_only_miou=demo_report.job_floor(metrics),
        selections=selections,
        archives=[archive],
        stage_seconds=demo_report.stage_seconds(job),
        failed_images=job["failed_images"],
        warnings=job.get("warnings", []),
        figures=demo_report.draw_job_figures(out, world, archive, images, selections, classes, job),
    )
    summary = print_report(report)
    files = {"masks": out / "masks", "summary": out / "summary.json"}
    if job["links"].get("model"):
        summary["fresh_images"] = label_fresh_images(client, out, args, job, classes)
        files["fresh"] = out / "fresh"
    files["summary"].write_text(json.dumps({"job": job["id"], **summary}, indent=2) + "\n")
    return files


def label_fresh_images(client: Client, out: Path, args: argparse.Namespace, job: dict, classes: list[str]) -> dict:
    """Label a new world (another seed: no stage of the job saw it) from its pixels alone, with the job's
    segmenter, and score the labels against the world's own masks."""
    from ml.world.writer import make_world

    fresh = out / "fresh"
    make_world(fresh, FRESH_IMAGES, seed=args.seed + 1, size=args.size, holdout=0.0)
    images = zip_folder(fresh / "images", out / "fresh_images.zip")  # pixels only: no tags, no masks
    print(f"\nlabelling {FRESH_IMAGES} new world images (seed {args.seed + 1}) with the job's segmenter, no tags given")
    run = client.create_prediction(job["id"], images)
    run = client.wait_for_prediction(job["id"], run["id"], progress=True)
    if run["state"] != "succeeded":
        raise DemoError(f"prediction run {run['id']} {run['state']}: {run['error'] or run['message']}")
    archive = client.download_prediction_archive(job["id"], run["id"], out / f"pole_predictions_{run['id']}.zip")
    scores = demo_report.score_archive(archive, fresh / "masks", classes)
    print(
        f"the segmenter labels images it never saw: {100 * scores['miou']:.1f}% mIoU "
        f"over {scores['images']} images (archive {archive})"
    )
    return {"prediction": run["id"], "archive": str(archive), **scores}


def prepare_output(out: Path) -> None:
    """Clear what an earlier demo left in `out` (its own service data and world), keep the rest."""
    out.mkdir(parents=True, exist_ok=True)
    service = out / "service"
    if service.exists() and any(service.iterdir()) and not (service / "pole.db").exists():
        raise DemoError(f"{service} exists and is not a demo's data directory; choose another --out")
    predictions = [*out.glob("pole_predictions_*")]
    for path in (service, out / "world", out / "masks", out / "fresh", *[p for p in predictions if p.is_dir()]):
        shutil.rmtree(path, ignore_errors=True)
    old_files = [out / "world.zip", out / "fresh_images.zip", out / "service.log", *out.glob("pole_masks_*.zip")]
    for path in (*old_files, *[p for p in predictions if p.is_file()]):
        path.unlink(missing_ok=True)
