"""Warnings for a run that finishes but learned nothing: the failures that look like success.

A run on photos with a random backbone and a CLIP that knows none of the class words ends with
masks, chosen words and metrics like any other; only numbers like these tell it apart. Each check
here turns such numbers into warnings, and each warning is a dict

    {"check": "<name>", "message": "<what is wrong and what to do>", "classes": [<class names>]}

that the stage which found it records in its stage.json (`ml.spec.layout.RunLayout.read_warnings`
collects them, with the stage's name), the CLI prints and the service lists in the job's
`warnings`. The checks that need CLIP's features live in ml.preflight; the judgments, here, need
only numpy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

MIN_IMAGES_PER_CLASS = 10  # below this a class's CAM is learnt from too few examples to mean much
EMPTY_PEAK = 0.5  # a max-normalised map whose peak is below this was all zeros before normalising
FLAT_STD = 0.05  # a max-normalised map this uniform lights up everything or nothing alike
BAD_MAP_SHARE = 0.5  # a class is flagged when at least this share of its maps are empty or flat
SAME_SCORE = 1e-4  # candidates whose CLIP scores differ by less than this are a coin toss
IDENTICAL_ACROSS_IMAGES = 1e-6  # scores varying less than this across images ignore the image
MIN_ZERO_SHOT_AUC = 0.6  # CLIP ranks a class's images above the others no better than near chance
SAME_PROMPT = 0.99  # cosine above which two class prompts are one prompt to CLIP


def warning(check: str, message: str, classes: Iterable[str] = ()) -> dict:
    return {"check": check, "message": message, "classes": list(classes)}


def _names(classes: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(classes[:limit])
    return shown + (f" and {len(classes) - limit} more" if len(classes) > limit else "")


def weight_warnings(models, uses_clip: bool, unknown_words: Sequence[str]) -> list[dict]:
    """Untrained weights, and a CLIP that has never seen the dataset's class words (`unknown_words`)."""
    found = []
    untrained = [f"models.{key}" for key in ("cam_weights", "irn_weights") if getattr(models, key) == "random"]
    if uses_clip and models.clip_pretrained == "random":
        untrained.append("models.clip_pretrained")
    if untrained:
        found.append(
            warning(
                "random_weights",
                f"{', '.join(untrained)} {'is' if len(untrained) == 1 else 'are'} 'random': untrained weights learn "
                "from this dataset alone, which is enough for the sample world and not for photos; "
                "use pretrained weights (e.g. the paper preset's) for real data",
            )
        )
    if uses_clip and unknown_words:
        found.append(
            warning(
                "clip_domain",
                f"CLIP {models.clip_model}/{models.clip_pretrained} was trained on another domain and has never seen "
                f"the class words {_names(list(unknown_words))}: its guidance for them is noise; "
                "set models.clip_model/clip_pretrained to a CLIP trained on images like yours",
                unknown_words,
            )
        )
    return found


def few_images_warnings(tagged_counts: Mapping[str, int]) -> list[dict]:
    """Classes tagged on fewer than MIN_IMAGES_PER_CLASS images."""
    few = [name for name, count in tagged_counts.items() if count < MIN_IMAGES_PER_CLASS]
    if not few:
        return []
    counts = ", ".join(f"{name} ({tagged_counts[name]})" for name in few[:8])
    return [
        warning(
            "few_images",
            f"{len(few)} class(es) are tagged on fewer than {MIN_IMAGES_PER_CLASS} images: {counts}"
            f"{' ...' if len(few) > 8 else ''}; their maps will be unreliable: add images or merge classes",
            few,
        )
    ]


