"""`pole serve` as a child process on its own data directory, stopped on every way out of its `with` block."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

START_TIMEOUT_S = 120  # the API answers /readyz (migrations, imports)
STOP_TIMEOUT_S = 60  # serve stops its worker (up to 30 s) before exiting
# Settings that say where weights come from and how the worker shares the machine; every other POLE_*
# variable is left out so the child always runs on its own embedded database and queue.
PASSED_SETTINGS = ("POLE_OFFLINE", "POLE_WEIGHTS_DIR", "POLE_WORKER_NICE", "POLE_WORKER_THREADS")


class ServiceError(RuntimeError):
    """The service could not be started or asked for a key; the message quotes its log."""


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
            # Its own session: a Ctrl-C reaches the parent alone, which then stops the service in order.
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
                raise ServiceError(f"the service exited at start (code {self.process.returncode}):\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(f"the service was not ready after {START_TIMEOUT_S}s:\n{self.log_tail()}")
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
            raise ServiceError(f"`pole keys create` failed: {result.stderr.strip()}")
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
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so a service is stopped by the same `with` blocks."""

    def interrupt(_signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
