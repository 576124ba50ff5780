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
import csv
import difflib
import hashlib
import json
import random
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ft_assets.config import ConfigError, DatasetColumns, load_settings
from ft_assets.errors import FtAssetsError

#: Source role names accepted in conversations, mapped onto the three roles the pipeline uses.
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}
ID_COLUMN = "id"
CONTEXTS_COLUMN = "contexts"
#: How many bad rows an error message lists before summarising the rest as a count.
MAX_LISTED_BAD_ROWS = 10

_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class DatasetError(FtAssetsError, ValueError):
    """A dataset that cannot be used; the message names the file (or hub id), rows and columns at fault."""


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


class _BadField(Exception):
    """Raised inside row parsing; becomes a :class:`BadRow` with the row number added."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


# --------------------------------------------------------------------------------------------- sources


def _looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and not source.lower().endswith(_LOCAL_SUFFIXES)


def _locate(source: str, base_dir: Path) -> Path | str:
    """An existing local path, or the hub id ``source`` names; anything else is a DatasetError."""
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = path.resolve()
    if path.exists():
        return path
    if _looks_like_hub_id(source):
        return source
    raise DatasetError(f"dataset file not found: {path}")


def _parquet_shards(directory: Path) -> list[Path]:
    shards = sorted(directory.rglob("*.parquet"))
    if not shards:
        raise DatasetError(f"{directory}: directory holds no .parquet files")
    return shards


def data_version(source: str, *, base_dir: Path, revision: str | None = None) -> str:
    """A version string that changes when the dataset's content changes.

    A local file gives ``sha256:<hex>`` of its bytes; a local directory of parquet shards gives a sha256
    over each shard's relative name and digest, in sorted order. A hub dataset gives
    ``hf:<revision>`` (``hf:main`` when unpinned) without any network call, so only a pinned
    revision (a commit sha) identifies content: pin ``dataset_revision`` to make reruns reproducible.
    """
    location = _locate(source, base_dir)
    if isinstance(location, str):
        return f"hf:{revision or 'main'}"
    if location.is_file():
        return f"sha256:{_file_digest(location).hexdigest()}"
    combined = hashlib.sha256()
    for shard in _parquet_shards(location):
        combined.update(shard.relative_to(location).as_posix().encode() + b"\0")
        combined.update(_file_digest(shard).digest())
    return f"sha256:{combined.hexdigest()}"


def _file_digest(path: Path) -> Any:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256")


# --------------------------------------------------------------------------------------------- readers

RawRows = list[tuple[int, Any]]


def _read_jsonl(path: Path) -> RawRows:
    rows: RawRows = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DatasetError(
                    f"{path}: line {number}: malformed JSON ({error.msg} at column {error.colno})"
                ) from None
            except RecursionError:
                raise DatasetError(f"{path}: line {number}: JSON nested too deeply to read") from None
    return rows


def _read_json(path: Path) -> RawRows:
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read") from None
    if isinstance(document, Mapping) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DatasetError(f'{path}: expected a JSON list of objects or {{"data": [...]}}')
    return list(enumerate(document, 1))


#: The longest CSV cell read (the csv module's default, 131,072 characters, is shorter than many documents).
CSV_MAX_CELL_CHARS = 1 << 24


def _read_csv(path: Path) -> RawRows:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_MAX_CELL_CHARS))
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            # Cells beyond the header land under the key None; they have no column name to map.
            return [(n, {k: v for k, v in r.items() if k is not None}) for n, r in enumerate(reader, 1)]
        except csv.Error as error:
            if "field larger than field limit" in str(error):
                raise DatasetError(
                    f"{path}: line {reader.line_num}: a cell is longer than {csv.field_size_limit():,} "
                    "characters, the most a CSV cell may hold here; shorten it or use JSONL or parquet"
                ) from None
            raise DatasetError(f"{path}: line {reader.line_num}: malformed CSV ({error})") from None


def _read_parquet(path: Path) -> RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = _parquet_shards(path) if path.is_dir() else [path]
    records: list[Any] = []
    for shard in shards:
        try:
            # to_pylist gives plain lists/dicts (pandas would give numpy arrays for list columns).
            records.extend(pq.read_table(shard).to_pylist())
        except (pa.ArrowException, OSError) as error:
            raise DatasetError(f"{shard}: unreadable parquet file ({error})") from None
    return list(enumerate(records, 1))


_READERS: dict[str, Callable[[Path], RawRows]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _read_local(path: Path) -> RawRows:
    reader = _read_parquet if path.is_dir() else _READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(_LOCAL_SUFFIXES)} "
            "or a directory of .parquet shards"
        )
    try:
        return reader(path)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _read_hub(hub_id: str, *, split: str, revision: str | None, token: str | None) -> RawRows:
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, revision=revision, split=split, token=token)
    # `datasets` signals a missing repo, split, network or auth problem with many unrelated types.
    except Exception as error:
        raise DatasetError(
            f"hub dataset {hub_id!r} (revision {revision or 'main'}, split {split!r}) could not be loaded: "
            f"{type(error).__name__}: {error}"
        ) from error
    return list(enumerate(dataset, 1))


# --------------------------------------------------------------------------------------------- formats

_FORMAT_MARKERS = (
    ("messages", "messages"),
    ("sharegpt", "conversations"),
    ("alpaca", "instruction"),
    ("prompt_completion", "prompt"),
    ("text", "text"),
)


def _detect_format(first_row: Mapping[str, Any], columns: DatasetColumns, label: str) -> str:
    if columns.dataset_format != "auto":
        return columns.dataset_format
    if columns.question_column in first_row:
        return "qa"
    for name, marker in _FORMAT_MARKERS:
        if marker in first_row:
            return name
    expected = ", ".join(
        [f"{columns.question_column!r} (qa)"] + [f"{marker!r} ({name})" for name, marker in _FORMAT_MARKERS]
    )
    match = difflib.get_close_matches(columns.question_column, list(first_row), n=1)
    hint = f" (question_column = {columns.question_column!r}: did you mean {match[0]!r}?)" if match else ""
    raise DatasetError(
        f"{label}: cannot detect the dataset format from the first row's keys {sorted(first_row)}; "
        f"expected a key among {expected}, or set dataset_format explicitly{hint}"
    )


def _required_columns(fmt: str, columns: DatasetColumns, require_ground_truth: bool) -> list[tuple[str, str]]:
    """(column, what names it) pairs that must exist in at least one row for ``fmt``."""
    if fmt == "qa":
        required = [(columns.question_column, "question_column")]
        if require_ground_truth:
            required.append((columns.ground_truth_column, "ground_truth_column"))
        if columns.system_prompt_column:
            required.append((columns.system_prompt_column, "system_prompt_column"))
        return required
    answer = {"alpaca": "output", "prompt_completion": "completion"}.get(fmt)
    fixed = dict(_FORMAT_MARKERS)[fmt]
    required = [(fixed, f"the {fmt} format")]
    if answer and require_ground_truth:
        required.append((answer, f"the {fmt} format"))
    return required


def _check_columns(
    rows: RawRows, fmt: str, columns: DatasetColumns, require_ground_truth: bool, label: str
) -> None:
    present: dict[str, None] = {}
    for _, row in rows:
        present.update(dict.fromkeys(row))
    for column, named_by in _required_columns(fmt, columns, require_ground_truth):
        if column not in present:
            match = difflib.get_close_matches(column, list(present), n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            raise DatasetError(
                f"{label}: column {column!r} (from {named_by}) is in no row; columns found: "
                f"{list(present)}{hint}"
            )


def _text_field(row: Mapping[str, Any], column: str, *, required: bool) -> str | None:
    value = row.get(column)
    if value is None:
        if required:
            raise _BadField(column, "missing value")
        return None
    if not isinstance(value, str):
        raise _BadField(column, f"expected a string, got {type(value).__name__}")
    _check_encodable(value, column)
    if not value.strip():
        if required:
            raise _BadField(column, "empty value")
        return None
    return value


def _check_encodable(text: str, column: str) -> None:
    """JSON admits lone UTF-16 surrogates, which no tokenizer or UTF-8 output can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _BadField(column, f"invalid Unicode (lone surrogate at character {error.start})") from None


