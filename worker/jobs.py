"""One attempt at running a job: claim the row, run the pipeline, write progress and results.

Every write is conditional on the attempt's lease (a random token stored on the job when it is
claimed). A worker presumed dead and replaced (worker.reaper) finds its lease gone at its next
write or cancel check and stops without touching the job again, so no attempt ever overwrites
another and nothing is recorded twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.models import Image, Job, JobStage, JobState, Selection, StageMetrics, utcnow
from app.settings import Settings
from app.storage import dataset_dir, job_dir

log = logging.getLogger("pole.worker")

# Worth a retry of the whole task: the database went away for a moment. Anything else a stage
# raises (a bug, a bad config, a corrupt checkpoint) would fail the same way again.
TRANSIENT_ERRORS = (OperationalError, DisconnectionError)

EVAL_STAGES = ("eval_cams", "eval_masks")
CANCEL_CHECK_SECONDS = 0.2  # stages check between batches; this bounds the reads, not the latency


class LeaseLost(Exception):
    """This attempt no longer owns the job (it was requeued as stale, or cancelled by the reaper)."""


def claim(
    sessions: sessionmaker[Session], settings: Settings, job_id: str, worker: str, resume_lease: str | None = None
) -> JobRun | None:
    """Take the job for a new attempt, or return None when it is not ours to run.

    Claimable: a queued job; a running one whose heartbeat went stale; or our own, when the task
    is retried after a transient error (`resume_lease`). Never past `max_attempts`.
    """
    lease = uuid.uuid4().hex
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_seconds)
    claimable = or_(
        Job.state == JobState.queued,
        (Job.state == JobState.running) & ((Job.lease == resume_lease) | (Job.heartbeat_at < stale_before)),
    )
    with sessions() as session, session.begin():
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempts < settings.max_attempts, claimable)
            .values(
                state=JobState.running,
                lease=lease,
                worker=worker,
                attempts=Job.attempts + 1,
                heartbeat_at=now,
                error=None,
                message="starting",
            )
        )
        if result.rowcount != 1:
            state = session.scalar(select(Job.state).where(Job.id == job_id))
            log.info("job %s not claimed (state: %s); nothing to do", job_id, state or "no such job")
            return None
        session.execute(update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=now))
    return JobRun(sessions, settings, job_id, lease)


class JobRun:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, job_id: str, lease: str):
        self.sessions = sessions
        self.settings = settings
        self.job_id = job_id
        self.lease = lease
        self.stage: str | None = None
        self.lost = threading.Event()
        self._cancel_checked = 0.0
        self._cancelling = False

    # --- the run ---------------------------------------------------------------------------------

    def execute(self) -> None:
        """Run (or resume) the pipeline and record how it ended. Transient DB errors propagate."""
        from ml.data import DatasetError
        from ml.data.readers import read_dataset
        from ml.pipeline import overall_progress, run_pipeline
        from ml.runtime import Cancelled
        from ml.spec.config import config_from_dict

        with self.sessions() as session:
            job = session.get(Job, self.job_id)
            config = config_from_dict(job.config)
            data_path = dataset_dir(self.settings, job.dataset.path)
            uploaded = set(session.scalars(select(Image.image_id).where(Image.dataset_id == job.dataset_id)))
        log.info("job %s: attempt with lease %s", self.job_id, self.lease)

        def on_progress(stage: str, fraction: float, message: str) -> None:
            overall = overall_progress(config, stage, fraction)
            self._write(
                stage=stage,
                stage_progress=fraction,
                progress=overall,
                message=message[:255] or None,
                heartbeat_at=utcnow(),
            )

        heartbeat = _Heartbeat(self, self.settings.heartbeat_seconds)
        heartbeat.start()
        try:
            # Images that turned unreadable since the upload are dropped and listed, not fatal.
            dataset = read_dataset(data_path, skip_bad=True, max_pixels=self.settings.max_image_pixels)
            unreadable = _dropped_images(uploaded, dataset)
            summary = run_pipeline(
                dataset,
                job_dir(self.settings, self.job_id),
                config,
                on_progress=on_progress,
                should_cancel=self.should_cancel,
                on_stage=self.on_stage,
            )
        except Cancelled:
            self._finish_cancelled()
            return
        except LeaseLost:
            log.warning("job %s: lease %s lost; another attempt owns the job now", self.job_id, self.lease)
            return
        except TRANSIENT_ERRORS:
            raise
        except DatasetError as err:
            self._finish_failed(f"the dataset can no longer be read: {err}")
            return
        except Exception as err:  # the job's outer boundary: whatever a stage raised ends the job, with its reason
            where = f"stage {self.stage}" if self.stage else "preparing the run"
            log.exception("job %s failed in %s", self.job_id, where)
            self._finish_failed(f"{where} failed: {type(err).__name__}: {err}")
            return
        finally:
            heartbeat.stop()
        self._finish_succeeded(summary, unreadable)

    # --- callbacks from the pipeline ---------------------------------------------------------------

    def _write(self, **values) -> None:
        """Update our job row, provided we still hold the lease."""
        with self.sessions() as session, session.begin():
            result = session.execute(
                update(Job)
                .where(
                    Job.id == self.job_id,
                    Job.lease == self.lease,
                    Job.state.in_([JobState.running, JobState.cancelling]),
                )
                .values(**values)
            )
        if result.rowcount != 1:
            self.lost.set()
            raise LeaseLost(self.job_id)

    def beat(self) -> None:
        self._write(heartbeat_at=utcnow())

    def should_cancel(self) -> bool:
        if self.lost.is_set():
            raise LeaseLost(self.job_id)
        now = time.monotonic()
        if not self._cancelling and now - self._cancel_checked >= CANCEL_CHECK_SECONDS:
            self._cancel_checked = now
            with self.sessions() as session:
                state, lease = session.execute(select(Job.state, Job.lease).where(Job.id == self.job_id)).one()
            if lease != self.lease:
                self.lost.set()
                raise LeaseLost(self.job_id)
            self._cancelling = state == JobState.cancelling
        return self._cancelling

    def on_stage(self, stage: str, event: str) -> None:
        self.stage = stage
        now = utcnow()
        self._write(stage=stage, heartbeat_at=now, **({"stage_progress": 0.0} if event == "start" else {}))
        with self.sessions() as session, session.begin():
            row = session.scalar(select(JobStage).where(JobStage.job_id == self.job_id, JobStage.name == stage))
            if row is None:
                row = JobStage(job_id=self.job_id, name=stage, state="pending")
                session.add(row)
            if event == "start":
                row.state, row.started_at, row.finished_at = "running", now, None
            elif event == "end":
                row.state, row.finished_at = "finished", now
            elif row.state != "finished":  # "skip": done by an earlier attempt whose end we may not have seen
                row.state = "skipped"
        if event == "end" and stage in EVAL_STAGES:
            self._record_metrics(stage)

    def _record_metrics(self, stage: str) -> None:
        path = job_dir(self.settings, self.job_id) / stage / "metrics.json"
        if not path.is_file():
            return
        data = json.loads(path.read_text())
        with self.sessions() as session, session.begin():
            session.execute(delete(StageMetrics).where(StageMetrics.job_id == self.job_id, StageMetrics.stage == stage))
            session.add(
                StageMetrics(
                    job_id=self.job_id,
                    stage=stage,
                    miou=data.get("miou"),
                    threshold=data.get("threshold"),
                    per_class_iou=data.get("iou") or {},  # class name -> IoU, as eval_* write it
                    data=data,
                )
            )

    # --- endings -------------------------------------------------------------------------------------

    def _end(self, session: Session, state: JobState, **values) -> bool:
        result = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.lease == self.lease)
            .values(state=state, lease=None, finished_at=utcnow(), **values)
        )
        return result.rowcount == 1

    def _finish_cancelled(self) -> None:
        with self.sessions() as session, session.begin():
            self._end(session, JobState.cancelled, message=f"cancelled during {self.stage}")
        log.info("job %s cancelled during %s", self.job_id, self.stage)

    def _finish_failed(self, reason: str) -> None:
        with self.sessions() as session, session.begin():
            self._end(session, JobState.failed, error=reason[:4000], failed_images=self._failed_images({}))

    def _failed_images(self, unreadable: dict[str, str]) -> dict[str, str]:
        path = job_dir(self.settings, self.job_id) / "failed_images.json"
        return {**unreadable, **(json.loads(path.read_text()) if path.is_file() else {})}

    def _finish_succeeded(self, summary: dict, unreadable: dict[str, str]) -> None:
        for stage in EVAL_STAGES:
            self._record_metrics(stage)
        provenance = summary.get("provenance", {})
        selections = _read_selections(job_dir(self.settings, self.job_id) / "select_prompts" / "selections.jsonl")
        with self.sessions() as session, session.begin():
            ended = self._end(
                session,
                JobState.succeeded,
                stage=None,
                stage_progress=1.0,
                progress=1.0,
                message="done",
                provenance=provenance,
                checkpoints={s: p["checkpoints"] for s, p in provenance.items() if p.get("checkpoints")},
                failed_images={**self._failed_images(unreadable), **summary.get("failed_images", {})},
            )
            if not ended:
                log.warning(
                    "job %s: finished, but lease %s was lost; results left to the owner", self.job_id, self.lease
                )
                return
            # Replace, never append: a resumed job must not list its selections twice.
            session.execute(delete(Selection).where(Selection.job_id == self.job_id))
            if selections:
                session.execute(insert(Selection), [{"job_id": self.job_id, **row} for row in selections])
        log.info("job %s succeeded", self.job_id)


def _dropped_images(uploaded: set[str], dataset) -> dict[str, str]:
    """Images accepted at upload that the dataset reader now drops, with the reader's reasons."""
    reasons: dict[str, list[str]] = {}
    for problem in dataset.skipped:
        reasons.setdefault(Path(problem.file).stem, []).append(problem.message)
    kept = {im.id for im in dataset.images}
    return {i: "; ".join(reasons.get(i, ["no longer readable"])) for i in sorted(uploaded - kept)}


def _read_selections(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            rows.append(
                {
                    "image_id": item["image"],
                    "label": item["label"],
                    "class_name": item["class"],
                    "candidates": item["candidates"],
                    "scores": item["scores"],
                    "chosen": item["chosen"],
                }
            )
    return rows


class _Heartbeat(threading.Thread):
    """Keeps the job's heartbeat fresh while a stage computes for long between progress reports."""

    def __init__(self, run: JobRun, interval: float):
        super().__init__(name=f"heartbeat-{run.job_id}", daemon=True)
        self.run_ = run
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.run_.beat()
            except LeaseLost:
                return  # the pipeline sees run_.lost at its next cancel check and stops
            except TRANSIENT_ERRORS as err:
                log.warning("job %s: heartbeat not written (%s); retrying", self.run_.job_id, err)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
