"""The metric settings: the new ``[evaluator]`` keys and their errors, ``auto`` choices per split,
SQuAD-style exact match, and the definitions ``describe_metrics`` reports."""

from __future__ import annotations

import importlib.util
import re
import string

import pytest

from ft_assets.config import ConfigError, EvaluatorConfig, build_settings
from ft_assets.config_sections import OFFLINE_METRICS
from ft_assets.phases.metric_definitions import describe_metrics
from ft_assets.phases.metrics import MetricsError, preflight, score_rows

ALL_OFFLINE = list(OFFLINE_METRICS)


def _rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [
        {"id": f"r{i}", "user_prompt": "Q?", "assistant_response": response, "ground_truth": reference}
        for i, (reference, response) in enumerate(pairs)
    ]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("evaluator", "bleu_tokenize", "moses"),
        ("evaluator", "rouge_stemmer", "sometimes"),
        ("evaluator", "exact_match_normalization", "lower"),
        ("evaluator", "leakage", "loud"),
        ("evaluator.judge", "samples", 0),
    ],
)
def test_a_bad_value_names_the_section_and_the_key(section: str, key: str, value: object) -> None:
    data: dict = {"evaluator": {}}
    (data["evaluator"] if section == "evaluator" else data["evaluator"].setdefault("judge", {}))[key] = value
    with pytest.raises(ConfigError, match=rf"my.toml: \[{re.escape(section)}\] {key}: .*\(got {value!r}\)"):
        build_settings(data, source="my.toml")


def test_the_new_keys_default_and_accept_their_values() -> None:
    default = EvaluatorConfig()
    assert (default.bleu_tokenize, default.rouge_stemmer, default.exact_match_normalization) == (
        "auto",
        "auto",
        "strip",
    )
    assert (default.leakage, default.judge.samples) == ("warn", 1)
    settings = build_settings(
        {
            "evaluator": {
                "bleu_tokenize": "zh",
                "rouge_stemmer": False,
                "exact_match_normalization": "squad",
                "leakage": "error",
                "judge": {"samples": 3},
            }
        }
    )
    evaluator = settings.evaluator
    assert (evaluator.bleu_tokenize, evaluator.rouge_stemmer, evaluator.judge.samples) == ("zh", False, 3)


def test_ja_mecab_is_refused_by_preflight_unless_mecab_is_installed() -> None:
    config = EvaluatorConfig(metrics=["bleu_score"], primary_metric="bleu_score", bleu_tokenize="ja-mecab")
    installed = all(importlib.util.find_spec(name) for name in ("MeCab", "ipadic"))
    if installed:
        preflight(config, api_key=None, has_ground_truth=True, has_contexts=False)
        return
    with pytest.raises(MetricsError, match=r"evaluator.bleu_tokenize = 'ja-mecab' needs MeCab.*'char'"):
        preflight(config, api_key=None, has_ground_truth=True, has_contexts=False)
    # Without BLEU in the metrics the tokenizer is never used, so it is no problem.
    preflight(
        EvaluatorConfig(metrics=["exact_match"], primary_metric="exact_match", bleu_tokenize="ja-mecab"),
        api_key=None,
        has_ground_truth=True,
        has_contexts=False,
    )


@pytest.mark.parametrize(
    ("references", "tokenizer", "stemming"),
    [
        (["東京に住んでいます", "大阪は大きいです"], "char", "off"),
        (["北京是中国的首都", "上海很大"], "zh", "off"),
        (["Москва", "Санкт-Петербург"], "13a", "off"),
        (["The cat sat.", "Running fast."], "13a", "on"),
        # One Japanese answer among many English ones: still an English split.
        (["The capital of France is Paris."] * 9 + ["東京"], "13a", "on"),
    ],
)
def test_auto_choices_are_made_per_split_and_reported(
    references: list[str], tokenizer: str, stemming: str
) -> None:
    config = EvaluatorConfig(metrics=["bleu_score", "rouge_score"], primary_metric="rouge_score")
    described = describe_metrics(config, _rows([(ref, ref) for ref in references]))
    assert described["bleu_score"]["tokenizer"].startswith(f"sacrebleu {tokenizer} (auto: ")
    assert f"Porter stemming of ASCII words {stemming} (auto: " in described["rouge_score"]["tokenizer"]


