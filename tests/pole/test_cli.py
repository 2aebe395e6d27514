import time

import pytest

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


def test_version_flag_prints_the_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("pole ")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "ds", "--outt", "x"], "unrecognized option --outt (did you mean --out?)"),
        (["run", "ds", "--out", "x", "--bogus"], "unrecognized option --bogus"),
        (["run", "ds", "--out", "x", "extra"], "unrecognized arguments: extra"),
        (["world", "make", "w", "--sizee", "9"], "unrecognized option --sizee (did you mean --size?)"),
    ],
)
def test_a_mistyped_option_is_named_under_its_subcommands_usage(argv, expected, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and expected in err
    assert f"usage: pole {' '.join(argv[: 2 if argv[0] == 'world' else 1])}" in err


def test_stage_runs_alone_and_names_the_missing_earlier_stages(tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "tiny")
    code = main(["stage", "make-cams", str(dataset), "--out", str(tmp_path / "run"), "--preset", "cpu-small"])
    err = capsys.readouterr().err
    assert code == 2 and "lacks train_cam, select_prompts, train_pole" in err and "--until make-cams" in err
    assert not (tmp_path / "run").exists()


def test_an_optional_stage_left_out_by_the_config_says_what_turns_it_on(tmp_path, capsys):
    dataset = make_tiny_dataset(tmp_path / "tiny")
    code = main(["stage", "crf", str(dataset), "--out", str(tmp_path / "run"), "--preset", "cpu-small"])
    assert code == 2 and "it runs when crf.enabled is true" in capsys.readouterr().err
