"""Sweep candidates: the grid (or its seeded random sample) expanded into named candidates, each with its
own validated :class:`~ft_assets.config.Settings`.

A candidate's name comes from its values alone, in the grid's key order: ``rank=8, learning_rate=5e-4`` is
``r8-lr5e-4`` (each key abbreviated to the first letters of its words, unless two swept keys would share an
abbreviation). Names use only ``[A-Za-z0-9._+-]``, so they are valid Dagster partition keys, MLflow run names
and folder names, and they stay the same as long as the values do.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ft_assets.config import ConfigError, Settings, build_settings, deep_merge
from ft_assets.sweeps.section import SWEEPABLE_SECTIONS

MAX_NAME_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]")


@dataclass(frozen=True)
class Candidate:
    """One point of the sweep: its name and the value of each swept ``(section, key)``."""

    name: str
    values: tuple[tuple[str, str, Any], ...]

    @property
    def overrides(self) -> dict[str, dict[str, Any]]:
        """The candidate's values as per-section config overrides."""
        sections: dict[str, dict[str, Any]] = {}
        for section, key, value in self.values:
            sections.setdefault(section, {})[key] = value
        return sections

    @property
    def params(self) -> dict[str, Any]:
        """``{"rank": 8, "inferencer.max_new_tokens": 32}``: what the candidate changes, as shown to people."""
        return {label(section, key): value for section, key, value in self.values}


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: its id (a hash of the base settings and the ``[sweep]`` section), name and
    candidates with their settings."""

    sweep_id: str
    name: str
    candidates: tuple[Candidate, ...]
    settings: dict[str, Settings]

    def candidate(self, name: str) -> Candidate:
        """The candidate called ``name``; a :class:`ConfigError` listing the sweep's names otherwise."""
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise ConfigError(
            f"[sweep] has no candidate {name!r} (its candidates: {', '.join(self.names)}); the config changed "
            "since the partition was added: launch the sweep of the current config"
        )

    @property
    def names(self) -> list[str]:
        return [candidate.name for candidate in self.candidates]


def label(section: str, key: str) -> str:
    """How a swept key is written in ``[sweep.grid]``: bare for ``[fine_tuner]``, else ``section.key``."""
    return key if section == SWEEPABLE_SECTIONS[0] else f"{section}.{key}"


def _abbreviations(dimensions: list[tuple[str, str, list[Any]]]) -> dict[tuple[str, str], str]:
    """Each swept key's prefix in names: the first letters of its words, or the whole key (then
    ``section.key``) for the keys that would otherwise share one."""
    names = {(s, k): "".join(word[:1] for word in k.split("_") if word) for s, k, _ in dimensions}
    for widen in (lambda sk: sk[1], lambda sk: label(*sk)):
        counts = Counter(names.values())
        names.update({sk: widen(sk) for sk, name in names.items() if counts[name] > 1})
    return names


def format_value(value: Any) -> str:
    """A value as it appears in a candidate name: ``5e-4``, ``0.05``, ``16``, ``1``/``0`` for booleans, the
    last path part of a string (``org/model`` -> ``model``), ``+``-joined lists."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.6g}"
    if isinstance(value, list):
        return "+".join(format_value(item) for item in value)
    if isinstance(value, str):
        return _UNSAFE.sub("_", PurePosixPath(value).name or value)
    return _UNSAFE.sub("_", json.dumps(value, sort_keys=True))


def _digest(data: Any, length: int) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def _name(values: tuple[tuple[str, str, Any], ...], abbreviations: dict[tuple[str, str], str]) -> str:
    name = "-".join(f"{abbreviations[(s, k)]}{format_value(v)}" for s, k, v in values)
    if len(name) > MAX_NAME_LENGTH:
        name = f"{name[: MAX_NAME_LENGTH - 9].rstrip('-')}-{_digest(values, 8)}"
    return name


def expand(settings: Settings) -> list[Candidate]:
    """The candidates of ``settings.sweep``, in grid order (a random sample keeps grid order too)."""
    sweep = settings.sweep
    dimensions = sweep.dimensions
    if not dimensions:
        return []
    size = sweep.grid_size
    if sweep.method == "random":
        indices = sorted(random.Random(sweep.seed).sample(range(size), int(sweep.samples or 0)))
    else:
        indices = list(range(size))
    abbreviations = _abbreviations(dimensions)
    candidates = []
    for index in indices:
        values = []
        for section, key, options in reversed(dimensions):  # the last key varies fastest
            index, position = divmod(index, len(options))
            values.append((section, key, options[position]))
        point = tuple(reversed(values))
        candidates.append(Candidate(_name(point, abbreviations), point))
    clashes = {c.name for c in candidates if [d.name for d in candidates].count(c.name) > 1}
    return [
        Candidate(f"{c.name}-{_digest(c.values, 6)}", c.values) if c.name in clashes else c
        for c in candidates
    ]


def candidate_settings(settings: Settings, candidate: Candidate, *, source: str = "<config>") -> Settings:
    """``settings`` with the candidate's values laid over it and no sweep of its own, validated as a whole:
    a :class:`ConfigError` names ``[sweep]``, the candidate and what is wrong."""
    base = settings.model_dump(mode="json", exclude={"sweep"})
    return build_settings(
        deep_merge(base, candidate.overrides),
        source=f"{source}: [sweep] candidate {candidate.name} ({_shown(candidate)})",
        base_dir=settings.base_dir,
    )


def _shown(candidate: Candidate) -> str:
    return ", ".join(f"{key} = {value!r}" for key, value in candidate.params.items())


def settings_fingerprint(settings: Settings) -> str:
    """A short hash of everything a candidate's outputs depend on (its whole resolved config)."""
    return _digest(settings.model_dump(mode="json", exclude={"sweep"}), 16)


def plan_sweep(settings: Settings, *, source: str = "<config>") -> SweepPlan:
    """Expand ``settings.sweep`` and build every candidate's settings, so any invalid candidate fails here,
    before anything runs. A config without a ``[sweep.grid]`` is a :class:`ConfigError`."""
    if not settings.sweep.enabled:
        raise ConfigError(
            f"{source}: [sweep] there is no sweep: add a [sweep.grid] table, e.g. rank = [8, 16]"
        )
    candidates = expand(settings)
    built = {c.name: candidate_settings(settings, c, source=source) for c in candidates}
    sweep_id = _digest(
        {"base": settings.model_dump(mode="json", exclude={"sweep"}), "sweep": settings.sweep.model_dump()},
        12,
    )
    return SweepPlan(sweep_id, settings.sweep.name, tuple(candidates), built)
