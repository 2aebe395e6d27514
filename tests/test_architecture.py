"""The import rules are contracts (`lint-imports`, pyproject.toml); these tests keep them honest."""

from __future__ import annotations

import pkgutil
import re
import tomllib
from pathlib import Path

import ml

ROOT = Path(__file__).resolve().parents[1]
CORE = {"ml.spec", "ml.data"}
# Torch-free modules outside the core that the API imports as well: the synonym sources, for its preview.
API_ALSO = {"ml.synonyms", "ml.synonym_llm"}
# File names inside a run directory: only ml/spec/layout.py spells them.
RUN_FILE_NAMES = re.compile(
    r"""["'/](model\.pt|log\.json|stage\.json|selections\.jsonl|candidates\.json|metrics\.json|failed_images\.json"""
    r"""|model\.onnx|pole_masks\.zip|overlays\.png|chosen_words_radar\.png)["']"""
)


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_every_ml_module_outside_the_core_is_forbidden_to_the_core_and_the_api():
    modules = {f"ml.{m.name}" for m in pkgutil.iter_modules(ml.__path__)} - CORE
    for source, allowed in ((["ml.spec", "ml.data"], set()), (["app"], API_ALSO)):
        contract = next(c for c in _contracts() if c.get("source_modules") == source)
        missing = modules - allowed - set(contract["forbidden_modules"])
        assert not missing, f"add {sorted(missing)} to the forbidden_modules of {contract['name']!r}"


def test_no_module_but_the_layout_spells_a_run_file_name():
    offenders = []
    for package in ("app", "worker", "ml", "pole", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "ml" / "spec" / "layout.py":
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if RUN_FILE_NAMES.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "run files are named in ml/spec/layout.py only:\n" + "\n".join(offenders)
