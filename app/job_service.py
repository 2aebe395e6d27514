"""Creating and cancelling jobs, and how a job row is shown to its owner."""

from __future__ import annotations

import hashlib
import json
import logging

from celery import Celery
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.dataset_service import require_ready
from app.db import decide_serially, serializable
from app.derived_jobs import derivation_parent, derived_job_config
from app.dispatch import queue_positions, send_next_jobs
from app.errors import ApiError
from app.live_workers import live_workers_held_weights
from app.models import ApiKey, Dataset, Job, JobState, StageMetrics, utcnow
from app.schemas import JobCreate, JobOut, StageMetricsOut, StageOut
from app.settings import Settings
from ml.spec.config import ConfigError, config_to_dict, resolve_config
from ml.spec.registry import stages_for
from ml.spec.weight_tags import WeightNeed, holds, weights_needed

log = logging.getLogger("pole.api")

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
NO_LIVE_WORKER = "queued while no worker is alive; the worker that takes it first checks that it has the weights"


def create_job(
    session: Session, settings: Settings, celery: Celery, *, owner: ApiKey, body: JobCreate, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Validate, store and enqueue a job; returns (job, created). A replayed Idempotency-Key returns
    the job it created, provided the body is the same."""
    request_hash = hashlib.sha256(json.dumps(body.model_dump(), sort_keys=True).encode()).hexdigest()
    owner_id = owner.id
    return decide_serially(
        session,
        lambda attempt: _create_job(session, settings, celery, owner_id, body, idempotency_key, request_hash, attempt),
    )


def _create_job(
    session: Session,
    settings: Settings,
    celery: Celery,
    owner_id: int,
    body: JobCreate,
    idempotency_key: str | None,
    request_hash: str,
    attempt: int,
) -> tuple[Job, bool]:
    serializable(session)  # the dataset's existence and the new job row are decided together
    if idempotency_key:
        earlier = _job_for_key(session, owner_id, idempotency_key, request_hash)
        if earlier:
            return earlier, False
    parent = derivation_parent(session, settings, owner_id, body) if body.parent_job_id else None
    dataset_id = parent.dataset_id if parent else body.dataset_id
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == owner_id))
    if dataset is None and attempt > 0:  # it was there when this request began
        raise ApiError(409, _deleted_meanwhile(dataset_id))
    if dataset is None:
        raise ApiError(404, f"no dataset {dataset_id!r}; upload one with POST /v1/datasets")
    require_ready(dataset)
    preset = body.preset or (parent.preset if parent else settings.default_preset)
    unknown = sorted(set(body.synonyms) - set(dataset.classes))
    if unknown:
        raise ApiError(
            422,
            f"synonyms given for class(es) not in the dataset: {', '.join(unknown)}; "
            f"its classes: {', '.join(dataset.classes)}",
        )
    try:
        synonyms = {"select_prompts": {"synonyms": body.synonyms}} if body.synonyms else None
        config = derived_job_config(session, parent, body) if parent else resolve_config(preset, body.config, synonyms)
    except ConfigError as err:
        raise ApiError(422, f"config refused: {err}") from err
    resolved = config_to_dict(config)
    if not settings.allow_weight_files:
        _refuse_weight_files(resolved["models"])
    _check_server_limits(config, settings)
    held_weights = live_workers_held_weights(session, settings.queue, settings.stale_after_seconds)
    _refuse_weights_no_worker_holds(weights_needed(config, stages_for(config)), held_weights)
    job = Job(
        owner_id=owner_id,
        dataset_id=dataset.id,
        parent_id=parent.id if parent else None,
        state=JobState.queued,
        preset=preset,
        config=resolved,
        seed=config.seed,
        models=resolved["models"],
        idempotency_key=idempotency_key,
        request_hash=request_hash if idempotency_key else None,
        message=None if held_weights else NO_LIVE_WORKER,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        # Either another request with the same Idempotency-Key won the race (answered as a replay),
        # or the dataset was deleted between our read and our insert (SQLite checks the foreign key).
        session.rollback()
        earlier = _job_for_key(session, owner_id, idempotency_key, request_hash) if idempotency_key else None
        if earlier is not None:
            return earlier, False
        if session.get(Dataset, dataset_id) is None:
            raise ApiError(409, _deleted_meanwhile(dataset_id)) from None
        raise
    try:
        # Only after the commit: the worker must find the row. Sent now if the key has a free slot (or
        # its older jobs, first), else held until one of its jobs ends (app.dispatch).
        send_next_jobs(session, settings, celery, owner_id)
    except BrokerUnreachable as err:
        log.error("could not enqueue job %s: %s", job.id, err)
        session.delete(job)
        session.commit()
        raise ApiError(503, "the job queue is unreachable right now; nothing was created, try again") from err
    session.refresh(job)  # whether it was sent
    return job, True


def _deleted_meanwhile(dataset_id: str) -> str:
    return f"dataset {dataset_id!r} was deleted while this job was being created; nothing was queued"


def _check_server_limits(config, settings: Settings) -> None:
    """The operator's ceilings on what one job may cost, all named at once."""
    limits = [
        (f"{section}.epochs", getattr(config, section).epochs, settings.max_epochs, "POLE_MAX_EPOCHS")
        for section in ("train_cam", "train_pole", "train_irn")
    ]
    limits += [
        (f"{section}.batch_size", getattr(config, section).batch_size, settings.max_batch_size, "POLE_MAX_BATCH_SIZE")
        for section in ("train_cam", "train_pole", "train_irn", "select_prompts")
    ]
    limits += [
        ("num_workers", config.num_workers, settings.max_loader_workers, "POLE_MAX_LOADER_WORKERS"),
        (
            "train_cam.augment.crop_size",
            config.train_cam.augment.crop_size,
            settings.max_crop_size,
            "POLE_MAX_CROP_SIZE",
        ),
        (
            "train_pole.augment.crop_size",
            config.train_pole.augment.crop_size,
            settings.max_crop_size,
            "POLE_MAX_CROP_SIZE",
        ),
        ("train_irn.crop_size", config.train_irn.crop_size, settings.max_crop_size, "POLE_MAX_CROP_SIZE"),
    ]
    # Only for a job that trains the segmenter: its defaults are DeepLab's long schedule, off or not.
    if config.train_seg.enabled:
        seg = config.train_seg
        limits += [
            ("train_seg.epochs", seg.epochs, settings.max_epochs, "POLE_MAX_EPOCHS"),
            ("train_seg.batch_size", seg.batch_size, settings.max_batch_size, "POLE_MAX_BATCH_SIZE"),
            ("train_seg.augment.crop_size", seg.augment.crop_size, settings.max_crop_size, "POLE_MAX_CROP_SIZE"),
        ]
    over = [f"{key}={value} (limit {limit}, {env})" for key, value, limit, env in limits if value > limit]
    if over:
        raise ApiError(422, f"config exceeds this server's limits: {'; '.join(over)}; lower them or ask the operator")


def _refuse_weight_files(models: dict) -> None:
    """A client may name weight tags, not files: a path would make workers open files on their own disks."""
    for key in ("clip_pretrained", "cam_weights", "irn_weights", "seg_weights"):
        value = str(models[key])
        if "/" in value or "\\" in value or value.startswith(("~", ".")) or value.endswith(WEIGHT_FILE_SUFFIXES):
            raise ApiError(
                422,
                f"models.{key}={value!r}: weight files cannot be named through the API; use a tag "
                "(e.g. random, imagenet, openai) or have the operator set POLE_ALLOW_WEIGHT_FILES=1",
            )


def _refuse_weights_no_worker_holds(needs: list[WeightNeed], held_weights: list[dict | None]) -> None:
    """409 when workers are live and none of them holds every weight the job loads.

    Decided only once every live worker has said what it holds: one still scanning may hold them. With
    no live worker the job waits in the queue, and the worker that takes it checks the weights before
    the first stage, as it does for file paths (see ml.spec.weight_tags)."""
    if not held_weights or None in held_weights or any(all(holds(h, n) for n in needs) for h in held_weights):
        return
    unheld = [n for n in needs if not any(holds(h, n) for h in held_weights)]
    lead = "no live worker has the weights of"
    if not unheld:  # each is held somewhere, but never all on one worker
        unheld, lead = [n for n in needs if n.needs_advertised_tag], "no single live worker has all the weights of"
    described = "; ".join(
        f"{n.weights_setting}={n.weights!r} with {n.model_setting}={n.model!r} "
        f"(live workers hold: {_held_choices(n, held_weights)})"
        for n in unheld
    )
    raise ApiError(
        409,
        f"{lead} {described}; set these to weights a live worker holds, or have the operator put the weight "
        "files in a worker's POLE_WEIGHTS_DIR (named as ml/weights.py looks them up)",
    )


def _held_choices(need: WeightNeed, held_weights: list[dict]) -> str:
    """The weights of `need`'s kind the live workers hold, as model/weights, and random, which needs no file."""
    pairs = sorted({f"{model}/{weights}" for h in held_weights for model, weights in h.get(need.kind, [])})
    return ", ".join([*pairs, "random (untrained)"])


def _job_for_key(session: Session, owner_id: int, key: str | None, request_hash: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.owner_id == owner_id, Job.idempotency_key == key))
    if job is not None and job.request_hash != request_hash:
        raise ApiError(409, f"Idempotency-Key {key!r} was already used with a different request body; use a new key")
    return job


