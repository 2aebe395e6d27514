"""The objects' shapes: each variant drawn as a stencil of BODY / LIGHT / DARK parts, at a random place."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# Part values drawn into an object's stencil: the body takes the object's texture, accents a shade.
BODY, LIGHT, DARK = 255, 200, 100


def _rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _star(points: int, outer: float, inner: float) -> list[tuple[float, float]]:
    return [
        (
            (outer if i % 2 == 0 else inner) * math.cos(math.pi * i / points - math.pi / 2),
            (outer if i % 2 == 0 else inner) * math.sin(math.pi * i / points - math.pi / 2),
        )
        for i in range(2 * points)
    ]


def _cross(half: float, arm: float) -> list[tuple[float, float]]:
    a = arm / 2
    return [
        (-a, -half),
        (a, -half),
        (a, -a),
        (half, -a),
        (half, a),
        (a, a),
        (a, half),
        (-a, half),
        (-a, a),
        (-half, a),
        (-half, -a),
        (-a, -a),
    ]


def draw_object(rng: np.random.Generator, size: int, variant: str, ground: int | None) -> np.ndarray:
    """(S, S) uint8 stencil of one object of `variant`, placed at random (on `ground` if given)."""
    stencil = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(stencil)
    vehicle = variant in ("sailboat", "canoe", "locomotive", "wagon")
    extent = rng.uniform(0.3, 0.55) * size if vehicle else rng.uniform(0.18, 0.45) * size
    r = extent / 2
    cx = rng.uniform(r + 1, size - r - 1)
    cy = rng.uniform(r + 1, size - r - 1)
    angle = rng.uniform(0, 2 * math.pi)
    tilt = math.radians(rng.uniform(-15, 15))
    if vehicle:
        bottom = ground if ground is not None else rng.uniform(extent, size - 2)
        _draw_vehicle(draw, rng, variant, cx, bottom, extent)
    elif variant == "disc":
        aspect = rng.uniform(0.85, 1.15)
        draw.ellipse((cx - r * aspect, cy - r / aspect, cx + r * aspect, cy + r / aspect), fill=BODY)
    elif variant == "ring":
        aspect, inner = rng.uniform(0.85, 1.15), r * rng.uniform(0.55, 0.72)
        draw.ellipse((cx - r * aspect, cy - r / aspect, cx + r * aspect, cy + r / aspect), fill=BODY)
        draw.ellipse((cx - inner * aspect, cy - inner / aspect, cx + inner * aspect, cy + inner / aspect), fill=0)
    elif variant in ("tile", "frame"):
        half = r * 0.78
        square = [(-half, -half), (half, -half), (half, half), (-half, half)]
        draw.polygon(_rotated(square, angle, cx, cy), fill=BODY)
        if variant == "frame":
            hole = half * rng.uniform(0.55, 0.7)
            draw.polygon(_rotated([(x * hole / half, y * hole / half) for x, y in square], angle, cx, cy), fill=0)
    elif variant == "pyramid":
        corners = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        draw.polygon(_rotated(corners, tilt, cx, cy), fill=BODY)
    elif variant == "chevron":
        flip = math.pi if rng.random() < 0.5 else 0.0
        arms = _rotated([(-r * 0.85, -r * 0.6), (0, r * 0.6), (r * 0.85, -r * 0.6)], tilt + flip, cx, cy)
        draw.line(arms, fill=BODY, width=max(3, int(r * 0.38)), joint="curve")
    elif variant == "pentagram":
        draw.polygon(_rotated(_star(5, r, r * 0.45), angle, cx, cy), fill=BODY)
    elif variant == "sparkle":
        draw.polygon(_rotated(_star(4, r, r * 0.2), tilt, cx, cy), fill=BODY)
    elif variant == "plus":
        draw.polygon(_rotated(_cross(r, r * 0.6), tilt, cx, cy), fill=BODY)
    elif variant == "saltire":
        draw.polygon(_rotated(_cross(r, r * 0.36), math.pi / 4 + tilt, cx, cy), fill=BODY)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return np.asarray(stencil)


def _draw_vehicle(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, variant: str, cx: float, bottom: float, length: float
) -> None:
    """Side views standing on y = bottom, facing left or right."""
    side = 1.0 if rng.random() < 0.5 else -1.0
    half = length / 2

    def x(offset: float) -> float:  # offset along the vehicle, mirrored for the facing
        return cx + side * offset

    if variant == "sailboat":
        hull = length * 0.2
        draw.polygon(
            [(x(-half), bottom - hull), (x(half), bottom - hull), (x(half * 0.7), bottom), (x(-half * 0.7), bottom)],
            fill=BODY,
        )
        mast_top = bottom - hull - length * 0.75
        draw.polygon(
            [(x(-half * 0.05), bottom - hull - 2), (x(-half * 0.05), mast_top), (x(half * 0.75), bottom - hull - 2)],
            fill=LIGHT,
        )
        draw.line(
            [(x(-half * 0.1), bottom - hull), (x(-half * 0.1), mast_top)], fill=DARK, width=max(2, int(length * 0.04))
        )
    elif variant == "canoe":
        depth = length * rng.uniform(0.14, 0.2)
        rim = [(x(t * half), bottom - depth - 0.5 * depth * t**2) for t in np.linspace(-1, 1, 9)]
        keel = [(x(t * half), bottom - depth * (1 - math.sqrt(max(0.0, 1 - t * t)))) for t in np.linspace(1, -1, 13)]
        draw.polygon(rim + keel, fill=BODY)
        draw.line(
            [(x(half * 0.2), bottom - depth * 2.6), (x(-half * 0.25), bottom + 1)],
            fill=DARK,
            width=max(2, int(length * 0.04)),
        )
    elif variant == "locomotive":
        wheel = length * 0.09
        body_top = bottom - 2 * wheel - length * 0.26
        draw.rectangle((min(x(-half), x(half)), body_top, max(x(-half), x(half)), bottom - wheel), fill=BODY)
        cab = sorted((x(half * 0.35), x(half)))
        draw.rectangle((cab[0], body_top - length * 0.22, cab[1], body_top), fill=BODY)
        window = sorted((x(half * 0.5), x(half * 0.85)))
        draw.rectangle((window[0], body_top - length * 0.17, window[1], body_top - length * 0.06), fill=LIGHT)
        chimney = sorted((x(-half * 0.75), x(-half * 0.55)))
        draw.rectangle((chimney[0], body_top - length * 0.18, chimney[1], body_top), fill=DARK)
        for t in (-0.65, -0.05, 0.6):
            draw.ellipse((x(half * t) - wheel, bottom - 2 * wheel, x(half * t) + wheel, bottom), fill=DARK)
    elif variant == "wagon":
        wheel = length * 0.08
        top, floor = bottom - 2 * wheel - length * 0.32, bottom - wheel
        draw.polygon([(x(-half), top), (x(half), top), (x(half * 0.85), floor), (x(-half * 0.85), floor)], fill=BODY)
        for t in np.linspace(-0.6, 0.6, 4):
            draw.line([(x(half * t), top + 2), (x(half * t), floor - 1)], fill=DARK, width=max(1, int(length * 0.03)))
        for t in (-0.55, 0.55):
            draw.ellipse((x(half * t) - wheel, bottom - 2 * wheel, x(half * t) + wheel, bottom), fill=DARK)
    else:
        raise ValueError(f"unknown vehicle {variant!r}")
