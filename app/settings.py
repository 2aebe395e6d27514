"""Everything the service reads from its environment: one `Settings`, variables prefixed `POLE_`.

Unset, the service runs embedded on one machine: a SQLite file and a file-based Celery broker, both
inside the data directory, so nothing needs installing. Point `POLE_DATABASE_URL` at PostgreSQL and
`POLE_BROKER_URL` at Redis (with a data directory every machine mounts) to run many workers.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml.data.archive import ArchiveLimits
from ml.data.images import DEFAULT_MAX_PIXELS
from ml.synonym_llm import LlmEndpoint

GiB = 1 << 30


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POLE_", extra="ignore")

    # Datasets, job run directories, prediction runs, the SQLite file and the embedded broker's queue live here.
    data_dir: Path = Path("data")
    # Empty: a SQLite file in data_dir (WAL). postgres:// and postgresql:// get the psycopg driver.
    database_url: str = ""
    # Empty: Celery's filesystem transport under data_dir/broker (one machine). redis://... to scale out.
    broker_url: str = ""
    # Deployments sharing one Redis need distinct queue names (also used as their Redis key prefix).
    queue: str = Field(default="pole", pattern=r"^[A-Za-z0-9_.-]+$")
    default_preset: str = "paper"
    # Whether job configs may name weight files (models.*) on the workers' disks; tags only when false.
    allow_weight_files: bool = False
    # Ceilings on what one job may ask for (checked by the API beside the config's own ranges):
    # training epochs of each stage, batch sizes, crop sizes (memory) and data-loader processes.
    max_epochs: int = Field(default=200, ge=1)
    max_batch_size: int = Field(default=256, ge=1)
    max_crop_size: int = Field(default=1024, ge=16)
    max_loader_workers: int = Field(default=8, ge=0)

    # Uploads: the request body is counted as it streams to disk; past this the answer is 413.
    max_upload_bytes: int = Field(default=2 * GiB, gt=0)
    # Checked while extracting, never trusted from the zip headers.
    max_archive_members: int = Field(default=50_000, gt=0)
    max_archive_bytes: int = Field(default=8 * GiB, gt=0)
    max_archive_member_bytes: int = Field(default=1 * GiB, gt=0)
    max_compression_ratio: float = Field(default=200.0, gt=1)
    # Decompression-bomb guard, checked from each image's header before decoding it.
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0)

    # Jobs: a worker writes a heartbeat this often; one silent for stale_after_seconds is presumed
    # dead and requeued (from its last finished stage) until max_attempts, then failed.
    max_attempts: int = Field(default=3, ge=1)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    stale_after_seconds: float = Field(default=90.0, gt=0)
    reaper_interval_seconds: float = Field(default=30.0, gt=0)
    # Fair queues (app/dispatch.py): at most this many of one API key's jobs are in the broker's queue or
    # running at once; its other jobs wait in the database, so another key's job never waits behind them.
    max_running_jobs_per_key: int = Field(default=2, ge=1)
    # A queued job sent this long ago that no worker has taken is sent again (its message may be lost),
    # when the broker's queue holds fewer messages than there are jobs waiting for one.
    requeue_after_seconds: float = Field(default=120.0, gt=0)

    page_size: int = Field(default=50, ge=1)
    max_page_size: int = Field(default=500, ge=1)

    # What a process that died mid-upload left in the uploads folder is removed once this old (by
    # mtime; uploads in progress are kept fresh, see app/stale_uploads.py).
    upload_max_age_seconds: float = Field(default=3600.0, gt=0)
    # Uploads each API process validates at once, in the background (app/upload_validation.py); each
    # decodes its images on a few threads of its own, so one keeps the cores busy.
    validation_threads: int = Field(default=1, ge=1)
    # /readyz answers 503 while no worker is alive. False for an API-only deployment that should take
    # requests whatever the workers do (the count is still reported).
    ready_needs_worker: bool = True

    # The dashboard (/dashboard): its session cookie is signed with this secret; empty: one generated
    # once and kept in data_dir/dashboard_secret, so every API process on that data dir shares it.
    dashboard_secret: SecretStr = SecretStr("")
    # How long a dashboard sign-in lasts; a revoked key ends it at once.
    dashboard_session_seconds: int = Field(default=8 * 3600, ge=60)
    # Mark the cookie Secure (sent over HTTPS only): set it where the API is served over HTTPS.
    dashboard_secure_cookie: bool = False

    # A language model that adds synonyms to the candidate words (select_prompts.llm_synonyms), as the paper
    # made its lists: an OpenAI-compatible API base (requests go to {url}/chat/completions); empty: none.
    synonym_llm_url: str = ""
    synonym_llm_model: str = Field(default="", max_length=200)
    synonym_llm_key: SecretStr = SecretStr("")  # sent as a Bearer token, never logged or stored
    # The longest a job or the synonym preview waits for the answers it has not cached, all classes together.
    synonym_llm_timeout_seconds: float = Field(default=10.0, gt=0, le=300)

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Workers in other processes must see the same folder whatever their working directory.
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        value = value.strip()
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if value and not value.startswith(("sqlite://", "postgresql+psycopg://")):
            raise ValueError(
                f"POLE_DATABASE_URL={value!r} is not supported; use sqlite:///PATH or "
                "postgresql+psycopg://USER@HOST/DB (or leave it unset for a SQLite file in the data directory)"
            )
        return value

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("redis://", "rediss://", "filesystem://")):
            raise ValueError(
                f"POLE_BROKER_URL={value!r} is not supported; use redis://HOST:6379/0 "
                "(or leave it unset for the embedded file-based queue in the data directory)"
            )
        return value

    @field_validator("synonym_llm_url")
    @classmethod
    def _check_synonym_llm_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment):
            raise ValueError(
                f"POLE_SYNONYM_LLM_URL={value!r} is not an API base URL; use e.g. http://127.0.0.1:8080/v1 "
                "(requests go to {url}/chat/completions), or leave it unset for no language model"
            )
        if parts.username or parts.password:
            raise ValueError("POLE_SYNONYM_LLM_URL may not hold credentials; put the key in POLE_SYNONYM_LLM_KEY")
        return value

    @model_validator(mode="after")
    def _synonym_llm_needs_a_model(self) -> Settings:
        if self.synonym_llm_url and not self.synonym_llm_model.strip():
            raise ValueError("POLE_SYNONYM_LLM_URL is set: POLE_SYNONYM_LLM_MODEL must name the model to ask")
        return self

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'pole.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if self.stale_after_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"POLE_STALE_AFTER_SECONDS ({self.stale_after_seconds}) must exceed POLE_HEARTBEAT_SECONDS "
                f"({self.heartbeat_seconds}), or every running job would look dead"
            )
        return self

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    def broker_transport_options(self) -> dict:
        if not self.embedded_broker:
            return {"global_keyprefix": f"{self.queue}:"}
        queue = str(self.broker_dir / "queue")
        return {
            "data_folder_in": queue,
            "data_folder_out": queue,
            "control_folder": str(self.broker_dir / "control"),
            "polling_interval": 0.5,
        }

    def synonym_llm(self) -> LlmEndpoint | None:
        """The language model endpoint of POLE_SYNONYM_LLM_*, caching its answers in the data dir; None if unset."""
        if not self.synonym_llm_url:
            return None
        return LlmEndpoint(
            url=self.synonym_llm_url,
            model=self.synonym_llm_model.strip(),
            key=self.synonym_llm_key.get_secret_value(),
            timeout=self.synonym_llm_timeout_seconds,
            cache_dir=self.data_dir / "synonym_llm",
        )

    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_members=self.max_archive_members,
            max_total_bytes=self.max_archive_bytes,
            max_member_bytes=self.max_archive_member_bytes,
            max_ratio=self.max_compression_ratio,
        )

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def predictions_dir(self) -> Path:
        return self.data_dir / "predictions"

    @property
    def uploads_dir(self) -> Path:
        # Incoming bodies and half-validated extractions; never read by anything else.
        return self.data_dir / "uploads"

    def make_dirs(self) -> None:
        for path in (self.data_dir, self.datasets_dir, self.jobs_dir, self.predictions_dir, self.uploads_dir):
            path.mkdir(parents=True, exist_ok=True)
        if self.embedded_broker:
            for key in ("data_folder_in", "control_folder"):
                Path(self.broker_transport_options()[key]).mkdir(parents=True, exist_ok=True)