def _conversation(value: Any, column: str) -> list[dict[str, str]]:
    """A list of role/content (or from/value) messages, roles normalised."""
    if not isinstance(value, list) or not value:
        got = type(value).__name__ if not isinstance(value, list) else "an empty list"
        raise _BadField(column, f"expected a non-empty list of messages, got {got}")
    turns = []
    for index, message in enumerate(value):
        where = f"{column}[{index}]"
        if not isinstance(message, Mapping):
            raise _BadField(column, f"{where}: expected an object, got {type(message).__name__}")
        role_key, content_key = ("from", "value") if "from" in message else ("role", "content")
        raw_role = message.get(role_key)
        role = ROLE_ALIASES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise _BadField(
                column,
                f"{where}.{role_key}: unknown role {raw_role!r} (expected one of {sorted(ROLE_ALIASES)})",
            )
        content = message.get(content_key)
        if not isinstance(content, str):
            raise _BadField(column, f"{where}.{content_key}: expected a string, got {type(content).__name__}")
        _check_encodable(content, f"{column} {where}.{content_key}")
        if not content.strip():
            raise _BadField(column, f"{where}.{content_key}: empty {role} message")
        turns.append({"role": role, "content": content})
    return turns


def _qa_turns(row: Mapping[str, Any], columns: DatasetColumns, require_ground_truth: bool) -> list[dict]:
    question = _text_field(row, columns.question_column, required=True)
    answer = _text_field(row, columns.ground_truth_column, required=require_ground_truth)
    # The seed's precedence (override text, then this column, then none) holds because _parse_row lays the
    # override over whatever system turn this builds.
    column = columns.system_prompt_column
    system = _text_field(row, column, required=False) if column else None
    turns = [{"role": "system", "content": system}] if system else []
    turns.append({"role": "user", "content": question})
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return turns