def test_auto_tokenizer_scores_japanese_by_character() -> None:
    pairs = [("東京に住んでいます", "東京に住んでいる")]
    config = EvaluatorConfig(metrics=["bleu_score"], primary_metric="bleu_score")
    auto = score_rows(_rows(pairs), config).per_row["bleu_score"][0]
    char = score_rows(_rows(pairs), config.model_copy(update={"bleu_tokenize": "char"})).per_row[
        "bleu_score"
    ][0]
    word = score_rows(_rows(pairs), config.model_copy(update={"bleu_tokenize": "13a"})).per_row["bleu_score"][
        0
    ]
    assert auto == char > 0.5 and word == 0.0  # 13a sees one token per sentence


def _squad_normalize_answer(s: str) -> str:
    """SQuAD v1.1's evaluate-v1.1.py normalize_answer, verbatim."""

    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


SQUAD_ASCII = [
    ("The Beatles", "beatles"),
    ("Paris.", "paris"),
    ("an apple", "Apple!"),
    ("U.S.A.", "USA"),
    ("$100", "100"),
    ("the theory", "theory"),
    ("A  B", "a-b"),
    ("there", "here"),
    ("1,000", "1000"),
    ("Mr. Smith's car", "mr smiths car"),
]
SQUAD_UNICODE = [
    ("東京です。", "東京です", 1.0),  # CJK full stop is punctuation
    ("「東京」", "東京", 1.0),
    ("東京", "大阪", 0.0),  # letters of every script are kept
    ("¿Dónde está?", "dónde está", 1.0),
    ("МОСКВА", "москва", 1.0),
    ("Straße", "STRASSE", 1.0),  # casefold
    ("«Paris»", "Paris", 1.0),
    ("The Москва", "москва", 1.0),  # English articles only
    ("!!!", "?", 1.0),  # both normalise to nothing, as in SQuAD
]


def test_squad_exact_match_agrees_with_squad_on_ascii_and_keeps_other_scripts() -> None:
    config = EvaluatorConfig(
        metrics=["exact_match"], primary_metric="exact_match", exact_match_normalization="squad"
    )
    scores = score_rows(_rows(SQUAD_ASCII), config).per_row["exact_match"]
    expected = [float(_squad_normalize_answer(a) == _squad_normalize_answer(b)) for a, b in SQUAD_ASCII]
    assert scores == expected and 0.0 in expected and 1.0 in expected
    unicode_scores = score_rows(_rows([(a, b) for a, b, _ in SQUAD_UNICODE]), config).per_row["exact_match"]
    assert unicode_scores == [want for _, _, want in SQUAD_UNICODE]
    strict = score_rows(
        _rows(SQUAD_ASCII), EvaluatorConfig(metrics=["exact_match"], primary_metric="exact_match")
    )
    assert strict.per_row["exact_match"] == [0.0] * len(SQUAD_ASCII)  # strip mode folds none of this


def test_every_metric_is_described_with_its_definition() -> None:
    config = EvaluatorConfig(
        metrics=ALL_OFFLINE, primary_metric="rouge_score", exact_match_normalization="squad"
    )
    described = describe_metrics(config)
    assert list(described) == ALL_OFFLINE
    for name, definition in described.items():
        assert set(definition) == {"library", "variant", "tokenizer", "normalisation", "aggregation"}, name
        assert all(isinstance(value, str) and value for value in definition.values()), name
    assert re.fullmatch(r"sacrebleu \d+\.\d+\.\d+", described["bleu_score"]["library"])
    assert "effective order" in described["bleu_score"]["variant"]
    assert "corpus_bleu" in described["bleu_score"]["aggregation"]
    assert "sacrebleu auto" in described["bleu_score"]["tokenizer"]  # unresolved without rows
    assert described["rouge_score"]["library"].startswith("rouge-score 0.1.2")
    assert "SQuAD" in described["exact_match"]["normalisation"]
    assert "corpus_chrf" in described["chrf_score"]["aggregation"]
    assert described["non_llm_string_similarity"]["library"].startswith("rapidfuzz ")
    fixed = describe_metrics(config.model_copy(update={"bleu_tokenize": "intl", "rouge_stemmer": True}), [])
    assert fixed["bleu_score"]["tokenizer"] == "sacrebleu intl"
    assert fixed["rouge_score"]["tokenizer"].endswith("Porter stemming of ASCII words on")
