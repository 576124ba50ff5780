"""Train/test leakage: test prompts that also occur in the training or validation data.

Framework-free. Prompts (the last user turn of each example) are compared after
:func:`normalise_prompt`: Unicode NFC, casefolded, whitespace collapsed, so a copy that differs only in
case or spacing still counts. Preflight reports the leaks as a warning (``[evaluator] leakage =
"warn"``, the default) or stops the run (``"error"``); ``"off"`` skips the check.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ft_assets.phases.datasets import DatasetError, Example, LoadedDataset

#: How many leaked prompts a message quotes, and how long each quote may be.
_LISTED = 5
_QUOTE_LIMIT = 80


def normalise_prompt(text: str) -> str:
    """The form prompts are compared in: NFC, casefolded, runs of whitespace as one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


@dataclass(frozen=True)
class Leak:
    """A test example whose prompt occurs in other data sets (named by their config keys)."""

    example: Example
    found_in: tuple[str, ...]


def find_leaks(test: Sequence[Example], others: Mapping[str, Sequence[Example]]) -> list[Leak]:
    """The test examples, in order, whose normalised prompt is also the prompt of an example in one of
    ``others`` (label -> examples)."""
    prompts = {
        label: {normalise_prompt(e.user_prompt) for e in examples} for label, examples in others.items()
    }
    leaks = []
    for example in test:
        prompt = normalise_prompt(example.user_prompt)
        found = tuple(label for label, seen in prompts.items() if prompt in seen)
        if found:
            leaks.append(Leak(example, found))
    return leaks


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= _QUOTE_LIMIT else flat[: _QUOTE_LIMIT - 3] + "...")


def leakage_message(test_label: str, test_size: int, leaks: Sequence[Leak], mode: str) -> str:
    """One message: the count, the data sets the prompts occur in, and the first few rows."""
    counts: dict[str, int] = {}
    for leak in leaks:
        for label in leak.found_in:
            counts[label] = counts.get(label, 0) + 1
    where = ", ".join(f"{label} ({count})" for label, count in counts.items())
    listed = "; ".join(
        f"row {leak.example.row} (id {leak.example.id!r}) {_quote(leak.example.user_prompt)}"
        for leak in leaks[:_LISTED]
    )
    more = f"; and {len(leaks) - _LISTED} more" if len(leaks) > _LISTED else ""
    action = (
        "set [evaluator] leakage = 'warn' to run anyway"
        if mode == "error"
        else "set [evaluator] leakage = 'error' to refuse such a run, or 'off' to skip this check"
    )
    return (
        f"train/test leakage: {len(leaks)} of {test_size} test prompts of {test_label} also occur in "
        f"{where} (compared casefolded, NFC, whitespace collapsed), so scores on them measure recall of "
        f"training data: {listed}{more}. Remove them from one side, or {action}"
    )


def check_leakage(
    mode: str,
    test_label: str,
    test_set: LoadedDataset,
    training_sets: Mapping[str, LoadedDataset] | Callable[[], Mapping[str, LoadedDataset]],
    warnings: list[str],
) -> None:
    """Find leaks of ``test_set`` into ``training_sets`` (label -> data set, or a function loading them
    when preflight has not); append a warning, or raise :class:`DatasetError` when ``mode`` is
    ``"error"``. A training set that cannot be loaded only warns that leakage was not checked."""
    if mode == "off":
        return
    if callable(training_sets):
        try:
            training_sets = training_sets()
        except DatasetError as error:
            warnings.append(f"train/test leakage not checked: {error}")
            return
    others = {f"{label} = {dataset.source!r}": dataset.examples for label, dataset in training_sets.items()}
    leaks = find_leaks(test_set.examples, others)
    if not leaks:
        return
    message = leakage_message(f"{test_label} = {test_set.source!r}", len(test_set.examples), leaks, mode)
    if mode == "error":
        raise DatasetError(message)
    warnings.append(message)
