"""One attempt at a prediction run (POST /v1/jobs/{id}/predictions), under the lease that claimed it:
the job's trained segmenter labels the uploaded images in batches, on the GPU when there is one, and
the run ends as succeeded (with the images that could not be labelled listed) or failed.

Writing masks and overlays again is harmless, so an attempt that replaces a dead one (worker.reaper)
simply starts over.
"""

from __future__ import annotations

import logging

from app.archives import prediction_format
from app.models import JobState, PredictionRun, utcnow
from app.storage import prediction_layout, run_layout
from ml.data.loose_images import LooseImage
from ml.spec.layout import PredictionLayout
from worker.lease import TRANSIENT_ERRORS, Heartbeat, Lease, LeaseLost

log = logging.getLogger("pole.worker")


def run_prediction(lease: Lease) -> None:
    """Label the images of the prediction run held by `lease` and record how it ended. Transient
    database errors propagate, for the task to retry; a lost lease ends the attempt without a write."""
    settings, prediction_id = lease.settings, lease.row_id
    layout = prediction_layout(settings, prediction_id)
    with lease.sessions() as session:
        run = session.get(PredictionRun, prediction_id)
        segmenter = run_layout(settings, run.job_id).segmenter
        export_format = prediction_format(run)
        images = uploaded_images(run, layout)
        failed = dict(run.failed_images)  # the images the upload's checks turned down
    usable = [image for image in images if image.name not in failed]
    log.info("prediction run %s: %d image(s) with lease %s", prediction_id, len(usable), lease.token)

    def on_progress(done: int) -> None:
        message = f"{done} of {len(usable)} image(s) done"
        lease.write(progress=done / max(len(usable), 1), message=message, heartbeat_at=utcnow())

    try:
        with Heartbeat(lease, settings.heartbeat_seconds):
            # Imported here, under the heartbeat: torch loads in the pool process that labels (never in the
            # worker's main process), and that can take longer than the heartbeat period.
            from ml.device import pick_device
            from ml.models.segmenter import load_segmenter
            from ml.prediction import label_images, write_archive

            model, checkpoint = load_segmenter(segmenter, pick_device())
            failed |= label_images(
                model, checkpoint, usable, layout, max_pixels=settings.max_image_pixels, on_progress=on_progress
            )
            labelled = sum(image.name not in failed for image in images)
            if labelled:
                write_archive(layout, export_format, checkpoint["label_names"], images, failed)
    except LeaseLost:
        log.warning("prediction run %s: lease %s lost; another attempt owns it now", prediction_id, lease.token)
        return
    except TRANSIENT_ERRORS:
        raise
    except Exception as err:  # the run's outer boundary: whatever went wrong ends it, with its reason
        log.exception("prediction run %s failed", prediction_id)
        _end(lease, JobState.failed, error=f"{type(err).__name__}: {err}"[:4000], failed_images=failed)
        return
    if not labelled:
        reason = f"none of the {len(images)} image(s) could be labelled; failed_images says why for each"
        _end(lease, JobState.failed, error=reason, failed_images=failed)
        return
    _end(
        lease,
        JobState.succeeded,
        progress=1.0,
        message=f"labelled {labelled} of {len(images)} image(s)",
        failed_images=failed,
        label_names=list(checkpoint["label_names"]),
    )
    log.info("prediction run %s succeeded: %d labelled, %d failed", prediction_id, labelled, len(failed))


def uploaded_images(run: PredictionRun, layout: PredictionLayout) -> list[LooseImage]:
    """The images the run was given, by id."""
    return [LooseImage(i, name, layout.inputs / name) for i, name in sorted(run.images.items())]


def _end(lease: Lease, state: JobState, **values) -> None:
    with lease.sessions() as session, session.begin():
        if not lease.end(session, state, **values):
            log.warning("prediction run %s: finished, but lease %s was lost", lease.row_id, lease.token)
