"""A sample world written as a dataset in the manifest layout, with its synonyms and how it was made."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ml.data.palette import save_mask_png
from ml.world.scenes import CLASSES, CONTEXTS, background_words, class_names, render_scene, scene_rng


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
