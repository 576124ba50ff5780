"""Reports: JSON summary (NaN -> null, deltas, cost), the Excel workbook read back with openpyxl, the
markdown preview, and atomic replacement of the report directory."""

from __future__ import annotations

import json
import math
import statistics
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest
from openpyxl import load_workbook

from ft_assets.phases import report_workbook, reports
from ft_assets.phases.metrics import JudgeUsage, MetricScores
from ft_assets.phases.reports import REPORT_XLSX, SUMMARY_JSON, write_report

NAN = math.nan
CHART_NS = "{http://schemas.openxmlformats.org/drawingml/2006/chart}"


def _rows(responses: list[str], ids: list[str]) -> list[dict]:
    return [
        {
            "id": row_id,
            "system_prompt": "Be brief." if row_id == "a" else None,
            "user_prompt": f"Question {row_id}?",
            "assistant_response": response,
            "ground_truth": f"Answer {row_id}",
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "finish_reason": "eos",
        }
        for row_id, response in zip(ids, responses, strict=True)
    ]


@pytest.fixture
def fine_tuned() -> tuple[list[dict], MetricScores]:
    rows = _rows(["Answer a", "Answer b!", "oops \x00\x1b control"], ["a", "b", "c"])
    scores = MetricScores(
        per_row={"rouge_score": [1.0, 0.8, NAN], "exact_match": [1.0, 0.0, 0.0]},
        errors={
            "rouge_score": [None, None, "TimeoutError: judge too slow"],
            "exact_match": [None, None, None],
        },
        judge_usage=JudgeUsage(input_tokens=1200, output_tokens=300, requests=7, cost_usd=0.00036),
        durations_s={"rouge_score": 0.5, "exact_match": 0.01},
    )
    return rows, scores


@pytest.fixture
def base() -> tuple[list[dict], MetricScores]:
    # Deliberately in another order: base rows are matched by id, not position.
    rows = _rows(["Base c", "Base a", "Base b"], ["c", "a", "b"])
    scores = MetricScores(
        per_row={"rouge_score": [0.1, 0.5, 0.3], "exact_match": [0.0, 0.0, 0.0]},
        errors={"rouge_score": [None, None, None], "exact_match": [None, None, None]},
        judge_usage=JudgeUsage(input_tokens=100, output_tokens=50, requests=2, cost_usd=0.0001),
    )
    return rows, scores


def _write(out_dir: Path, fine_tuned, base=None, **overrides) -> reports.ReportPaths:
    rows, scores = fine_tuned
    kwargs = {
        "rows": rows,
        "scores": scores,
        "baseline_rows": base[0] if base else None,
        "baseline_scores": base[1] if base else None,
        "primary_metric": "rouge_score",
        "provenance": {
            "base_model_hash": "sha256:abc",
            "dataset_hashes": {"test": "sha256:def"},
            "path": out_dir,
        },
        "durations_s": {"evaluation": 1.25},
        **overrides,
    }
    return write_report(out_dir, **kwargs)


def _bar_chart_series(xlsx: Path) -> list[int]:
    """The number of series of each bar chart in the workbook, read from the file itself."""
    with zipfile.ZipFile(xlsx) as archive:
        charts = sorted(name for name in archive.namelist() if name.startswith("xl/charts/chart"))
        roots = [ElementTree.fromstring(archive.read(name)) for name in charts]
    return [len(bar.findall(f"{CHART_NS}ser")) for root in roots for bar in root.iter(f"{CHART_NS}barChart")]


def _reject_nan(constant: str) -> None:
    raise AssertionError(f"invalid JSON constant {constant}")


