"""How one raw row of each dataset format becomes a conversation of ``system``/``user``/``assistant``
turns (the formats are listed in :mod:`ft_assets.phases.datasets`), and what makes a row unusable.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from ft_assets.config_sections import DatasetColumns
from ft_assets.phases.dataset_files import DatasetError, RawRows

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
#: A parsed row: its id, its conversation turns (empty for ``text``), its plain text, its contexts.
ParsedRow = tuple[str, tuple[dict[str, str], ...], str | None, tuple[str, ...]]


class BadField(Exception):
    """Raised inside row parsing; becomes a :class:`BadRow` with the row number added."""

    def __init__(self, column: str, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


FORMAT_MARKERS = (
    ("messages", "messages"),
    ("sharegpt", "conversations"),
    ("alpaca", "instruction"),
    ("prompt_completion", "prompt"),
    ("text", "text"),
)


def detect_format(first_row: Mapping[str, Any], columns: DatasetColumns, label: str) -> str:
    if columns.dataset_format != "auto":
        return columns.dataset_format
    if columns.question_column in first_row:
        return "qa"
    for name, marker in FORMAT_MARKERS:
        if marker in first_row:
            return name
    expected = ", ".join(
        [f"{columns.question_column!r} (qa)"] + [f"{marker!r} ({name})" for name, marker in FORMAT_MARKERS]
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
    fixed = dict(FORMAT_MARKERS)[fmt]
    required = [(fixed, f"the {fmt} format")]
    if answer and require_ground_truth:
        required.append((answer, f"the {fmt} format"))
    return required


def check_columns(
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
            raise BadField(column, "missing value")
        return None
    if not isinstance(value, str):
        raise BadField(column, f"expected a string, got {type(value).__name__}")
    check_encodable(value, column)
    if not value.strip():
        if required:
            raise BadField(column, "empty value")
        return None
    return value


def check_encodable(text: str, column: str) -> None:
    """JSON admits lone UTF-16 surrogates, which no tokenizer or UTF-8 output can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadField(column, f"invalid Unicode (lone surrogate at character {error.start})") from None


def _conversation(value: Any, column: str) -> list[dict[str, str]]:
    """A list of role/content (or from/value) messages, roles normalised."""
    if not isinstance(value, list) or not value:
        got = type(value).__name__ if not isinstance(value, list) else "an empty list"
        raise BadField(column, f"expected a non-empty list of messages, got {got}")
    turns = []
    for index, message in enumerate(value):
        where = f"{column}[{index}]"
        if not isinstance(message, Mapping):
            raise BadField(column, f"{where}: expected an object, got {type(message).__name__}")
        role_key, content_key = ("from", "value") if "from" in message else ("role", "content")
        raw_role = message.get(role_key)
        role = ROLE_ALIASES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise BadField(
                column,
                f"{where}.{role_key}: unknown role {raw_role!r} (expected one of {sorted(ROLE_ALIASES)})",
            )
        content = message.get(content_key)
        if not isinstance(content, str):
            raise BadField(column, f"{where}.{content_key}: expected a string, got {type(content).__name__}")
        check_encodable(content, f"{column} {where}.{content_key}")
        if not content.strip():
            raise BadField(column, f"{where}.{content_key}: empty {role} message")
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
            raise BadField("completion", "a message-list completion must be exactly one assistant message")
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
        raise BadField(CONTEXTS_COLUMN, "expected a list of strings")
    for index, item in enumerate(value):
        check_encodable(item, f"{CONTEXTS_COLUMN}[{index}]")
    return tuple(value)


def parse_row(
    number: int, row: Mapping[str, Any], fmt: str, columns: DatasetColumns, require_ground_truth: bool
) -> ParsedRow:
    """One raw row as ``(id, conversation turns, plain text, contexts)``; :class:`BadField` if unusable."""
    raw_id = row.get(ID_COLUMN)
    example_id = str(raw_id) if raw_id is not None else f"row-{number}"
    check_encodable(example_id, ID_COLUMN)  # the id is written to every output row
    contexts = _contexts(row)
    if fmt == "text":
        return example_id, (), _text_field(row, "text", required=True), contexts
    column = dict(FORMAT_MARKERS).get(fmt, columns.question_column)
    turns = _with_system_override(
        _TURN_BUILDERS[fmt](row, columns, require_ground_truth), columns.system_prompt_override_text
    )
    if not any(turn["role"] == "user" for turn in turns):
        raise BadField(column, "the conversation has no user turn")
    if require_ground_truth and turns[-1]["role"] != "assistant":
        raise BadField(
            column, f"the conversation ends on a {turns[-1]['role']} turn, not an assistant answer"
        )
    return example_id, tuple(turns), None, contexts
