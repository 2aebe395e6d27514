"""A derived job over real HTTP with a real worker running the real cpu-small pipeline: the parent's
train_cam and select_prompts outputs reused (skipped, not recomputed), its words overridden in the
selections, the rows and the archive."""

from __future__ import annotations

import csv
import io
import json
import zipfile

from sqlalchemy import select

from app.models import Selection
from app.storage import run_layout
from ml.spec.layout import RunLayout
from tests.app.conftest import new_key
from tests.app.service import (
    FAST_CONFIG,
    ApiServer,
    WorkerProcess,
    make_dataset_zip,
    make_settings,
    small_dataset,
    wait_for,
)
from tests.app.test_overrides import ready_dataset
from worker.lease import claim
from worker.recording import StageRecorder

CONFIG = {**FAST_CONFIG, "train_pole": {"epochs": 1, "batch_size": 4}}
SYNONYMS = {"square": ["box", "block"], "circle": ["ring", "disc"], "triangle": ["wedge"]}  # words to drop


def selections_of(client, job_id: str) -> dict[tuple[str, str], dict]:
    items = client.get(f"/v1/jobs/{job_id}/selections", params={"limit": 100}).json()["items"]
    return {(s["image"], s["class"]): s for s in items}


def expected_words(parent: dict[tuple[str, str], dict], dropped: tuple[str, str], used: tuple[str, str, str]):
    """What the overrides below must give: a class's dropped word re-chosen by the recorded scores, one
    image's class set to a new word, every other word as the parent chose it."""
    words = {}
    for (image, name), s in parent.items():
        word = s["chosen"]
        if name == dropped[0] and word == dropped[1]:
            rest = [(score, w) for w, score in zip(s["candidates"], s["scores"], strict=True) if w != dropped[1]]
            word = max(rest)[1]
        if (image, name) == used[:2]:
            word = used[2]
        words[(image, name)] = (word, word != s["chosen"] or (image, name) == used[:2])
    return words


def test_a_derived_job_reuses_its_parents_stages_and_exports_the_overridden_words(tmp_path):
    settings = make_settings(tmp_path / "data")
    zip_path = make_dataset_zip(small_dataset(tmp_path / "small", images=6), tmp_path / "small.zip")
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            dataset_id = ready_dataset(alice, zip_path)
            body = {"dataset_id": dataset_id, "preset": "cpu-small", "config": CONFIG, "synonyms": SYNONYMS}
            parent_id = alice.post("/v1/jobs", json=body).json()["id"]
            parent = wait_for(alice, parent_id, lambda j: j["state"] in ("succeeded", "failed"), 300, "the parent")
            assert parent["state"] == "succeeded", (parent, worker.log())

            before = selections_of(alice, parent_id)
            # A class word chosen somewhere and droppable (its class has another candidate), and one image.
            name, word = next((n, s["chosen"]) for (_, n), s in before.items() if len(s["candidates"]) > 1)
            image, other = next((i, n) for (i, n) in before if n != name)
            overrides = [
                {"class": name, "action": "drop", "word": word},
                {"image": image, "class": other, "action": "use", "word": "odd shape"},
            ]
            response = alice.post("/v1/jobs", json={"parent_job_id": parent_id, "overrides": overrides})
            assert response.status_code == 201, response.text
            derived = wait_for(
                alice, response.json()["id"], lambda j: j["state"] in ("succeeded", "failed"), 300, "the derived job"
            )
            assert derived["state"] == "succeeded", (derived, worker.log())
        finally:
            worker.stop()

        assert derived["parent_id"] == parent_id and derived["dataset_id"] == dataset_id
        assert derived["config"]["derive"] == {
            "parent": parent_id,
            "overrides": [{"image": None, **overrides[0]}, overrides[1]],
        }
        stages = {s["name"]: s for s in derived["stages"]}
        for reused in ("train_cam", "select_prompts"):
            timings = (stages[reused]["started_at"], stages[reused]["finished_at"])
            assert stages[reused]["state"] == "skipped" and timings == (None, None)  # not run: no time spent
        assert stages["train_pole"]["state"] == "finished"
        assert derived["checkpoints"]["train_cam"] == parent["checkpoints"]["train_cam"]
        assert derived["checkpoints"]["train_pole"] != parent["checkpoints"]["train_pole"]
        parent_cam = run_layout(settings, parent_id).checkpoint("train_cam")
        derived_cam = run_layout(settings, derived["id"]).checkpoint("train_cam")
        assert derived_cam.stat().st_ino == parent_cam.stat().st_ino  # linked, not copied

        after = selections_of(alice, derived["id"])
        want = expected_words(before, (name, word), (image, other, "odd shape"))
        assert {key: (s["chosen"], s["overridden"]) for key, s in after.items()} == want
        assert [(s["candidates"], s["scores"]) for s in after.values()] == [
            (before[k]["candidates"], before[k]["scores"]) for k in after
        ]
        assert selections_of(alice, parent_id) == before  # the parent's own words are not changed

        archive = alice.get(f"/v1/jobs/{derived['id']}/archive")
        assert archive.status_code == 200
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
            rows = list(csv.DictReader(io.StringIO(zf.read("selections.csv").decode())))
        assert {(r["image"], r["class"]): (r["chosen"], r["overridden"] == "true") for r in rows} == want


def test_the_words_are_recorded_as_select_prompts_ends_or_is_skipped(settings, sessions, make_job, tmp_path):
    """Reviewable while the later stages run; a derived run's skip records its overridden words."""
    job_id = make_job()
    layout = RunLayout(tmp_path / "run")
    layout.stage_dir("select_prompts").mkdir(parents=True)
    record = {"image": "img00", "label": 1, "class": "a", "candidates": ["a", "b"], "scores": [0.6, 0.4]}
    recorder = StageRecorder(claim(sessions, settings, job_id, worker="w"), layout)

    def recorded() -> list[tuple[str, bool]]:
        with sessions() as session:
            return [
                (s.chosen, s.overridden) for s in session.scalars(select(Selection).where(Selection.job_id == job_id))
            ]

    layout.selections.write_text(json.dumps({**record, "chosen": "a"}) + "\n")
    recorder.on_stage("select_prompts", "end")
    assert recorded() == [("a", False)]
    layout.selections.write_text(json.dumps({**record, "chosen": "c", "overridden": True}) + "\n")
    recorder.on_stage("select_prompts", "skip")
    assert recorded() == [("c", True)]  # replaced, not added
