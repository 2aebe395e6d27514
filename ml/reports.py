"""Figures and tables for people reading a finished job (no torch): which words were chosen, and masks.

- `word_shares`: per class, the share of its (image, class) selections that chose each candidate;
- `radar_figure`: one radar per class, an axis per candidate word, the radius its share;
- `contact_sheet`: rows of image | ground truth | pseudo mask (overlays from ml.data.overlays);
- `miou_table` / `word_share_table`: the same numbers as plain text for a terminal;

matplotlib is used through its object API (Figure + Agg canvas), never pyplot, so nothing here
touches a global figure state or needs a display.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from ml.data.overlays import draw_legend, legend_height, mask_overlay

SHEET_COLUMNS = ("image", "ground truth", "pseudo mask")
HEADER_HEIGHT = 16  # column titles above the first row
CAPTION_HEIGHT = 14  # image id above each row
GAP = 4  # white space between panels


def word_shares(selections: Iterable[Mapping], classes: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """{class: {word: share of that class's selections choosing it}}, every candidate listed.

    `selections` are rows with "class", "chosen" and "candidates" (GET /v1/jobs/{id}/selections or
    select_prompts/selections.jsonl). Words keep the candidates' order (class name first); classes
    follow `classes` where given, then the order they first appear in.
    """
    chosen: dict[str, Counter] = {}
    candidates: dict[str, dict[str, None]] = {}
    for row in selections:
        name = row["class"]
        chosen.setdefault(name, Counter())[row["chosen"]] += 1
        words = candidates.setdefault(name, {})
        words.update(dict.fromkeys(row["candidates"]))
        words.setdefault(row["chosen"])
    order = [c for c in classes if c in chosen] + [c for c in chosen if c not in classes]
    return {name: {word: chosen[name][word] / chosen[name].total() for word in candidates[name]} for name in order}


def radar_figure(shares: Mapping[str, Mapping[str, float]], columns: int = 4, title: str = "") -> Figure:
    """One polar panel per class: an axis per candidate word, the share of images choosing it as radius.

    Classes with fewer than three candidates still get a panel (a line or a single spoke).
    """
    if not shares:
        raise ValueError("no selections to plot: the job chose no words (did select_prompts run?)")
    columns = max(1, min(columns, len(shares)))
    rows = math.ceil(len(shares) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.3 * rows + (0.4 if title else 0)), layout="constrained")
    FigureCanvasAgg(figure)
    for index, (name, words) in enumerate(shares.items()):
        axes = figure.add_subplot(rows, columns, index + 1, projection="polar")
        labels, values = list(words), [float(v) for v in words.values()]
        angles = np.linspace(0.0, 2 * math.pi, len(labels), endpoint=False)
        closed = np.append(angles, angles[:1]), np.append(values, values[:1])  # back to the first spoke
        axes.plot(*closed, color="tab:blue", linewidth=1.5, marker="o", markersize=3)
        axes.fill(*closed, color="tab:blue", alpha=0.25)
        axes.set_xticks(angles, labels, fontsize=8)
        axes.set_ylim(0.0, 1.0)
        axes.set_yticks([0.25, 0.5, 0.75, 1.0], ["", "50%", "", "100%"], fontsize=6)
        axes.set_title(name, fontsize=10, fontweight="bold")
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


@dataclass
class SheetRow:
    name: str
    image: np.ndarray  # (H, W, 3) uint8
    ground_truth: np.ndarray | None  # (H, W) labels, 255 ignore; None: no ground truth
    mask: np.ndarray  # (H, W) pseudo mask labels


def sheet_cell(rows: Sequence[SheetRow]) -> tuple[int, int]:
    """(width, height) of one panel: the largest image, so images of any size fit."""
    return max(r.image.shape[1] for r in rows), max(r.image.shape[0] for r in rows)


def contact_sheet(rows: Sequence[SheetRow], classes: Sequence[str]) -> Image.Image:
    """A grid with one row per image: the image, its ground truth over it, its pseudo mask over it.

    Panels sit at (column * (width + GAP), HEADER_HEIGHT + row * (CAPTION_HEIGHT + height + GAP)
    + CAPTION_HEIGHT) with (width, height) = sheet_cell(rows); a legend of the class colours ends it,
    on as many lines of ml.data.overlays.LEGEND_HEIGHT as the sheet's width needs.
    """
    if not rows:
        raise ValueError("a contact sheet needs at least one image")
    width, height = sheet_cell(rows)
    row_height = CAPTION_HEIGHT + height + GAP
    sheet_width = max(len(SHEET_COLUMNS) * (width + GAP) - GAP, 240)
    sheet_height = HEADER_HEIGHT + len(rows) * row_height + legend_height(classes, sheet_width)
    sheet = Image.new("RGB", (sheet_width, sheet_height), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(SHEET_COLUMNS):
        draw.text((column * (width + GAP) + 2, 2), title, fill="black")
    for index, row in enumerate(rows):
        top = HEADER_HEIGHT + index * row_height
        draw.text((2, top + 1), row.name, fill="black")
        panels = [Image.fromarray(row.image, "RGB"), None, mask_overlay(row.image, row.mask)]
        if row.ground_truth is not None:
            panels[1] = mask_overlay(row.image, row.ground_truth)
        for column, panel in enumerate(panels):
            left = column * (width + GAP)
            if panel is None:
                draw.text((left + 2, top + CAPTION_HEIGHT + 2), "no GT", fill="grey")
            else:
                sheet.paste(panel, (left, top + CAPTION_HEIGHT))
    draw_legend(sheet, classes, HEADER_HEIGHT + len(rows) * row_height)
    return sheet


def miou_table(stages: Mapping[str, Mapping], classes: Sequence[str]) -> str:
    """Rows: mIoU then each label's IoU (percent); columns: the stages given ({stage: metrics.json})."""
    names = list(stages)
    lines = [f"{'':<14}" + "".join(f"{n:>12}" for n in names)]

    def cell(value) -> str:
        return f"{100 * value:>11.1f}%" if value is not None else f"{'-':>12}"

    lines.append(f"{'mIoU':<14}" + "".join(cell(stages[n].get("miou")) for n in names))
    for label in ("background", *classes):
        lines.append(f"{label:<14}" + "".join(cell(stages[n].get("iou", {}).get(label)) for n in names))
    return "\n".join(lines)


def word_share_table(shares: Mapping[str, Mapping[str, float]]) -> str:
    """One line per class: each candidate word with the share of images that chose it."""
    width = max((len(name) for name in shares), default=0)
    return "\n".join(
        f"{name:<{width}}  " + "  ".join(f"{word} {100 * share:.0f}%" for word, share in words.items())
        for name, words in shares.items()
    )
