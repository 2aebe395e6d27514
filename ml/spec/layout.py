"""The run directory: where every file of a run lives, and the readers of the files other parts use.

    <run>/config.json                     the resolved config (resuming with another one is refused)
    <run>/failed_images.json              {image id: reason} for images dropped during the run
    <run>/preflight.json                  warnings found before the first stage (weights, CLIP, tags)
    <run>/<stage>/                        one folder per finished stage (a half-written one is <stage>.partial)
    <run>/<stage>/stage.json              what produced it: seed, config section, weight and checkpoint hashes
    <run>/<stage>/model.pt, log.json      a training stage's checkpoint and its per-step log
    <run>/train_seg/model.onnx            the segmenter exported to ONNX, built on the first request for it
    <run>/train_seg/model.onnx.requested  asked for and not yet built
    <run>/train_seg/model.onnx.failed     why building it failed
    <run>/select_prompts/selections.jsonl one line per (image, class): candidates, CLIP scores, chosen word
    <run>/select_prompts/candidates.json  the candidate words of every class
    <run>/make_cams/<image id>.npz        the image's CAMs (see `save_cams`)
    <run>/<eval stage>/metrics.json       mIoU, per-class IoU, per split
    <run>/<mask stage>/<image id>.png     seeds (make_seeds), masks (refine, crf)
    <run>/export/<format>/                the archive's files in that format's layout
    <run>/export/<format>.zip             the same, zipped: what a user downloads
    <run>/export/<format>.requested       a format the run did not export, asked for and not yet built
    <run>/export/<format>.failed          why building such a format failed
    <run>/figures/                        pictures for people, redrawn by every `pole run`: overlays.png
                                          (image | ground truth | mask), cams_<image id>.png, chosen_words_radar.png

A prediction folder (`PredictionLayout`: what `pole predict --out DIR` writes, and each prediction run
of the service) holds the masks a run's trained segmenter gave new images:

    <dir>/inputs/                        the uploaded images, as extracted (the service only)
    <dir>/masks/<image id>.png           label maps as palette PNGs (0 background, k class k)
    <dir>/overlays/<image id>.png        each image with its mask blended over it and a legend under it
    <dir>/export/...                     the archives, named as a run's are (with failed_images.csv)

Nothing else in pole spells a file name inside a run or a prediction folder. numpy only: the API reads
CAM files for its heat maps through this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# File names inside a stage's folder; writers use them on the stage's scratch folder (`<stage>.partial`,
# renamed when the stage finishes), readers through RunLayout.
CONFIG = "config.json"
FAILED_IMAGES = "failed_images.json"
PREFLIGHT = "preflight.json"
STAGE_RECORD = "stage.json"
CHECKPOINT = "model.pt"
ONNX_MODEL = "model.onnx"
TRAINING_LOG = "log.json"
SELECTIONS = "selections.jsonl"
CANDIDATES = "candidates.json"
METRICS = "metrics.json"
# Figures: a run's figures/ folder holds them, and the demo's output folder the same names.
FIGURES = "figures"
CONTACT_SHEET = "overlays.png"
WORDS_RADAR = "chosen_words_radar.png"


def cams_name(image_id: str) -> str:
    return f"{image_id}.npz"


def mask_name(image_id: str) -> str:
    return f"{image_id}.png"


def archive_name(export_format: str) -> str:
    return f"{export_format}.zip"


def cam_panels_name(image_id: str) -> str:
    return f"cams_{image_id}.png"


@dataclass(frozen=True)
class CamFile:
    """keys (n,) int64: the tagged labels (1-based), one per map, in this order;
    cam (n, H, W): full-resolution maps, each divided by its own max (values in [0, 1));
    cam_s4 (n, ceil(H/4), ceil(W/4)): the same at stride 4, for IRNet's random walk."""

    keys: np.ndarray
    cam: np.ndarray
    cam_s4: np.ndarray


class ExportFiles:
    """The archives in a folder's export/: a run's, or a prediction folder's."""

    root: Path

    def export_dir(self, export_format: str) -> Path:
        return self.root / "export" / export_format

    def archive(self, export_format: str) -> Path:
        return self.root / "export" / archive_name(export_format)

    def archive_request(self, export_format: str) -> Path:
        return self.root / "export" / f"{export_format}.requested"

    def archive_failure(self, export_format: str) -> Path:
        return self.root / "export" / f"{export_format}.failed"


