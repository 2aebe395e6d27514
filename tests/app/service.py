"""Real service components for tests: the API on a free port, worker processes, databases, datasets.

Nothing here is a stand-in: the API is uvicorn serving create_app(), the worker is `pole worker` in
its own process group, PostgreSQL and Redis are the servers on this machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import uvicorn

from app.db import upgrade
from app.main import create_app
from app.queue import create_celery
from app.settings import Settings
from pole.client import Client
from tests.conftest import make_tiny_dataset

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"

# A pipeline short enough for tests about the service rather than mask quality.
FAST_CONFIG = {
    "train_cam": {"epochs": 1},
    "train_pole": {"epochs": 1},
    "make_cams": {"scales": [1.0]},
    "train_irn": {"epochs": 1},
    "refine": {"exp_times": 2},
}


def make_settings(data_dir: Path, **overrides) -> Settings:
    """Embedded defaults in `data_dir`, with job timings short enough to watch in a test."""
    values = {
        "data_dir": data_dir,
        "database_url": "",
        "broker_url": "",
        "queue": f"test-{uuid.uuid4().hex[:8]}",
        "heartbeat_seconds": 0.5,
        "stale_after_seconds": 4,
        "reaper_interval_seconds": 1,
        **overrides,
    }
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker process needs to see exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLE_")}
    env.update({f"POLE_{k.upper()}": str(v) for k, v in settings.model_dump().items()})
    env["POLE_OFFLINE"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiServer:
    """uvicorn serving the app in a thread of the test process, on a free port (`log_level` "info" logs
    every request line to the `uvicorn.access` logger)."""

    def __init__(self, settings: Settings, log_level: str = "warning"):
        upgrade(settings.database_url)
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level=log_level)
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{config.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


class WorkerProcess:
    """`pole worker` in its own process group, so a test can kill it (and its pool) like a crash would."""

    def __init__(self, settings: Settings, log_path: Path, name: str = "test-worker@here"):
        self.settings, self.log_path, self.name = settings, log_path, name
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pole.cli", "worker", "--name", self.name, "--loglevel", "INFO"],
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while b" ready." not in self.log_path.read_bytes()[offset:]:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once: no cleanup, no message acknowledged."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGQUIT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log(self, chars: int | None = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-chars:] if chars else text


def create_postgres_database() -> str:
    """A fresh, empty database on the local server; returns its SQLAlchemy URL."""
    name = f"pole_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as err:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN}: {err}")
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_postgres_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as err:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {err}")


def drop_redis_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)


def make_dataset_zip(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return zip_path


def small_dataset(root: Path, images: int = 6) -> Path:
    """The shared tiny dataset cut to its first `images` images (each class alone, then in pairs)."""
    make_tiny_dataset(root)
    lines = (root / "tags.csv").read_text().splitlines()
    for line in lines[1 + images :]:
        stem = line.split(",")[0].removesuffix(".png")
        (root / "images" / f"{stem}.png").unlink()
        (root / "masks" / f"{stem}.png").unlink()
    (root / "tags.csv").write_text("\n".join(lines[: 1 + images]) + "\n")
    return root


def take_queued_tasks(settings: Settings) -> list[tuple[str, dict]]:
    """(task name, kwargs) of every message waiting in the queue, taken off it as a worker would."""
    taken = []
    with create_celery(settings).connection_for_read() as connection, connection.SimpleQueue(settings.queue) as queue:
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                return taken
            taken.append((message.headers["task"], message.payload[1]))
            message.ack()


def upload(client: httpx.Client, zip_path: Path) -> httpx.Response:
    """POST the zip; once accepted (202), the dataset's GET (200) when its validation has ended, else the refusal."""
    response = Client.over(client).send_dataset(zip_path)
    if response.status_code != 202:
        return response
    return wait_for_dataset(client, response.json()["id"])


