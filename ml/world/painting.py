"""Colour for scenes: the backgrounds with their contexts (water, railway, rocks) and objects' textures."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from ml.world.shapes import BODY, DARK, LIGHT


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float in [0, 255]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def paint_background(rng: np.random.Generator, size: int, context: str | None):
    """(canvas (S, S, 3) float, context mask (S, S) bool, ground line y where context objects stand)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = _hsv(rng.random(), rng.uniform(0.05, 0.35), rng.uniform(0.45, 0.9))
    style = rng.integers(4)
    if style == 0:  # flat
        shade = np.zeros((size, size))
    elif style == 1:  # vertical gradient
        shade = (yy / size - 0.5) * rng.uniform(-60, 60)
    elif style == 2:  # soft blobs
        cx, cy = rng.uniform(0, size, 2)
        shade = 35 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (size * 0.3) ** 2)) * rng.choice([-1, 1])
    else:  # grain
        shade = rng.normal(0, 10, (size, size))
    canvas = base[None, None, :] + shade[..., None]
    mask = np.zeros((size, size), bool)
    ground = size - 2
    if context == "water":
        horizon = int(rng.uniform(0.45, 0.7) * size)
        mask = yy >= horizon
        water = _hsv(rng.uniform(0.52, 0.6), rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.8))
        period, phase = rng.uniform(5, 9), rng.uniform(0, 2 * math.pi)
        wave = (yy + 1.8 * np.sin(xx / rng.uniform(3, 6) + phase)) % period < 1.6
        canvas[mask] = water + np.where(wave[mask], 55.0, 0.0)[:, None]
        ground = int(rng.uniform(horizon + 0.12 * size, size - 3))
    elif context == "railway":
        top = int(rng.uniform(0.5, 0.72) * size)
        height = int(rng.uniform(0.16, 0.22) * size)
        mask = (yy >= top) & (yy < top + height)
        gravel = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.15, 0.35), rng.uniform(0.45, 0.65))
        canvas[mask] = gravel + rng.normal(0, 14, (int(mask.sum()), 1))
        spacing, offset = int(rng.integers(6, 10)), int(rng.integers(0, 6))
        sleepers = mask & ((xx + offset) % spacing < 3) & (yy >= top + 2) & (yy < top + height - 2)
        canvas[sleepers] = (80, 55, 35)
        rail_a, rail_b = top + height // 4, top + (3 * height) // 4
        canvas[((yy == rail_a) | (yy == rail_a + 1) | (yy == rail_b) | (yy == rail_b + 1)) & mask] = (205, 205, 215)
        ground = rail_b
    elif context == "rocks":
        top = int(rng.uniform(0.6, 0.8) * size)
        mask = yy >= top
        canvas[mask] = _hsv(rng.uniform(0.06, 0.1), rng.uniform(0.3, 0.5), rng.uniform(0.35, 0.55))
        stones = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(stones)
        for _ in range(int(rng.integers(10, 20))):
            cx, cy, r = rng.uniform(0, size), rng.uniform(top, size), rng.uniform(3, 9)
            angles = np.sort(rng.uniform(0, 2 * math.pi, 7))
            radii = r * rng.uniform(0.6, 1.0, 7)
            draw.polygon(
                [(cx + a * math.cos(t), cy + a * math.sin(t)) for a, t in zip(radii, angles, strict=True)],
                fill=int(rng.integers(90, 200)),
            )
        grey = np.asarray(stones, np.float32)
        on_stone = mask & (grey > 0)
        canvas[on_stone] = grey[on_stone][:, None]
    return canvas, mask, ground


def paint_object(rng: np.random.Generator, canvas: np.ndarray, stencil: np.ndarray) -> np.ndarray:
    """Fill an object's stencil with a textured colour that stands out from what lies under it."""
    body = stencil > 0
    under = canvas[body].mean(axis=0)
    for _ in range(8):
        colour = _hsv(rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.5, 1.0))
        if np.linalg.norm(colour - under) > 90:
            break
    texture = _texture(rng, colour, canvas.shape[0])
    canvas = canvas.copy()
    canvas[stencil == BODY] = texture[stencil == BODY]
    canvas[stencil == LIGHT] = 0.4 * colour + 0.6 * 245.0
    canvas[stencil == DARK] = 0.3 * colour + 0.7 * 30.0
    return canvas


def _texture(rng: np.random.Generator, colour: np.ndarray, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    style = rng.choice(4, p=(0.5, 0.2, 0.15, 0.15))
    if style == 0:  # solid
        amount = np.zeros((size, size))
    elif style == 1:  # stripes
        angle = rng.uniform(0, math.pi)
        amount = ((xx * math.cos(angle) + yy * math.sin(angle)) % rng.uniform(4, 8) < 2).astype(np.float32)
    elif style == 2:  # dots
        step = rng.uniform(4, 7)
        amount = (((xx % step) - step / 2) ** 2 + ((yy % step) - step / 2) ** 2 < 2.5).astype(np.float32)
    else:  # gradient
        amount = (xx + yy) / (2 * size)
    return colour[None, None, :] * (1.0 - 0.45 * amount[..., None])