def _alpaca_turns(row: Mapping[str, Any], columns: DatasetColumns, require_ground_truth: bool) -> list[dict]:
    instruction = _text_field(row, "instruction", required=True)
    extra = _text_field(row, "input", required=False)
    output = _text_field(row, "output", required=require_ground_truth)
    turns = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction}]
    if output is not None:
        turns.append({"role": "assistant", "content": output})
    return turns


def _prompt_completion_turns(
    row: Mapping[str, Any], columns: DatasetColumns, require_ground_truth: bool
) -> list[dict]:
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        turns = _conversation(prompt, "prompt")
    else:
        turns = [{"role": "user", "content": _text_field(row, "prompt", required=True)}]
    completion = row.get("completion")
    if isinstance(completion, list):
        answer = _conversation(completion, "completion")
        if len(answer) != 1 or answer[0]["role"] != "assistant":
            raise _BadField("completion", "a message-list completion must be exactly one assistant message")
        return turns + answer
    text = _text_field(row, "completion", required=require_ground_truth)
    return turns + ([{"role": "assistant", "content": text}] if text is not None else [])


def _column_turns(column: str) -> Callable[[Mapping[str, Any], DatasetColumns, bool], list[dict]]:
    return lambda row, _columns, _require: _conversation(row.get(column), column)


_TURN_BUILDERS: dict[str, Callable[[Mapping[str, Any], DatasetColumns, bool], list[dict]]] = {
    "qa": _qa_turns,
    "messages": _column_turns("messages"),
    "sharegpt": _column_turns("conversations"),
    "alpaca": _alpaca_turns,
    "prompt_completion": _prompt_completion_turns,
}


def _with_system_override(turns: list[dict[str, str]], override: str | None) -> list[dict[str, str]]:
    if not override:
        return turns
    rest = turns[1:] if turns and turns[0]["role"] == "system" else turns
    return [{"role": "system", "content": override}, *rest]


def _contexts(row: Mapping[str, Any]) -> tuple[str, ...]:
    value = row.get(CONTEXTS_COLUMN)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _BadField(CONTEXTS_COLUMN, "expected a list of strings")
    for index, item in enumerate(value):
        _check_encodable(item, f"{CONTEXTS_COLUMN}[{index}]")
    return tuple(value)


