"""Offline text metrics with their standard definitions, for any script.

Framework-free and light to import: sacrebleu, rouge_score and nltk load on first use.

Every metric here compares the reference and the response after :func:`prepare` (Unicode NFC,
surrounding whitespace removed), so ``"Paris. "`` and ``"Paris."`` are the same text and a composed
``é`` equals a decomposed one.

- BLEU: sacrebleu sentence BLEU with effective order per row (a one-word answer identical to its
  reference scores 1), and corpus BLEU over the split. The tokenizer is ``evaluator.bleu_tokenize``;
  ``auto`` picks one per split from the references' scripts (:func:`resolve_bleu_tokenizer`).
- ROUGE-L: rouge_score's LCS F-measure with :class:`UnicodeWordTokenizer` instead of its default
  tokenizer, which drops every character outside ``[a-z0-9]`` (Cyrillic or CJK text had no tokens).
- Exact match: ``==`` after the same normalisation of both sides (:func:`normalise_for_exact_match`).
"""

from __future__ import annotations

import functools
import math
import re
import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

#: Scripts written without spaces between words: each character is a ROUGE token of its own.
_PER_CHARACTER_RANGES = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x3FFFF),  # CJK extensions B and later
)
_KANA_RANGES = ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))
_HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF))
#: ``auto`` BLEU tokenization: a script is "the split's" when its letters are at least this share of
#: all letters of the references (Japanese prose is mostly kana, Chinese mostly ideographs).
_SCRIPT_SHARE = 0.10
#: ``auto`` ROUGE stemming: on when at least this share of the references' letters are ASCII.
_ENGLISH_SHARE = 0.90
#: rouge_score stems only words longer than this (its default tokenizer's rule).
_STEM_MIN_LENGTH = 3
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)

ExactMatchNormalization = Literal["strip", "squad"]


def prepare(text: str) -> str:
    """The text every offline metric compares: Unicode NFC, surrounding whitespace removed."""
    return unicodedata.normalize("NFC", text).strip()


def _in_ranges(char: str, ranges: Iterable[tuple[int, int]]) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in ranges)


@functools.lru_cache(maxsize=2**16)
def _is_own_token(char: str) -> bool:
    """Whether ``char`` is a ROUGE token by itself: a character of a script without word spaces, or an emoji."""
    return _in_ranges(char, _PER_CHARACTER_RANGES) or unicodedata.category(char) == "So"


@dataclass(frozen=True)
class Choice:
    """A setting as resolved for one split, and why (``reason`` is shown in the metric definitions)."""

    value: str
    reason: str


def _letter_counts(texts: Iterable[str]) -> dict[str, int]:
    counts = {"letters": 0, "kana": 0, "han": 0, "ascii": 0}
    for text in texts:
        for char in text:
            if not unicodedata.category(char).startswith("L"):
                continue
            counts["letters"] += 1
            if char.isascii():
                counts["ascii"] += 1
            elif _in_ranges(char, _KANA_RANGES):
                counts["kana"] += 1
            elif _in_ranges(char, _HAN_RANGES):
                counts["han"] += 1
    return counts


def resolve_bleu_tokenizer(setting: str, references: Iterable[str]) -> Choice:
    """The sacrebleu tokenizer for a split: ``setting`` itself unless it is ``auto``.

    ``auto`` looks at the references once: kana make up at least 10% of their letters -> ``char``
    (Japanese has no spaces; ``ja-mecab`` needs MeCab and is opt-in so scores do not depend on
    what is installed); else ideographs at least 10% -> ``zh`` (one token per ideograph, ``13a``
    for the rest); else ``13a``.
    """
    if setting != "auto":
        return Choice(setting, "configured")
    counts = _letter_counts(references)
    letters = counts["letters"] or 1
    if counts["kana"] / letters >= _SCRIPT_SHARE:
        return Choice("char", f"auto: kana are {counts['kana'] / letters:.0%} of the reference letters")
    if counts["han"] / letters >= _SCRIPT_SHARE:
        return Choice("zh", f"auto: ideographs are {counts['han'] / letters:.0%} of the reference letters")
    return Choice("13a", "auto: the references are not Chinese or Japanese")


def resolve_rouge_stemming(setting: str | bool, references: Iterable[str]) -> Choice:
    """Whether ROUGE-L Porter-stems ASCII words: ``setting`` unless ``auto``, which stems when at
    least 90% of the references' letters are ASCII (English-looking data)."""
    if setting != "auto":
        return Choice("on" if setting else "off", "configured")
    counts = _letter_counts(references)
    share = counts["ascii"] / counts["letters"] if counts["letters"] else 0.0
    stem = counts["letters"] > 0 and share >= _ENGLISH_SHARE
    return Choice("on" if stem else "off", f"auto: {share:.0%} of the reference letters are ASCII")


@functools.cache
def _porter() -> Any:
    from nltk.stem import porter  # the stemmer rouge_score's own tokenizer uses

    return porter.PorterStemmer()


@functools.lru_cache(maxsize=2**16)
def _stem(word: str) -> str:
    return _porter().stem(word)  # memoised: stemming is most of ROUGE's time, and words repeat


