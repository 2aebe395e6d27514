"""What every stage is handed, and the two rules every stage keeps (atomic outputs, cancel checks).

A stage is a function `run(ctx: StageContext) -> None`. It reads earlier stages' outputs through
`ctx.layout` (ml.spec.layout), writes its own into `ctx.stage_dir()` through `atomic_dir`, reports progress with
`ctx.progress(fraction, message)` and calls `ctx.check_cancel()` between batches. A stage whose
directory exists is finished; a half-written one only ever exists as `<name>.partial` and is
wiped on the next start.

No torch here: the worker and the API both import this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ml.data import Dataset, ImageRecord
from ml.data.images import READ_ERRORS, read_image
from ml.spec.config import PipelineConfig, config_to_dict
from ml.spec.layout import STAGE_RECORD, RunLayout
from ml.spec.registry import STAGE_BY_NAME

if TYPE_CHECKING:
    from ml.synonym_llm import LlmEndpoint

log = logging.getLogger("pole")

ProgressFn = Callable[[str, float, str], None]  # (stage, fraction 0..1, message)
CancelFn = Callable[[], bool]


class Cancelled(Exception):
    """Raised at a batch boundary when the caller asked to stop."""


@dataclass
class StageContext:
    dataset: Dataset
    out: Path  # the job's work directory; each stage owns out/<stage name>/
    config: PipelineConfig
    stage: str = ""
    on_progress: ProgressFn | None = None
    should_cancel: CancelFn | None = None
    failed_images: dict[str, str] = field(default_factory=dict)  # image id -> reason
    synonym_llm: LlmEndpoint | None = None  # where select_prompts asks a language model for synonyms
    _last_report: float = 0.0

    def progress(self, fraction: float, message: str = "", force: bool = False) -> None:
        # Throttled: a callback may write to a database, and stages call this per batch.
        now = time.monotonic()
        if self.on_progress and (force or fraction >= 1.0 or now - self._last_report >= 0.5):
            self._last_report = now
            self.on_progress(self.stage, min(max(fraction, 0.0), 1.0), message)

    def check_cancel(self) -> None:
        if self.should_cancel and self.should_cancel():
            raise Cancelled(f"cancelled during {self.stage}")

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out)

    def stage_dir(self, name: str | None = None) -> Path:
        return self.layout.stage_dir(name or self.stage)

    def checkpoint(self, stage: str) -> Path:
        """The checkpoint an earlier stage of this run saved; a clear error when it has not run."""
        path = self.layout.checkpoint(stage)
        if not path.is_file():
            command = stage.replace("_", "-")
            raise FileNotFoundError(f"{path} is missing; run the {stage} stage first (pole stage {command})")
        return path

    def fail_image(self, image_id: str, reason: str) -> None:
        """An image that cannot be processed is dropped from the run and listed, not fatal."""
        log.warning("image %s failed: %s", image_id, reason)
        self.failed_images[image_id] = reason
        write_json(self.layout.failed_images, self.failed_images)

    def usable_images(self):
        """The dataset's images minus those failed by an earlier stage of this run."""
        return [im for im in self.dataset.images if im.id not in self.failed_images]

    def read_image(self, record: ImageRecord):
        """The RGB pixels of `record`, or None after listing it as failed (it cannot be read)."""
        try:
            return read_image(record.image)
        except READ_ERRORS as err:
            self.fail_image(record.id, f"{self.stage}: cannot read {record.image.name}: {err}")
            return None

    def each_image(self) -> Iterator[tuple[ImageRecord, object]]:
        """(record, RGB image) for every usable image, with a cancel check and progress per image;
        unreadable images are listed as failed and skipped."""
        records = self.usable_images()
        for index, record in enumerate(records):
            self.check_cancel()
            image = self.read_image(record)
            if image is not None:
                yield record, image
            self.progress((index + 1) / len(records), f"{index + 1}/{len(records)} images")


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes `final` only if the block finishes."""
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    yield partial
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_stage_record(directory: Path, ctx: StageContext, **extra) -> None:
    """stage.json: what produced this stage's outputs (seed, config section, weight hashes ...).

    Conventional extra keys: `weights` ({role: {"source": tag|path|"random", "sha256": ...}}),
    `checkpoints` ({file name: sha256}), `images` (how many were processed).
    """
    section = STAGE_BY_NAME[ctx.stage].section
    record = {
        "stage": ctx.stage,
        "seed": ctx.config.seed,
        "config": config_to_dict(getattr(ctx.config, section)) if section else None,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    write_json(directory / STAGE_RECORD, record)