def _parse_row(
    number: int, row: Mapping[str, Any], fmt: str, columns: DatasetColumns, require_ground_truth: bool
) -> Example:
    raw_id = row.get(ID_COLUMN)
    example_id = str(raw_id) if raw_id is not None else f"row-{number}"
    _check_encodable(example_id, ID_COLUMN)  # the id is written to every output row
    contexts = _contexts(row)
    if fmt == "text":
        text = _text_field(row, "text", required=True)
        return Example(id=example_id, messages=(), text=text, row=number, contexts=contexts)
    column = dict(_FORMAT_MARKERS).get(fmt, columns.question_column)
    turns = _with_system_override(
        _TURN_BUILDERS[fmt](row, columns, require_ground_truth), columns.system_prompt_override_text
    )
    if not any(turn["role"] == "user" for turn in turns):
        raise _BadField(column, "the conversation has no user turn")
    if require_ground_truth and turns[-1]["role"] != "assistant":
        raise _BadField(
            column, f"the conversation ends on a {turns[-1]['role']} turn, not an assistant answer"
        )
    return Example(id=example_id, messages=tuple(turns), row=number, contexts=contexts)


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
    location = _locate(source, base_dir)
    if isinstance(location, str):
        label = f"hub dataset {location!r}"
        resolved = f"hf://{location}@{revision or 'main'}"
        rows = _read_hub(location, split=split, revision=revision, token=token)
    else:
        label = resolved = str(location)
        rows = _read_local(location)
    if not rows:
        raise DatasetError(f"{label}: the dataset is empty")
    for number, row in rows:
        if not isinstance(row, Mapping):
            raise DatasetError(f"{label}: row {number}: expected an object, got {type(row).__name__}")

    fmt = _detect_format(rows[0][1], columns, label)
    _check_columns(rows, fmt, columns, require_ground_truth, label)
    examples: list[Example] = []
    bad: list[BadRow] = []
    first_seen: dict[str, int] = {}
    for number, row in rows:
        try:
            example = _parse_row(number, row, fmt, columns, require_ground_truth)
        except _BadField as problem:
            bad.append(BadRow(row=number, reason=problem.reason, column=problem.column))
            continue
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


def detect_columns(source: str, columns: DatasetColumns, *, base_dir: Path) -> tuple[str | None, list[str]]:
    """A local dataset's format as :func:`load_dataset` detects it (None: undetectable with ``columns``),
    and the keys found in its rows."""
    location = _locate(source, base_dir)
    if isinstance(location, str):
        raise DatasetError(f"{source}: a hub dataset; name a local file (its columns are read from it)")
    rows = _read_local(location)
    if not rows or not isinstance(rows[0][1], Mapping):
        raise DatasetError(f"{location}: the dataset is empty or its first row is not an object")
    keys = list(dict.fromkeys(key for _, row in rows if isinstance(row, Mapping) for key in row))
    try:
        return _detect_format(rows[0][1], columns, str(location)), keys
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


def to_trl_records(examples: list[Example]) -> list[dict]:
    """Rows for a plain TRL script: ``{"prompt": [...], "completion": [assistant]}`` or ``{"text": ...}``.

    TRL's completion-only loss on these trains only the final assistant turn; the platform's own training
    labels every assistant turn itself (:mod:`ft_assets.phases.label_masks`).
    """
    records: list[dict] = []
    for example in examples:
        if example.text is not None:
            records.append({"text": example.text})
            continue
        if example.ground_truth is None:
            raise DatasetError(
                f"row {example.row} (id {example.id!r}): the conversation ends on a "
                f"{example.messages[-1]['role']} turn; training needs a final assistant answer "
                "(load with require_ground_truth=True to report such rows as bad rows)"
            )
        records.append({"prompt": example.prompt_messages(), "completion": [dict(example.messages[-1])]})
    return records


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
    which.add_argument("--config", help="pipeline TOML: summarise its training, validation and test datasets")
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
        tuner, inferencer = settings.fine_tuner, settings.inferencer
        wanted = [
            ("fine_tuner.training_data_id", tuner.training_data_id, tuner, tuner.dataset_split, True),
            (
                "fine_tuner.validation_data_id",
                tuner.validation_data_id,
                tuner,
                tuner.validation_dataset_split,
                True,
            ),
            (
                "inferencer.testing_data_id",
                inferencer.testing_data_id,
                inferencer,
                inferencer.dataset_split,
                False,
            ),
        ]
        for name, source, section, split, require in wanted:
            if source is None:
                continue
            dataset = load_dataset(
                source,
                section,
                base_dir=settings.base_dir,
                split=split,
                revision=section.dataset_revision,
                require_ground_truth=require,
            )
            print(_summary(name, dataset))
        return 0
    except (DatasetError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
