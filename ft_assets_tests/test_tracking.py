"""ft_assets.tracking against a real MLflow server (and sqlite stores): names, secrets, the run tree."""

from __future__ import annotations

import math
import os
import threading
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from mlflow.utils.validation import _validate_metric_name, _validate_param_name, _validate_tag_name

from ft_assets.config import ConfigError, build_settings
from ft_assets.secrets import SECRET_ENV_VARS, redact, strip_credentials
from ft_assets.tracking import open_phase_run
from ft_assets.tracking_keys import sanitize_metric_name, sanitize_metrics
from ft_assets.tracking_options import TrackingOptions, TrackingUnavailableError, check_reachable
from ft_assets.tracking_run import OrchestratorRun
from ft_assets.tracking_store import find_or_create_parent
from ft_assets_tests.mlflow_server import MlflowServer, free_port

HOSTILE = {
    "rouge_score(mode=fmeasure)": "rouge_score_mode:fmeasure_",
    "eval/bleu score": "eval/bleu score",
    "a//b": "a/b",
    "/x": "x",
    "x/": "x",
    "a/./b": "a/_/b",
    "../up": "_/up",
    "..hidden": "_.hidden",
    "précision@k": "pr_cision_k",
    "": "_",
    "///": "_",
}


def _assert_valid(key: str) -> None:
    _validate_metric_name(key)
    _validate_param_name(key)
    _validate_tag_name(key)
    assert 0 < len(key) <= 250


@pytest.mark.parametrize(("name", "expected"), HOSTILE.items())
def test_sanitize_metric_name_applies_seed_and_mlflow_rules(name: str, expected: str) -> None:
    assert sanitize_metric_name(name) == expected
    _assert_valid(sanitize_metric_name(name))


def test_long_names_keep_a_prefix_and_stay_distinct() -> None:
    first, second = "m" * 300 + "_a", "m" * 300 + "_b"
    keys = {sanitize_metric_name(first), sanitize_metric_name(second)}
    assert len(keys) == 2
    for key in keys:
        _assert_valid(key)
        assert len(key) == 250 and key.startswith("m" * 243)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_any_name_becomes_a_key_mlflow_accepts(name: str) -> None:
    key = sanitize_metric_name(name)
    _assert_valid(key)
    assert sanitize_metric_name(key) == key


@settings(max_examples=100, deadline=None)
@given(
    st.from_regex(
        r"[A-Za-z0-9_\-:][A-Za-z0-9_\-. :]{0,30}(/[A-Za-z0-9_\-:][A-Za-z0-9_\-. :]{0,30}){0,3}",
        fullmatch=True,
    )
)
def test_valid_names_are_left_alone(name: str) -> None:
    assert sanitize_metric_name(name) == name


def test_sanitize_metrics_splits_numbers_from_text_and_resolves_collisions() -> None:
    values = {
        "loss": np.float32(0.5),
        "steps": np.int64(3),
        "converged": True,
        "a(b)": 1.0,
        "a[b]": 2.0,
        "a_b_": 3.0,
        "nan_loss": math.nan,
        "inf_loss": math.inf,
        "model": "smollm2",
        "missing": None,
    }
    metrics, texts = sanitize_metrics(values)
    assert metrics["loss"] == 0.5 and metrics["steps"] == 3.0 and metrics["converged"] == 1.0
    assert math.isnan(metrics["nan_loss"]) and metrics["inf_loss"] == math.inf
    assert texts == {"model": "smollm2"}
    assert "missing" not in metrics
    # The already-valid name keeps its key; the two that collide with it get distinct hashed keys.
    assert metrics["a_b_"] == 3.0
    hashed = sorted(k for k in metrics if k.startswith("a_b__"))
    assert len(hashed) == 2 and {metrics[k] for k in hashed} == {1.0, 2.0}
    # Order independent: the same batch in reverse order maps every name to the same key.
    assert sanitize_metrics(dict(reversed(values.items())))[0].keys() == metrics.keys()


