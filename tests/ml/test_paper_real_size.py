"""The `paper` preset at real sizes on a CPU: every stage, each in a `pole stage` process of its own.

Four generated 500x375 VOC images (bench/gpu_check.py's) with random weights for every network
and two steps per training stage; everything else is the paper's: ResNet-50 CAM and IRNet
networks, CLIP ViT-B-32, DeepLabV3-ResNet101, 512 px crops, multi-scale flipped CAMs at full size.
Each stage's wall time and peak resident memory (its process's, from wait4) are printed (`-s`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.gpu_check import TRAINING_STAGES, VOC_SIZE, random_weights_overrides, write_voc_images
from ml.data import load_dataset
from ml.data.images import read_mask
from ml.data.layouts.voc import VOC_CLASSES
from ml.spec.config import config_to_dict, resolve_config
from ml.spec.layout import RunLayout
from ml.spec.registry import EVALUATION_STAGES, stages_for
from ml.spec.weight_tags import weights_needed

IMAGES = 4
EPOCHS = 2  # four images are fewer than any paper batch, so one step per epoch
# Fits a 24 GiB machine beside the OS and other work. The peak is train_seg's (DeepLabV3-ResNet101 on
# four 512 px crops), 10.7 GiB when measured (README, "The paper preset at real sizes").
RSS_LIMIT_GIB = 14
STAGE_TIMEOUT_S = 1200
GPU_CHECK = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
KIB = 1024


def run_measured(argv: list[str], log: Path, env: dict) -> tuple[int, float, float]:
    """Run `argv` with its output in `log`: (exit code, wall seconds, peak RSS in GiB of that process)."""
    started = time.monotonic()
    with log.open("w") as output:
        proc = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=env)
        while True:  # wait4 rather than wait: it hands back the child's own resource usage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > STAGE_TIMEOUT_S:
                proc.kill()
                proc.wait()
                pytest.fail(f"{argv} ran longer than {STAGE_TIMEOUT_S} s; output in {log}")
            time.sleep(0.5)
    return proc.returncode, time.monotonic() - started, usage.ru_maxrss * KIB / 2**30


def changed_keys(base: dict, other: dict, prefix: str = "") -> set[str]:
    """The dotted keys whose values differ between two nested config dicts."""
    keys = set()
    for key in base.keys() | other.keys():
        a, b = base.get(key), other.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys |= changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.add(f"{prefix}{key}")
    return keys


def test_generated_images_are_a_voc_dataset_of_voc_size(tmp_path):
    dataset = load_dataset(write_voc_images(tmp_path / "voc", IMAGES))
    assert dataset.classes == list(VOC_CLASSES) and len(dataset.images) == IMAGES
    assert {record.split for record in dataset.images} == {"train", "val"}
    for record in dataset.images:
        with Image.open(record.image) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", VOC_SIZE)
        labels = set(np.unique(read_mask(record.mask)).tolist())
        assert labels >= {0, 255} and set(record.tags) == labels - {0, 255} and len(record.tags) >= 1


def test_the_check_keeps_paper_but_for_random_weights_and_epochs():
    overrides = random_weights_overrides(EPOCHS)
    config = resolve_config("paper", overrides)
    allowed = {f"models.{key}" for key in overrides["models"]} | {f"{s}.epochs" for s in TRAINING_STAGES}
    assert changed_keys(config_to_dict(resolve_config("paper")), config_to_dict(config)) == allowed
    needs = weights_needed(config, stages_for(config))
    assert {need.weights_setting for need in needs} == {
        "models.cam_weights",
        "models.clip_pretrained",
        "models.irn_weights",
        "models.seg_weights",
    }
    assert all(need.weights == "random" for need in needs)  # so no stage has a file to download


def test_gpu_check_refuses_to_run_without_cuda(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--out", str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr and "--device cpu" in result.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
def test_paper_preset_runs_every_stage_on_voc_sized_images(tmp_path):
    root = write_voc_images(tmp_path / "voc", IMAGES)
    overrides = random_weights_overrides(EPOCHS)
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    config = resolve_config("paper", overrides, {"device": "cpu"})
    out = tmp_path / "run"
    # A download attempt fails at once instead of being tried; no language model is asked for synonyms.
    env = {key: value for key, value in os.environ.items() if not key.startswith("POLE_SYNONYM_LLM_")}
    env["POLE_OFFLINE"] = "1"
    rows = []
    for stage in stages_for(config):
        argv = [sys.executable, "-m", "pole.cli", "stage", stage.replace("_", "-"), str(root), "--out", str(out)]
        argv += ["--preset", "paper", "--config", str(tmp_path / "overrides.json"), "--device", "cpu"]
        code, seconds, peak = run_measured(argv, tmp_path / f"{stage}.log", env)
        rows.append((stage, seconds, peak))
        assert code == 0, f"{stage} failed:\n{(tmp_path / f'{stage}.log').read_text()[-3000:]}"
    size = f"{VOC_SIZE[0]}x{VOC_SIZE[1]}"
    print(f"\npaper preset, {IMAGES} images of {size}, random weights, {EPOCHS} steps per training stage")
    for stage, seconds, peak in rows:
        print(f"  {stage:15s} {seconds:7.1f} s  peak RSS {peak:5.2f} GiB")
    print(f"  {'total':15s} {sum(r[1] for r in rows):7.1f} s  peak RSS {max(r[2] for r in rows):5.2f} GiB")

    layout, dataset = RunLayout(out), load_dataset(root)
    # Only what the check is allowed to change differs from the paper preset.
    saved = layout.read_config()
    assert saved == config_to_dict(config)
    allowed = {f"models.{key}" for key in overrides["models"]} | {f"{s}.epochs" for s in TRAINING_STAGES}
    assert changed_keys(config_to_dict(resolve_config("paper")), saved) == allowed | {"device"}
    assert saved["train_cam"]["augment"]["crop_size"] == 512 and saved["models"]["clip_model"] == "ViT-B-32"

    assert all(layout.stage_record(stage).is_file() for stage in stages_for(config))
    assert layout.read_failed_images() == {}
    steps = {stage: json.loads(layout.training_log(stage).read_text()) for stage in TRAINING_STAGES}
    assert [len(steps[s]["steps"]) for s in ("train_cam", "train_pole", "train_seg")] == [EPOCHS] * 3
    assert len(steps["train_irn"]) == EPOCHS  # one entry per epoch, of one step each here
    for record in dataset.images:
        tags = set(record.tags)
        cams = layout.read_cams(record.id)
        assert cams.cam.shape == (len(tags), VOC_SIZE[1], VOC_SIZE[0])
        for stage in ("make_seeds", "refine"):
            mask = read_mask(layout.mask(stage, record.id))
            assert mask.shape == (VOC_SIZE[1], VOC_SIZE[0])
            assert set(np.unique(mask).tolist()) <= {0, 255, *tags}, stage
    for stage in EVALUATION_STAGES:
        metrics = layout.read_metrics(stage)
        assert metrics["has_ground_truth"] and 0 <= metrics["miou"] <= 1, stage
    with zipfile.ZipFile(layout.archive("cvat")) as archive:
        names = set(archive.namelist())
    assert {f"SegmentationClass/{record.id}.png" for record in dataset.images} <= names
    assert max(peak for _, _, peak in rows) < RSS_LIMIT_GIB
