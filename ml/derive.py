"""A derived run's directory: its parent's train_cam output reused, and its select_prompts output the
parent's selections with a person's word overrides applied (ml/spec/overrides.py), so that
run_pipeline finds both stages done and starts at train_pole.

    <run>/train_cam/            the parent's files, hard-linked (copied where links are impossible)
    <run>/select_prompts/       selections.jsonl with the overrides applied (`overridden` marks them),
                                the parent's candidates.json, and a stage.json naming the parent
    <run>/failed_images.json    the images the parent's reused stages had dropped
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

from ml.runtime import atomic_dir, write_json
from ml.spec.derived_runs import REUSED_STAGES
from ml.spec.layout import CANDIDATES, SELECTIONS, STAGE_RECORD, RunLayout
from ml.spec.overrides import apply_overrides


class DeriveError(ValueError):
    """The parent run cannot be derived from; the message says why."""


def prepare_derived_run(parent_run: Path | None, out: Path, overrides: list[dict]) -> None:
    """Make `out` a run that reuses `parent_run`'s train_cam and select_prompts outputs with `overrides`
    applied to its chosen words. Idempotent: stages already prepared in `out` are left as they are, so a
    resumed derived run never needs its parent again (None: the parent is gone)."""
    derived = RunLayout(out)
    if all(derived.stage_done(stage) for stage in REUSED_STAGES):
        return
    if parent_run is None or not parent_run.is_dir():
        raise DeriveError("the parent run was deleted before this derived run could reuse its outputs")
    parent = RunLayout(parent_run)
    missing = [stage for stage in REUSED_STAGES if not parent.stage_done(stage)]
    if missing:
        raise DeriveError(f"the parent run {parent_run} has not finished {', '.join(missing)}")
    selections = apply_overrides(parent.read_selections(), overrides)  # checked before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if not derived.failed_images.exists() and parent.failed_images.exists():
        shutil.copyfile(parent.failed_images, derived.failed_images)
    if not derived.stage_done("train_cam"):
        with atomic_dir(derived.stage_dir("train_cam")) as scratch:
            link_files(parent.stage_dir("train_cam"), scratch)
    if not derived.stage_done("select_prompts"):
        with atomic_dir(derived.stage_dir("select_prompts")) as scratch:
            (scratch / SELECTIONS).write_text("".join(json.dumps(r) + "\n" for r in selections))
            link_files(parent.stage_dir("select_prompts"), scratch, only=(CANDIDATES,))
            record = json.loads(parent.stage_record("select_prompts").read_text())
            overridden = sum(r["overridden"] for r in selections)
            write_json(scratch / STAGE_RECORD, {**record, "derived_from": str(parent_run), "overridden": overridden})


def link_files(source: Path, target: Path, only: tuple[str, ...] | None = None) -> None:
    """Hard-link the files of `source` into `target` (copy them where the file system cannot link).

    Links rather than a symlink to the parent's folder: a stage folder is only ever replaced whole (a
    re-run writes `<stage>.partial` and renames it), never rewritten in place, so a linked file keeps the
    content it had, and deleting either run (its folder, or the parent's whole job) leaves the other's
    files intact, where a symlink would dangle. Nothing is copied that a link can share."""
    for path in sorted(source.iterdir()):
        if not path.is_file() or (only is not None and path.name not in only):
            continue
        try:
            os.link(path, target / path.name)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(path, target / path.name)
