from __future__ import annotations

import pytest

from ml.data import DatasetError
from ml.data.layouts.listing import read_synonyms_csv
from ml.data.readers import read_dataset
from tests.ml.data.builders import good_manifest, problems_of


def test_manifest_synonyms(tmp_path):
    root = good_manifest(tmp_path / "ds")
    (root / "synonyms.csv").write_text("class,syn1,syn2\nCAT,kitty,feline,kitty\ndining table,dinner table,\n")
    assert read_dataset(root).synonyms == {"cat": ["kitty", "feline"], "dining table": ["dinner table"]}


def test_not_utf8_reported_with_line(tmp_path):
    root = good_manifest(tmp_path / "ds")
    (root / "classes.txt").write_bytes(b"cat\ndog\ndining \xff table\n")
    with pytest.raises(DatasetError) as excinfo:
        read_dataset(root)
    assert problems_of(excinfo)[0].startswith("classes.txt:3: not UTF-8 text")


def test_synonyms_csv_rows_header_and_blank_class():
    lines = ["class,word", "cat,kitty,,feline", "", ",orphan", "dog"]
    rows, problems = read_synonyms_csv(lines, "synonyms.csv")
    assert rows == [(2, "cat", ["kitty", "feline"]), (5, "dog", [])]
    assert [str(p) for p in problems] == ["synonyms.csv:4: row without a class name in the first column"]
