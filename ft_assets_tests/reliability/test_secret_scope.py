"""Registered secrets belong to their run: a long-lived process (``dagster dev``'s code server, a notebook)
does not keep an old run's ``${VAR}`` values and refuse a later run's files for holding them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ft_assets import secrets
from ft_assets.resources.settings import PipelineSettings
from ft_assets.secrets import SecretFoundError, redact, refuse_secrets, register_secret, secret_scope

#: Variable names that do not look secret: their values are secret only as ``${VAR}`` expansions.
FIRST_VAR, FIRST = "FT_FIRST_RUN_NOTE", "first-run-9c2e7a41"
SECOND_VAR, SECOND = "FT_SECOND_RUN_NOTE", "second-run-51b8d0f3"


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets, "_registered", set())
    monkeypatch.setenv(FIRST_VAR, FIRST)
    monkeypatch.setenv(SECOND_VAR, SECOND)


def _refused(path: Path) -> bool:
    try:
        refuse_secrets([path])
    except SecretFoundError:
        return True
    return False


def test_two_runs_in_one_process_each_refuse_only_their_own_expanded_secret(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    files = {FIRST: tmp_path / "first.xlsx.txt", SECOND: tmp_path / "second.xlsx.txt"}
    for value, path in files.items():
        path.write_text(f"answer: {value}\n", encoding="utf-8")
    seen: list[dict[str, bool]] = []

    @dg.asset
    def report(settings: PipelineSettings) -> None:
        """Loads the run's settings (expanding its ${VAR}) and scans the files an upload would."""
        settings.load()
        seen.append({value: _refused(path) for value, path in files.items()})

    for var in (FIRST_VAR, SECOND_VAR):
        config = write_config({"mlflow": {"experiment_name": f"${{{var}}}"}}, name=f"{var}.toml")
        result = dg.materialize([report], resources={"settings": PipelineSettings(config_path=str(config))})
        assert result.success
    assert seen == [{FIRST: True, SECOND: False}, {FIRST: False, SECOND: True}]
    assert not _refused(files[FIRST]) and redact(FIRST) == FIRST  # released when its run ended


def test_environment_secrets_and_unscoped_registrations_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-7d1f0c")
    with secret_scope():
        register_secret("scoped-value-1234")
        assert redact("scoped-value-1234 sk-env-7d1f0c") == "*** ***"
    register_secret("cli-key-file-5678")  # outside any run scope: the process's (one CLI run)
    assert redact("scoped-value-1234 sk-env-7d1f0c cli-key-file-5678") == "scoped-value-1234 *** ***"


def test_a_concurrent_runs_secret_is_secret_for_every_thread_until_it_ends() -> None:
    registered, release, ended = threading.Event(), threading.Event(), threading.Event()

    def other_run() -> None:
        with secret_scope():
            register_secret("other-thread-2468")
            registered.set()
            release.wait(10)
        ended.set()

    worker = threading.Thread(target=other_run)
    worker.start()
    assert registered.wait(10)
    with secret_scope():
        assert redact("other-thread-2468") == "***"
        register_secret("this-thread-1357")
        release.set()
        assert ended.wait(10)
        assert redact("other-thread-2468 this-thread-1357") == "other-thread-2468 ***"
    worker.join(10)
    assert redact("this-thread-1357") == "this-thread-1357"
