"""Fixtures shared by the reliability tests: a migrated MLflow store to copy, and one pair of chain runs launched
at the same time through the ``ft-pipeline`` CLI with fake secrets everywhere (the concurrency test and the
secret audit both read it, so the suite pays for those runs once)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ft_assets.phases.models import ResolvedModel
from ft_assets_tests.openai_stub import OpenAIStub
from ft_assets_tests.reliability.support import (
    CLI_SECRETS,
    ENV_SECRETS,
    CliRun,
    ConcurrentChains,
    ci_config,
    dagster_home,
    demo_rows,
    fresh_store,
)

CHAIN_TIMEOUT_S = 900


@pytest.fixture(scope="package")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow sqlite store: copying it saves each test MLflow's migrations."""
    from mlflow import MlflowClient

    database = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture(scope="package")
def concurrent_chains(
    tmp_path_factory: pytest.TempPathFactory,
    model_cache: Path,
    tiny_model: ResolvedModel,
    mlflow_store_template: Path,
) -> Iterator[ConcurrentChains]:
    """``ft-pipeline`` twice at once, different configs, secrets in the environment and on the command line.

    ``alpha`` fine-tunes a rank-4 adapter, logs it to MLflow, runs the baseline, samples its answers and has an
    LLM judge (the local OpenAI stub); ``beta`` fine-tunes a rank-8 adapter for 3 steps on other test rows, without them.
    """
    root = tmp_path_factory.mktemp("concurrent")
    home = dagster_home(root)
    uri = fresh_store(mlflow_store_template, root)
    captured = root / "captured"
    captured.mkdir()
    with OpenAIStub() as judge:
        plans = {
            "alpha": {
                "fine_tuner": {"max_steps": 2, "rank": 4, "lora_alpha": 8},
                # sampling: the random tiny model then answers in words, not only special tokens, so the
                # judge (and the OpenAI key) is really used
                "inferencer": {
                    "testing_data_id": str(demo_rows(root / "alpha_test.jsonl", 0, 8)),
                    "do_sample": True,
                    "temperature": 1.0,
                },
                "evaluator": {
                    "metrics": ["exact_match", "rouge_score", "answer_accuracy"],
                    "judge": {"base_url": judge.base_url, "max_retries": 0, "timeout_s": 20.0},
                },
                "mlflow": {"run_name_prefix": "alpha-", "log_model": True},
            },
            "beta": {
                "fine_tuner": {"max_steps": 3, "rank": 8, "lora_alpha": 16},
                "inferencer": {
                    "testing_data_id": str(demo_rows(root / "beta_test.jsonl", 8, 6)),
                    "run_baseline": False,
                    "max_new_tokens": 4,
                },
                "mlflow": {"run_name_prefix": "beta-", "log_model": False},
            },
        }
        env = {**os.environ, **ENV_SECRETS, "OMP_NUM_THREADS": "1"}
        cli = str(Path(sys.executable).parent / "ft-pipeline")
        started = {}
        for name, overrides in plans.items():
            config = ci_config(root / f"{name}.toml", root, model_cache, overrides)
            command = [cli, "--config", str(config), "--dagster-home", str(home), "--json"]
            for flag, value in CLI_SECRETS.items():
                command += [flag, value]
            out, err = (captured / f"{name}.stdout").open("w"), (captured / f"{name}.stderr").open("w")
            process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=err, text=True)
            started[name] = (process, config, out, err)
        runs = []
        for name, (process, config, out, err) in started.items():
            try:
                process.wait(timeout=CHAIN_TIMEOUT_S)
            finally:
                if process.poll() is None:
                    process.kill()
                out.close()
                err.close()
            runs.append(
                CliRun(
                    name,
                    config,
                    Path(plans[name]["inferencer"]["testing_data_id"]),
                    process.returncode,
                    (captured / f"{name}.stdout").read_text(),
                    (captured / f"{name}.stderr").read_text(),
                )
            )
    yield ConcurrentChains(root, home, uri, runs, judge.stats)