def test_redact_removes_secret_values_and_url_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in SECRET_ENV_VARS:
        monkeypatch.setenv(var, f"s3cr3t-{var.lower()}")
    text = " ".join(f"s3cr3t-{var.lower()}" for var in SECRET_ENV_VARS) + " http://bob:hunter22@host:5000/x"
    clean = redact(text)
    assert "s3cr3t" not in clean and "hunter22" not in clean
    assert "http://bob:***@host:5000/x" in clean
    assert strip_credentials("https://bob:pw@host:5000/p") == "https://host:5000/p"
    monkeypatch.setenv("HF_TOKEN", "abc")  # too short to be treated as a secret
    assert redact("abc") == "abc"


def test_options_precedence_settings_then_resource_then_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_ = build_settings(
        {"mlflow": {"tracking_uri": "sqlite:///rel/m.db", "experiment_name": "toml", "required": False}},
        base_dir=tmp_path,
    )
    from_toml = TrackingOptions.resolve(settings_)
    assert from_toml.tracking_uri == f"sqlite:///{tmp_path / 'rel' / 'm.db'}"
    assert (from_toml.experiment_name, from_toml.required) == ("toml", False)

    resource = TrackingOptions.resolve(settings_, {"tracking_uri": "http://a:1", "experiment_name": "res"})
    assert (resource.tracking_uri, resource.experiment_name) == ("http://a:1", "res")
    assert resource.sources["tracking_uri"] == "resource config tracking_uri"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:2")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "env-exp")
    env = TrackingOptions.resolve(settings_, {"tracking_uri": "http://a:1", "experiment_name": "res"})
    assert (env.tracking_uri, env.experiment_name) == ("http://env:2", "env-exp")
    assert env.sources["tracking_uri"] == "environment variable MLFLOW_TRACKING_URI"

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    default = TrackingOptions.resolve(build_settings({}, base_dir=tmp_path))
    assert default.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize("var", ["HF_TOKEN", "OPENAI_API_KEY", "MY_SERVICE_PASSWORD"])
def test_env_to_tag_refuses_secrets(tmp_path: Path, var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        TrackingOptions.resolve(build_settings({}, base_dir=tmp_path), {"env_to_tag": ["USER", var]})


def test_run_name_validation_names_the_key(tmp_path: Path) -> None:
    options = TrackingOptions.resolve(
        build_settings({"mlflow": {"run_name_prefix": "team/"}}, base_dir=tmp_path), {"run_name": "ok"}
    )
    with pytest.raises(ConfigError, match=r"\[mlflow\] run_name_prefix.*'/'"):
        options.parent_run_name("0123456789")
    good = TrackingOptions.resolve(build_settings({}, base_dir=tmp_path), {"run_name_suffix": "-v2"})
    assert good.parent_run_name("abcdef0123").endswith("-abcdef01-v2")


def test_check_reachable(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    check_reachable(mlflow_server.url)
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailableError, match=rf"{closed} \(from env X\) is not reachable"):
        check_reachable(closed, "env X")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrackingUnavailableError, match="cannot be created"):
        check_reachable(f"sqlite:///{blocker}/sub/mlflow.db")
    check_reachable(f"sqlite:///{tmp_path}/new/mlflow.db")
    assert (tmp_path / "new").is_dir()


def _orchestrator() -> OrchestratorRun:
    return OrchestratorRun(run_id=uuid.uuid4().hex, url="http://dagster/runs/x")


