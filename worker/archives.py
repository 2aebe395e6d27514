"""Building the archive of a succeeded job in a format its run did not export, as its owner asked
(GET /v1/jobs/{id}/archive?format=..., app.archives). The zip lands beside the run's own exports;
a failure is written beside them for the API to report. Either way the request marker goes.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from app.models import Job, JobState
from app.settings import Settings
from app.storage import dataset_dir, run_layout

log = logging.getLogger("pole.worker")


def build_archive(sessions: sessionmaker[Session], settings: Settings, job_id: str, export_format: str) -> None:
    # Imported here: torch loads in the pool process that builds, never in the worker's main process.
    from ml.data.readers import read_dataset
    from ml.runtime import StageContext
    from ml.spec.config import config_from_dict
    from ml.stages.export import add_format

    layout = run_layout(settings, job_id)
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.succeeded:
            return  # deleted, or never finished: nothing to build from
        config = config_from_dict(job.config)
        data_path = dataset_dir(settings, job.dataset.path)
        # The run's dropped images and those the reader dropped after it: the job row has both.
        failed_images = dict(job.failed_images)
    try:
        dataset = read_dataset(data_path, skip_bad=True, max_pixels=settings.max_image_pixels)
        ctx = StageContext(dataset, layout.root, config, stage="export", failed_images=failed_images)
        add_format(ctx, export_format)
        log.info("job %s: built its %s archive", job_id, export_format)
    except Exception as err:  # whatever went wrong is the owner's answer, not a retry
        log.exception("job %s: building its %s archive failed", job_id, export_format)
        layout.archive_failure(export_format).write_text(f"{type(err).__name__}: {err}")
    finally:
        layout.archive_request(export_format).unlink(missing_ok=True)
