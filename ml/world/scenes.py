"""The sample world: its classes and contexts, and scenes of them with exact masks.

Every class has two looks, each with its own word (a filled "disc" and a hollow "ring" are both
a "circle"), so the class name is not always the best word for an object: what POLE's per-image
word choice is for. Boats mostly float on water and trains mostly stand on a railway, so CAMs
learn to light up those backgrounds: what the CBS loss and its background words are for. Water,
railway and rocks also turn up without their class, so the correlation is strong but not total.

A scene is a pure function of (seed, index): any image can be re-made alone, and a world of n
images holds the first n images of any larger world with the same seed. numpy + Pillow only:
the API and the demo make worlds without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.world.painting import paint_background, paint_object
from ml.world.shapes import draw_object


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
    canvas, context_mask, ground = paint_background(rng, size, context)
    owner = np.zeros((size, size), np.int16)  # which object (1-based placement order) owns a pixel
    placed: list[tuple[int, str, int]] = []  # (label, variant, pixel area before occlusion)
    for label in labels:
        variant = CLASSES[label - 1].variants[int(rng.integers(2))]
        on_context = CLASSES[label - 1].context == context and context is not None
        for _ in range(PLACEMENT_TRIES):
            stencil = draw_object(rng, size, variant, ground if on_context else None)
            body = stencil > 0
            trial = owner.copy()
            trial[body] = len(placed) + 1
            if _all_visible(trial, [area for *_, area in placed] + [int(body.sum())]):
                owner = trial
                canvas = paint_object(rng, canvas, stencil)
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