def test_json_summary_has_stats_deltas_usage_and_null_for_nan(tmp_path, fine_tuned, base) -> None:
    paths = _write(tmp_path / "report", fine_tuned, base)
    document = json.loads(paths.json_path.read_text(), parse_constant=_reject_nan)

    assert paths.json_path == tmp_path / "report" / SUMMARY_JSON
    assert document["primary_metric"] == "rouge_score" and document["row_count"] == 3
    ft_rouge = document["metrics"]["fine_tuned"]["rouge_score"]
    assert ft_rouge["mean"] == pytest.approx(statistics.fmean([1.0, 0.8]))
    assert (ft_rouge["count"], ft_rouge["nan_count"]) == (2, 1)
    base_mean = statistics.fmean([0.1, 0.5, 0.3])
    # Paired: row c failed on the fine-tuned side, so the delta is over a and b only (1.0-0.5, 0.8-0.3).
    paired_delta = statistics.fmean([1.0 - 0.5, 0.8 - 0.3])
    assert document["metrics"]["delta"]["rouge_score"] == pytest.approx(paired_delta)
    primary = document["primary"]
    assert (primary["fine_tuned_mean"], primary["base_mean"]) == pytest.approx((ft_rouge["mean"], base_mean))
    assert (primary["delta"], primary["pairs"]) == (pytest.approx(paired_delta), 2)
    # both pairs have the same delta: a zero-width interval at that delta
    assert primary["delta_ci_low"] == pytest.approx(paired_delta) == primary["delta_ci_high"]
    assert primary["fine_tuned_ci_low"] <= ft_rouge["mean"] <= primary["fine_tuned_ci_high"]
    assert document["comparison"]["rouge_score"]["unpaired_ids"] == ["c"]
    assert document["failed_rows"]["fine_tuned"] == {"rouge_score": ["c"], "exact_match": []}
    assert document["judge_usage"]["fine_tuned"] == {
        "input_tokens": 1200,
        "output_tokens": 300,
        "requests": 7,
        "cost_usd": 0.00036,
    }
    assert document["judge_usage"]["total"]["input_tokens"] == 1300
    assert document["judge_usage"]["total"]["cost_usd"] == pytest.approx(0.00046)
    assert document["provenance"]["dataset_hashes"] == {"test": "sha256:def"}
    assert document["provenance"]["path"] == str(tmp_path / "report")
    assert document["durations_s"] == {"evaluation": 1.25}
    assert document["metric_durations_s"]["fine_tuned"] == {"rouge_score": 0.5, "exact_match": 0.01}


def test_all_nan_metric_is_null_not_nan(tmp_path, fine_tuned) -> None:
    rows, scores = fine_tuned
    scores.per_row["rouge_score"] = [NAN, NAN, NAN]
    paths = _write(tmp_path / "report", (rows, scores))
    text = paths.json_path.read_text()
    assert "NaN" not in text
    document = json.loads(text, parse_constant=_reject_nan)
    assert document["metrics"]["fine_tuned"]["rouge_score"]["mean"] is None
    assert document["metrics"]["base"] is None and document["metrics"]["delta"] is None


def test_workbook_sheets_per_sample_rows_and_chart(tmp_path, fine_tuned, base) -> None:
    paths = _write(tmp_path / "report", fine_tuned, base)
    workbook = load_workbook(paths.xlsx_path)
    assert workbook.sheetnames == ["Summary", "Per-sample", "Comparison"]

    sheet = workbook["Per-sample"]
    table = list(sheet.iter_rows(values_only=True))
    header = table[0]
    assert header == (
        "id",
        "system_prompt",
        "user_prompt",
        "ground_truth",
        "response",
        "base_response",
        "rouge_score",
        "exact_match",
        "base rouge_score",
        "base exact_match",
        "errors",
    )
    records = [dict(zip(header, values, strict=True)) for values in table[1:]]
    assert [r["id"] for r in records] == ["a", "b", "c"]
    assert [r["base_response"] for r in records] == ["Base a", "Base b", "Base c"]
    assert [r["base rouge_score"] for r in records] == [0.5, 0.3, 0.1]
    assert records[0]["system_prompt"] == "Be brief."
    assert records[1]["rouge_score"] == pytest.approx(0.8)
    assert records[2]["rouge_score"] is None  # NaN -> empty cell
    assert records[2]["errors"] == "rouge_score: TimeoutError: judge too slow"
    assert records[2]["response"] == "oops  control"  # control characters Excel cannot store are dropped

    comparison = list(workbook["Comparison"].iter_rows(values_only=True))
    assert comparison[0] == (
        "metric",
        "base mean",
        "fine-tuned mean",
        "delta",
        "delta ci_low",
        "delta ci_high",
        "pairs",
    )
    rouge = next(row for row in comparison if row[0] == "rouge_score")
    assert rouge[1:] == pytest.approx((0.3, 0.9, 0.5, 0.5, 0.5, 2))  # paired delta over a and b

    summary_values = [row[:2] for row in workbook["Summary"].iter_rows(values_only=True)]
    assert ("Primary metric", "rouge_score") in summary_values
    assert ("Judge input tokens", 1300) in summary_values

    assert _bar_chart_series(paths.xlsx_path) == [2]  # one bar chart: base and fine-tuned


