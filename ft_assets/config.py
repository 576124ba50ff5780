"""The one configuration model: TOML file -> validated pydantic models -> Dagster run config.

Precedence (lowest first): built-in defaults < TOML file < Dagster run config overrides <
standard environment variables (``MLFLOW_*``) < CLI flags. Secrets (HF token, OpenAI key, MLflow
password) are never part of this model: they are read from the environment where they are used.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from ft_assets.cache import default_model_cache_dir
from ft_assets.config_env import KeyPath, expand_env, refuse_env_refs
from ft_assets.config_sections import (
    DEFAULT_CONFIG_PATH,
    PROJECT_ROOT,
    ConfigError,
    ConfigSection,
    EvaluatorConfig,
    FineTunerConfig,
    InferencerConfig,
    MlflowConfig,
    PipelineConfig,
    did_you_mean,
)
from ft_assets.dataset_columns import INHERITED_COLUMN_KEYS, inherit_unset_keys, inherited_templates
from ft_assets.dataset_specs import COLUMN_INHERITANCE, DATASETS
from ft_assets.secrets import has_url_credentials, map_strings, strip_credentials
from ft_assets.sweeps.section import SweepConfig


class Settings(ConfigSection):
    """The whole pipeline configuration."""

    fine_tuner: FineTunerConfig = Field(default_factory=FineTunerConfig)
    inferencer: InferencerConfig = Field(default_factory=InferencerConfig)
    evaluator: EvaluatorConfig = Field(default_factory=EvaluatorConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    #: Several candidates of this config side by side (:mod:`ft_assets.sweeps`); an empty grid is no sweep.
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    #: Directory that relative paths in the config are resolved against (the config file's project).
    base_dir: Path = Field(default=PROJECT_ROOT, exclude=True)
    #: The ``${VAR}`` template of each key that was expanded (see :mod:`ft_assets.config_env`).
    _env_templates: dict[KeyPath, str] = PrivateAttr(default_factory=dict)

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """A config path made absolute against :attr:`base_dir`."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def artifacts_root(self) -> Path:
        return self.resolve_path(self.pipeline.artifacts_root)

    @property
    def model_cache_dir(self) -> Path:
        configured = self.pipeline.model_cache_dir
        return self.resolve_path(configured) if configured else default_model_cache_dir()

    @model_validator(mode="after")
    def _datasets_inherit_columns(self) -> Settings:
        for target, source in COLUMN_INHERITANCE:
            inherit_unset_keys(getattr(self, source), getattr(self, target), INHERITED_COLUMN_KEYS)
        return self

    def flat_params(self) -> dict[str, str]:
        """The resolved config as prefixed MLflow params (``finetuner_rank``, ``mlflow_experiment_name``...)."""
        prefixes = {
            "fine_tuner": "finetuner",
            "inferencer": "inferencer",
            "evaluator": "evaluator",
            "mlflow": "mlflow",
            "pipeline": "pipeline",
        }
        params: dict[str, str] = {}
        for section, prefix in prefixes.items():
            _flatten(getattr(self, section).model_dump(mode="json"), prefix, params)
        return params


def _flatten(values: Mapping[str, Any], prefix: str, out: dict[str, str]) -> None:
    for key, value in values.items():
        name = f"{prefix}_{key}"
        if isinstance(value, Mapping) and value:
            _flatten(value, name, out)
        else:
            out[name] = str(value)


