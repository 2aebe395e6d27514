import time

from pole.cli import main
from tests.conftest import make_tiny_dataset


def test_run_without_reachable_weights_fails_before_any_stage(tmp_path, monkeypatch, capsys):
    """The paper preset needs ImageNet and CLIP weights: refused in seconds, nothing written."""
    monkeypatch.setenv("POLE_OFFLINE", "1")
    monkeypatch.setenv("POLE_WEIGHTS_DIR", str(tmp_path / "empty"))
    dataset = make_tiny_dataset(tmp_path / "tiny")
    started = time.monotonic()
    code = main(["run", str(dataset), "--out", str(tmp_path / "run"), "--preset", "paper"])
    assert code == 2 and time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert "POLE_OFFLINE=1" in err and "models.cam_weights" in err
    assert not (tmp_path / "run").exists()


def test_run_refuses_a_run_directory_of_another_config(tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "tiny")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"preset": "paper"}')
    code = main(["run", str(dataset), "--out", str(out), "--preset", "cpu-small", "--until", "train-cam"])
    assert code == 2
    assert "different config" in capsys.readouterr().err
    assert not (out / "train_cam").exists()


def test_unknown_stage_for_until_lists_the_stages(tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "tiny")
    code = main(["run", str(dataset), "--out", str(tmp_path / "run"), "--preset", "cpu-small", "--until", "nope"])
    assert code == 2
    assert "stages: train_cam, select_prompts" in capsys.readouterr().err
