"""``${VAR}`` references in the TOML config: expanded from the environment, and their values kept secret.

Expansion is a feature of the config *file* only. Run-config overrides (the Dagster launchpad, the
``PipelineSettings`` resource, ``FineTunePipeline(overrides=...)``) are refused when they hold ``${``:
whoever can launch a run could otherwise copy any environment variable of the code server (a database
password, a cloud key) into MLflow params.

Every value substituted for a reference, and every password inside a URL of the config, is registered as a
secret (:func:`ft_assets.secrets.register_secret`),
so it is masked in every message, tag, param and artifact that goes through redaction. When settings cross
a process boundary (:func:`settings_as_data`), an expanded key travels as its ``${VAR}`` template and is
expanded again from the receiving process's own environment; URL credentials are stripped. Nothing is ever
removed by substring replacement, so the receiving process gets exactly the settings the sender had.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ft_assets.config_sections import ConfigError
from ft_assets.secrets import (
    register_secret,
    register_url_credentials,
)

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: A key path inside the settings data, e.g. ``("evaluator", "judge", "base_url")``.
KeyPath = tuple[str | int, ...]


def _config_error(message: str) -> Exception:
    return ConfigError(message)


def _where(path: KeyPath) -> str:
    """``mlflow.tracking_uri``, ``evaluator.metrics[0]``: the key as the config's sections spell it."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    return text.lstrip(".") or "<top level>"


def expand_env(value: Any, source: str, path: KeyPath = ()) -> tuple[Any, dict[KeyPath, str]]:
    """``value`` with ``${VAR}`` references replaced from the environment, and the template of each
    string that held one (by key path). An unset variable is a ``ConfigError`` naming the key."""
    templates: dict[KeyPath, str] = {}

    def walk(item: Any, at: KeyPath) -> Any:
        if isinstance(item, str):
            register_url_credentials(item)
            if not ENV_REF.search(item):
                return item

            def lookup(match: re.Match[str]) -> str:
                var = match.group(1)
                if var not in os.environ:
                    raise _config_error(
                        f"{source}: {_where(at)} refers to ${{{var}}}, but the environment variable {var} is unset"
                    )
                register_secret(os.environ[var])
                return os.environ[var]

            templates[at] = item
            expanded = ENV_REF.sub(lookup, item)
            register_url_credentials(expanded)
            return expanded
        if isinstance(item, dict):
            return {k: walk(v, (*at, k)) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, (*at, i)) for i, v in enumerate(item)]
        return item

    return walk(value, path), templates


def refuse_env_refs(overrides: Mapping[str, Any], source: str = "run config") -> None:
    """Raise ``ConfigError`` when an override holds ``${``: expansion is for the config file only."""

    def walk(item: Any, at: KeyPath) -> None:
        if isinstance(item, str) and "${" in item:
            raise _config_error(
                f"{source}: {_where(at)} = {item!r} holds a ${{...}} reference; environment variables are "
                "expanded in the TOML config file only, never in run-config overrides (anyone who can launch "
                "a run could copy a secret of the code server into MLflow). Put the reference in the file."
            )
        if isinstance(item, Mapping):
            for key, value in item.items():
                walk(value, (*at, key))
        elif isinstance(item, list | tuple):
            for index, value in enumerate(item):
                walk(value, (*at, index))

    walk(overrides, ())
