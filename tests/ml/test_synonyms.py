import subprocess
import sys

import pytest

from ml.synonyms import builtin_table, clean_words, gather_candidates, rank_candidates, wordnet_words


def test_builtin_table_has_every_voc_class():
    from ml.data.layouts.voc import VOC_CLASSES

    table = builtin_table()
    assert list(table) == list(VOC_CLASSES)
    assert table["dog"] == ["canine", "puppy", "hound"]


def test_precedence_job_then_dataset_then_builtin():
    job = {"dog": ["doggo"]}
    dataset = {"dog": ["pooch"], "cat": ["kitty cat"]}
    assert gather_candidates("dog", job, dataset, use_wordnet=False) == (["doggo"], "job")
    assert gather_candidates("cat", job, dataset, use_wordnet=False) == (["kitty cat"], "dataset")
    assert gather_candidates("horse", job, dataset, use_wordnet=False) == (["equine", "mare", "stallion"], "builtin")


def test_tables_match_class_names_ignoring_case_and_spacing():
    assert gather_candidates("dog", {"DOG": ["hound dog"]}, {}, use_wordnet=False) == (["hound dog"], "job")
    assert gather_candidates("Dining Table", {}, {"dining table": ["desk"]}, use_wordnet=False) == (["desk"], "dataset")
    words, source = gather_candidates("diningtable", {}, {}, use_wordnet=False)
    assert source == "builtin" and words == ["kitchen table", "dinner table", "breakfast table"]


def test_empty_list_means_no_synonyms():
    assert gather_candidates("dog", {"dog": []}, {"dog": ["pooch"]}, use_wordnet=True) == ([], "job")


def test_unknown_class_without_wordnet():
    assert gather_candidates("kayak", {}, {}, use_wordnet=False) == ([], "none")


def test_clean_words():
    words = ["Domestic_dog", "domestic  dog", "dog", " DOG ", "", "hound", "Hound"]
    assert clean_words(words, "dog") == ["Domestic dog", "hound"]


def test_wordnet_lookup_offline():
    words = wordnet_words("dog")
    assert words[:3] == ["domestic dog", "canine", "canid"]  # first sense, then its hypernyms
    assert {"puppy", "frankfurter"} <= set(words)  # a hyponym, a rarer sense
    assert "dog" not in words and all(w == w.lower() and "_" not in w for w in words)  # no proper nouns
    assert all(len(w.split()) <= 3 for w in words)
    kayak_words, source = gather_candidates("kayak", {}, {}, use_wordnet=True)
    assert source == "wordnet" and "canoe" in kayak_words  # its hypernym
    assert gather_candidates("qwxzvbnm", {}, {}, use_wordnet=True) == ([], "none")
    assert wordnet_words("computer monitor")[0] == "monitor"  # unknown phrase: its head noun's senses


def test_wordnet_is_loaded_lazily_and_torch_is_never_imported():
    code = (
        "import sys, ml.synonyms as s, ml.data.readers, ml.data.archive, ml.data.images, ml.data.palette\n"
        "s.gather_candidates('dog', {}, {}, True)\n"
        "s.gather_candidates('cat', {'cat': ['x']}, {}, True)\n"
        "print(s._wordnet.cache_info().currsize, 'torch' in sys.modules, 'wn' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False", "False"]


def fake_similarity(scores):
    calls = []

    def similarity(cls, words):
        calls.append((cls, list(words)))
        return [scores[w] for w in words]

    return similarity, calls


def test_rank_keeps_class_name_first_and_top_m():
    similarity, calls = fake_similarity({"dog": 1.0, "canine": 0.7, "puppy": 0.9, "hound": 0.8, "cur": 0.1})
    ranked = rank_candidates("dog", ["canine", "puppy", "hound", "cur"], similarity, m=3, source="builtin")
    assert ranked.cls == "dog" and ranked.source == "builtin"
    assert ranked.words == ["dog", "puppy", "hound", "canine"]
    assert ranked.scores == [1.0, 0.9, 0.8, 0.7]
    assert calls == [("dog", ["dog", "canine", "puppy", "hound", "cur"])]


def test_rank_ties_keep_precedence_order_and_m_bounds():
    similarity, _ = fake_similarity({"cat": 1.0, "a": 0.5, "b": 0.5, "c": float("nan"), "d": 0.6})
    assert rank_candidates("cat", ["c", "a", "b", "d"], similarity, m=10).words == ["cat", "d", "a", "b", "c"]
    assert rank_candidates("cat", ["a", "b"], similarity, m=0).words == ["cat"]
    empty = rank_candidates("cat", [], similarity, m=3)
    assert (empty.words, empty.scores, empty.source) == (["cat"], [1.0], "none")


def test_rank_checks_similarity_output_and_m():
    with pytest.raises(ValueError, match="returned 1 scores for 3 words"):
        rank_candidates("cat", ["a", "b"], lambda cls, words: [0.0], m=2)
    with pytest.raises(ValueError, match="num_synonyms"):
        rank_candidates("cat", ["a"], lambda cls, words: [0.0] * len(words), m=-1)
