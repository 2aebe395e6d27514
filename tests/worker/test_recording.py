"""Recording what the pipeline reports: stage rows, metrics as evaluation stages end, and the run's
summary when it succeeds (replacing what an earlier attempt recorded, never adding to it)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models import JobStage, JobState, Selection, StageMetrics
from ml.spec.layout import RunLayout
from tests.worker.conftest import job_row
from worker.lease import LeaseLost, claim
from worker.recording import StageRecorder, record_failure, record_success

CAM_METRICS = {"miou": 0.41, "threshold": 0.25, "iou": {"circle": 0.5, "square": 0.32}}
MASK_METRICS = {"miou": 0.55, "threshold": None, "iou": {"circle": 0.6, "square": 0.5}}


def selection(image: str, label: int, name: str, chosen: str) -> dict:
    return {"image": image, "label": label, "class": name, "candidates": [name, chosen], "scores": [0.4, 0.6],
            "chosen": chosen}  # fmt: skip


SUMMARY = {
    "out": "/runs/x",
    "stage_seconds": {"train_cam": 1.5},
    "eval_cams": CAM_METRICS,
    "eval_masks": MASK_METRICS,
    "failed_images": {"img03": "unreadable mask"},
    "selections": [selection("img00", 1, "circle", "disc"), selection("img01", 2, "square", "box")],
    "provenance": {
        "train_cam": {"seed": 0, "weights": {"backbone": "abc"}, "checkpoints": {"checkpoint": "f00d"}},
        "make_cams": {"seed": 0},
    },
}


def rows(sessions, model, job_id: str) -> list:
    with sessions() as session:
        return list(session.scalars(select(model).where(model.job_id == job_id).order_by(model.pk)))


def test_success_records_the_summary(settings, sessions, make_job):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w")
    assert record_success(lease, SUMMARY, unreadable={"img05": "no longer readable"})

    job = job_row(sessions, job_id)
    assert (job.state, job.lease, job.progress, job.message, job.stage) == (JobState.succeeded, None, 1.0, "done", None)
    assert job.finished_at is not None
    assert job.failed_images == {"img03": "unreadable mask", "img05": "no longer readable"}
    assert job.provenance == SUMMARY["provenance"]
    assert job.checkpoints == {"train_cam": {"checkpoint": "f00d"}}
    metrics = {m.stage: (m.miou, m.threshold, m.per_class_iou, m.data) for m in rows(sessions, StageMetrics, job_id)}
    assert metrics == {
        "eval_cams": (0.41, 0.25, CAM_METRICS["iou"], CAM_METRICS),
        "eval_masks": (0.55, None, MASK_METRICS["iou"], MASK_METRICS),
    }
    chosen = [
        (s.image_id, s.label, s.class_name, s.candidates, s.scores, s.chosen) for s in rows(sessions, Selection, job_id)
    ]
    assert chosen == [
        ("img00", 1, "circle", ["circle", "disc"], [0.4, 0.6], "disc"),
        ("img01", 2, "square", ["square", "box"], [0.4, 0.6], "box"),
    ]


def test_a_resumed_job_replaces_what_its_earlier_attempt_recorded(settings, sessions, make_job):
    job_id = make_job()
    with session_scope(sessions) as session:
        session.add(StageMetrics(job_id=job_id, stage="eval_cams", miou=0.1, per_class_iou={}, data={"miou": 0.1}))
        session.add(Selection(**{"job_id": job_id, "image_id": "img00", "label": 1, "class_name": "circle",
                                 "candidates": ["circle"], "scores": [1.0], "chosen": "circle"}))  # fmt: skip
    lease = claim(sessions, settings, job_id, worker="w")
    assert record_success(lease, SUMMARY, unreadable={})
    assert sorted(m.stage for m in rows(sessions, StageMetrics, job_id)) == ["eval_cams", "eval_masks"]
    assert rows(sessions, StageMetrics, job_id)[0].miou == 0.41
    assert [s.chosen for s in rows(sessions, Selection, job_id)] == ["disc", "box"]


def test_a_summary_without_evaluations_or_selections(settings, sessions, make_job):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w")
    assert record_success(lease, {"out": "/runs/x", "failed_images": {}, "selections": [], "provenance": {}}, {})
    job = job_row(sessions, job_id)
    assert (job.state, job.failed_images, job.checkpoints, job.provenance) == (JobState.succeeded, {}, {}, {})
    assert rows(sessions, StageMetrics, job_id) == [] and rows(sessions, Selection, job_id) == []


def test_a_lost_lease_records_nothing(settings, sessions, make_job):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w1")
    successor = claim(sessions, settings, job_id, worker="w2", resume_lease=lease.token)
    assert record_success(lease, SUMMARY, unreadable={}) is False
    job = job_row(sessions, job_id)
    assert (job.state, job.lease) == (JobState.running, successor.token)
    assert rows(sessions, StageMetrics, job_id) == [] and rows(sessions, Selection, job_id) == []


def test_stage_rows_and_metrics_as_stages_report(settings, sessions, make_job, tmp_path):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w")
    layout = RunLayout(tmp_path / "run")
    recorder = StageRecorder(lease, layout)
    recorder.on_stage("train_cam", "skip")  # finished by an earlier attempt
    recorder.on_stage("make_cams", "start")
    assert job_row(sessions, job_id).stage == "make_cams" and recorder.stage == "make_cams"
    recorder.on_stage("make_cams", "end")
    recorder.on_stage("eval_cams", "start")
    layout.stage_dir("eval_cams").mkdir(parents=True)
    layout.metrics("eval_cams").write_text(json.dumps(CAM_METRICS))
    recorder.on_stage("eval_cams", "end")
    recorder.on_stage("make_seeds", "start")
    recorder.on_stage("make_seeds", "end")  # not an evaluation: nothing to read

    stages = {s.name: s for s in rows(sessions, JobStage, job_id)}
    assert {n: s.state for n, s in stages.items()} == {
        "train_cam": "skipped", "make_cams": "finished", "eval_cams": "finished", "make_seeds": "finished",
    }  # fmt: skip
    assert stages["train_cam"].started_at is None
    assert stages["make_cams"].finished_at >= stages["make_cams"].started_at
    [metrics] = rows(sessions, StageMetrics, job_id)
    assert (metrics.stage, metrics.miou, metrics.per_class_iou) == ("eval_cams", 0.41, CAM_METRICS["iou"])

    recorder.on_stage("make_cams", "skip")  # a later attempt's skip keeps the finished row as it was
    assert {s.name: s.state for s in rows(sessions, JobStage, job_id)}["make_cams"] == "finished"


def test_an_attempt_that_lost_its_lease_records_no_stage(settings, sessions, make_job, tmp_path):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w1")
    claim(sessions, settings, job_id, worker="w2", resume_lease=lease.token)
    with pytest.raises(LeaseLost):
        StageRecorder(lease, RunLayout(tmp_path)).on_stage("train_cam", "start")
    assert rows(sessions, JobStage, job_id) == []


def test_failure_lists_the_images_the_run_dropped(settings, sessions, make_job, tmp_path):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w")
    layout = RunLayout(tmp_path / "run")
    layout.root.mkdir()
    layout.failed_images.write_text(json.dumps({"img02": "no tags left"}))
    record_failure(lease, layout, "stage train_cam failed: " + "x" * 5000)
    job = job_row(sessions, job_id)
    assert (job.state, job.lease, job.failed_images) == (JobState.failed, None, {"img02": "no tags left"})
    assert job.error.startswith("stage train_cam failed: ") and len(job.error) == 4000
