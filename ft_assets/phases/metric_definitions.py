"""What each configured metric means, and the split-level scores that are not means of row scores.

Framework-free and cheap: library versions come from package metadata and the judge's prompt
version from a hash of the ragas metric's source files, so nothing heavy is imported here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ft_assets.config import EvaluatorConfig
from ft_assets.config_sections import JUDGE_METRICS
from ft_assets.phases import text_metrics
from ft_assets.phases.text_metrics import Choice

#: The ragas class (in ``ragas.metrics.collections``) and its package directory for each judge metric.
JUDGE_CLASSES = {
    "factual_correctness": ("FactualCorrectness", "factual_correctness"),
    "answer_accuracy": ("AnswerAccuracy", "answer_accuracy"),
    "answer_correctness": ("AnswerCorrectness", "answer_correctness"),
    "answer_relevancy": ("AnswerRelevancy", "answer_relevancy"),
    "faithfulness": ("Faithfulness", "faithfulness"),
}
_NORMALISED = "Unicode NFC, surrounding whitespace removed, case kept"


def references(rows: list[Mapping[str, Any]]) -> list[str]:
    """The reference answers a split is scored against (rows without one score NaN and are left out)."""
    texts = (row.get("ground_truth") for row in rows)
    return [text for text in texts if isinstance(text, str) and text.strip()]


def bleu_tokenizer(config: EvaluatorConfig, rows: list[Mapping[str, Any]]) -> Choice:
    """The sacrebleu tokenizer BLEU uses on these rows."""
    return text_metrics.resolve_bleu_tokenizer(config.bleu_tokenize, references(rows))


def rouge_stemming(config: EvaluatorConfig, rows: list[Mapping[str, Any]]) -> Choice:
    """Whether ROUGE-L stems ASCII words on these rows."""
    return text_metrics.resolve_rouge_stemming(config.rouge_stemmer, references(rows))


def corpus_scores(rows: list[dict], config: EvaluatorConfig) -> dict[str, float]:
    """Split-level scores that are not row means: ``corpus_bleu`` (when ``bleu_score`` is configured)
    and ``corpus_chrf`` (when ``chrf_score`` is), on a 0-1 scale, over the rows that have both a
    reference and a response (the rows the per-row metrics scored). NaN when no row qualifies."""
    pairs = [
        (row["ground_truth"], row["assistant_response"])
        for row in rows
        if isinstance(row.get("ground_truth"), str)
        and row["ground_truth"].strip()
        and isinstance(row.get("assistant_response"), str)
    ]
    refs = [reference for reference, _ in pairs]
    responses = [response for _, response in pairs]
    scores: dict[str, float] = {}
    if "bleu_score" in config.metrics:
        tokenize = bleu_tokenizer(config, rows).value
        scores["corpus_bleu"] = text_metrics.corpus_bleu(refs, responses, tokenize=tokenize)
    if "chrf_score" in config.metrics:
        scores["corpus_chrf"] = text_metrics.corpus_chrf(refs, responses)
    return scores


def _version(package: str) -> str:
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{package} (not installed)"


def judge_prompt_version(name: str) -> str:
    """``ragas <version> <Class>, prompts sha256:<12 hex>``: a hash of the source files of the ragas
    metric package, where its prompt templates live, so a changed prompt changes the version."""
    class_name, package = JUDGE_CLASSES[name]
    spec = importlib.util.find_spec("ragas")
    digest = hashlib.sha256()
    if spec is not None and spec.origin:
        directory = Path(spec.origin).parent / "metrics" / "collections" / package
        for source in sorted(directory.glob("*.py")):
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return f"{_version('ragas')} {class_name}, prompts sha256:{digest.hexdigest()[:12]}"


def _setting(choice: Choice | None, configured: str, pending: str) -> str:
    if choice is None:
        return configured if configured != "auto" else pending
    return choice.value if choice.reason == "configured" else f"{choice.value} ({choice.reason})"


def describe_metrics(config: EvaluatorConfig, rows: list[dict] | None = None) -> dict[str, dict[str, str]]:
    """For every configured metric: ``library``, ``variant``, ``tokenizer``, ``normalisation`` and
    ``aggregation`` (judge metrics add ``judge_model``, ``prompt_version`` and ``samples``).

    With ``rows``, ``auto`` settings are resolved as scoring resolves them on those rows; without,
    they read "auto (...)". Scores are on a 0-1 scale.
    """
    bleu_choice = bleu_tokenizer(config, rows) if rows is not None else None
    stem_choice = rouge_stemming(config, rows) if rows is not None else None
    bleu_tokenize = _setting(
        bleu_choice, config.bleu_tokenize, "auto (per split: char for Japanese, zh for Chinese, else 13a)"
    )
    stemmer = config.rouge_stemmer
    stemming = _setting(
        stem_choice,
        "auto" if stemmer == "auto" else ("on" if stemmer else "off"),
        "auto (on when 90% of the reference letters are ASCII)",
    )
    sacrebleu, ragas = _version("sacrebleu"), _version("ragas")
    exact = {
        "strip": _NORMALISED,
        "squad": "SQuAD normalize_answer, Unicode-aware: NFC, casefold, ASCII and Unicode punctuation "
        "deleted, English articles deleted, whitespace collapsed",
    }[config.exact_match_normalization]
    offline = {
        "bleu_score": {
            "library": sacrebleu,
            "variant": "sentence BLEU, 4-grams, effective order, exp smoothing",
            "tokenizer": f"sacrebleu {bleu_tokenize}",
            "normalisation": _NORMALISED,
            "aggregation": "mean of per-row sentence BLEU; corpus BLEU (effective order) in corpus_bleu",
        },
        "rouge_score": {
            "library": f"{_version('rouge-score')} RougeScorer",
            "variant": "ROUGE-L F-measure (longest common subsequence)",
            "tokenizer": "Unicode words (letters, digits, marks); one token per CJK/kana/Thai character "
            f"and per emoji; punctuation dropped; casefolded; Porter stemming of ASCII words {stemming}",
            "normalisation": "Unicode NFC, surrounding whitespace removed, casefolded; a pair with no "
            "tokens on either side (punctuation only) scores 1 if the texts are equal, else 0",
            "aggregation": "mean of per-row ROUGE-L",
        },
        "chrf_score": {
            "library": f"{sacrebleu} (via {ragas} CHRFScore)",
            "variant": "chrF: character 6-grams, beta 2, no word n-grams",
            "tokenizer": "characters, whitespace removed",
            "normalisation": f"{_NORMALISED}; an empty response scores 0",
            "aggregation": "mean of per-row chrF; corpus chrF in corpus_chrf",
        },
        "exact_match": {
            "library": f"{ragas} ExactMatch (==)",
            "variant": f"exact match, normalisation {config.exact_match_normalization!r}",
            "tokenizer": "none",
            "normalisation": f"{exact}; the same on reference and response",
            "aggregation": "share of rows that match (mean of 0/1)",
        },
        "string_presence": {
            "library": f"{ragas} StringPresence",
            "variant": "1 if the reference occurs in the response, else 0",
            "tokenizer": "none",
            "normalisation": _NORMALISED,
            "aggregation": "share of rows (mean of 0/1)",
        },
        "non_llm_string_similarity": {
            "library": f"{_version('rapidfuzz')} (via {ragas} NonLLMStringSimilarity)",
            "variant": "1 - normalised Levenshtein distance (edits / length of the longer text)",
            "tokenizer": "characters",
            "normalisation": _NORMALISED,
            "aggregation": "mean of per-row similarity",
        },
        "semantic_similarity": {
            "library": f"{ragas} SemanticSimilarity, {_version('transformers')}",
            "variant": f"cosine similarity of mean-pooled, L2-normalised {config.embedding_model} embeddings",
            "tokenizer": f"{config.embedding_model}'s tokenizer, truncated at 256 tokens",
            "normalisation": "none",
            "aggregation": "mean of per-row similarity",
        },
    }
    judge = config.judge
    described: dict[str, dict[str, str]] = {}
    for name in config.metrics:
        if name not in JUDGE_METRICS:
            described[name] = offline[name]
            continue
        class_name, _ = JUDGE_CLASSES[name]
        endpoint = judge.base_url or "the OpenAI API"
        described[name] = {
            "library": f"{ragas} {class_name}",
            "variant": f"LLM judge {judge.model} at {endpoint}, JSON mode",
            "tokenizer": "n/a",
            "normalisation": "none; an empty response scores 0 without a request"
            if name != "faithfulness"
            else "none",
            "aggregation": f"per row: mean of {judge.samples} judge sample(s), spread = their population std; "
            "overall: mean of the row means, spread = mean of the row spreads",
            "judge_model": judge.model,
            "prompt_version": judge_prompt_version(name),
            "samples": str(judge.samples),
        }
    return described
