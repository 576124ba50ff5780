"""Every offline metric, scored through ``score_rows`` (the real ragas path), against its reference
library called directly on a table of pairs in many scripts: sacrebleu (sentence and corpus BLEU with
the same tokenizer, sentence and corpus chrF), rouge_score's RougeScorer (with the same tokenizer
object), rapidfuzz, and plain ``==`` / ``in`` after the documented normalisation (NFC, surrounding
whitespace removed). Also: identical texts score exactly 1 on every similarity metric in any script."""

from __future__ import annotations

import unicodedata

import pytest
import sacrebleu
from rapidfuzz.distance import Levenshtein
from rouge_score import rouge_scorer, tokenizers

from ft_assets.config import EvaluatorConfig
from ft_assets.config_sections import OFFLINE_METRICS
from ft_assets.phases.metric_definitions import corpus_scores
from ft_assets.phases.metrics import score_rows
from ft_assets.phases.text_metrics import UnicodeWordTokenizer

LONG_REFERENCE = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch "
    "in the late afternoon sun, and the children play by the river."
)
LONG_RESPONSE = (
    "The quick brown fox jumped over a lazy dog as the farmer watched from his porch in the "
    "afternoon sun, while children played near the river."
)
#: (reference, response)
PAIRS = [
    ("Yes", "Yes"),
    ("No", "Yes"),
    ("42", "42"),
    ("42", "43"),
    ("3.14159", "3.14"),
    ("The answer is 1,000,000 dollars.", "1000000 dollars"),
    ("東京に住んでいます", "東京に住んでいます"),
    ("東京に住んでいます", "大阪に住んでいます"),
    ("東京", "東京都"),
    ("北京是中国的首都。", "北京是中国的首都。"),
    ("北京是中国的首都。", "上海是中国最大的城市。"),
    ("서울은 한국의 수도입니다", "서울은 한국의 수도입니다"),
    ("서울은 한국의 수도입니다", "부산은 한국의 항구 도시입니다"),
    ("Москва", "Москва"),
    ("Москва — столица России.", "Столица России — Москва."),
    ("Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "Η Αθήνα είναι πρωτεύουσα."),
    ("Ελληνικά", "ελληνικά"),
    ("Crème brûlée à la française", "Creme brulee a la francaise"),
    (unicodedata.normalize("NFD", "café crème"), "café crème"),
    ("สวัสดีครับ", "สวัสดีครับ"),
    ("नमस्ते दुनिया", "नमस्ते दुनिया"),
    ("Mixed 日本語 and English", "Mixed 日本語 and english"),
    ("🎉🎉", "🎉🎉"),
    ("I love it ❤️", "I love it"),
    ("...", "..."),
    ("?!", "!?"),
    ("—", "–"),
    ("Paris. ", "Paris."),
    ("Paris.", "  Paris.\n"),
    ("Completely different reference text.", ""),
    ("Some reference", "   "),
    (LONG_REFERENCE, LONG_RESPONSE),
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("The cat sat on the mat. The dog ran in the park.", "The dog ran in the park. The cat sat on the mat."),
    ("Running runners ran quickly.", "The answer is: Running runners ran quickly. Anything else?"),
    ('{"name": "Chloe Khan", "age": 75}', '{"name": "Chloe Khan", "age": 57}'),
]
METRICS = [name for name in OFFLINE_METRICS if name != "semantic_similarity"]  # the text metrics
BLEU_TOKENIZERS = ["13a", "intl", "zh", "char", "none"]


def _nfc_strip(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def _rows(pairs: list[tuple[str, str]]) -> list[dict]:
    return [
        {"id": f"pair-{i}", "user_prompt": "Q?", "assistant_response": response, "ground_truth": reference}
        for i, (reference, response) in enumerate(pairs)
    ]


def _config(**evaluator: object) -> EvaluatorConfig:
    return EvaluatorConfig(metrics=METRICS, primary_metric="rouge_score", **evaluator)


def _expected_rouge(reference: str, response: str, stem: bool) -> float:
    tokenizer = UnicodeWordTokenizer(stem=stem)
    reference, response = _nfc_strip(reference), _nfc_strip(response)
    if not tokenizer.tokenize(reference) and not tokenizer.tokenize(response):
        return float(reference == response)  # the documented rule for a pair without tokens
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)
    return scorer.score(reference, response)["rougeL"].fmeasure


def test_the_table_is_large_and_covers_the_required_cases() -> None:
    assert len(PAIRS) >= 30
    texts = " ".join(text for pair in PAIRS for text in pair)
    for needle in ("Yes", "42", "東京", "北京", "서울", "Москва", "Αθήνα", "brûlée", "🎉", "...", "Paris. "):
        assert needle in texts
    assert any(response == "" for _, response in PAIRS) and any(len(ref) > 100 for ref, _ in PAIRS)


@pytest.mark.parametrize("tokenize", BLEU_TOKENIZERS)
def test_every_offline_metric_matches_its_reference_library(tokenize: str) -> None:
    rows = _rows(PAIRS)
    config = _config(bleu_tokenize=tokenize, rouge_stemmer=False)
    scores = score_rows(rows, config)

    prepared = [(_nfc_strip(ref), _nfc_strip(resp)) for ref, resp in PAIRS]
    expected = {
        "bleu_score": [
            sacrebleu.sentence_bleu(resp, [ref], tokenize=tokenize, use_effective_order=True).score / 100
            for ref, resp in prepared
        ],
        "rouge_score": [_expected_rouge(ref, resp, stem=False) for ref, resp in PAIRS],
        "chrf_score": [sacrebleu.sentence_chrf(resp, [ref]).score / 100 for ref, resp in prepared],
        "exact_match": [float(ref == resp) for ref, resp in prepared],
        "string_presence": [float(ref in resp) for ref, resp in prepared],
        "non_llm_string_similarity": [Levenshtein.normalized_similarity(ref, resp) for ref, resp in prepared],
    }
    for name, values in expected.items():
        assert scores.errors[name] == [None] * len(PAIRS), name
        for index, (got, want) in enumerate(zip(scores.per_row[name], values, strict=True)):
            assert got == pytest.approx(want, abs=1e-9), (name, tokenize, PAIRS[index])

    corpus = corpus_scores(rows, config)
    hypotheses, references = [resp for _, resp in prepared], [[ref for ref, _ in prepared]]
    want_bleu = sacrebleu.corpus_bleu(hypotheses, references, tokenize=tokenize, use_effective_order=True)
    assert corpus["corpus_bleu"] == pytest.approx(want_bleu.score / 100, abs=1e-9)
    assert corpus["corpus_chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(hypotheses, references).score / 100, abs=1e-9
    )


def test_corpus_bleu_is_one_corpus_score_not_a_mean_of_row_scores() -> None:
    pairs = [("Yes", "Yes"), (LONG_REFERENCE, LONG_RESPONSE)]
    config = _config(bleu_tokenize="13a")
    rows_mean = sum(score_rows(_rows(pairs), config).per_row["bleu_score"]) / 2
    corpus = corpus_scores(_rows(pairs), config)["corpus_bleu"]
    want = sacrebleu.corpus_bleu([LONG_RESPONSE, "Yes"], [[LONG_REFERENCE, "Yes"]], use_effective_order=True)
    assert corpus == pytest.approx(want.score / 100, abs=1e-9)
    assert rows_mean - corpus > 0.2  # the mean rewards the one-word answer far more


def test_rouge_with_stemming_matches_rouge_score_on_english_and_its_own_tokenizer() -> None:
    english = [(ref, resp) for ref, resp in PAIRS if (ref + resp).isascii()]
    scores = score_rows(_rows(english), _config(rouge_stemmer=True))
    default = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # rouge_score's own tokenizer
    for (ref, resp), got in zip(english, scores.per_row["rouge_score"], strict=True):
        assert got == pytest.approx(_expected_rouge(ref, resp, stem=True), abs=1e-9)
        if UnicodeWordTokenizer(stem=True).tokenize(ref):  # ASCII text: the same tokens as rouge_score's
            assert got == pytest.approx(default.score(ref, resp)["rougeL"].fmeasure, abs=1e-9), (ref, resp)


def test_the_unicode_tokenizer_agrees_with_rouge_score_on_ascii_and_keeps_other_scripts() -> None:
    ours, theirs = UnicodeWordTokenizer(stem=True), tokenizers.DefaultTokenizer(use_stemmer=True)
    for text in [
        "Running runners ran quickly.",
        "don't stop: 3.14 & 42%",
        "The U.S.A. in 1999",
        "tested 2024models",
    ]:
        assert ours.tokenize(text) == theirs.tokenize(text)
    assert theirs.tokenize("Москва") == []  # why rouge_score's default tokenizer cannot be used
    plain = UnicodeWordTokenizer(stem=False)
    assert plain.tokenize("Москва — СТОЛИЦА") == ["москва", "столица"]
    assert plain.tokenize("東京に住む") == ["東", "京", "に", "住", "む"]
    assert plain.tokenize("Crème Brûlée, ΑΘΗΝΑ") == ["crème", "brûlée", "αθηνα"]
    assert plain.tokenize("서울은 한국의") == ["서울은", "한국의"]
    assert plain.tokenize("ok 👍 🎉") == ["ok", "👍", "🎉"]
    assert plain.tokenize("?! ... —") == []
    assert UnicodeWordTokenizer(stem=True).tokenize("running москвы") == ["run", "москвы"]  # ASCII only


IDENTICAL = [
    ("Yes", "Yes"),
    ("42", "42"),
    ("東京に住んでいます", "東京に住んでいます"),
    ("Москва", "Москва"),
    ("Paris. ", "Paris."),
    ("北京是中国的首都。", "北京是中国的首都。"),
    ("서울은 한국의 수도입니다", "서울은 한국의 수도입니다"),
    ("Η Αθήνα", "Η Αθήνα"),
    (unicodedata.normalize("NFD", "Crème brûlée"), "Crème brûlée"),
    ("สวัสดีครับ", "สวัสดีครับ"),
    ("🎉", "🎉"),
    ("...", "..."),
    ("?!", " ?! "),
    ("1 + 1 = 2", "1 + 1 = 2"),
    ("%", "%"),
    (LONG_REFERENCE, LONG_REFERENCE),
]


@pytest.mark.parametrize("tokenize", ["auto", *BLEU_TOKENIZERS])
def test_identical_texts_score_exactly_one_on_every_similarity_metric(tokenize: str) -> None:
    for stemmer in ("auto", True, False):
        config = _config(bleu_tokenize=tokenize, rouge_stemmer=stemmer)
        scores = score_rows(_rows(IDENTICAL), config)
        for name in ("bleu_score", "rouge_score", "chrf_score", "exact_match", "non_llm_string_similarity"):
            assert scores.per_row[name] == [1.0] * len(IDENTICAL), (
                name,
                tokenize,
                stemmer,
                scores.per_row[name],
            )
        assert corpus_scores(_rows(IDENTICAL), config) == {"corpus_bleu": 1.0, "corpus_chrf": 1.0}
    # One split at a time too: auto picks the tokenizer from that split's references alone.
    for pair in IDENTICAL:
        single = score_rows(_rows([pair]), _config())
        assert {name: values[0] for name, values in single.per_row.items()} == dict.fromkeys(METRICS, 1.0), (
            pair
        )


def test_ragas_own_classes_were_wrong_on_these_inputs() -> None:
    """Why BLEU and ROUGE-L do not use ragas' classes: their results on identical pairs."""
    import asyncio

    from ragas.metrics.collections import BleuScore, RougeScore

    assert asyncio.run(BleuScore().ascore(reference="Yes", response="Yes")).value == 0.0
    assert asyncio.run(RougeScore().ascore(reference="Москва", response="Москва")).value == 0.0
    scores = score_rows(_rows([("Yes", "Yes"), ("Москва", "Москва")]), _config())
    assert scores.per_row["bleu_score"] == [1.0, 1.0] and scores.per_row["rouge_score"] == [1.0, 1.0]
