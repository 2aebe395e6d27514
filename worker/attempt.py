"""One attempt at running a job, under the lease that claimed it: load the job's config and dataset,
run (or resume) the pipeline while reporting progress, and end the job as succeeded, failed or cancelled.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select

from app.models import Image, Job, JobState, utcnow
from app.storage import dataset_dir, job_dir
from ml.spec.layout import RunLayout
from ml.spec.registry import overall_progress
from worker.lease import TRANSIENT_ERRORS, Heartbeat, Lease, LeaseLost
from worker.recording import StageRecorder, record_failure, record_success

log = logging.getLogger("pole.worker")


def execute(lease: Lease) -> None:
    """Run the job held by `lease` and record how it ended. Transient database errors propagate, for
    the task to retry; a lost lease ends the attempt without a write."""
    # The heartbeat starts before the imports: on a busy machine loading torch alone can outlast the
    # stale-after window, and the reaper would hand a job that is only importing to another attempt.
    with Heartbeat(lease, lease.settings.heartbeat_seconds):
        _attempt(lease)


def _attempt(lease: Lease) -> None:
    # Imported here: torch loads in the pool process that runs the job, never in the worker's main process.
    from ml.data import DatasetError
    from ml.data.readers import read_dataset
    from ml.derive import prepare_derived_run
    from ml.pipeline import run_pipeline
    from ml.runtime import Cancelled
    from ml.spec.config import config_from_dict

    settings, job_id = lease.settings, lease.row_id
    with lease.sessions() as session:
        job = session.get(Job, job_id)
        config = config_from_dict(job.config)
        data_path = dataset_dir(settings, job.dataset.path)
        uploaded = set(session.scalars(select(Image.image_id).where(Image.dataset_id == job.dataset_id)))
        parent_run = job_dir(settings, job.parent_id) if job.parent_id else None
    log.info("job %s: attempt with lease %s", job_id, lease.token)
    run_dir = job_dir(settings, job_id)
    layout = RunLayout(run_dir)
    recorder = StageRecorder(lease, layout)

    def on_progress(stage: str, fraction: float, message: str) -> None:
        lease.write(
            stage=stage,
            stage_progress=fraction,
            progress=overall_progress(config, stage, fraction),
            message=message[:255] or None,
            heartbeat_at=utcnow(),
        )

    try:
        # Images that turned unreadable since the upload are dropped and listed, not fatal.
        dataset = read_dataset(data_path, skip_bad=True, max_pixels=settings.max_image_pixels)
        unreadable = dropped_images(uploaded, dataset)
        if config.derive.parent:  # a derived job starts from its parent's outputs, its words overridden
            prepare_derived_run(parent_run, run_dir, list(config.derive.overrides))
        summary = run_pipeline(
            dataset,
            run_dir,
            config,
            on_progress=on_progress,
            should_cancel=lease.should_cancel,
            on_stage=recorder.on_stage,
            synonym_llm=settings.synonym_llm(),
        )
    except Cancelled:
        with lease.sessions() as session, session.begin():
            lease.end(session, JobState.cancelled, message=f"cancelled during {recorder.stage}")
        log.info("job %s cancelled during %s", job_id, recorder.stage)
        return
    except LeaseLost:
        log.warning("job %s: lease %s lost; another attempt owns the job now", job_id, lease.token)
        return
    except TRANSIENT_ERRORS:
        raise
    except DatasetError as err:
        record_failure(lease, layout, f"the dataset can no longer be read: {err}")
        return
    except Exception as err:  # the job's outer boundary: whatever a stage raised ends the job, with its reason
        where = f"stage {recorder.stage}" if recorder.stage else "preparing the run"
        log.exception("job %s failed in %s", job_id, where)
        record_failure(lease, layout, f"{where} failed: {type(err).__name__}: {err}")
        return
    if record_success(lease, summary, unreadable):
        log.info("job %s succeeded", job_id)


def dropped_images(uploaded: set[str], dataset) -> dict[str, str]:
    """Images accepted at upload that the dataset reader now drops, with the reader's reasons."""
    reasons: dict[str, list[str]] = {}
    for problem in dataset.skipped:
        reasons.setdefault(Path(problem.file).stem, []).append(problem.message)
    kept = {im.id for im in dataset.images}
    return {i: "; ".join(reasons.get(i, ["no longer readable"])) for i in sorted(uploaded - kept)}