def cancel_job(session: Session, settings: Settings, celery: Celery, job: Job) -> Job:
    """Queued jobs stop at once (freeing their key's slot for its next job); running ones are asked to
    stop at their next batch boundary."""
    if job.state in (JobState.succeeded, JobState.failed, JobState.cancelled):
        raise ApiError(409, f"job already {job.state}; there is nothing to cancel")
    now = utcnow()
    # Conditional updates: the worker may move the job on between our read and this write.
    stopped = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.queued)
        .values(state=JobState.cancelled, finished_at=now, message="cancelled before it started")
    ).rowcount
    session.execute(
        update(Job).where(Job.id == job.id, Job.state == JobState.running).values(state=JobState.cancelling)
    )
    session.commit()
    if stopped:
        try:
            send_next_jobs(session, settings, celery, job.owner_id)
        except BrokerUnreachable as err:  # the cancel stands; the reaper sends the next job later
            log.error("job %s cancelled, but its key's next job was not sent: %s", job.id, err)
    session.refresh(job)
    return job


def jobs_out(session: Session, jobs: list[Job]) -> list[JobOut]:
    """`jobs` as their owner sees them, each held one with its place behind the owner's other jobs."""
    positions = queue_positions(session, jobs)
    return [job_out(job, positions.get(job.id)) for job in jobs]


