"""`pole demo` end to end: the real `pole serve` (API + worker) driven over REST, in a small configuration."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.data.archive import zip_folder
from ml.reports import CAPTION_HEIGHT, HEADER_HEIGHT, SHEET_COLUMNS
from ml.world.scenes import class_names
from pole.cli import main
from pole.demo import DemoError, prepare_output
from tests.app.service import FAST_CONFIG, processes_using


def assert_service_stopped(data_dir: Path) -> None:
    deadline = time.monotonic() + 30
    while processes_using(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(data_dir) == []


def run_demo(tmp_path: Path, *extra: str, config: dict | None = None) -> int:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(FAST_CONFIG if config is None else config))
    args = ["demo", "--out", str(tmp_path / "out"), "--n", "10", "--size", "64", "--preset", "cpu-small"]
    return main([*args, "--config", str(config_path), *extra])


def test_demo_runs_a_job_through_the_service_and_writes_its_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POLE_OFFLINE", "1")
    monkeypatch.setenv("POLE_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")  # ignored: the demo is embedded
    assert run_demo(tmp_path) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert_service_stopped(out / "service")

    summary = json.loads((out / "summary.json").read_text())
    archive = out / f"pole_masks_{summary['job']}.zip"
    with zipfile.ZipFile(archive) as zf:
        masks = [n for n in zf.namelist() if n.startswith("SegmentationClass/")]
        archived = json.loads(zf.read("metrics.json"))
    assert len(masks) == 10
    # The printed figures are the job's own (API metrics = the archive's metrics.json).
    assert summary["miou"]["mask"]["miou"] == pytest.approx(archived["miou"])
    assert summary["miou"]["CAM"]["miou"] == pytest.approx(archived["cams"]["miou"])
    assert f"{100 * archived['miou']:.1f}%" in printed and f"{100 * archived['cams']['miou']:.1f}%" in printed
    assert set(summary["splits"]) == {"train", "val"}
    assert f"background scores {100 * summary['background_only_miou']:.1f}% mIoU" in printed
    assert "words chosen for each class" in printed

    shares = summary["word_shares"]
    assert set(shares) <= set(class_names()) and shares
    for words in shares.values():
        assert sum(words.values()) == pytest.approx(1.0)
    with Image.open(out / "chosen_words_radar.png") as radar:
        assert radar.format == "PNG"
    with Image.open(out / "overlays.png") as sheet:
        assert sheet.format == "PNG"
        assert sheet.size[0] >= len(SHEET_COLUMNS) * 64  # image | ground truth | mask, side by side
        # The first row is a held-out image, shown as generated.
        first = np.asarray(sheet.convert("RGB"))
    held_out = sorted((out / "world" / "images").glob("*.png"))[-2]  # 10 images, holdout 0.2: the last 2
    image = np.asarray(Image.open(held_out).convert("RGB"))
    top = HEADER_HEIGHT + CAPTION_HEIGHT
    np.testing.assert_array_equal(first[top : top + 64, :64], image)
    assert str(out / "overlays.png") in printed and str(out / "chosen_words_radar.png") in printed


def test_demo_stops_the_service_when_the_job_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("POLE_OFFLINE", "1")
    assert run_demo(tmp_path, config={"train_pole": {"prompt": "nonsense"}}) == 1
    refusal = capsys.readouterr().err
    assert refusal.startswith("error: job: HTTP 422") and "train_pole.prompt" in refusal and "nonsense" in refusal
    assert_service_stopped(tmp_path / "out" / "service")


def test_demo_refuses_an_output_folder_it_did_not_make(tmp_path):
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="not a demo's data directory"):
        prepare_output(tmp_path)
    assert (tmp_path / "service" / "notes.txt").read_text() == "mine"


def test_the_world_is_zipped_in_sorted_order_with_relative_posix_names(tmp_path):
    world = tmp_path / "world"
    for name in ("masks/b.png", "images/b.png", "images/a.png", "tags.csv"):
        (world / name).parent.mkdir(parents=True, exist_ok=True)
        (world / name).write_bytes(name.encode() * 50)
    (world / "empty").mkdir()
    archive = zip_folder(world, tmp_path / "world.zip")
    assert archive == tmp_path / "world.zip"
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        assert [m.filename for m in members] == ["images/a.png", "images/b.png", "masks/b.png", "tags.csv"]
        assert {m.compress_type for m in members} == {zipfile.ZIP_DEFLATED}
        assert zf.read("masks/b.png") == b"masks/b.png" * 50
