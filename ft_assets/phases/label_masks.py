"""Tokenize training examples and choose which tokens the loss trains (the label mask).

A conversation is rendered with the tokenizer's chat template once and tokenized once; each assistant
turn's characters are found by rendering the conversation up to that turn (with and without the turn),
so any template that renders conversations incrementally works, ``{% generation %}`` markers or not.
A turn's trained span runs from its first content character through the end-of-turn token (the EOS), so
the template's formatting after that token (ChatML's newline) is not trained: generation stops at the EOS.

``train_on_responses_only = false`` trains every token; a plain ``text`` example always trains all of it
(with the EOS appended, as TRL does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ft_assets.phases.datasets import Example
from ft_assets.phases.models import ModelError

IGNORE_INDEX = -100
#: ``[fine_tuner] train_on_turns``: every assistant turn of a conversation, or only its final one.
TrainOnTurns = Literal["all", "last"]


class LabelMaskError(ModelError):
    """A chat template whose rendering does not let the assistant turns be located (preflight reports it)."""


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_char_spans(
    messages: Sequence[dict[str, str]], tokenizer: Any, turns: TrainOnTurns = "all"
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` character spans of its trained assistant turns."""
    text = _render(tokenizer, messages, add_generation_prompt=False)
    eos = tokenizer.eos_token
    indices = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    if turns == "last":
        indices = indices[-1:]
    spans = []
    for index in indices:
        before = _render(tokenizer, messages[:index], add_generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
            raise LabelMaskError(
                f"the chat template does not render the conversation incrementally at message {index} "
                "(an earlier turn renders differently once later turns follow), so the assistant turns "
                "cannot be located; set [fine_tuner] chat_template to a template that does (e.g. 'chatml')"
            )
        turn = text[len(before) : len(through)]
        # the trained span ends with the end-of-turn token; what the template prints after it is formatting
        end_of_turn = turn.rfind(eos) if eos else -1
        end = len(before) + (end_of_turn + len(eos) if end_of_turn >= 0 else len(turn))
        spans.append((len(before), end))
    return text, spans


def _conversation_labels(
    example: Example, tokenizer: Any, *, responses_only: bool, turns: TrainOnTurns
) -> dict[str, list[int]]:
    text, spans = assistant_char_spans(example.messages, tokenizer, turns)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoded["input_ids"])
    if not responses_only:
        return {"input_ids": input_ids, "labels": list(input_ids)}
    labels = [IGNORE_INDEX] * len(input_ids)
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        # a token that overlaps a span is trained (BPE may merge a span's first character with what precedes)
        if any(start < span_end and end > span_start for span_start, span_end in spans):
            labels[position] = input_ids[position]
    return {"input_ids": input_ids, "labels": labels}


def tokenize_example(
    example: Example, tokenizer: Any, *, responses_only: bool = True, turns: TrainOnTurns = "all"
) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}`` of one example; labels are ``-100`` where the loss does not train."""
    if example.text is None:
        return _conversation_labels(example, tokenizer, responses_only=responses_only, turns=turns)
    text = example.text if example.text.endswith(tokenizer.eos_token) else example.text + tokenizer.eos_token
    input_ids = list(tokenizer(text)["input_ids"])
    return {"input_ids": input_ids, "labels": list(input_ids)}


def trained_token_count(labels: Sequence[int]) -> int:
    """Tokens the loss trains in one sequence: labels that are predicted (every position but the first)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)
