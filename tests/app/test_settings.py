"""Settings: embedded defaults inside the data dir, URLs normalised, mistakes named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_embedded_defaults_live_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("POLE_DATA_DIR", "POLE_DATABASE_URL", "POLE_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.database_url == f"sqlite:///{tmp_path / 'data' / 'pole.db'}"
    assert settings.embedded_broker
    assert settings.broker_transport_options()["data_folder_in"].startswith(str(tmp_path / "data" / "broker"))
    assert settings.max_attempts == 3


def test_environment_variables_are_read_with_the_pole_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("POLE_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("POLE_DATABASE_URL", "postgres://u:p@db:5432/pole")
    monkeypatch.setenv("POLE_BROKER_URL", "redis://cache:6379/1")
    monkeypatch.setenv("POLE_MAX_ATTEMPTS", "5")
    settings = Settings()
    assert settings.data_dir == tmp_path / "elsewhere"
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/pole"
    assert not settings.embedded_broker
    assert settings.broker_transport_options() == {"global_keyprefix": "pole:"}
    assert settings.max_attempts == 5


@pytest.mark.parametrize(
    ("values", "phrase"),
    [
        ({"database_url": "mysql://db/pole"}, "POLE_DATABASE_URL='mysql://db/pole' is not supported"),
        ({"broker_url": "amqp://mq"}, "POLE_BROKER_URL='amqp://mq' is not supported"),
        ({"heartbeat_seconds": 30, "stale_after_seconds": 20}, "must exceed POLE_HEARTBEAT_SECONDS"),
        ({"queue": "has space"}, "should match pattern"),
        ({"synonym_llm_url": "ftp://llm/v1", "synonym_llm_model": "m"}, "POLE_SYNONYM_LLM_URL='ftp://llm/v1' is not"),
        ({"synonym_llm_url": "http://me:sk-1@llm/v1", "synonym_llm_model": "m"}, "put the key in POLE_SYNONYM_LLM_KEY"),
        ({"synonym_llm_url": "http://llm/v1"}, "POLE_SYNONYM_LLM_MODEL must name the model"),
    ],
)
def test_bad_settings_name_the_variable(tmp_path, values, phrase):
    with pytest.raises(ValidationError, match=phrase):
        Settings(data_dir=tmp_path, **values)


def test_archive_limits_follow_the_settings(tmp_path):
    limits = Settings(data_dir=tmp_path, max_archive_members=7, max_compression_ratio=9).archive_limits()
    assert (limits.max_members, limits.max_ratio) == (7, 9)
