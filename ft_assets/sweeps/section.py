"""The ``[sweep]`` config section: which ``[fine_tuner]``/``[inferencer]`` keys take which values.

It imports nothing of :mod:`ft_assets.config` at module level (``config.Settings`` holds this section); the
section models are looked up when a grid is validated.

```toml
[sweep]
method = "grid"          # or "random": `samples` candidates drawn (seeded) from the grid
max_candidates = 16

[sweep.grid]
rank = [8, 16]                       # a [fine_tuner] key
learning_rate = [5e-4, 1e-3]
inferencer.max_new_tokens = [32, 64] # another section: `inferencer.<key>` (or a [sweep.grid.inferencer] table)
```
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ft_assets.config_sections import FineTunerConfig, InferencerConfig, did_you_mean

#: The sections a grid may address; a bare key belongs to the first.
SWEEPABLE_SECTIONS = ("fine_tuner", "inferencer")


def _section_model(section: str) -> type[BaseModel]:
    return {"fine_tuner": FineTunerConfig, "inferencer": InferencerConfig}[section]


def grid_dimensions(grid: dict[str, Any]) -> list[tuple[str, str, list[Any]]]:
    """``(section, key, values)`` per swept key, in the order the grid lists them; raises ``ValueError``
    naming the key for an unknown section or key, a value that is not a non-empty list, a duplicate value,
    or a value of the wrong type for the key."""
    entries: list[tuple[str, str, Any]] = []
    for name, value in grid.items():
        if isinstance(value, dict):
            if name not in SWEEPABLE_SECTIONS:
                raise ValueError(
                    f"unknown section {name!r}{did_you_mean(name, SWEEPABLE_SECTIONS)}; a grid sweeps "
                    f"{' and '.join(f'[{s}]' for s in SWEEPABLE_SECTIONS)} keys"
                )
            entries.extend((name, key, values) for key, values in value.items())
        else:
            entries.append((SWEEPABLE_SECTIONS[0], name, value))
    dimensions: list[tuple[str, str, list[Any]]] = []
    seen: set[tuple[str, str]] = set()
    for section, key, values in entries:
        where = key if section == SWEEPABLE_SECTIONS[0] else f"{section}.{key}"
        model = _section_model(section)
        if key not in model.model_fields:
            raise ValueError(
                f"unknown key {where!r}: not a [{section}] key{did_you_mean(key, model.model_fields)}"
            )
        if (section, key) in seen:
            raise ValueError(f"{where!r} is listed twice (as {key!r} and as 'fine_tuner.{key}')")
        seen.add((section, key))
        if not isinstance(values, list):
            raise ValueError(f"{where} = {values!r} must be a list of values, e.g. {where} = [{values!r}]")
        if not values:
            raise ValueError(f"{where} = [] is empty: list at least one value")
        for value in values:
            _check_value(model, section, key, where, value)
        if len({repr(v) for v in values}) != len(values):
            raise ValueError(f"{where} = {values!r} lists a value twice")
        dimensions.append((section, key, list(values)))
    return dimensions


def _check_value(model: type[BaseModel], section: str, key: str, where: str, value: Any) -> None:
    """The value alone, through the section model's own field validation (cross-key checks come later,
    when each candidate's whole settings are built)."""
    from pydantic import ValidationError

    try:
        model.model_validate({key: value})
    except ValidationError as error:
        for item in error.errors():
            if item["loc"] and item["loc"][0] == key:
                message = item["msg"].removeprefix("Value error, ")
                raise ValueError(f"{where} = {value!r}: {message}") from None


class SweepConfig(BaseModel):
    """``[sweep]``: a grid (``[sweep.grid]``) or a seeded random sample of it; empty grid: no sweep."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field("sweep", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    method: Literal["grid", "random"] = "grid"
    grid: dict[str, Any] = Field(default_factory=dict)
    samples: int | None = Field(None, gt=0)
    seed: int = 0
    max_candidates: int = Field(16, gt=0)

    @field_validator("grid")
    @classmethod
    def _valid_grid(cls, grid: dict[str, Any]) -> dict[str, Any]:
        grid_dimensions(grid)
        return grid

    @model_validator(mode="after")
    def _candidate_count(self) -> SweepConfig:
        if not self.grid:
            if self.method == "random" or self.samples is not None:
                raise ValueError("method = 'random' / samples need a [sweep.grid] to draw from")
            return self
        size = self.grid_size
        if self.method == "grid":
            if self.samples is not None:
                raise ValueError(
                    "samples is for method = 'random'; with method = 'grid' every combination runs"
                )
            if size > self.max_candidates:
                raise ValueError(
                    f"the grid has {size} combinations, more than max_candidates = {self.max_candidates}; "
                    "raise max_candidates, shrink the grid, or set method = 'random' with samples"
                )
            return self
        if self.samples is None:
            raise ValueError("method = 'random' needs samples (how many candidates to draw)")
        if self.samples > self.max_candidates:
            raise ValueError(f"samples = {self.samples} is more than max_candidates = {self.max_candidates}")
        if self.samples > size:
            raise ValueError(f"samples = {self.samples} is more than the grid's {size} combinations")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.grid)

    @property
    def dimensions(self) -> list[tuple[str, str, list[Any]]]:
        """``(section, key, values)`` per swept key (see :func:`grid_dimensions`)."""
        return grid_dimensions(self.grid)

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for _section, _key, values in self.dimensions)