def test_without_baseline_no_base_columns_and_a_single_series(tmp_path, fine_tuned) -> None:
    paths = _write(tmp_path / "report", fine_tuned)
    header = next(load_workbook(paths.xlsx_path)["Per-sample"].iter_rows(values_only=True))
    assert not any(str(title).startswith("base") for title in header)
    assert _bar_chart_series(paths.xlsx_path) == [1]


def test_markdown_preview_puts_the_primary_metric_first(tmp_path, fine_tuned, base) -> None:
    markdown = _write(tmp_path / "report", fine_tuned, base).markdown
    lines = markdown.splitlines()
    assert lines[0].startswith("| metric |")
    assert lines[2].startswith("| **rouge_score** (primary) | 0.9000 [0.8000, 1.0000] | 0.3000 [")
    assert lines[2].endswith("| +0.5000 [+0.5000, +0.5000] | 2 | 2 | 1 |")  # paired: a and b
    assert lines[3].startswith("| exact_match | 0.3333 [0.0000, 1.0000] | 0.0000 [0.0000, 0.0000] |")
    assert lines[3].endswith("| 3 | 3 | 0 |")
    assert "1300 input + 350 output tokens in 9 requests, $0.0005" in markdown


def test_long_cells_are_truncated_to_what_excel_keeps(tmp_path, fine_tuned) -> None:
    rows, scores = fine_tuned
    rows[0]["assistant_response"] = "x" * 40_000
    paths = _write(tmp_path / "report", (rows, scores))
    response = load_workbook(paths.xlsx_path)["Per-sample"]["E2"].value
    assert len(response) == 32_767 and response.endswith("[truncated]")


def test_rewrite_replaces_the_whole_directory_and_leaves_no_temporaries(tmp_path, fine_tuned) -> None:
    out_dir = tmp_path / "report"
    out_dir.mkdir()
    (out_dir / "stale.txt").write_text("from an older run")
    _write(out_dir, fine_tuned)
    assert sorted(path.name for path in out_dir.iterdir()) == [REPORT_XLSX, SUMMARY_JSON]
    assert [path.name for path in tmp_path.iterdir()] == ["report"]


def test_a_failed_write_keeps_the_previous_report(tmp_path, fine_tuned, monkeypatch) -> None:
    out_dir = tmp_path / "report"
    _write(out_dir, fine_tuned)
    before = (out_dir / SUMMARY_JSON).read_text()

    def broken_workbook(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report_workbook, "write_workbook", broken_workbook)
    rows, scores = fine_tuned
    scores.per_row["exact_match"] = [0.0, 0.0, 0.0]
    with pytest.raises(OSError, match="disk full"):
        _write(out_dir, (rows, scores))
    assert (out_dir / SUMMARY_JSON).read_text() == before
    assert [path.name for path in tmp_path.iterdir()] == ["report"]


def test_inconsistent_inputs_are_rejected_with_the_metric_named(tmp_path, fine_tuned, base) -> None:
    rows, scores = fine_tuned
    with pytest.raises(ValueError, match="'rouge_score' has 3 scores for 2 rows"):
        _write(tmp_path / "r1", (rows[:2], scores))
    with pytest.raises(ValueError, match="primary metric 'bleu_score' was not scored"):
        _write(tmp_path / "r2", fine_tuned, primary_metric="bleu_score")
    with pytest.raises(ValueError, match="together"):
        _write(tmp_path / "r3", fine_tuned, baseline_rows=base[0])
    assert not any(tmp_path.iterdir())


