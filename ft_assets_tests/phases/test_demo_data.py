"""The bundled demo dataset: reproducible from its generator, disjoint splits, canonical JSON answers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ft_assets.config import PROJECT_ROOT
from ft_assets.config_sections import DatasetColumns
from ft_assets.phases.datasets import load_dataset

GENERATOR = PROJECT_ROOT / "data" / "generate_demo.py"
DEMO = PROJECT_ROOT / "data" / "demo"
SPLITS = {"train": 400, "validation": 40, "test": 60}
KEYS = ["name", "city", "age"]


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_committed_files_match_the_generator() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr


def test_check_detects_a_changed_file(tmp_path: Path) -> None:
    assert run_generator("--out", str(tmp_path)).returncode == 0
    assert run_generator("--out", str(tmp_path), "--check").returncode == 0
    for split in SPLITS:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (DEMO / f"{split}.jsonl").read_bytes()
    with (tmp_path / "test.jsonl").open("a") as handle:
        handle.write("\n")
    result = run_generator("--out", str(tmp_path), "--check")
    assert result.returncode == 1
    assert "test.jsonl" in result.stderr and "train.jsonl" not in result.stderr


@pytest.fixture(scope="module")
def splits() -> dict[str, list]:
    return {
        split: load_dataset(
            f"data/demo/{split}.jsonl", DatasetColumns(), base_dir=PROJECT_ROOT, require_ground_truth=True
        ).examples
        for split in SPLITS
    }


def test_sizes_and_disjoint_questions(splits: dict[str, list]) -> None:
    assert {split: len(examples) for split, examples in splits.items()} == SPLITS
    questions = {split: {e.user_prompt for e in examples} for split, examples in splits.items()}
    assert {split: len(q) for split, q in questions.items()} == SPLITS
    assert questions["train"].isdisjoint(questions["validation"])
    assert questions["train"].isdisjoint(questions["test"])
    assert questions["validation"].isdisjoint(questions["test"])


def test_answers_are_canonical_json_extracted_from_the_question(splits: dict[str, list]) -> None:
    templates = set()
    for examples in splits.values():
        for example in examples:
            pairs = json.loads(example.ground_truth, object_pairs_hook=lambda p: p)
            assert [key for key, _ in pairs] == KEYS, example.id
            record = dict(pairs)
            assert example.ground_truth == json.dumps(record), example.id
            assert isinstance(record["name"], str) and isinstance(record["city"], str), example.id
            assert isinstance(record["age"], int) and 18 <= record["age"] <= 89, example.id
            question = example.user_prompt
            assert question.startswith("Extract name, city and age as JSON: "), example.id
            # Every value is stated in the sentence, so the task is extraction, not guessing.
            for value in (record["name"], record["city"]):
                assert value in question, example.id
            assert re.search(rf"\b{record['age']}\b", question), example.id
            sentence = question.removeprefix("Extract name, city and age as JSON: ")
            for value in (record["name"], record["city"], str(record["age"])):
                sentence = sentence.replace(value, "<>", 1)
            templates.add(re.sub(r"\d+", "<n>", sentence))
    assert len(templates) >= 12
