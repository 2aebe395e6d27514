"""The candidate words of a dataset's classes, source by source, shown before any job uses them.

A job of the default preset gathers each class's words as select_prompts does (ml.synonyms: the first
source that knows the class, then the language model's words added); this shows every source's words
and which of them a job would take. The language model is asked as a job asks it, within its timeout
and through the same cache, so the words shown are the words a job then uses; its failure is shown as
that source's error.
"""

from __future__ import annotations

from app.dataset_service import require_ready
from app.models import Dataset
from app.schemas import ClassSynonymsOut, SynonymPreviewOut, SynonymSourceOut
from app.settings import Settings
from app.storage import dataset_dir
from ml.data.readers import read_dataset_synonyms
from ml.spec.config import resolve_config
from ml.synonym_llm import LLM, LlmSynonyms, ask_synonyms, open_to_llm, with_llm_words
from ml.synonyms import clean_words, gather_candidates, words_by_source


def synonym_preview(settings: Settings, dataset: Dataset, num_synonyms: int | None) -> SynonymPreviewOut:
    require_ready(dataset)
    section = resolve_config(settings.default_preset, {}).select_prompts
    m = section.num_synonyms if num_synonyms is None else num_synonyms
    table = read_dataset_synonyms(dataset_dir(settings, dataset.path), dataset.classes)
    gathered = {name: gather_candidates(name, {}, table, section.use_wordnet) for name in dataset.classes}
    endpoint = settings.synonym_llm()
    llm = None
    if endpoint is not None:
        llm = ask_synonyms(endpoint, [name for name, found in gathered.items() if open_to_llm(*found)], m)
    classes = []
    for name, (words, source) in gathered.items():
        if llm is not None and section.llm_synonyms:
            words, source = with_llm_words(name, words, source, llm)
        classes.append(
            ClassSynonymsOut(
                class_name=name,
                sources=_sources(name, table, llm),
                used_source=source,
                candidates=words,
            )
        )
    return SynonymPreviewOut(
        dataset_id=dataset.id,
        preset=settings.default_preset,
        num_synonyms=m,
        llm_model=endpoint.model if endpoint else None,
        classes=classes,
    )


def _sources(name: str, table: dict[str, list[str]], llm: LlmSynonyms | None) -> list[SynonymSourceOut]:
    found = [SynonymSourceOut(source=source, words=words) for source, words in words_by_source(name, table).items()]
    if llm is not None and name in llm.words:
        found.append(SynonymSourceOut(source=LLM, words=clean_words(llm.words[name], name)))
    elif llm is not None and name in llm.errors:
        found.append(SynonymSourceOut(source=LLM, words=[], error=llm.errors[name]))
    return found