DEFINITIONS = {
    "rouge_score": {"library": "rouge-score 0.1.2", "variant": "ROUGE-L F", "tokenizer": "Unicode words"},
    "exact_match": {"library": "ragas ExactMatch", "normalisation": "strip both sides"},
}
CORPUS = {"fine_tuned": {"corpus_bleu": 0.42}, "base": {"corpus_bleu": 0.17}}


def test_definitions_corpus_scores_and_intervals_in_json_workbook_and_preview(
    tmp_path, fine_tuned, base
) -> None:
    paths = _write(
        tmp_path / "report",
        fine_tuned,
        base,
        definitions=DEFINITIONS,
        corpus_scores=CORPUS,
        bootstrap=reports.Bootstrap(resamples=500, seed=3, confidence=0.9),
    )
    document = json.loads(paths.json_path.read_text(), parse_constant=_reject_nan)
    assert document["definitions"] == DEFINITIONS
    assert document["corpus_scores"] == CORPUS
    assert document["bootstrap"] == {"resamples": 500, "seed": 3, "confidence": 0.9}
    exact = document["metrics"]["fine_tuned"]["exact_match"]
    assert exact["ci_low"] <= exact["mean"] <= exact["ci_high"] and exact["ci_high"] > exact["ci_low"]
    assert (
        document["metrics"]["base"]["exact_match"]["ci_low"]
        == 0.0
        == document["metrics"]["base"]["exact_match"]["ci_high"]
    )
    assert set(document["comparison"]["exact_match"]) >= {"delta", "delta_ci_low", "delta_ci_high", "pairs"}

    summary = [row for row in load_workbook(paths.xlsx_path)["Summary"].iter_rows(values_only=True)]
    header = next(row for row in summary if row[0] == "metric")
    rouge = dict(zip(header, next(row for row in summary if row[0] == "rouge_score"), strict=True))
    assert rouge["fine-tuned ci_low"] == pytest.approx(
        document["metrics"]["fine_tuned"]["rouge_score"]["ci_low"]
    )
    assert rouge["delta (paired)"] == pytest.approx(0.5) and rouge["pairs"] == 2
    assert rouge["delta ci_low"] == pytest.approx(0.5) == rouge["delta ci_high"]
    definition_header = next(row for row in summary if row[0] == "definition")
    assert definition_header[:5] == ("definition", "library", "variant", "tokenizer", "normalisation")
    assert ("rouge_score", "rouge-score 0.1.2", "ROUGE-L F", "Unicode words", None) in [
        r[:5] for r in summary
    ]
    assert ("corpus_bleu", 0.42, 0.17) in [row[:3] for row in summary]

    markdown = paths.markdown
    assert "fine-tuned mean [90% CI]" in markdown
    assert (
        "- `rouge_score`: library: rouge-score 0.1.2; variant: ROUGE-L F; tokenizer: Unicode words"
        in markdown
    )
    assert "| corpus_bleu | 0.4200 | 0.1700 |" in markdown
    assert "500 resamples, seed 3" in markdown


def test_preview_shows_five_sample_rows_side_by_side_escaped(tmp_path) -> None:
    ids = [f"行-{index}" for index in range(7)]
    rows = _rows([f"réponse | {index}\nligne 2 <b>x</b>" for index in range(7)], ids)
    base_rows = _rows([f"base {index}" for index in range(7)], ids)[::-1]  # matched by id, not position
    scores = MetricScores(per_row={"rouge_score": [0.5] * 7}, errors={"rouge_score": [None] * 7})
    markdown = _write(tmp_path / "report", (rows, scores), (base_rows, scores)).markdown
    start = markdown.index("**Sample rows** (first 5 of 7)")
    table = markdown[start:].splitlines()[2:]
    assert table[0] == "| id | prompt | base answer | fine-tuned answer | reference |"
    assert len(table) == 2 + 5
    assert table[2] == (
        "| 行-0 | Question 行-0? | base 0 | réponse \\| 0 ligne 2 &lt;b&gt;x&lt;/b&gt; | Answer 行-0 |"
    )
    assert table[-1].startswith("| 行-4 |")