def zero_shot_warnings(auc: Mapping[str, float], prompt_similarity: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """From CLIP before any training: classes whose prompt ranks the images tagged with them no better than the
    others (`auc`, per class, only where it could be measured) and pairs of classes with the same prompt feature
    (`prompt_similarity`, the (K, K) cosines of the class prompts)."""
    found = []
    blind = [name for name, value in auc.items() if value < MIN_ZERO_SHOT_AUC]
    if blind:
        scores = ", ".join(f"{name} {auc[name]:.2f}" for name in blind[:8])
        found.append(
            warning(
                "clip_cannot_tell_classes",
                f"CLIP's own prompt for {len(blind)} class(es) does not pick out the images tagged with them "
                f"(zero-shot AUC, 0.5 is chance: {scores}): its guidance cannot help these classes; use a CLIP that "
                "knows them, or readable class names (synonyms.csv)",
                blind,
            )
        )
    same = [
        (classes[i], classes[j])
        for i in range(len(classes))
        for j in range(i + 1, len(classes))
        if prompt_similarity[i, j] > SAME_PROMPT
    ]
    if same:
        pairs = ", ".join(f"{a} = {b}" for a, b in same[:8])
        found.append(
            warning(
                "clip_same_prompts",
                f"CLIP encodes these class prompts (almost) identically: {pairs}; it cannot tell them apart",
                sorted({name for pair in same for name in pair}),
            )
        )
    return found


class CamHealth:
    """Per class, how many of its maps were empty or flat; fed map by map while make_cams writes them."""

    def __init__(self, classes: Sequence[str]):
        self.classes = list(classes)
        self.maps = np.zeros(len(classes), np.int64)
        self.empty = np.zeros(len(classes), np.int64)
        self.flat = np.zeros(len(classes), np.int64)

    def add(self, keys: Sequence[int], peaks: Sequence[float], spreads: Sequence[float]) -> None:
        """One image's maps: their labels, their max and their standard deviation (maps max-normalised)."""
        for label, peak, spread in zip(keys, peaks, spreads, strict=True):
            self.maps[label - 1] += 1
            if peak < EMPTY_PEAK:
                self.empty[label - 1] += 1
            elif spread < FLAT_STD:
                self.flat[label - 1] += 1

    def record(self) -> dict:
        return {
            name: {"maps": int(m), "empty": int(e), "flat": int(f)}
            for name, m, e, f in zip(self.classes, self.maps, self.empty, self.flat, strict=True)
            if m
        }

    def warnings(self) -> list[dict]:
        failing = self.empty + self.flat
        bad = [i for i in range(len(self.classes)) if self.maps[i] and failing[i] >= BAD_MAP_SHARE * self.maps[i]]
        if not bad:
            return []
        detail = ", ".join(
            f"{self.classes[i]} ({self.empty[i]} empty, {self.flat[i]} flat of {self.maps[i]})" for i in bad[:8]
        )
        return [
            warning(
                "empty_cams",
                f"{len(bad)} of {int(np.count_nonzero(self.maps))} classes have mostly empty or flat CAMs: {detail}; "
                "the network learnt nothing that locates them (random weights? too few images? too few epochs?)",
                [self.classes[i] for i in bad],
            )
        ]


def selection_warnings(records: Sequence[Mapping]) -> list[dict]:
    """select_prompts' choices that CLIP did not really make: candidates scored alike within an image, or every
    image of a class given the same scores (the masked images were all alike, e.g. from empty CAMs)."""
    by_class: dict[str, list[Sequence[float]]] = {}
    for record in records:
        if len(record["candidates"]) > 1:
            by_class.setdefault(record["class"], []).append(record["scores"])
    tied, identical = [], []
    for name, rows in by_class.items():
        scores = np.asarray(rows, np.float64)  # (images, candidates)
        if np.mean(scores.max(axis=1) - scores.min(axis=1) < SAME_SCORE) >= BAD_MAP_SHARE:
            tied.append(name)
        elif len(scores) > 1 and scores.std(axis=0).max() < IDENTICAL_ACROSS_IMAGES:
            identical.append(name)
    found = []
    if tied:
        found.append(
            warning(
                "indistinguishable_scores",
                f"CLIP scored the candidate words of {_names(tied)} alike in most images: the chosen words are "
                "arbitrary; check the CLIP weights and the synonyms",
                tied,
            )
        )
    if identical:
        found.append(
            warning(
                "identical_scores",
                f"every image of {_names(identical)} got the same candidate scores, so the word choice ignores the "
                "image (their CAMs are probably empty: see make_cams' warnings)",
                identical,
            )
        )
    return found


def floor_warning(miou: float | None, floor: float | None, what: str) -> list[dict]:
    """Maps or masks that score no better than calling every pixel background."""
    if miou is None or floor is None or miou > floor:
        return []
    return [
        warning(
            "below_background_floor",
            f"the {what} score {100 * miou:.1f}% mIoU, no better than calling every pixel background "
            f"({100 * floor:.1f}%): they carry no information; see the earlier warnings",
        )
    ]