def _models_along(loc: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The settings model, then the section model each leading part of ``loc`` names."""
    models: list[type[BaseModel]] = [Settings]
    for part in loc:
        field = models[-1].model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        models.append(annotation)
    return models


def _is_section(loc: tuple[Any, ...]) -> bool:
    """Whether ``loc`` names a whole section (a nested model), not a key."""
    return bool(loc) and len(_models_along(loc)) == len(loc) + 1


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        section = ".".join(str(p) for p in loc[:-1]) or "<top level>"
        key = str(loc[-1]) if loc else "<top level>"
        if item["type"] == "extra_forbidden":
            parent = _models_along(loc[:-1])[-1]
            hint = did_you_mean(key, parent.model_fields)
            if len(loc) == 1:
                lines.append(f"{source}: unknown section [{key}]{hint}")
            else:
                lines.append(f"{source}: [{section}] unknown key {key!r}{hint}")
        else:
            # pydantic prefixes the message of a ValueError raised by a validator
            message = item["msg"].removeprefix("Value error, ")
            got = item.get("input")
            if isinstance(got, dict) and _is_section(loc):  # a check across the keys of a section
                lines.append(f"{source}: [{'.'.join(str(p) for p in loc)}] {message}")
                continue
            got_text = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{source}: [{section}] {key}: {message}{got_text}")
    return "\n".join(lines)


def build_settings(
    data: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> Settings:
    """Validate raw config data; errors name ``source``, the section and the key."""
    expanded, templates = expand_env(dict(data), source)
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None
    if base_dir is not None:
        settings.base_dir = base_dir
    for target, inherited_from in COLUMN_INHERITANCE:
        templates = inherited_templates(expanded, templates, target, inherited_from)
    settings._env_templates = templates
    return settings


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``, section by section."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw TOML document; a missing or malformed file is a :class:`ConfigError` naming it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{file}: malformed TOML: {error}") from None


def _config_file(path: str | os.PathLike[str] | None) -> Path:
    """The config file ``path`` names (the default one when ``None``), relative to the project root
    unless it exists relative to the working directory."""
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not file.is_absolute():
        file = (PROJECT_ROOT / file) if not file.exists() else file.resolve()
    return file


def config_base_dir(file: Path) -> Path:
    """Where the relative paths of config ``file`` point from: its project for a file in a ``config/``
    folder, otherwise the file's own folder."""
    return file.parent.parent if file.parent.name == "config" else file.parent


def relocated_config(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    outputs_root: str | os.PathLike[str],
    model_cache_dir: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write a copy of config file ``source`` that works from any folder, with every output under
    ``outputs_root``; returns ``destination``.

    In the copy: the dataset keys of the table :data:`~ft_assets.dataset_specs.DATASETS` that name local
    files or folders relative to the source's project (resolved as :func:`load_settings` does) are absolute,
    while hub ids and absolute paths are left as they are; ``[pipeline] artifacts_root`` is
    ``<outputs_root>/artifacts``; ``[mlflow] tracking_uri`` is the sqlite store ``<outputs_root>/mlflow.db``;
    ``[pipeline] model_cache_dir`` is ``model_cache_dir`` when given. ``overrides`` are then deep-merged
    over the result, so they win.
    """
    file = _config_file(source)
    base_dir = config_base_dir(file)
    data = read_toml(file)
    for spec in DATASETS:
        value = data.get(spec.section, {}).get(spec.key)
        if not isinstance(value, str) or not value:
            continue
        path = Path(value).expanduser()
        if not path.is_absolute() and (base_dir / path).exists():
            data[spec.section][spec.key] = str((base_dir / path).resolve())
    root = Path(outputs_root)
    pipeline: dict[str, Any] = {"artifacts_root": str(root / "artifacts")}
    if model_cache_dir is not None:
        pipeline["model_cache_dir"] = str(model_cache_dir)
    relocated = {"pipeline": pipeline, "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}}
    data = deep_merge(deep_merge(data, relocated), overrides or {})
    target = Path(destination)
    target.write_bytes(tomli_w.dumps(data).encode())
    return target


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file < ``overrides`` (Dagster run config, CLI flags), validated as one model.

    Relative paths inside the file are resolved against the project root when the file lives in its
    ``config/`` folder, otherwise against the file's own folder.
    """
    file = _config_file(path)
    data = read_toml(file)
    if overrides:
        refuse_env_refs(overrides)
        data = deep_merge(data, overrides)
    return build_settings(data, source=str(file), base_dir=config_base_dir(file))


def settings_as_data(settings: Settings) -> dict[str, Any]:
    """``settings`` as JSON data that may travel to another process: each expanded key as its
    ``${VAR}`` template, credentials taken out of every URL, everything else exactly as it is."""
    data = settings.model_dump(mode="json")
    for path, template in settings._env_templates.items():
        holder: Any = data
        for part in path[:-1]:
            holder = holder[part]
        holder[path[-1]] = template
    return map_strings(data, lambda text: strip_credentials(text) if has_url_credentials(text) else text)
