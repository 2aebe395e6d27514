"""The geometry of the dashboard's charts, drawn as SVG by the templates (no chart script in the browser).

- `iou_bar_chart`: IoU per class, one bar per evaluation (CAM, mask, segmenter) side by side.
- `word_radar`: one radar per class, an axis per candidate word, the radius its share of the images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The evaluation stages a job may have scored, in the order their bars are drawn.
EVALUATIONS = (("eval_cams", "CAM"), ("eval_masks", "mask"), ("eval_seg", "segmenter"))
LABEL_WIDTH, PLOT_WIDTH, VALUE_WIDTH = 190, 420, 60
BAR_HEIGHT, ROW_GAP, TOP = 14, 12, 34
RADAR_SIZE, RADAR_RADIUS = 340, 80


@dataclass(frozen=True)
class Bar:
    series: str
    css: str  # the stylesheet's colour of the series
    value: float | None
    y: float
    width: float


@dataclass(frozen=True)
class BarRow:
    name: str
    y: float  # the baseline of the row's label
    bars: list[Bar]


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    plot_left: int
    plot_width: int
    rows: list[BarRow]
    series: list[tuple[str, str]]  # (name, css) for the legend
    ticks: list[tuple[float, str]]  # (x, label) of the 0-100% grid lines


def iou_bar_chart(metrics: Mapping[str, Mapping], classes: Sequence[str]) -> BarChart | None:
    """IoU of mIoU, background and each class under every evaluation the job has; None with none.

    `metrics` maps an evaluation stage to its scores (`miou` and `per_class_iou`, as the API reports them).
    """
    series = [(stage, name) for stage, name in EVALUATIONS if stage in metrics]
    if not series:
        return None
    rows: list[BarRow] = []
    row_height = len(series) * BAR_HEIGHT + ROW_GAP
    for index, name in enumerate(["mIoU", "background", *classes]):
        top = TOP + index * row_height
        bars = []
        for position, (stage, label) in enumerate(series):
            scores = metrics[stage]
            value = scores.get("miou") if index == 0 else scores.get("per_class_iou", {}).get(name)
            bars.append(Bar(label, f"bar-{stage}", value, top + position * BAR_HEIGHT, (value or 0.0) * PLOT_WIDTH))
        rows.append(BarRow(name, top + len(series) * BAR_HEIGHT / 2 + 4, bars))
    height = TOP + len(rows) * row_height
    ticks = [(LABEL_WIDTH + PLOT_WIDTH * share, f"{share:.0%}") for share in (0, 0.25, 0.5, 0.75, 1)]
    return BarChart(
        width=LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH,
        height=height,
        plot_left=LABEL_WIDTH,
        plot_width=PLOT_WIDTH,
        rows=rows,
        series=[(label, f"bar-{stage}") for stage, label in series],
        ticks=ticks,
    )


@dataclass(frozen=True)
class RadarAxis:
    word: str
    share: float
    x: float  # the axis' outer end
    y: float
    label_x: float
    label_y: float
    anchor: str  # SVG text-anchor of the label


@dataclass(frozen=True)
class Radar:
    class_name: str
    images: int
    size: int
    centre: float
    axes: list[RadarAxis]
    shape: str  # the polygon's points
    rings: list[float]  # radii of the 25/50/75/100% circles


def word_radar(class_name: str, images: int, candidates: Sequence[str], shares: Mapping[str, float]) -> Radar:
    """A radar of how often each word was chosen; the axes are the candidates, then any other word chosen
    (a word a person set)."""
    words = list(dict.fromkeys([*candidates, *shares]))
    centre = RADAR_SIZE / 2
    axes, points = [], []
    for index, word in enumerate(words):
        angle = -math.pi / 2 + 2 * math.pi * index / len(words)
        dx, dy = math.cos(angle), math.sin(angle)
        share = shares.get(word, 0.0)
        points.append(f"{centre + dx * RADAR_RADIUS * share:.1f},{centre + dy * RADAR_RADIUS * share:.1f}")
        anchor = "middle" if abs(dx) < 0.3 else ("start" if dx > 0 else "end")
        axes.append(
            RadarAxis(
                word=word,
                share=share,
                x=centre + dx * RADAR_RADIUS,
                y=centre + dy * RADAR_RADIUS,
                label_x=centre + dx * (RADAR_RADIUS + 10),
                label_y=centre + dy * (RADAR_RADIUS + 10) + 4,
                anchor=anchor,
            )
        )
    rings = [RADAR_RADIUS * share for share in (0.25, 0.5, 0.75, 1)]
    return Radar(class_name, images, RADAR_SIZE, centre, axes, " ".join(points), rings)
