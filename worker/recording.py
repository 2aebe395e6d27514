"""What the pipeline reports, into the job's rows: stage rows as stages start, end or are skipped,
an evaluation stage's metrics as it ends, the chosen words once select_prompts has them, and at the
end of the run what run_pipeline summarised.

The run directory is read through ml.spec.layout only; its file names are not spelled here.
"""

from __future__ import annotations

import logging

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.models import JobStage, JobState, Selection, StageMetrics, utcnow
from ml.spec.layout import RunLayout
from ml.spec.registry import EVALUATION_STAGES, STAGES
from worker.lease import Lease

log = logging.getLogger("pole.worker")


class StageRecorder:
    """The pipeline's `on_stage` callback; remembers the stage last reported, to name it when the run ends."""

    def __init__(self, lease: Lease, layout: RunLayout):
        self.lease = lease
        self.layout = layout
        self.stage: str | None = None

    def on_stage(self, stage: str, event: str) -> None:
        self.stage = stage
        now = utcnow()
        # Lease-guarded first: an attempt that lost the job stops here, before touching the stage rows.
        self.lease.write(
            stage=stage,
            heartbeat_at=now,
            warnings=run_warnings(self.layout),
            **({"stage_progress": 0.0} if event == "start" else {}),
        )
        job_id = self.lease.row_id
        with self.lease.sessions() as session, session.begin():
            row = session.scalar(select(JobStage).where(JobStage.job_id == job_id, JobStage.name == stage))
            if row is None:
                row = JobStage(job_id=job_id, name=stage, state="pending")
                session.add(row)
            if event == "start":
                row.state, row.started_at, row.finished_at = "running", now, None
            elif event == "end":
                row.state, row.finished_at = "finished", now
            elif row.state != "finished":  # "skip": done by an earlier attempt whose end we may not have seen
                row.state = "skipped"
            if event == "end" and stage in EVALUATION_STAGES:
                metrics = self.layout.read_metrics(stage)
                if metrics is not None:
                    replace_metrics(session, job_id, stage, metrics)
            # The words can be reviewed (and overridden) while the later stages run.
            if event in ("end", "skip") and stage == "select_prompts":
                replace_selections(session, job_id, self.layout.read_selections())


def record_success(lease: Lease, summary: dict, unreadable: dict[str, str]) -> bool:
    """End the job as succeeded with the results in run_pipeline's `summary` (plus the images the
    dataset reader dropped, `unreadable`); False when the lease was lost and nothing was written."""
    job_id = lease.row_id
    provenance = summary.get("provenance", {})
    with lease.sessions() as session, session.begin():
        ended = lease.end(
            session,
            JobState.succeeded,
            stage=None,
            stage_progress=1.0,
            progress=1.0,
            message="done",
            provenance=provenance,
            checkpoints={s: p["checkpoints"] for s, p in provenance.items() if p.get("checkpoints")},
            failed_images={**unreadable, **summary.get("failed_images", {})},
            warnings=summary.get("warnings", []),
        )
        if not ended:
            log.warning("job %s: finished, but lease %s was lost; results left to the owner", job_id, lease.token)
            return False
        # Again at the end: an earlier attempt may have died between an evaluation stage's end and its record.
        for stage in EVALUATION_STAGES:
            if summary.get(stage) is not None:
                replace_metrics(session, job_id, stage, summary[stage])
        replace_selections(session, job_id, summary.get("selections", []))
    return True


def replace_selections(session: Session, job_id: str, records: list[dict]) -> None:
    # Replace, never append: a resumed job must not list its selections twice.
    session.execute(delete(Selection).where(Selection.job_id == job_id))
    if records:
        session.execute(insert(Selection), [selection_row(job_id, item) for item in records])


def record_failure(lease: Lease, layout: RunLayout, reason: str) -> None:
    """End the job as failed with `reason`, listing the images the run had dropped before it stopped."""
    with lease.sessions() as session, session.begin():
        lease.end(
            session,
            JobState.failed,
            error=reason[:4000],
            failed_images=layout.read_failed_images(),
            warnings=run_warnings(layout),
        )


def run_warnings(layout: RunLayout) -> list[dict]:
    """Everything the run has warned about so far (the preflight checks' and each finished stage's)."""
    return layout.read_warnings([stage.name for stage in STAGES])


def replace_metrics(session: Session, job_id: str, stage: str, metrics: dict) -> None:
    session.execute(delete(StageMetrics).where(StageMetrics.job_id == job_id, StageMetrics.stage == stage))
    session.add(
        StageMetrics(
            job_id=job_id,
            stage=stage,
            miou=metrics.get("miou"),
            threshold=metrics.get("threshold"),
            per_class_iou=metrics.get("iou") or {},  # class name -> IoU, as the eval stages report it
            data=metrics,
        )
    )


def selection_row(job_id: str, item: dict) -> dict:
    """A Selection row from one of the summary's selections ({image, label, class, candidates, scores, chosen},
    and `overridden` where a derived run's override set the word)."""
    return {
        "job_id": job_id,
        "image_id": item["image"],
        "label": item["label"],
        "class_name": item["class"],
        "candidates": item["candidates"],
        "scores": item["scores"],
        "chosen": item["chosen"],
        "overridden": bool(item.get("overridden", False)),
    }
