"""The sample world: procedural tagged images with exact masks, so pole can run and be measured offline.

Every class has two looks, each with its own word (a filled "disc" and a hollow "ring" are both
a "circle"), so the class name is not always the best word for an object: what POLE's per-image
word choice is for. Boats mostly float on water and trains mostly stand on a railway, so CAMs
learn to light up those backgrounds: what the CBS loss and its background words are for. Water,
railway and rocks also turn up without their class, so the correlation is strong but not total.

A scene is a pure function of (seed, index): any image can be re-made alone, and a world of n
images holds the first n images of any larger world with the same seed. numpy + Pillow only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ml.data.palette import save_mask_png


@dataclass(frozen=True)
class WorldClass:
    name: str
    variants: tuple[str, str]  # one word per visually distinct look
    context: str | None = None  # the background this class is mostly seen on


CLASSES: tuple[WorldClass, ...] = (
    WorldClass("circle", ("disc", "ring")),
    WorldClass("square", ("tile", "frame")),
    WorldClass("triangle", ("pyramid", "chevron")),
    WorldClass("star", ("pentagram", "sparkle")),
    WorldClass("cross", ("plus", "saltire")),
    WorldClass("boat", ("sailboat", "canoe"), context="water"),
    WorldClass("train", ("locomotive", "wagon"), context="railway"),
)
# Background contexts and the words for them (the first is the context's name); the demo's CBS words.
CONTEXTS: dict[str, tuple[str, ...]] = {
    "water": ("water", "sea", "lake", "river"),
    "railway": ("railway", "railroad", "track"),
    "rocks": ("rocks", "stone"),
}
CONTEXT_RATE = 0.85  # a class with a context is on it this often
STRAY_CONTEXT_RATE = 0.08  # each context appears this often in scenes without its class
OBJECT_COUNTS = ((1, 0.4), (2, 0.35), (3, 0.25))
MIN_VISIBLE = 0.45  # an occluded object keeps at least this share of its pixels, so its tag stays true
MIN_VISIBLE_PIXELS = 40  # at 128 px; scaled with the image area
PLACEMENT_TRIES = 12

# Part values drawn into an object's stencil: the body takes the object's texture, accents a shade.
BODY, LIGHT, DARK = 255, 200, 100


@dataclass
class SceneObject:
    label: int  # 1-based class label
    variant: str
    mask: np.ndarray  # (S, S) bool, the visible pixels (after occlusion)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the visible pixels

    @property
    def class_name(self) -> str:
        return CLASSES[self.label - 1].name


@dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8
    label: np.ndarray  # (S, S) uint8: 0 background, 1..K classes
    objects: list[SceneObject]
    context: str | None
    context_mask: np.ndarray  # (S, S) bool, visible context pixels

    @property
    def tags(self) -> tuple[int, ...]:
        return tuple(sorted({o.label for o in self.objects}))


def class_names() -> list[str]:
    return [c.name for c in CLASSES]


def synonyms() -> dict[str, list[str]]:
    """Candidate words per class: the variant words (what POLE chooses from besides the class name)."""
    return {c.name: list(c.variants) for c in CLASSES}


def background_words() -> tuple[str, ...]:
    return tuple(word for words in CONTEXTS.values() for word in words)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def render_scene(rng: np.random.Generator, size: int = 128, labels: list[int] | None = None) -> Scene:
    """One image with 1-3 objects (or the given class labels), its context, and exact masks."""
    if labels is None:
        counts, weights = zip(*OBJECT_COUNTS, strict=True)
        count = int(rng.choice(counts, p=weights))
        labels = [int(v) for v in rng.integers(1, len(CLASSES) + 1, size=count)]
    context = _pick_context(rng, labels)
    canvas, context_mask, ground = _background(rng, size, context)
    owner = np.zeros((size, size), np.int16)  # which object (1-based placement order) owns a pixel
    placed: list[tuple[int, str, int]] = []  # (label, variant, pixel area before occlusion)
    for label in labels:
        variant = CLASSES[label - 1].variants[int(rng.integers(2))]
        on_context = CLASSES[label - 1].context == context and context is not None
        for _ in range(PLACEMENT_TRIES):
            stencil = _draw_object(rng, size, variant, ground if on_context else None)
            body = stencil > 0
            trial = owner.copy()
            trial[body] = len(placed) + 1
            if _all_visible(trial, [area for *_, area in placed] + [int(body.sum())]):
                owner = trial
                canvas = _paint(rng, canvas, stencil)
                placed.append((label, variant, int(body.sum())))
                break
    objects = []
    label_map = np.zeros((size, size), np.uint8)
    for index, (label, variant, _) in enumerate(placed, start=1):
        visible = owner == index
        label_map[visible] = label
        ys, xs = np.nonzero(visible)
        objects.append(
            SceneObject(label, variant, visible, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        )
    noise = rng.normal(0.0, 4.0, size=canvas.shape)
    image = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    return Scene(image, label_map, objects, context, context_mask & (owner == 0))


def make_world(out: str | Path, n: int, seed: int = 0, size: int = 128, holdout: float = 0.2) -> dict:
    """Write n images in the manifest layout; the last round(n * holdout) form the "val" split.

    out/classes.txt, tags.csv (image,tags,split), images/<id>.png, masks/<id>.png (index PNGs),
    synonyms.csv (class, then its variant words) and world.json (how it was made).
    """
    if n < 1 or not 0.0 <= holdout < 1.0:
        raise ValueError(f"need n >= 1 and 0 <= holdout < 1, got n={n}, holdout={holdout}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    first_val = n - round(n * holdout)
    rows = ["image,tags,split"]
    for index in range(n):
        scene = render_scene(scene_rng(seed, index), size)
        name = f"img{index:05d}"
        Image.fromarray(scene.image).save(out / "images" / f"{name}.png", compress_level=1)
        save_mask_png(scene.label, out / "masks" / f"{name}.png")
        tags = "|".join(CLASSES[t - 1].name for t in scene.tags)
        rows.append(f"{name}.png,{tags},{'val' if index >= first_val else 'train'}")
    (out / "tags.csv").write_text("\n".join(rows) + "\n")
    (out / "classes.txt").write_text("\n".join(class_names()) + "\n")
    lines = ["class,synonym_1,synonym_2"] + [f"{c.name},{','.join(c.variants)}" for c in CLASSES]
    (out / "synonyms.csv").write_text("\n".join(lines) + "\n")
    summary = {
        "generator": "pole sample world",
        "seed": seed,
        "images": n,
        "size": size,
        "splits": {"train": first_val, "val": n - first_val},
        "classes": {c.name: {"variants": list(c.variants), "context": c.context} for c in CLASSES},
        "contexts": {name: list(words) for name, words in CONTEXTS.items()},
        "background_words": list(background_words()),
    }
    (out / "world.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- scene parts -------------------------------------------------------------------------------


def _pick_context(rng: np.random.Generator, labels: list[int]) -> str | None:
    for label in labels:
        context = CLASSES[label - 1].context
        if context is not None:
            return context if rng.random() < CONTEXT_RATE else None
    draw = rng.random()
    for index, context in enumerate(CONTEXTS):
        if draw < STRAY_CONTEXT_RATE * (index + 1):
            return context
    return None


def _all_visible(owner: np.ndarray, areas: list[int]) -> bool:
    counts = np.bincount(owner.ravel(), minlength=len(areas) + 1)[1:]
    least = MIN_VISIBLE_PIXELS * owner.size / 128**2
    return all(c >= max(MIN_VISIBLE * a, least) for c, a in zip(counts, areas, strict=True))


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """HSV in [0, 1] -> RGB float in [0, 255]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb) * 255.0


def _background(rng: np.random.Generator, size: int, context: str | None):
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


def _paint(rng: np.random.Generator, canvas: np.ndarray, stencil: np.ndarray) -> np.ndarray:
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


# --- shapes: each draws one object's stencil (BODY / LIGHT / DARK parts) --------------------------


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


def _draw_object(rng: np.random.Generator, size: int, variant: str, ground: int | None) -> np.ndarray:
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
