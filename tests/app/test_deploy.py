"""docker-compose.yml and the Dockerfile agree with the settings and commands (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from app.settings import Settings
from pole.cli import build_parser
from pole.commands.service import cmd_serve, cmd_worker

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_compose_has_the_four_services(compose):
    assert set(compose["services"]) == {"api", "worker", "redis", "postgres"}


def test_worker_reserves_a_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_api_and_worker_share_settings_and_the_data_volume(compose, tmp_path):
    services = compose["services"]
    api, worker = services["api"], services["worker"]
    assert api["environment"] == worker["environment"]
    env = api["environment"]
    fields = {f"POLE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, f"unknown settings: {set(env) - fields}"
    settings = Settings(**{k.removeprefix("POLE_").lower(): v for k, v in env.items()})

    mounts = {s: dict(m.split(":")[::-1] for m in services[s]["volumes"]) for s in ("api", "worker")}
    volume = mounts["api"][str(settings.data_dir)]
    assert mounts["worker"][str(settings.data_dir)] == volume and volume in compose["volumes"]

    database = make_url(settings.database_url)
    postgres = services["postgres"]["environment"]
    assert database.drivername == "postgresql+psycopg" and database.host == "postgres"
    assert (database.username, database.password, database.database) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )
    assert settings.broker_url.startswith("redis://redis:6379")
    assert set(api["depends_on"]) == {"postgres", "redis"}
    assert set(worker["depends_on"]) == {"api"}  # the API applies the migrations at its start
    for service in (api, worker):
        assert all(c["condition"] == "service_healthy" for c in service["depends_on"].values())


def test_commands_are_real_pole_commands(compose):
    parser = build_parser()
    api_args = parser.parse_args(compose["services"]["api"]["command"][1:])
    assert api_args.func is cmd_serve and api_args.no_worker
    published = {p.split(":")[1] for p in compose["services"]["api"]["ports"]}
    assert published == {str(api_args.port)}
    assert parser.parse_args(compose["services"]["worker"]["command"][1:]).func is cmd_worker


def test_dockerfile_matches_the_settings_and_the_pinned_torch(compose, dockerfile):
    data_dir = compose["services"]["api"]["environment"]["POLE_DATA_DIR"]
    assert re.search(rf"POLE_DATA_DIR={re.escape(data_dir)}\b", dockerfile)
    assert f"VOLUME {data_dir}" in dockerfile
    api_port = compose["services"]["api"]["command"][-1]
    assert f"EXPOSE {api_port}" in dockerfile
    torch_pin = re.search(r"^TORCH := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert torch_pin in dockerfile
    for folder in ("ml", "app", "worker", "migrations"):
        assert f"COPY {folder} {folder}" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "data/" in ignored


def test_the_api_is_ready_before_any_worker_starts(compose):
    # The workers wait for the API's health (its migrations), so its readiness must not wait for them.
    env = compose["services"]["api"]["environment"]
    assert Settings(**{k.removeprefix("POLE_").lower(): v for k, v in env.items()}).ready_needs_worker is False
    assert "/readyz" in " ".join(compose["services"]["api"]["healthcheck"]["test"])
