"""`pole submit DATASET --server URL`: a dataset run on a remote pole service, its mask archive downloaded.

Uploads the dataset (a folder is zipped first), creates the job, follows it with a bar, downloads the
archive and prints the end-of-run report from the API's answers, all through pole.client. The API key
comes from POLE_API_KEY alone: a key on the command line would stay in the shell's history and in
every process listing. Argument parsing only at import.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ml.spec.registry import EXPORT_FORMATS

if TYPE_CHECKING:
    from pole.client import Client

API_KEY_VARIABLE = "POLE_API_KEY"
SHOWN_PROBLEMS = 50  # of an invalid dataset, listed one a line; past that only their number


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help=f"run a dataset on a remote pole service and download its mask archive (key: ${API_KEY_VARIABLE})",
    )
    p.add_argument("dataset", type=Path, metavar="DATASET", help="dataset folder or .zip (manifest or VOC layout)")
    p.add_argument("--server", required=True, metavar="URL", help="the service's address, e.g. http://gpu-box:8000")
    p.add_argument("--preset", help="a preset name (default: the server's default)")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config override, repeatable, e.g. train_cam.epochs=3; VALUE is read as JSON (3, 0.5, true, "
        "[1.0, 0.5]) when it is JSON, else as text",
    )
    p.add_argument(
        "--format", choices=list(EXPORT_FORMATS), help="archive format (default: the job's first export format)"
    )
    p.add_argument("--out", type=Path, help="archive file or folder (default ./pole_masks_JOB.zip)")
    p.add_argument(
        "--idempotency-key",
        metavar="K",
        help="sent with the job request: the same request with the same key returns the job it made, not a new one",
    )
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    key = os.environ.get(API_KEY_VARIABLE)
    if not key:
        return _fail(
            f"set {API_KEY_VARIABLE} to your API key (the server's operator creates one with "
            "`pole keys create --name NAME`); pole submit takes no key on its command line",
            2,
        )
    try:
        config = parse_overrides(args.config)
    except ValueError as err:
        return _fail(str(err), 2)
    if not args.server.startswith(("http://", "https://")):
        return _fail(f"--server {args.server!r}: give the address with its scheme, e.g. http://gpu-box:8000", 2)
    if not args.dataset.exists():
        return _fail(f"{args.dataset}: no such dataset folder or .zip", 2)
    if args.out is not None and not args.out.is_dir() and not args.out.parent.is_dir():
        return _fail(f"--out {args.out}: the folder {args.out.parent} does not exist", 2)

    import httpx

    from pole.client import Client, DatasetInvalid, PoleApiError

    run = RemoteRun(args, config)
    try:
        with Client(args.server, key) as client:
            return run.submit(client)
    except KeyboardInterrupt:
        print(f"\n{run.interrupted()}", file=sys.stderr)
        return 130
    except DatasetInvalid as err:
        lines = [f"  {problem}" for problem in _problem_lines(err.problems)]
        return _fail("\n".join([f"dataset {err.dataset['id']} is invalid: {len(err.problems)} problem(s)", *lines]), 1)
    except PoleApiError as err:
        return _fail(str(err), 1)
    except httpx.InvalidURL as err:
        return _fail(f"--server {args.server!r}: {err}", 2)
    except httpx.TransportError as err:
        return _fail(f"cannot reach the pole service at {args.server}: {err or type(err).__name__}", 1)


class RemoteRun:
    """One dataset through a remote service; remembers how far it got, for a message on Ctrl-C."""

    def __init__(self, args: argparse.Namespace, config: dict):
        self.args, self.config = args, config
        self.server = args.server.rstrip("/")
        self.dataset: dict | None = None
        self.job: dict | None = None

    def submit(self, client: Client) -> int:
        from pole.demo_report import job_floor, job_scores, stage_seconds
        from pole.report import RunReport, print_report

        args = self.args
        next(client.list_datasets(page_size=1), None)  # a wrong address or key is told before a large upload
        dataset = self.dataset = client.upload_dataset(args.dataset, progress=True)
        print(f"dataset {dataset['id']}: {dataset['image_count']} images, classes {', '.join(dataset['classes'])}")
        self.job = client.create_job(
            dataset["id"], preset=args.preset, config=self.config or None, idempotency_key=args.idempotency_key
        )
        print(f"job {self.job['id']} {self.job['state']} (preset {self.job['preset']})", flush=True)
        job = self.job = client.wait_for_job(self.job["id"], progress=True)
        if job["state"] != "succeeded":
            return _fail(f"job {job['id']} {job['state']}: {job['error'] or job['message']}", 1)
        archive = client.download_archive(job["id"], self.archive_path(job["id"]), args.format, progress=True)
        metrics = client.get_metrics(job["id"])
        report = RunReport(
            classes=dataset["classes"],
            scores=job_scores(metrics),
            background_only_miou=job_floor(metrics),
            selections=list(client.list_selections(job["id"])),
            archives=[archive],
            stage_seconds=stage_seconds(job),
            failed_images=job["failed_images"],
            warnings=job.get("warnings", []),
        )
        print_report(report)
        return 0

    def archive_path(self, job_id: str) -> Path:
        name = f"pole_masks_{job_id}{f'_{self.args.format}' if self.args.format else ''}.zip"
        out = self.args.out
        return out / name if out is not None and out.is_dir() else out or Path(name)

    def interrupted(self) -> str:
        if self.job is None:
            kept = f"; dataset {self.dataset['id']} stays on the server" if self.dataset else ""
            return f"interrupted before a job was created{kept}"
        job = f"{self.server}/v1/jobs/{self.job['id']}"
        if self.job["state"] == "succeeded":
            return f"interrupted; job {self.job['id']} has succeeded, its archive is at {job}/archive"
        header = f'-H "Authorization: Bearer ${API_KEY_VARIABLE}"'
        return (
            f"interrupted; job {self.job['id']} keeps running on the server. Follow it with\n"
            f"  curl {header} {job}\n"
            f"its archive, once it has succeeded: curl {header} -OJ {job}/archive\n"
            f"or stop it: curl {header} -X POST {job}/cancel"
        )


def parse_overrides(items: list[str]) -> dict:
    """The nested config overrides of `--config` items: "train_cam.epochs=1" gives {"train_cam": {"epochs": 1}};
    a value is read as JSON when it is JSON ("1", "[1.0]", "true"), else kept as text."""
    config: dict = {}
    for item in items:
        dotted, equals, text = item.partition("=")
        keys = dotted.strip().split(".")
        if not equals or not all(keys):
            raise ValueError(f"--config {item!r}: expected SECTION.KEY=VALUE, e.g. train_cam.epochs=3")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"--config {item!r}: {key} was given a value by an earlier --config")
        node[keys[-1]] = value
    return config


def _problem_lines(problems: list[dict]) -> list[str]:
    from pole.client import problem_text

    lines = [problem_text(problem) for problem in problems[:SHOWN_PROBLEMS]]
    return lines + ([f"... and {len(problems) - SHOWN_PROBLEMS} more"] if len(problems) > SHOWN_PROBLEMS else [])


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code