def job_out(job: Job, queued_behind: int | None = None) -> JobOut:
    base = f"/v1/jobs/{job.id}"
    derived = {
        "stages": [StageOut.model_validate(stage) for stage in job.stages],
        "metrics": stage_metrics_out(job),
        "warnings": job.warnings or [],
        "links": {
            "self": base,
            **{name: f"{base}/{name}" for name in ("cancel", "archive", "selections", "metrics", "predictions")},
            # The trained segmenter, once train_seg has recorded its checkpoint.
            **({"model": f"{base}/model"} if "train_seg" in (job.checkpoints or {}) else {}),
        },
        "queued_behind": queued_behind,
        "message": f"queued behind {queued_behind} of your jobs" if queued_behind is not None else job.message,
    }
    columns = {name: getattr(job, name) for name in JobOut.model_fields if name not in derived}
    return JobOut(**columns, **derived)


def stage_metrics_out(job: Job) -> dict[str, StageMetricsOut]:
    return {m.stage: _stage_metrics(m) for m in job.metrics if m.miou is not None}


def _stage_metrics(metrics: StageMetrics) -> StageMetricsOut:
    data = metrics.data or {}
    return StageMetricsOut(
        miou=metrics.miou,
        threshold=metrics.threshold,
        per_class_iou=metrics.per_class_iou,
        background_only_miou=data.get("background_only_miou"),
        splits={name: {"miou": s["miou"], "images": s["images"]} for name, s in data.get("splits", {}).items()},
        held_out_splits=data.get("held_out_splits", []),
    )
