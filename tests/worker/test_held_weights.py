"""A real worker advertises the weights it holds (worker.held_weights), here the one `pole serve` embeds,
and job creation reads its advertisement."""

from __future__ import annotations

import time

from sqlalchemy import select

from app.db import create_db_engine, make_sessionmaker
from app.models import Worker
from tests.app.conftest import new_key
from tests.app.service import ServeProcess, make_dataset_zip, make_settings, small_dataset, upload


def held_weights_advertised(settings, timeout: float = 120) -> dict:
    """The live worker's held_weights once its first scan has written them."""
    engine = create_db_engine(settings.database_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with make_sessionmaker(engine)() as session:
                held = session.scalars(select(Worker.held_weights)).all()
            if held and held[0] is not None:
                return held[0]
            assert time.monotonic() < deadline, "the worker never advertised its weights"
            time.sleep(0.2)
    finally:
        engine.dispose()


def test_the_embedded_worker_advertises_the_weight_files_in_its_weights_dir(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "resnet50-0676ba61.pth").touch()  # the ImageNet backbone; no file for the paper's CLIP
    settings = make_settings(tmp_path / "data")
    # Empty download caches: only POLE_WEIGHTS_DIR holds anything.
    caches = {"TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_CACHE": str(tmp_path / "huggingface")}
    serve = ServeProcess(settings, tmp_path / "serve.log", env={"POLE_WEIGHTS_DIR": str(weights), **caches})
    try:
        serve.start()
        held = held_weights_advertised(settings)
        assert held == {"clip": [["pole-tiny", "pole-world"]], "backbone": [["resnet50", "imagenet"]]}, serve.log()

        dataset_zip = make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")
        with serve.client(new_key(settings, "alice")) as alice:
            dataset_id = upload(alice, dataset_zip).json()["id"]
            refused = alice.post("/v1/jobs", json={"dataset_id": dataset_id, "preset": "paper"})
            assert refused.status_code == 409, refused.text
            detail = refused.json()["detail"]
            assert "models.clip_pretrained='openai'" in detail and "cam_weights" not in detail, detail
    finally:
        serve.stop()
