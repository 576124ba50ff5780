"""How the inference set's column mapping and system prompt follow the training set's.

A key of the column mapping that ``[inferencer]`` does not set itself takes ``[fine_tuner]``'s value, so a
model is evaluated with the prompts it was trained on; the validation set is read with ``[fine_tuner]``'s
keys anyway (which section inherits from which: :data:`ft_assets.dataset_specs.COLUMN_INHERITANCE`).
"Set" means written in the section (pydantic's ``model_fields_set``), not "different from the default":
``[inferencer] system_prompt_override_text`` left out inherits, set explicitly it wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

#: The keys of :class:`ft_assets.config.DatasetColumns` that the inference set inherits.
INHERITED_COLUMN_KEYS = (
    "question_column",
    "ground_truth_column",
    "system_prompt_column",
    "system_prompt_override_text",
)


def inherit_unset_keys(source: BaseModel, target: BaseModel, keys: Iterable[str]) -> None:
    """Give ``target`` the value of ``source`` for each of ``keys`` that ``target`` was not given."""
    for key in keys:
        if key not in target.model_fields_set and key in source.model_fields_set:
            setattr(target, key, getattr(source, key))


def inherited_templates(
    data: Mapping[str, Any], templates: Mapping[tuple, str], target: str, source: str
) -> dict[tuple, str]:
    """``templates`` (key path -> the ``${VAR}`` text it was expanded from) plus the paths of the ``target``
    section's keys that inherit an expanded ``source`` value: an inherited secret stays a secret."""
    explicit = data.get(target) or {}
    inherited = {
        (target, key): templates[(source, key)]
        for key in INHERITED_COLUMN_KEYS
        if (source, key) in templates and key not in explicit
    }
    return {**templates, **inherited}