class UnicodeWordTokenizer:
    """ROUGE tokens for any script; pass it as ``rouge_scorer.RougeScorer(tokenizer=...)``.

    Text is NFC-normalised and casefolded. A word is a run of letters, digits and combining marks
    (Cyrillic, Greek, accented Latin, Hangul, Devanagari...); each character of a script written
    without spaces (CJK ideographs, kana, Thai, Lao, Khmer, Myanmar) is a token, with its combining
    marks; each pictograph or emoji (Unicode category So) is a token. Punctuation, other symbols and
    whitespace only separate tokens, as in rouge_score's default tokenizer. With ``stem`` on, ASCII
    words longer than three letters are Porter-stemmed (rouge_score's rule); other words never are.
    """

    def __init__(self, *, stem: bool) -> None:
        self.stem = stem

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        word = ""
        attachable = False  # whether a combining mark may join the last token
        for char in unicodedata.normalize("NFC", text).casefold():
            category = unicodedata.category(char)
            if category.startswith("M") and (word or attachable):
                if word:
                    word += char
                else:
                    tokens[-1] += char
            elif _is_own_token(char):
                word = self._flush(word, tokens)
                tokens.append(char)
                attachable = True  # a Thai vowel sign, an emoji's variation selector
            elif category[0] in "LNM":
                word += char
            else:
                word = self._flush(word, tokens)
                attachable = False
        self._flush(word, tokens)
        return tokens

    def _flush(self, word: str, tokens: list[str]) -> str:
        if word:
            stemmable = self.stem and len(word) > _STEM_MIN_LENGTH and word.isascii()
            tokens.append(_stem(word) if stemmable else word)
        return ""


@functools.cache
def _rouge_l_scorer(stem: bool) -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeWordTokenizer(stem=stem))


def rouge_l(reference: str, response: str, *, stem: bool) -> float:
    """ROUGE-L F-measure with :class:`UnicodeWordTokenizer`.

    When neither text has a token (only punctuation, whitespace or other non-emoji symbols), ROUGE
    is 0/0: such a pair scores 1 when the two texts are equal after :func:`prepare`, else 0.
    """
    reference, response = prepare(reference), prepare(response)
    if not _has_tokens(reference) and not _has_tokens(response):
        return float(reference == response)
    return float(_rouge_l_scorer(stem).score(reference, response)["rougeL"].fmeasure)


def _has_tokens(text: str) -> bool:
    """Whether :class:`UnicodeWordTokenizer` finds a token in ``text`` (without tokenizing it all)."""
    return any(unicodedata.category(char)[0] in "LNM" or _is_own_token(char) for char in text)


@functools.cache
def _bleu(tokenize: str, *, effective_order: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize, effective_order=effective_order)


def sentence_bleu(reference: str, response: str, *, tokenize: str) -> float:
    """sacrebleu sentence BLEU (effective order, exp smoothing) on a 0-1 scale.

    Capped at 1: sacrebleu's exp(log) round trip gives 1.0000000000000004 for identical text.
    """
    score = _bleu(tokenize, effective_order=True).sentence_score(prepare(response), [prepare(reference)])
    return min(1.0, score.score / 100)


def corpus_bleu(references: list[str], responses: list[str], *, tokenize: str) -> float:
    """sacrebleu corpus BLEU of the whole split on a 0-1 scale (NaN without rows).

    Effective order is on: it only changes the score when every response is shorter than four
    tokens (standard corpus BLEU is then 0 whatever the responses are).
    """
    if not references:
        return math.nan
    bleu = _bleu(tokenize, effective_order=True)
    score = bleu.corpus_score([prepare(text) for text in responses], [[prepare(text) for text in references]])
    return min(1.0, score.score / 100)


def corpus_chrf(references: list[str], responses: list[str]) -> float:
    """sacrebleu corpus chrF (character 6-grams, beta 2) of the whole split on a 0-1 scale."""
    if not references:
        return math.nan
    from sacrebleu.metrics import CHRF

    score = CHRF().corpus_score(
        [prepare(text) for text in responses], [[prepare(text) for text in references]]
    )
    return min(1.0, score.score / 100)


def normalise_for_exact_match(text: str, mode: ExactMatchNormalization) -> str:
    """The text exact match compares, the same for the reference and the response.

    ``strip``: :func:`prepare` (NFC, surrounding whitespace). ``squad``: SQuAD's ``normalize_answer``
    made Unicode-aware: casefold; delete every punctuation character, both ASCII ``string.punctuation``
    (as SQuAD does, which includes ``$+<=>^`|~``) and Unicode category P (``。、「」¿«``...); delete the
    English articles a/an/the; collapse whitespace. Letters of every script are kept, so CJK answers
    compare on their characters without their punctuation.
    """
    text = prepare(text)
    if mode == "strip":
        return text
    text = "".join(
        char
        for char in text.casefold()
        if char not in _ASCII_PUNCTUATION and not unicodedata.category(char).startswith("P")
    )
    return " ".join(_ARTICLES.sub(" ", text).split())
