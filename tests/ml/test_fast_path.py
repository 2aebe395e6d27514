"""The precision each device runs at (ml/device.py), and masks from the reduced-precision path against float32."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.data import load_dataset
from ml.data.images import read_mask
from ml.device import BF16_CPU_FLAGS, cpu_bf16_flags, pick_precision
from ml.pipeline import run_pipeline
from ml.spec.config import ConfigError, resolve_config
from ml.spec.layout import RunLayout
from tests.conftest import make_tiny_dataset

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
XEON_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
OLD_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd bf16 sve\n"
AGREEMENT = 0.995  # share of mask pixels the bfloat16 path must label as float32 does
TRAIN = {
    "device": "cpu",
    "models": {"clip_pretrained": "random"},
    "train_cam": {"epochs": 6, "batch_size": 4, "augment": {"resize_long": [64, 96], "crop_size": 64}},
    "train_pole": {"enabled": False},
}


def test_cpu_flags_come_from_cpuinfo():
    assert cpu_bf16_flags(XEON_CPUINFO) == ("amx_bf16", "avx512_bf16")
    assert cpu_bf16_flags(OLD_CPUINFO) == ()
    assert cpu_bf16_flags(ARM_CPUINFO) == ()
    assert set(cpu_bf16_flags()) <= set(BF16_CPU_FLAGS)


def test_auto_picks_per_device_and_names_why():
    fast_cpu = pick_precision("auto", CPU, ("avx512_bf16",))
    assert (fast_cpu.name, fast_cpu.dtype) == ("bfloat16", torch.bfloat16) and "avx512_bf16" in fast_cpu.reason
    assert pick_precision("auto", CPU, ()).name == "float32"
    assert pick_precision("auto", CUDA, ()).name == "float16"
    this_machine = pick_precision("auto", CPU)
    assert this_machine.name == ("bfloat16" if cpu_bf16_flags() else "float32")
    assert this_machine.record() == {"name": this_machine.name, "reason": this_machine.reason}


def test_a_named_precision_runs_on_any_device():
    for name in ("float32", "bfloat16", "float16"):
        for device, flags in ((CPU, ()), (CPU, ("amx_bf16",)), (CUDA, ())):
            assert pick_precision(name, device, flags).name == name
    with pytest.raises(ValueError, match="unknown precision 'fp8'; choose one of auto, float32, bfloat16, float16"):
        pick_precision("fp8", CPU)


def test_autocast_runs_convolutions_at_the_precision():
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            with pick_precision(name, CPU).autocast(CPU):
                assert conv(x).dtype == dtype


def test_config_takes_a_precision_and_refuses_others():
    assert resolve_config("paper").precision == "auto"
    assert resolve_config("paper", {"precision": "bfloat16"}).precision == "bfloat16"
    with pytest.raises(ConfigError, match="precision: choose one of auto, float32, bfloat16, float16"):
        resolve_config("paper", {"precision": "fp8"})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny dataset and a run whose CAM network trained on it (train_cam only)."""
    root = tmp_path_factory.mktemp("fast_path")
    dataset = make_tiny_dataset(root / "tiny")
    out = root / "trained"
    run_pipeline(load_dataset(dataset), out, resolve_config("cpu-small", TRAIN), until="train_cam")
    return dataset, out


def seeds_at(precision: str, dataset: Path, trained: Path, out: Path) -> RunLayout:
    """make_cams and make_seeds of the trained network at `precision`, in a run of their own."""
    out.mkdir()
    shutil.copytree(trained / "train_cam", out / "train_cam")
    config = resolve_config("cpu-small", TRAIN, {"precision": precision})
    run_pipeline(load_dataset(dataset), out, config, until="make_seeds")
    return RunLayout(out)


def test_bfloat16_masks_agree_with_float32(trained_run, tmp_path):
    dataset, trained = trained_run
    runs = {name: seeds_at(name, dataset, trained, tmp_path / name) for name in ("float32", "bfloat16")}
    for name, layout in runs.items():
        record = json.loads((layout.stage_dir("make_cams") / "stage.json").read_text())
        assert record["precision"] == {"name": name, "reason": f"{name} asked for"}
        assert layout.provenance()["make_cams"]["precision"]["name"] == name
    same = total = 0
    maps_differ, labelled = False, set()
    for image in load_dataset(dataset).images:
        cams = [layout.read_cams(image.id).cam for layout in runs.values()]
        maps_differ |= not np.array_equal(*cams)
        masks = [read_mask(layout.stage_dir("make_seeds") / f"{image.id}.png") for layout in runs.values()]
        same += int((masks[0] == masks[1]).sum())
        total += masks[0].size
        labelled.update(np.unique(masks[0]).tolist())
    assert maps_differ, "the bfloat16 run made the float32 maps: autocast did not reach the network"
    assert len(labelled - {0, 255}) >= 2, f"seeds too trivial to compare: labels {sorted(labelled)}"
    assert same / total >= AGREEMENT, f"bfloat16 seeds agree with float32 on {same / total:.2%} of pixels"