@dataclass(frozen=True)
class RunLayout(ExportFiles):
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def failed_images(self) -> Path:
        return self.root / FAILED_IMAGES

    @property
    def preflight(self) -> Path:
        return self.root / PREFLIGHT

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def partial_dir(self, stage: str) -> Path:
        return self.root / f"{stage}.partial"

    def stage_record(self, stage: str) -> Path:
        return self.root / stage / STAGE_RECORD

    def checkpoint(self, stage: str) -> Path:
        return self.root / stage / CHECKPOINT

    @property
    def segmenter(self) -> Path:
        """The segmentation network trained on the run's masks (train_seg): what labels new images."""
        return self.checkpoint("train_seg")

    @property
    def segmenter_onnx(self) -> Path:
        return self.root / "train_seg" / ONNX_MODEL

    @property
    def segmenter_onnx_request(self) -> Path:
        return self.root / "train_seg" / f"{ONNX_MODEL}.requested"

    @property
    def segmenter_onnx_failure(self) -> Path:
        return self.root / "train_seg" / f"{ONNX_MODEL}.failed"

    def training_log(self, stage: str) -> Path:
        return self.root / stage / TRAINING_LOG

    @property
    def selections(self) -> Path:
        return self.root / "select_prompts" / SELECTIONS

    @property
    def candidates(self) -> Path:
        return self.root / "select_prompts" / CANDIDATES

    def cams(self, image_id: str) -> Path:
        return self.root / "make_cams" / cams_name(image_id)

    def metrics(self, stage: str) -> Path:
        return self.root / stage / METRICS

    def mask(self, stage: str, image_id: str) -> Path:
        return self.root / stage / mask_name(image_id)

    @property
    def figures(self) -> Path:
        return self.root / FIGURES

    # --- readers -------------------------------------------------------------------------------------

    def stage_done(self, stage: str) -> bool:
        return self.stage_dir(stage).is_dir()

    def read_config(self) -> dict | None:
        return _read_json(self.config)

    def read_failed_images(self) -> dict[str, str]:
        return _read_json(self.failed_images) or {}

    def read_preflight(self) -> list[dict] | None:
        """The warnings found before the first stage ([] when none); None when the checks have not run."""
        record = _read_json(self.preflight)
        return record["warnings"] if record is not None else None

    def read_stage_warnings(self, stage: str) -> list[dict]:
        """The warnings a finished stage recorded, each with the stage's name added."""
        record = _read_json(self.stage_record(stage)) or {}
        return [{"stage": stage, **item} for item in record.get("warnings", [])]

    def read_warnings(self, stages: list[str]) -> list[dict]:
        """Every warning of the run so far: the preflight checks', then each of `stages`' in order."""
        found = [{"stage": "preflight", **item} for item in self.read_preflight() or []]
        for stage in stages:
            found += self.read_stage_warnings(stage)
        return found

    def read_metrics(self, stage: str) -> dict | None:
        return _read_json(self.metrics(stage))

    def read_selections(self) -> list[dict]:
        """Every selections.jsonl record ({image, label, class, candidates, scores, chosen}); [] when
        the run had no prompt selection."""
        if not self.selections.is_file():
            return []
        return [json.loads(line) for line in self.selections.read_text().splitlines() if line.strip()]

    def chosen_words(self) -> dict[tuple[str, int], str]:
        """{(image id, label): chosen word}, what the pole prompt strategy trains with."""
        return {(r["image"], r["label"]): r["chosen"] for r in self.read_selections()}

    def provenance(self) -> dict:
        """Seeds, weights, checkpoint hashes, the synonyms' language model and the precision that ran per
        finished stage, from their stage.json files."""
        record = {}
        for path in sorted(self.root.glob(f"*/{STAGE_RECORD}")):
            data = json.loads(path.read_text())
            kept = ("seed", "weights", "checkpoints", "synonym_llm", "precision")
            record[path.parent.name] = {k: data[k] for k in kept if k in data}
        return record

    def read_cams(self, image_id: str) -> CamFile:
        """The maps come back as float32 (float16 only saves disk)."""
        with np.load(self.cams(image_id)) as data:
            return CamFile(data["keys"], data["cam"].astype(np.float32), data["cam_s4"].astype(np.float32))


@dataclass(frozen=True)
class PredictionLayout(ExportFiles):
    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    @property
    def overlays_dir(self) -> Path:
        return self.root / "overlays"

    def mask(self, image_id: str) -> Path:
        return self.masks_dir / mask_name(image_id)

    def overlay(self, image_id: str) -> Path:
        return self.overlays_dir / mask_name(image_id)


def save_cams(path: Path, keys: np.ndarray, cam: np.ndarray, cam_s4: np.ndarray) -> None:
    """Write one image's maps (float16 on disk); `path` is `cams_name(id)` in make_cams' scratch folder."""
    if not len(keys) == len(cam) == len(cam_s4):
        raise ValueError(f"{len(keys)} keys for {len(cam)} full-resolution and {len(cam_s4)} stride-4 maps")
    np.savez_compressed(
        path, keys=np.asarray(keys, np.int64), cam=cam.astype(np.float16), cam_s4=cam_s4.astype(np.float16)
    )


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None