def wait_for_dataset(client: httpx.Client, dataset_id: str, timeout: float = 120) -> httpx.Response:
    """GET the dataset until it is no longer `validating`; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/v1/datasets/{dataset_id}")
        if response.status_code != 200 or response.json()["state"] != "validating":
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"dataset {dataset_id} still validating after {timeout} s: {response.json()}")
        time.sleep(0.05)


def wait_for(client: httpx.Client, job_id: str, done, timeout: float = 300, what: str = "") -> dict:
    """Poll the job until `done(job)` holds; fails with the job's last state after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for job in Client.over(client).follow_job(job_id, poll_seconds=0.2):
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or 'the job'}; last seen: {job}")
    raise AssertionError(f"the job ended before {what or 'the condition'} was seen: {job}")


def data_dir_listing(settings: Settings) -> set[str]:
    """Every file and folder in the data dir except the database files and the broker's queue."""
    ignored = {"pole.db", "pole.db-wal", "pole.db-shm"}
    return {
        str(p.relative_to(settings.data_dir))
        for p in settings.data_dir.rglob("*")
        if p.name not in ignored and settings.broker_dir not in p.parents and p != settings.broker_dir
    }


def job_routes(job_id: str, image: str) -> list[tuple[str, str]]:
    base = f"/v1/jobs/{job_id}"
    return [
        ("GET", base),
        ("POST", f"{base}/cancel"),
        ("GET", f"{base}/archive"),
        ("GET", f"{base}/selections"),
        ("GET", f"{base}/metrics"),
        ("GET", f"{base}/images"),
        ("GET", f"{base}/images/{image}"),
        ("GET", f"{base}/images/{image}/mask.png"),
        ("GET", f"{base}/images/{image}/overlay.png"),
        ("GET", f"{base}/images/{image}/cams.png"),
    ]


def dataset_routes(dataset_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/datasets/{dataset_id}"),
        ("GET", f"/v1/datasets/{dataset_id}/images"),
        ("GET", f"/v1/datasets/{dataset_id}/synonyms"),
        ("DELETE", f"/v1/datasets/{dataset_id}"),
    ]


def assert_invisible_to(other, dataset_id: str, job_id: str, image: str) -> None:
    """`other` gets 404 for the dataset and the job on every route, and lists neither."""
    for method, path in dataset_routes(dataset_id) + job_routes(job_id, image):
        response = other.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
    assert other.post("/v1/jobs", json={"dataset_id": dataset_id}).status_code == 404
    assert other.get("/v1/datasets").json()["items"] == []
    assert other.get("/v1/jobs").json()["items"] == []
    assert other.get("/v1/jobs", params={"dataset_id": dataset_id}).json()["items"] == []


def processes_using(data_dir: Path) -> list[int]:
    """Live processes whose environment points at `data_dir` (a serve command, its worker, a demo's)."""
    marker = f"POLE_DATA_DIR={data_dir}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def parent_of(pid: int) -> int | None:
    """The parent pid of a live process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, then ppid


class ServeProcess:
    """`pole serve` on these settings in a child process, logging to `log_path`; a test may kill it like a crash.

    `env`: more environment variables for it and its worker (where the weights are, say)."""

    def __init__(self, settings: Settings, log_path: Path, *args: str, env: dict[str, str] | None = None):
        self.settings, self.log_path, self.args = settings, log_path, args
        self.env = {**settings_env(settings), **(env or {})}
        self.url = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen | None = None

    def start(self, ready: str = "/readyz", timeout: float = 90) -> ServeProcess:
        """Start it and wait until `ready` answers 200 (/healthz for an API without workers)."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pole.cli", "serve", "--port", self.url.rsplit(":", 1)[1], *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + ready, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`pole serve` did not get ready:\n{self.log()}")
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        """The main processes of its embedded workers (its children; their pool processes are theirs)."""
        return [pid for pid in processes_using(self.settings.data_dir) if parent_of(pid) == self.process.pid]

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """As Ctrl-C would; SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def log(self, chars: int | None = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text[-chars:] if chars else text
