"""``ft-pipeline init``: start a config for your own data.

Reads the training and test files, detects their format and columns as the pipeline will (a column
layout no format names is read as question/answer columns when their names say so), checks that every
row loads, and writes a commented TOML holding only what differs from the defaults: the two dataset
keys, the column keys where needed, and the keys a new user usually sets next, commented out. The file
loads as a config (checked before it is written); an existing file is kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from ft_assets.config import build_settings, config_base_dir
from ft_assets.config_sections import DatasetColumns
from ft_assets.errors import FtAssetsError
from ft_assets.phases.datasets import DatasetError, detect_columns, load_dataset
from ft_assets.phases.io import atomic_file

DEFAULT_OUTPUT = "ft-assets.toml"
#: Column names read as the question / the answer / a per-row system prompt, in order of preference.
QUESTION_NAMES = ("question", "query", "input", "user_prompt", "user", "q")
ANSWER_NAMES = ("answer", "response", "output", "ground_truth", "target", "reference", "a")
SYSTEM_NAMES = ("system_prompt", "system")


class InitError(FtAssetsError, ValueError):
    """A dataset ``init`` cannot write a config for, or an output it must not overwrite."""


@dataclass(frozen=True)
class DetectedDataset:
    """A dataset file as the pipeline will read it."""

    path: Path
    format: str
    columns: DatasetColumns
    rows: int
    keys: list[str]

    def describe(self) -> str:
        if self.format == "qa":
            layout = f"question column {self.columns.question_column!r}, answer column "
            layout += f"{self.columns.ground_truth_column!r}"
        else:
            layout = f"columns {', '.join(self.keys)}"
        return f"{self.path.name}: {self.rows} rows, format {self.format!r} (detected); {layout}"


def _first(names: Sequence[str], keys: Sequence[str]) -> str | None:
    lowered = {key.lower(): key for key in keys}
    return next((lowered[name] for name in names if name in lowered), None)


def detect(path: Path, hint: DatasetColumns, *, labelled: bool) -> DetectedDataset:
    """Format and columns of ``path``: those ``hint`` names, else guessed from the column names."""
    fmt, keys = detect_columns(str(path), hint, base_dir=Path.cwd())
    columns = hint
    if fmt is None:
        question, answer = _first(QUESTION_NAMES, keys), _first(ANSWER_NAMES, keys)
        if question is None or (labelled and answer is None):
            raise InitError(
                f"{path}: cannot tell which column is the question and which the answer among {keys}; "
                "name them with --question-column and --answer-column"
            )
        columns = hint.model_copy(
            update={"question_column": question, "ground_truth_column": answer or "answer"}
        )
        fmt = "qa"
    if fmt == "qa" and columns.system_prompt_column is None:
        columns = columns.model_copy(update={"system_prompt_column": _first(SYSTEM_NAMES, keys)})
    elif columns.system_prompt_column and columns.system_prompt_column not in keys:
        # the training set's column is not in this one: "" says "no system prompt column" in the config
        columns = columns.model_copy(update={"system_prompt_column": ""})
    try:
        loaded = load_dataset(str(path), columns, base_dir=Path.cwd(), require_ground_truth=labelled)
    except DatasetError as error:
        raise InitError(f"{path}: {error}") from None
    return DetectedDataset(path.resolve(), fmt, columns, loaded.num_rows, keys)


def _line(key: str, value: Any) -> str:
    return tomli_w.dumps({key: value}).strip()


def _column_lines(dataset: DetectedDataset, inherited: DatasetColumns | None) -> list[str]:
    """The column keys ``dataset`` needs written: those off the defaults (or off ``inherited``)."""
    if dataset.format != "qa":
        return []
    reference = inherited or DatasetColumns()
    lines = []
    for key in ("question_column", "ground_truth_column", "system_prompt_column"):
        value = getattr(dataset.columns, key)
        if value is not None and value != getattr(reference, key):
            lines.append(_line(key, value))
    return lines


def render(train: DetectedDataset, test: DetectedDataset, base_dir: Path) -> str:
    """The commented TOML for ``train`` and ``test``, paths relative to ``base_dir``."""

    def path(dataset: DetectedDataset) -> str:
        return os.path.relpath(dataset.path, base_dir)

    same_layout = test.format == train.format and test.columns == train.columns
    lines = [
        "# ft-assets config for your data, started by `ft-pipeline init`. Keys left out keep their defaults",
        "# (README: Config reference); relative paths are resolved against this file's folder.",
        "",
        "[fine_tuner]",
        f"# {train.describe()}",
        _line("training_data_id", path(train)),
        *_column_lines(train, None),
        '# base_model_id = "embedded:smollm2-135m-instruct"  # the default; or a local model folder, or a hub id',
        "# validation_split = 0.1  # hold out 10% of the training rows to report a validation loss",
        '# system_prompt_override_text = "You are ..."  # one system prompt for every row; inference uses it too',
        "# max_steps = 40  # default: one pass over the training rows (epochs = 1)",
        "",
        "[inferencer]",
        f"# {test.describe()}",
        _line("testing_data_id", path(test)),
    ]
    if same_layout:
        lines.append("# its columns and system prompt follow [fine_tuner]'s unless set here")
    else:
        lines += _column_lines(test, train.columns if test.format == train.format else None)
    lines += [
        "# max_new_tokens = 64",
        "",
        "[evaluator]",
        '# metrics = ["bleu_score", "rouge_score", "exact_match"]  # the default; the first is the primary metric',
        "",
    ]
    return "\n".join(lines)


def write_config(
    train: Path,
    test: Path,
    output: Path,
    *,
    force: bool = False,
    question_column: str | None = None,
    answer_column: str | None = None,
) -> tuple[Path, DetectedDataset, DetectedDataset]:
    """Detect both datasets and write the config at ``output`` (atomically); returns what was found."""
    if output.exists() and not force:
        raise InitError(f"{output} exists; pass --force to overwrite it, or --out another file")
    named = {"question_column": question_column, "ground_truth_column": answer_column}
    hint = DatasetColumns(**{key: value for key, value in named.items() if value})
    train_set = detect(train, hint, labelled=True)
    test_set = detect(test, train_set.columns, labelled=False)
    output = output.resolve()
    text = render(train_set, test_set, config_base_dir(output))
    # the same validation a run applies, before anything is written
    build_settings(tomllib.loads(text), source=str(output), base_dir=config_base_dir(output))
    with atomic_file(output) as handle:
        handle.write(text)
    return output, train_set, test_set


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ft-pipeline init", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train", required=True, type=Path, help="training data (.jsonl, .json, .csv, .parquet)"
    )
    parser.add_argument("--test", required=True, type=Path, help="test data, scored after fine-tuning")
    parser.add_argument(
        "--out", type=Path, default=Path(DEFAULT_OUTPUT), help=f"config to write ({DEFAULT_OUTPUT})"
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--question-column", help="the column holding the question (default: detected)")
    parser.add_argument("--answer-column", help="the column holding the answer (default: detected)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``ft-pipeline init``; returns the exit status (1 with a one-line reason on failure)."""
    args = build_parser().parse_args(argv)
    try:
        output, train, test = write_config(
            args.train,
            args.test,
            args.out,
            force=args.force,
            question_column=args.question_column,
            answer_column=args.answer_column,
        )
    except FtAssetsError as error:
        print(f"ft-pipeline init: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {output}\n  {train.describe()}\n  {test.describe()}")
    print(
        f"next: ft-pipeline --config {output}  (check first: python -m ft_assets.preflight --config {output})"
    )
    return 0