def test_judge_spread_is_reported_when_the_judge_sampled_each_row(tmp_path, fine_tuned) -> None:
    rows, scores = fine_tuned
    scores.judge_samples = 3
    scores.per_row_std = {"rouge_score": [0.1, 0.3, NAN]}
    scores.sample_std = {"rouge_score": 0.2}
    paths = _write(tmp_path / "report", (rows, scores))
    document = json.loads(paths.json_path.read_text())
    assert document["judge_spread"] == {"samples": 3, "fine_tuned": {"rouge_score": 0.2}, "base": None}
    header, *body = list(load_workbook(paths.xlsx_path)["Per-sample"].iter_rows(values_only=True))
    column = header.index("rouge_score std (3 judge samples)")
    assert [line[column] for line in body] == [pytest.approx(0.1), pytest.approx(0.3), None]
    assert "Judge spread over 3 samples per row (mean per-row std): rouge_score 0.2000" in paths.markdown


def test_demo_table_prints_means_and_paired_delta_with_intervals(tmp_path, fine_tuned, base) -> None:
    from ft_assets.report_demo import comparison_table

    paths = _write(tmp_path / "report", fine_tuned, base)
    lines = comparison_table(paths.json_path).splitlines()
    assert lines[0].split() == ["metric", "base", "fine-tuned", "delta", "(paired)"]
    rouge = next(line for line in lines if line.startswith("rouge_score"))
    base_low, base_high = (
        json.loads(paths.json_path.read_text())["metrics"]["base"]["rouge_score"][key]
        for key in ("ci_low", "ci_high")
    )
    assert f"0.300 [{base_low:.3f}, {base_high:.3f}]" in rouge
    assert rouge.endswith("0.500 [0.500, 0.500]")  # paired delta of a and b
    assert lines[-1].startswith("[low, high]: 95% paired bootstrap interval")


def test_per_row_scores_are_in_the_json_and_read_back_for_the_primary_metric(
    tmp_path, fine_tuned, base
) -> None:
    paths = _write(tmp_path / "report", fine_tuned, base)
    document = json.loads(paths.json_path.read_text(), parse_constant=_reject_nan)
    assert document["per_row"]["fine_tuned"] == {
        "ids": ["a", "b", "c"],
        "scores": {"rouge_score": [1.0, 0.8, None], "exact_match": [1.0, 0.0, 0.0]},
    }
    assert document["per_row"]["base"]["ids"] == ["c", "a", "b"]  # each side in its own row order
    assert document["per_row"]["base"]["scores"]["rouge_score"] == [0.1, 0.5, 0.3]

    result = reports.primary_metric_result(paths.json_path)
    assert result["metric"] == "rouge_score"
    assert (result["ids"], result["scores"]) == (["a", "b", "c"], [1.0, 0.8, None])
    assert result["summary"]["mean"] == pytest.approx(0.9) and result["summary"]["count"] == 2
    paired = document["comparison"]["rouge_score"]
    assert result["vs_base"]["delta_ci_low"] == paired["delta_ci_low"] and result["vs_base"]["pairs"] == 2

    alone = reports.primary_metric_result(_write(tmp_path / "alone", fine_tuned).json_path)
    assert (
        alone["vs_base"] is None
        and _write(tmp_path / "alone", fine_tuned).document["per_row"]["base"] is None
    )


def test_a_report_without_per_row_scores_names_the_missing_key(tmp_path, fine_tuned) -> None:
    paths = _write(tmp_path / "report", fine_tuned, primary_metric="exact_match")
    document = json.loads(paths.json_path.read_text())
    document["metrics"]["fine_tuned"]["exact_match"]["mean"] = None  # a metric no row scored
    del document["per_row"]
    paths.json_path.write_text(json.dumps(document))
    with pytest.raises(reports.ReportError, match=r"evaluation_summary.json: .* no 'per_row'"):
        reports.primary_metric_result(paths.json_path)
    document["per_row"] = {"fine_tuned": {"ids": ["a", "b", "c"], "scores": {"exact_match": [1.0, 0, None]}}}
    paths.json_path.write_text(json.dumps(document))
    assert math.isnan(reports.primary_metric_result(paths.json_path)["summary"]["mean"])  # null -> NaN
    with pytest.raises(reports.ReportError, match="cannot read"):
        reports.primary_metric_result(tmp_path / "nowhere.json")
