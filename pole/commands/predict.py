"""`pole predict RUN_DIR IMAGES... --out DIR`: new images labelled by a finished run's trained segmenter
(train_seg), no tags and no server needed: the work of the service's prediction runs (ml.prediction),
into a folder (its layout: ml.spec.layout.PredictionLayout).

Argument parsing only at import; torch loads inside the handler, like the pipeline commands.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

from ml.data.archive import ArchiveError, safe_extract
from ml.data.images import DEFAULT_MAX_PIXELS
from ml.data.loose_images import name_images, visible_files
from ml.spec.layout import PredictionLayout, RunLayout
from ml.spec.registry import EXPORT_FORMATS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="label new images with a run's trained segmenter (train_seg), no tags needed")
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run directory whose train_seg stage has finished")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGES", help="image files, folders of images, .zip files")
    p.add_argument("--out", type=Path, required=True, help="folder for masks/, overlays/ and export/ (created)")
    p.add_argument("--format", choices=list(EXPORT_FORMATS), default="cvat", help="archive format (default cvat)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    segmenter = RunLayout(args.run).segmenter
    if not segmenter.is_file():
        print(
            f"error: {args.run} has no trained segmenter ({segmenter} is missing); run the pipeline there with "
            '{"train_seg": {"enabled": true}} in its --config first',
            file=sys.stderr,
        )
        return 2
    from ml.device import pick_device
    from ml.models.segmenter import load_segmenter
    from ml.prediction import label_images, write_archive
    from pole.progress import progress_bar

    layout = PredictionLayout(args.out)
    with tempfile.TemporaryDirectory(prefix="pole-predict-") as unpacked:
        try:
            images, left_out = name_images(_input_files(args.images, Path(unpacked)))
        except (ArchiveError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        model, checkpoint = load_segmenter(segmenter, pick_device(args.device))
        failed = dict(left_out)
        with progress_bar(len(images)) as bar:
            failed |= label_images(
                model,
                checkpoint,
                images,
                layout,
                max_pixels=DEFAULT_MAX_PIXELS,
                on_progress=lambda done: bar.update(done - bar.n),
            )
        labelled = sum(image.name not in failed for image in images)
        archive = write_archive(layout, args.format, checkpoint["label_names"], images, failed) if labelled else None
    for name, reason in sorted(failed.items()):
        print(f"failed: {name}: {reason}", file=sys.stderr)
    print(f"labelled {labelled} of {len(images) + len(left_out)} image(s)")
    if archive is None:
        return 1
    print(f"masks: {layout.masks_dir}\noverlays: {layout.overlays_dir}\narchive: {archive}")
    return 0


def _input_files(paths: list[Path], unpacked: Path) -> list[tuple[str, Path]]:
    """(name as given, path) of every image file the arguments name: a file, the visible files of a folder,
    the files of a zip (extracted under `unpacked` with the checks of a dataset upload)."""
    files = []
    for number, path in enumerate(paths):
        if path.is_dir():
            files += [(f"{path}/{name}", file) for name, file in visible_files(path)]
        elif path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
            try:
                safe_extract(path, unpacked / str(number))
            except ArchiveError as err:
                raise ArchiveError(f"{path}: {err}") from err
            files += [(f"{path}/{name}", file) for name, file in visible_files(unpacked / str(number))]
        elif path.is_file():
            files.append((str(path), path))
        else:
            raise FileNotFoundError(f"{path} not found")
    return files
