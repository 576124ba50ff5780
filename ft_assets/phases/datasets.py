"""Load a dataset from a local file or the Hugging Face Hub and normalise it into chat examples.

Every supported layout becomes a list of :class:`Example` objects holding a conversation with the
roles ``system``/``user``/``assistant`` only, so the training, inference and evaluation phases handle
one shape. Formats (detected from the first row's keys unless ``dataset_format`` says otherwise):

``qa``                the seed's columns: ``question_column``, ``ground_truth_column``, optional
                      ``system_prompt_column``
``messages``          OpenAI chat: ``messages`` = [{"role", "content"}, ...]
``sharegpt``          ``conversations`` = [{"from": "human"|"gpt"|"system", "value"}, ...] (role/content too)
``alpaca``            ``instruction``, optional ``input``, ``output``
``prompt_completion`` ``prompt`` and ``completion``, each a string or a list of messages
``text``              ``text`` (plain language-model text, no conversation)

Rows that cannot be used (missing/empty field, wrong type, unknown role...) are collected with their
row number and column, then either reported all at once (``on_bad_rows = "error"``) or dropped
(``"drop"``). Run ``python -m ft_assets.phases.datasets --config config/pipeline.toml`` for a summary.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ft_assets.config import ConfigError, Settings, load_settings
from ft_assets.config_sections import DatasetColumns
from ft_assets.dataset_specs import DATASETS, DatasetSpec
from ft_assets.phases.dataset_files import DatasetError, data_version, locate, read_hub, read_local
from ft_assets.phases.dataset_rows import BadField, check_columns, detect_format, parse_row

#: How many bad rows an error message lists before summarising the rest as a count.
MAX_LISTED_BAD_ROWS = 10


@dataclass(frozen=True)
class Example:
    """One normalised dataset row."""

    id: str
    messages: tuple[dict[str, str], ...]
    text: str | None = None
    row: int = 0
    contexts: tuple[str, ...] = ()

    @property
    def system_prompt(self) -> str | None:
        """The leading system turn's content, if the conversation has one."""
        if self.messages and self.messages[0]["role"] == "system":
            return self.messages[0]["content"]
        return None

    @property
    def user_prompt(self) -> str:
        """The last user turn (for a plain ``text`` example: the text itself)."""
        if self.text is not None:
            return self.text
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def ground_truth(self) -> str | None:
        """The final assistant turn's content; None when the conversation ends on a user turn."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return None

    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation up to, not including, the final assistant turn (copies)."""
        turns = self.messages[:-1] if self.ground_truth is not None else self.messages
        return [dict(turn) for turn in turns]


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used, and why."""

    row: int
    reason: str
    column: str | None = None

    def describe(self) -> str:
        where = f"row {self.row}" + (f" [{self.column}]" if self.column else "")
        return f"{where}: {self.reason}"


@dataclass
class LoadedDataset:
    """A dataset after loading, normalising and applying the bad-row policy."""

    source: str
    resolved: str
    format: str
    examples: list[Example]
    bad_rows: list[BadRow]
    content_hash: str
    num_rows: int


# --------------------------------------------------------------------------------------------- public API


def _describe_bad_rows(bad: Sequence[BadRow]) -> str:
    listed = "; ".join(item.describe() for item in bad[:MAX_LISTED_BAD_ROWS])
    more = len(bad) - MAX_LISTED_BAD_ROWS
    return listed + (f"; and {more} more" if more > 0 else "")


def check_bad_rows(bad: list[BadRow], *, policy: str, source: str, total: int) -> list[BadRow]:
    """Apply ``on_bad_rows``: ``"error"`` raises a DatasetError listing them, ``"drop"`` returns them."""
    if policy not in ("error", "drop"):
        raise DatasetError(f"{source}: unknown on_bad_rows policy {policy!r} (expected 'error' or 'drop')")
    if bad and policy == "error":
        raise DatasetError(
            f"{source}: {len(bad)} of {total} rows are unusable (on_bad_rows = 'error'; "
            f"set on_bad_rows = 'drop' to skip them): {_describe_bad_rows(bad)}"
        )
    return bad


def load_dataset(
    source: str,
    columns: DatasetColumns,
    *,
    base_dir: Path,
    split: str = "train",
    revision: str | None = None,
    token: str | None = None,
    require_ground_truth: bool = False,
) -> LoadedDataset:
    """Read ``source`` (a path relative to ``base_dir``, or a hub id) and normalise every row.

    ``split``, ``revision`` and ``token`` apply to hub datasets only. ``require_ground_truth`` (training,
    evaluation) makes a row without a final assistant answer a bad row; without it (inference on
    unlabelled data) such rows end on the user turn.
    """
    location = locate(source, base_dir)
    if isinstance(location, str):
        label = f"hub dataset {location!r}"
        resolved = f"hf://{location}@{revision or 'main'}"
        rows = read_hub(location, split=split, revision=revision, token=token)
    else:
        label = resolved = str(location)
        rows = read_local(location)
    if not rows:
        raise DatasetError(f"{label}: the dataset is empty")
    for number, row in rows:
        if not isinstance(row, Mapping):
            raise DatasetError(f"{label}: row {number}: expected an object, got {type(row).__name__}")

    fmt = detect_format(rows[0][1], columns, label)
    check_columns(rows, fmt, columns, require_ground_truth, label)
    examples: list[Example] = []
    bad: list[BadRow] = []
    first_seen: dict[str, int] = {}
    for number, row in rows:
        try:
            example_id, turns, text, contexts = parse_row(number, row, fmt, columns, require_ground_truth)
        except BadField as problem:
            bad.append(BadRow(row=number, reason=problem.reason, column=problem.column))
            continue
        example = Example(id=example_id, messages=turns, text=text, row=number, contexts=contexts)
        if example.id in first_seen:
            bad.append(
                BadRow(number, f"duplicate id {example.id!r} (first in row {first_seen[example.id]})", "id")
            )
            continue
        first_seen[example.id] = number
        examples.append(example)

    check_bad_rows(bad, policy=columns.on_bad_rows, source=label, total=len(rows))
    if not examples:
        raise DatasetError(f"{label}: all {len(rows)} rows are unusable: {_describe_bad_rows(bad)}")
    return LoadedDataset(
        source=source,
        resolved=resolved,
        format=fmt,
        examples=examples,
        bad_rows=bad,
        content_hash=data_version(source, base_dir=base_dir, revision=revision),
        num_rows=len(rows),
    )


def load_configured(
    spec: DatasetSpec,
    settings: Settings,
    token: str | None = None,
    *,
    columns: DatasetColumns | None = None,
    labelled: bool | None = None,
) -> LoadedDataset:
    """The dataset ``spec`` as ``settings`` configure it (source, split, revision, column mapping).

    ``columns`` replaces the section's column mapping (the test set read with a model's trained system
    prompt); ``labelled`` overrides ``spec.labelled``. A problem is a DatasetError naming ``[section] key``.
    """
    source = spec.source(settings)
    if source is None:
        raise DatasetError(f"{spec.config_key} is not set")
    section = spec.columns(settings)
    try:
        return load_dataset(
            source,
            columns if columns is not None else section,
            base_dir=settings.base_dir,
            split=spec.split(settings),
            revision=section.dataset_revision,
            token=token,
            require_ground_truth=spec.labelled if labelled is None else labelled,
        )
    except DatasetError as error:
        raise DatasetError(f"{spec.config_key} = {source!r}: {error}") from None


def detect_columns(source: str, columns: DatasetColumns, *, base_dir: Path) -> tuple[str | None, list[str]]:
    """A local dataset's format as :func:`load_dataset` detects it (None: undetectable with ``columns``),
    and the keys found in its rows."""
    location = locate(source, base_dir)
    if isinstance(location, str):
        raise DatasetError(f"{source}: a hub dataset; name a local file (its columns are read from it)")
    rows = read_local(location)
    if not rows or not isinstance(rows[0][1], Mapping):
        raise DatasetError(f"{location}: the dataset is empty or its first row is not an object")
    keys = list(dict.fromkeys(key for _, row in rows if isinstance(row, Mapping) for key in row))
    try:
        return detect_format(rows[0][1], columns, str(location)), keys
    except DatasetError:
        return None, keys


def split_validation(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out ``round(len * fraction)`` examples (at least one when ``fraction > 0``), chosen by ``seed``.

    Both parts keep the original row order. Returns ``(train, validation)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"validation_split must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(examples), []
    size = max(1, round(len(examples) * fraction))
    if size >= len(examples):
        raise DatasetError(
            f"validation_split = {fraction} of {len(examples)} examples leaves no examples for training"
        )
    held_out = set(random.Random(seed).sample(range(len(examples)), size))
    train = [example for index, example in enumerate(examples) if index not in held_out]
    validation = [example for index, example in enumerate(examples) if index in held_out]
    return train, validation


# --------------------------------------------------------------------------------------------- CLI


def _summary(name: str, dataset: LoadedDataset) -> str:
    lines = [
        f"{name}: {dataset.source}",
        f"  resolved:     {dataset.resolved}",
        f"  format:       {dataset.format}",
        f"  rows:         {dataset.num_rows} read, {len(dataset.examples)} usable, "
        f"{len(dataset.bad_rows)} dropped",
        f"  data version: {dataset.content_hash}",
    ]
    if dataset.bad_rows:
        lines.append(f"  bad rows:     {_describe_bad_rows(dataset.bad_rows)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print a summary of the configured datasets (or of one file); exit 1 on the first unusable one."""
    parser = argparse.ArgumentParser(prog="python -m ft_assets.phases.datasets", description=main.__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--config", help="pipeline TOML: summarise its training, validation and testing datasets"
    )
    which.add_argument("--source", help="one dataset file or hub id, read with the default column mapping")
    parser.add_argument("--format", default="auto", help="dataset_format for --source (default: auto)")
    parser.add_argument("--split", default="train", help="hub split for --source")
    parser.add_argument("--revision", default=None, help="hub revision for --source")
    args = parser.parse_args(argv)

    try:
        if args.source:
            columns = DatasetColumns(dataset_format=args.format)
            dataset = load_dataset(
                args.source, columns, base_dir=Path.cwd(), split=args.split, revision=args.revision
            )
            print(_summary("dataset", dataset))
            return 0
        settings = load_settings(args.config)
        for spec in DATASETS:
            if spec.source(settings) is not None:
                dataset = load_configured(spec, settings)
                print(_summary(f"{spec.name}: {spec.section}.{spec.key}", dataset))
                print(f"  columns:      {spec.describe_columns()}")
        return 0
    except (DatasetError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
