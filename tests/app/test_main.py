"""The API process stays free of torch, even while it validates an upload and queues a job."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.app.service import make_dataset_zip, small_dataset


def test_api_serves_an_upload_and_a_job_without_importing_torch(tmp_path):
    zip_path = make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")
    script = textwrap.dedent(
        f"""
        import sys
        import time
        from fastapi.testclient import TestClient
        from app.db import upgrade, make_sessionmaker, create_db_engine, session_scope
        from app.main import create_app
        from app.security import create_key
        from app.settings import Settings

        settings = Settings(data_dir={str(tmp_path / "data")!r}, database_url="", broker_url="")
        upgrade(settings.database_url)
        with session_scope(make_sessionmaker(create_db_engine(settings.database_url))) as session:
            _, key = create_key(session, name="t")
        with TestClient(create_app(settings), headers={{"Authorization": f"Bearer {{key}}"}}) as client:
            with open({str(zip_path)!r}, "rb") as f:
                dataset = client.post("/v1/datasets", files={{"file": ("d.zip", f)}})
            assert dataset.status_code == 202, dataset.text
            while client.get(f"/v1/datasets/{{dataset.json()['id']}}").json()["state"] == "validating":
                time.sleep(0.05)
            job = client.post("/v1/jobs", json={{"dataset_id": dataset.json()["id"], "preset": "cpu-small"}})
            assert job.status_code == 201, job.text
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "open_clip"))
        print("torch" in sys.modules, heavy)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False []"
