"""`pole submit` against the real API over HTTP: a subprocess with a real worker for the whole way, in-process
where the command stops before any job runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from pole.cli import main
from pole.client import Client
from pole.commands.submit import parse_overrides
from tests.app.conftest import new_key
from tests.app.service import FAST_CONFIG, WorkerProcess, free_port
from tests.pole.conftest import DATASET_IMAGES


def config_args(config: dict, prefix: str = "") -> list[str]:
    """FAST_CONFIG as `--config section.key=value` arguments."""
    args = []
    for key, value in config.items():
        if isinstance(value, dict):
            args += config_args(value, f"{prefix}{key}.")
        else:
            args += ["--config", f"{prefix}{key}={value}"]
    return args


def submit_process(args: list[str], key: str, cwd, out_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLE_")}
    env.update(POLE_API_KEY=key, PYTHONUNBUFFERED="1")
    with open(out_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pole.cli", "submit", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_config_items_become_nested_overrides():
    items = [
        "train_cam.epochs=3",
        "make_cams.scales=[1.0, 0.5]",
        "train_cam.lr=0.01",
        "seed=7",
        "models.cam_weights=a.pth",
    ]
    assert parse_overrides(items) == {
        "train_cam": {"epochs": 3, "lr": 0.01},
        "make_cams": {"scales": [1.0, 0.5]},
        "seed": 7,
        "models": {"cam_weights": "a.pth"},
    }
    for bad in ("train_cam.epochs", "=3", "train_cam..epochs=3"):
        with pytest.raises(ValueError, match="expected SECTION.KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ValueError, match="seed was given a value"):
        parse_overrides(["seed=1", "seed.x=2"])
    assert parse_overrides(config_args(FAST_CONFIG)[1::2]) == FAST_CONFIG


def test_a_dataset_runs_remotely_to_its_archive_and_report(api, settings, dataset_folder, tmp_path):
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    key = new_key(settings, "gus")
    args = [str(dataset_folder), "--server", api.url, "--preset", "cpu-small", *config_args(FAST_CONFIG)]
    args += ["--out", "masks.zip", "--idempotency-key", "submit-1"]
    try:
        process = submit_process(args, key, tmp_path, tmp_path / "submit.log")
        assert process.wait(timeout=600) == 0, (tmp_path / "submit.log").read_text() + worker.log()
    finally:
        worker.stop()
    output = (tmp_path / "submit.log").read_text()
    assert key not in output
    with zipfile.ZipFile(tmp_path / "masks.zip") as zf:
        assert len([n for n in zf.namelist() if n.startswith("SegmentationClass/")]) == DATASET_IMAGES
    with Client(api.url, key) as client:
        (job,) = client.list_jobs()
        assert job["state"] == "succeeded" and job["config"]["train_cam"]["epochs"] == 1
        assert job["config"]["make_cams"]["scales"] == [1.0] and job["preset"] == "cpu-small"
        again = client.create_job(job["dataset_id"], "cpu-small", FAST_CONFIG, idempotency_key="submit-1")
        assert again["id"] == job["id"]  # the command sent its job request with that key
    assert f"job {job['id']} queued (preset cpu-small)" in output
    assert "\narchive: masks.zip\n" in output
    assert "IoU over all images" in output and "words chosen for each class" in output
    for name in ("square", "circle", "triangle"):
        assert name in output.split("words chosen for each class")[1]


def test_without_a_key_it_says_where_the_key_goes(api, dataset_folder, monkeypatch, capsys):
    monkeypatch.delenv("POLE_API_KEY", raising=False)
    assert main(["submit", str(dataset_folder), "--server", api.url]) == 2
    assert "set POLE_API_KEY to your API key" in capsys.readouterr().err


def test_an_unreachable_server_is_named(dataset_folder, monkeypatch, capsys):
    monkeypatch.setenv("POLE_API_KEY", "pole_nothing-listens-there")
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["submit", str(dataset_folder), "--server", url]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot reach the pole service at {url}: " in err and "pole_nothing" not in err
    assert main(["submit", str(dataset_folder), "--server", "gpu-box:8000"]) == 2
    assert "give the address with its scheme" in capsys.readouterr().err


def test_refusals_exit_non_zero_with_the_apis_words(api, settings, dataset_folder, monkeypatch, capsys):
    key = new_key(settings, "hal")
    monkeypatch.setenv("POLE_API_KEY", key)
    assert main(["submit", str(dataset_folder), "--server", api.url, "--preset", "no-such-preset"]) == 1
    out, err = capsys.readouterr()
    assert "error: job: HTTP 422 from /v1/jobs: " in err and "no-such-preset" in err and "cpu-small" in err
    assert key not in out + err

    monkeypatch.setenv("POLE_API_KEY", "pole_revoked-or-never-made")
    assert main(["submit", str(dataset_folder), "--server", api.url]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "pole keys create" in err and "pole_revoked" not in err

    monkeypatch.setenv("POLE_API_KEY", key)
    lines = (dataset_folder / "tags.csv").read_text().splitlines()
    lines[3] = lines[3].split(",")[0] + ",hexagon"
    (dataset_folder / "tags.csv").write_text("\n".join(lines) + "\n")
    assert main(["submit", str(dataset_folder), "--server", api.url]) == 1
    err = capsys.readouterr().err
    assert "is invalid: 1 problem(s)\n  tags.csv:4: " in err and "hexagon" in err
    with Client(api.url, key) as client:
        assert list(client.list_jobs()) == []


def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_follow_it(api, settings, dataset_folder, tmp_path):
    key = new_key(settings, "ida")
    log = tmp_path / "submit.log"
    process = submit_process([str(dataset_folder), "--server", api.url, "--preset", "cpu-small"], key, tmp_path, log)
    try:
        deadline = time.monotonic() + 120
        while "queued (preset" not in log.read_text():  # no worker: the job stays queued, the command waits
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    with Client(api.url, key) as client:
        (job,) = client.list_jobs()
    assert job["state"] == "queued"
    assert f"job {job['id']} keeps running on the server" in output
    assert f'curl -H "Authorization: Bearer $POLE_API_KEY" {api.url}/v1/jobs/{job["id"]}\n' in output
    assert "Traceback" not in output and key not in output
