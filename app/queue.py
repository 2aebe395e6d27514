"""The job queue: one Celery app, built from Settings, for both ends. The API sends tasks by name
with it and never imports the task code (nor torch); `pole worker` registers worker.tasks on the
same app and consumes.

Delivery: late acks, reject when a worker child dies, one message reserved at a time, so a job
whose worker vanished is not lost silently. The database stays the source of truth: a job that a
broker cannot redeliver (the embedded file queue forgets what a killed worker had taken) is
requeued from its row by worker.reaper, and one whose pool process died under a live worker is
requeued at once by worker.child_death. A message the broker lost before any worker took it is sent
again by worker.reaper too. Which of a key's jobs are sent at all is app.dispatch's decision.
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings

RUN_JOB = "pole.run_job"
BUILD_ARCHIVE = "pole.build_archive"
BUILD_ONNX_MODEL = "pole.build_onnx_model"
RUN_PREDICTION = "pole.run_prediction"
BUILD_PREDICTION_ARCHIVE = "pole.build_prediction_archive"


def create_celery(settings: Settings) -> Celery:
    app = Celery("pole", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=settings.broker_transport_options(),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the database, not in a result backend
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        # A pool process imports torch before it reports up (worker.process_setup): Celery's 4 s default
        # would kill it as hung on a busy machine, again and again.
        worker_proc_alive_timeout=120,
        pole_settings=settings,
    )
    return app


def send_run_job(celery: Celery, job_id: str, lease: str | None = None) -> None:
    """Enqueue a run of `job_id`; raises kombu's OperationalError when the broker cannot be reached."""
    _send(celery, RUN_JOB, {"job_id": job_id, "lease": lease})


def send_build_archive(celery: Celery, job_id: str, export_format: str) -> None:
    """Enqueue the build of a succeeded job's archive in a format it did not export; raises kombu's
    OperationalError when the broker cannot be reached."""
    _send(celery, BUILD_ARCHIVE, {"job_id": job_id, "export_format": export_format})


def send_build_onnx_model(celery: Celery, job_id: str) -> None:
    """Enqueue the ONNX export of a succeeded job's segmenter; raises kombu's OperationalError when the
    broker cannot be reached."""
    _send(celery, BUILD_ONNX_MODEL, {"job_id": job_id})


def send_run_prediction(celery: Celery, prediction_id: str, lease: str | None = None) -> None:
    """Enqueue a prediction run; raises kombu's OperationalError when the broker cannot be reached."""
    _send(celery, RUN_PREDICTION, {"prediction_id": prediction_id, "lease": lease})


def send_build_prediction_archive(celery: Celery, prediction_id: str, export_format: str) -> None:
    """Enqueue the build of a succeeded prediction run's archive in a format it did not write; raises
    kombu's OperationalError when the broker cannot be reached."""
    _send(celery, BUILD_PREDICTION_ARCHIVE, {"prediction_id": prediction_id, "export_format": export_format})


def waiting_messages(celery: Celery) -> int:
    """How many messages wait in the queue, not yet taken by a worker; raises kombu's OperationalError
    when the broker cannot be reached."""
    with celery.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        # Declared rather than looked up: Redis forgets an emptied queue, and a lookup would call it missing.
        declared = connection.default_channel.queue_declare(queue=celery.conf.task_default_queue)
        return declared.message_count


def _send(celery: Celery, task: str, kwargs: dict) -> None:
    celery.send_task(
        task,
        kwargs=kwargs,
        queue=celery.conf.task_default_queue,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )
