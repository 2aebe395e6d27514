"""Word overrides: how a person's corrections change the [CLS] words select_prompts chose.

An override is `{"image": id or None, "class": name, "action": "use" | "drop", "word": w}`:
- `use` with an image: that image's class gets `w`; it wins over everything else;
- `use` without one: every image of the class gets `w` (the last such override of a class counts);
- `drop`: `w` is no longer a candidate of the class; each image that had chosen it gets its best
  remaining candidate by the CLIP scores select_prompts recorded.
A `use` word may be a new one (not a candidate): train_pole only needs the word, not a score.

The API validates overrides with `word_problem` and previews them, and a derived run applies them with
`apply_overrides`, so both agree on what a list of overrides means. Pure Python, no torch.
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict

OVERRIDE_ACTIONS = ("use", "drop")
MAX_WORD_LENGTH = 60  # a class word, not a sentence: CLIP's 77-token context also holds the template


class OverrideError(ValueError):
    """A list of overrides that cannot be applied; the message says which one and why."""


def word_problem(word: str) -> str | None:
    """Why `word` (already stripped) cannot be a class word, or None when it can."""
    if not word:
        return "the word is empty"
    if len(word) > MAX_WORD_LENGTH:
        return f"the word has {len(word)} characters; at most {MAX_WORD_LENGTH}"
    # Control, format and line-break characters would end up inside the text prompt and the CSV export.
    odd = [ch for ch in word if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")]
    if odd:
        return f"the word holds control characters ({', '.join(repr(ch) for ch in odd[:3])})"
    return None


def apply_overrides(selections: list[dict], overrides: list[dict]) -> list[dict]:
    """The selections (records of selections.jsonl) with `overrides` applied, in the same order.

    Scores and candidates are kept as select_prompts recorded them; `chosen` changes where an
    override decides the word, and `overridden` says so (kept true for a record a parent run had
    already overridden). Raises OverrideError for an override that names no selection's class or
    image, or drops a word that is no candidate: a typo must not pass for a correction."""
    candidates = {record["class"]: record["candidates"] for record in selections}
    images: dict[str, set[str]] = defaultdict(set)
    for record in selections:
        images[record["class"]].add(record["image"])
    dropped: dict[str, set[str]] = defaultdict(set)  # class -> casefolded words
    class_words: dict[str, str] = {}
    image_words: dict[tuple[str, str], str] = {}
    for override in overrides:
        name, word = override["class"], override["word"].strip()
        _check_target(override, candidates, images)
        if override["action"] == "drop":
            dropped[name].add(word.casefold())
        elif override.get("image") is None:
            class_words[name] = word
        else:
            image_words[(override["image"], name)] = word
    applied = []
    for record in selections:
        name = record["class"]
        word = image_words.get((record["image"], name)) or class_words.get(name)
        if word is None and record["chosen"].casefold() in dropped[name]:
            word = best_remaining(record, dropped[name])
        overridden = word is not None or bool(record.get("overridden"))
        applied.append({**record, "chosen": word or record["chosen"], "overridden": overridden})
    return applied


def _check_target(override: dict, candidates: dict[str, list[str]], images: dict[str, set[str]]) -> None:
    action, name, word = override["action"], override["class"], override["word"].strip()
    if action not in OVERRIDE_ACTIONS:
        raise OverrideError(f"override {override!r}: action must be one of {', '.join(OVERRIDE_ACTIONS)}")
    if not word:
        raise OverrideError(f"override {override!r}: the word is empty")
    if name not in candidates:
        raise OverrideError(f"override {override!r}: no image has a chosen word for class {name!r}")
    if action == "drop" and word.casefold() not in {w.casefold() for w in candidates[name]}:
        raise OverrideError(
            f"override {override!r}: {word!r} is not a candidate of {name!r} ({', '.join(candidates[name])})"
        )
    image = override.get("image")
    if image is not None and image not in images[name]:
        raise OverrideError(f"override {override!r}: image {image!r} has no chosen word for class {name!r}")


def best_remaining(record: dict, dropped: set[str]) -> str:
    """The candidate of `record` with the highest CLIP score among those not in `dropped` (casefolded)."""
    pairs = zip(record["candidates"], record["scores"], strict=True)
    remaining = [(score, word) for word, score in pairs if word.casefold() not in dropped]
    if not remaining:
        raise OverrideError(
            f"every candidate of class {record['class']!r} is dropped ({', '.join(record['candidates'])}); "
            "keep one, or `use` a word for the class"
        )
    return max(remaining, key=lambda pair: pair[0])[1]