def test_one_batch_of_hostile_metrics_lands_sanitized(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    options = TrackingOptions(mlflow_server.url, f"hostile-{uuid.uuid4().hex}", log_system_metrics=False)
    hostile = {name: float(i) for i, name in enumerate([*HOSTILE, "x" * 300, "ε=1"])}
    with open_phase_run(options, "evaluation", build_settings({}, base_dir=tmp_path), _orchestrator()) as run:
        run.log_metrics({**hostile, "loss": math.nan, "note": "text value"}, step=2)
        run.log_params({"lr": 0.1})
        run.log_params({"lr": 0.1})  # same value again: no error, nothing new
        run.log_params({"lr": 0.2})  # a different value goes to the next free slot
    # mlflow.set_tracking_uri exports the variable; it must not outlive the phase (it would win next time).
    assert "MLFLOW_TRACKING_URI" not in os.environ
    data = MlflowClient(mlflow_server.url).get_run(str(run.run_id)).data
    expected = {sanitize_metric_name(name) for name in hostile}
    assert expected <= set(data.metrics)
    assert "_:1" in data.metrics
    assert math.isnan(data.metrics["loss"])
    assert data.tags["note"] == "text value"
    assert data.params["lr"] == "0.1" and data.params["lr.2"] == "0.2"
    for key in data.metrics:
        _assert_valid(key)


def test_parent_creation_race_keeps_exactly_one(mlflow_server: MlflowServer) -> None:
    client = MlflowClient(mlflow_server.url)
    experiment_id = client.create_experiment(f"race-{uuid.uuid4().hex}")
    run_id = uuid.uuid4().hex
    barrier = threading.Barrier(4)
    chosen: list[str] = []

    def contend() -> None:
        barrier.wait()
        parent = find_or_create_parent(MlflowClient(mlflow_server.url), experiment_id, run_id, "race", {})
        chosen.append(parent.info.run_id)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(chosen) == 4 and len(set(chosen)) == 1
    alive = client.search_runs([experiment_id], filter_string=f"tags.dagster_run_id = '{run_id}'")
    assert [r.info.run_id for r in alive] == chosen[:1]


def test_datasets_artifacts_and_subprocess_env(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    options = TrackingOptions(mlflow_server.url, f"io-{uuid.uuid4().hex}", log_system_metrics=False)
    data_file = tmp_path / "train.jsonl"
    data_file.write_text('{"question": "q", "answer": "a"}\n')
    with open_phase_run(options, "finetuning", build_settings({}, base_dir=tmp_path), _orchestrator()) as run:
        run.log_dataset("train", "f" * 64, str(data_file), "training")
        run.log_dict({"a": [1, 2]}, "reports/summary.json")
        run.log_artifact(data_file, "data")
        env = run.subprocess_env()
    client = MlflowClient(mlflow_server.url)
    for run_id in (run.run_id, run.parent_run_id):
        logged = client.get_run(str(run_id))
        assert [d.dataset.name for d in logged.inputs.dataset_inputs] == ["train"]
        assert logged.data.params["dataset_train_hash"] == "f" * 64
    assert env == {
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "MLFLOW_RUN_ID": run.run_id,
        "MLFLOW_EXPERIMENT_ID": run.experiment_id,
    }
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.run_id, dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server.url
        )
    )
    assert (local / "reports" / "summary.json").read_text().replace(" ", "").replace(
        "\n", ""
    ) == '{"a":[1,2]}'
    assert (local / "data" / "train.jsonl").read_text() == data_file.read_text()


def _tiny_peft_adapter(root: Path) -> Path:
    """A random 2-layer Llama with a BPE tokenizer trained here, plus a LoRA adapter saved next to it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(["the capital of france is paris", "hello world"] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    base = LlamaForCausalLM.from_pretrained(root / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    return root / "adapter"


def test_log_peft_model_registers_and_aliases(
    tmp_path: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _tiny_peft_adapter(tmp_path)
    options = TrackingOptions(mlflow_server.url, f"model-{uuid.uuid4().hex}", log_system_metrics=False)
    registered = f"tiny-{uuid.uuid4().hex[:8]}"
    with open_phase_run(options, "finetuning", build_settings({}, base_dir=tmp_path), _orchestrator()) as run:
        uri = run.log_peft_model(adapter, "model", registered_model_name=registered)
        run.set_registry_alias(registered, str(run.registered_model_version), "champion")
    assert uri is not None and uri.startswith("models:/")
    client = MlflowClient(mlflow_server.url)
    version = client.get_model_version_by_alias(registered, "champion")
    assert version.version == run.registered_model_version == "1"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # models:/ URIs resolve through it
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "model")))
    assert (local / "MLmodel").is_file()
    assert any(p.name == "adapter_config.json" for p in local.rglob("*"))
    assert client.get_run(str(run.run_id)).info.status == "FINISHED"
