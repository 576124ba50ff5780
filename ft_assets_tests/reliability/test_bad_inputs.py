"""Bad inputs: each one is refused by preflight with the project's own error class and a message naming the
file, section, key or row at fault, in seconds and before anything is written.

Every case is a minimal change to the CI config (which passes preflight, see the first test), so each fails
for its own reason. Real files, a real tiny model and adapters saved by PEFT; no doubles.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ft_assets.config import ConfigError, load_settings
from ft_assets.config_sections import EMBEDDED_TINY
from ft_assets.errors import FtAssetsError
from ft_assets.phases.datasets import DatasetError
from ft_assets.phases.metrics import MetricsError
from ft_assets.phases.models import ModelError, ResolvedModel, embedded_model_dir
from ft_assets.preflight import PREFLIGHT_ERRORS, preflight
from ft_assets.secrets import SECRET_ENV_VARS
from ft_assets.tracking_options import TrackingUnavailableError
from ft_assets_tests.mlflow_server import free_port

#: A refusal must come well before any training could have started (generous: the machine may be busy).
MAX_PREFLIGHT_S = 30.0


def qa(question: str = "Extract name, city and age as JSON: Ann, 30, Oslo.", answer: str = "{}") -> dict:
    return {"question": question, "answer": answer}


@dataclass
class Workspace:
    """A test's folder: configs, data files and model folders it writes, and the names messages mention."""

    root: Path
    write_config: Callable[..., Path]
    tiny: Path
    adapters: dict[str, Path]
    adapter: Path | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "pipeline.toml"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def config(self, overrides: dict[str, Any] | None = None) -> Path:
        return self.write_config(overrides)

    def raw_config(self, text: str) -> Path:
        self.config_path.write_text(text, encoding="utf-8")
        return self.config_path

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    def jsonl(self, name: str, rows: list[Any]) -> str:
        """Rows as JSONL; a str row is written as the raw line."""
        import json

        return self.file(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    def model_copy(self, name: str, *drop: str, config: str | None = None) -> str:
        """A copy of the tiny model folder without the files in ``drop`` (and ``config`` as its config.json)."""
        target = self.root / name
        shutil.copytree(self.tiny, target, ignore=shutil.ignore_patterns(*drop, ".ft_assets_hash.json"))
        if config is not None:
            (target / "config.json").write_text(config, encoding="utf-8")
        return str(target)

    def names(self) -> dict[str, str]:
        return {"tmp": str(self.root), "config": str(self.config_path)}


@dataclass(frozen=True)
class Case:
    """A bad input: how to make it, what error class it must raise, and what its message must name."""

    id: str
    setup: Callable[[Workspace], Path]
    error: type[Exception]
    fragments: tuple[str, ...]
    phases: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)


def case(
    id: str, setup: Callable[[Workspace], Path], error: type[Exception], *fragments: str, **kw: Any
) -> Case:
    return Case(id, setup, error, fragments, **kw)


def _train_file(ws: Workspace, rows: list[Any], name: str = "train.jsonl") -> Path:
    return ws.config({"fine_tuner": {"training_data_id": ws.jsonl(name, rows)}})


def _test_file(ws: Workspace, rows: list[Any], **evaluator: Any) -> Path:
    overrides: dict[str, Any] = {"inferencer": {"testing_data_id": ws.jsonl("test.jsonl", rows)}}
    if evaluator:
        overrides["evaluator"] = evaluator
    return ws.config(overrides)


def _with_adapter(ws: Workspace, name: str) -> Path:
    ws.adapter = ws.adapters[name]
    return ws.config()


LONG_ANSWER = " ".join(["Maria Lopez lives in Lyon and is 34 years old."] * 40)

CASES = [
    # ------------------------------------------------------------------------------------------- config
    case(
        "unknown-section",
        lambda ws: ws.config({"fine_tunner": {"rank": 8}}),
        ConfigError, "{config}", "unknown section [fine_tunner]", "did you mean 'fine_tuner'",
    ),
    case(
        "unknown-key",
        lambda ws: ws.config({"fine_tuner": {"rnak": 8}}),
        ConfigError, "{config}", "[fine_tuner] unknown key 'rnak'", "did you mean 'rank'",
    ),
    case(
        "unknown-nested-key",
        lambda ws: ws.config({"evaluator": {"judge": {"modle": "x"}}}),
        ConfigError, "{config}", "[evaluator.judge] unknown key 'modle'", "did you mean 'model'",
    ),
    case(
        "wrong-type-int",
        lambda ws: ws.config({"inferencer": {"batch_size": "many"}}),
        ConfigError, "{config}", "[inferencer] batch_size", "'many'",
    ),
    case(
        "wrong-type-float",
        lambda ws: ws.config({"fine_tuner": {"learning_rate": "fast"}}),
        ConfigError, "[fine_tuner] learning_rate", "'fast'",
    ),
    case(
        "wrong-type-list",
        lambda ws: ws.config({"evaluator": {"metrics": "rouge_score"}}),
        ConfigError, "[evaluator] metrics",
    ),
    case(
        "negative-rank",
        lambda ws: ws.config({"fine_tuner": {"rank": -4}}),
        ConfigError, "[fine_tuner] rank", "greater than 0", "-4",
    ),
    case(
        "zero-batch-size",
        lambda ws: ws.config({"inferencer": {"batch_size": 0}}),
        ConfigError, "[inferencer] batch_size", "greater than 0",
    ),
    case(
        "zero-max-length",
        lambda ws: ws.config({"fine_tuner": {"max_length": 0}}),
        ConfigError, "[fine_tuner] max_length",
    ),
    case(
        "zero-max-steps",
        lambda ws: ws.config({"fine_tuner": {"max_steps": 0}}),
        ConfigError, "[fine_tuner] max_steps", "positive number of steps",
    ),
    case(
        "validation-split-out-of-range",
        lambda ws: ws.config({"fine_tuner": {"validation_split": 1.5}}),
        ConfigError, "[fine_tuner] validation_split",
    ),
    case(
        "4bit-and-8bit",
        lambda ws: ws.config({"fine_tuner": {"load_in_4bit": True, "load_in_8bit": True}}),
        ConfigError, "{config}: [fine_tuner] load_in_4bit and load_in_8bit are both true",
    ),
    case(
        "full-finetuning-of-quantized-weights",
        lambda ws: ws.config({"fine_tuner": {"method": "full", "load_in_4bit": True}}),
        ConfigError, "[fine_tuner] method = 'full'", "load_in_4bit",
    ),
    case(
        "unknown-scheduler",
        lambda ws: ws.config({"fine_tuner": {"lr_scheduler_type": "cosin"}}),
        ConfigError, "[fine_tuner] lr_scheduler_type = 'cosin'", "did you mean 'cosine'",
    ),
    case(
        "unknown-optimizer",
        lambda ws: ws.config({"fine_tuner": {"optim": "adamw_torh"}}),
        ConfigError, "[fine_tuner] optim = 'adamw_torh'", "did you mean 'adamw_torch'",
    ),
    case(
        "unknown-dataset-format",
        lambda ws: ws.config({"inferencer": {"dataset_format": "jsonl"}}),
        ConfigError, "[inferencer] dataset_format", "'jsonl'",
    ),
    case(
        "unknown-metric",
        lambda ws: ws.config({"evaluator": {"metrics": ["rouge_scor"], "primary_metric": "rouge_scor"}}),
        ConfigError, "[evaluator] metrics", "unknown metric 'rouge_scor'", "did you mean 'rouge_score'",
    ),
    case(
        "primary-metric-not-configured",
        lambda ws: ws.config({"evaluator": {"primary_metric": "chrf_score"}}),
        ConfigError, "evaluator", "'chrf_score' is not one of the configured metrics",
    ),
    case(
        "threshold-on-unconfigured-metric",
        lambda ws: ws.config({"evaluator": {"thresholds": {"chrf_score": 0.5}}}),
        ConfigError, "evaluator", "'chrf_score' is not one of the configured metrics",
    ),
    case(
        "judge-metric-without-endpoint-or-key",
        lambda ws: ws.config({"evaluator": {"metrics": ["answer_accuracy"], "primary_metric": "answer_accuracy"}}),
        MetricsError, "evaluator.metrics ['answer_accuracy']", "OPENAI_API_KEY",
        "evaluator.judge.base_url is unset",
    ),
    case(
        "judge-url-without-scheme",
        lambda ws: ws.config(
            {
                "evaluator": {
                    "metrics": ["answer_accuracy"],
                    "primary_metric": "answer_accuracy",
                    "judge": {"base_url": "localhost:8000/v1"},
                }
            }
        ),
        MetricsError, "evaluator.judge.base_url = 'localhost:8000/v1'", "not an http(s) URL",
        env={"OPENAI_API_KEY": "sk-test-key-for-preflight"},
    ),
    case(
        "push-to-hub-without-token",
        lambda ws: ws.config({"fine_tuner": {"push_to_hub": True, "hub_model_id": "me/model"}}),
        ConfigError, "[fine_tuner] push_to_hub = true", "HF_TOKEN", "--hf-key",
    ),
    case(
        "push-to-hub-without-repo",
        lambda ws: ws.config({"fine_tuner": {"push_to_hub": True}}),
        ConfigError, "{config}: [fine_tuner] push_to_hub = true needs hub_model_id",
    ),
    case(
        "cuda-forced-without-gpu",
        lambda ws: ws.config({"fine_tuner": {"device": "cuda"}}),
        ModelError, "[fine_tuner] device = 'cuda'", "no CUDA device",
    ),
    case(
        "malformed-toml",
        lambda ws: ws.raw_config("[fine_tuner\nrank = 4\n"),
        ConfigError, "{config}", "malformed TOML", "line 1",
    ),
    case(
        "unset-env-reference",
        lambda ws: ws.config({"fine_tuner": {"training_data_id": "${FT_ASSETS_UNSET_DATA_DIR}/train.jsonl"}}),
        ConfigError, "{config}", "fine_tuner.training_data_id", "${FT_ASSETS_UNSET_DATA_DIR}", "is unset",
    ),
    case(
        "artifacts-root-under-a-file",
        lambda ws: ws.config({"pipeline": {"artifacts_root": ws.file("not-a-dir", "x") + "/artifacts"}}),
        ConfigError, "[pipeline] artifacts_root", "{tmp}/not-a-dir is a file",
    ),
    case(
        "unknown-phase",
        lambda ws: ws.config(),
        ConfigError, "unknown phase(s) ['training']",
        phases=("training",),
    ),
    # --------------------------------------------------------------------------------------------- data
    case(
        "missing-training-file",
        lambda ws: ws.config({"fine_tuner": {"training_data_id": str(ws.root / "absent.jsonl")}}),
        DatasetError, "[fine_tuner] training_data_id", "dataset file not found: {tmp}/absent.jsonl",
    ),
    case(
        "empty-training-file",
        lambda ws: ws.config({"fine_tuner": {"training_data_id": ws.file("empty.jsonl", "\n\n")}}),
        DatasetError, "[fine_tuner] training_data_id", "{tmp}/empty.jsonl", "the dataset is empty",
    ),
    case(
        "malformed-jsonl-line",
        lambda ws: _train_file(ws, [qa(), qa(), '{"question": "broken", "answer": ', qa()]),
        DatasetError, "[fine_tuner] training_data_id", "{tmp}/train.jsonl", "line 3: malformed JSON",
    ),
    case(
        "missing-answer-column",
        lambda ws: _train_file(ws, [{"question": "q1"}, {"question": "q2"}]),
        DatasetError, "{tmp}/train.jsonl", "column 'answer' (from ground_truth_column) is in no row",
    ),
    case(
        "question-column-misnamed",
        lambda ws: ws.config(
            {
                "fine_tuner": {
                    "training_data_id": ws.jsonl("train.jsonl", [qa(), qa()]),
                    "dataset_format": "qa",
                    "question_column": "questoin",
                }
            }
        ),
        DatasetError, "column 'questoin' (from question_column) is in no row", "did you mean 'question'",
    ),
    case(
        "empty-string-answer",
        lambda ws: _train_file(ws, [qa(), qa(answer="  "), qa()]),
        DatasetError, "{tmp}/train.jsonl", "row 2 [answer]: empty value",
    ),
    case(
        "non-string-question",
        lambda ws: _train_file(ws, [{"question": 42, "answer": "forty-two"}, qa()]),
        DatasetError, "{tmp}/train.jsonl", "row 1 [question]: expected a string, got int",
    ),
    case(
        "unknown-role-in-messages",
        lambda ws: _train_file(
            ws,
            [
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
                {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
            ],
        ),
        DatasetError, "row 2 [messages]", "messages[0].role: unknown role 'robot'",
    ),
    case(
        "undetectable-format",
        lambda ws: _train_file(ws, [{"prompt_text": "q", "reply": "a"}]),
        DatasetError, "{tmp}/train.jsonl", "cannot detect the dataset format", "'prompt_text'",
    ),
    case(
        "unsupported-file-type",
        lambda ws: ws.config({"fine_tuner": {"training_data_id": ws.file("train.txt", "question? answer")}}),
        DatasetError, "{tmp}/train.txt", "unsupported file type '.txt'",
    ),
    case(
        "not-utf8",
        lambda ws: ws.config({"fine_tuner": {"training_data_id": ws.file("train.jsonl", b'{"question": "\xff"}\n')}}),
        DatasetError, "{tmp}/train.jsonl", "not UTF-8",
    ),
    case(
        "json-file-not-a-list",
        lambda ws: ws.config({"fine_tuner": {"training_data_id": ws.file("train.json", '{"rows": 3}')}}),
        DatasetError, "{tmp}/train.json", "expected a JSON list",
    ),
    case(
        "malformed-validation-file",
        lambda ws: ws.config(
            {"fine_tuner": {"validation_data_id": ws.jsonl("validation.jsonl", [qa(), "not json"])}}
        ),
        DatasetError, "[fine_tuner] validation_data_id", "{tmp}/validation.jsonl", "line 2: malformed JSON",
    ),
    case(
        "validation-split-leaves-no-training-rows",
        lambda ws: ws.config(
            {
                "fine_tuner": {
                    "training_data_id": ws.jsonl("train.jsonl", [qa()]),
                    "validation_data_id": "",
                    "validation_split": 0.5,
                }
            }
        ),
        DatasetError, "[fine_tuner]", "validation_split = 0.5 of 1 examples leaves no examples for training",
    ),
    case(
        "test-set-without-ground-truth",
        lambda ws: _test_file(ws, [{"question": "q1"}, {"question": "q2"}]),
        DatasetError, "[inferencer] testing_data_id", "{tmp}/test.jsonl", "2 of 2 rows have no ground truth",
        "rows 1, 2", "'rouge_score'",
    ),
    case(
        "test-set-with-some-rows-unlabelled",
        lambda ws: _test_file(ws, [qa(), {"question": "q2"}, qa(), {"question": "q4", "answer": ""}]),
        DatasetError, "[inferencer] testing_data_id", "2 of 4 rows have no ground truth", "rows 2, 4",
    ),
    case(
        "row-longer-than-max-length",
        lambda ws: ws.config(
            {
                "fine_tuner": {
                    "training_data_id": ws.jsonl("train.jsonl", [qa(), qa(answer=LONG_ANSWER), qa()]),
                    "validation_data_id": "",
                    "max_length": 128,
                }
            }
        ),
        DatasetError, "[fine_tuner] max_length = 128", "{tmp}/train.jsonl", "row 2:",
        "exceeds max_length=128",
    ),
    case(
        "faithfulness-without-contexts",
        lambda ws: ws.config({"evaluator": {"metrics": ["faithfulness"], "primary_metric": "faithfulness"}}),
        MetricsError, "evaluator.metrics ['faithfulness']", "'contexts'",
        env={"OPENAI_API_KEY": "sk-test-key-for-preflight"},
    ),
    # -------------------------------------------------------------------------------------------- model
    case(
        "missing-model-path",
        lambda ws: ws.config({"fine_tuner": {"base_model_id": str(ws.root / "models" / "absent")}}),
        ModelError, "[fine_tuner] base_model_id", "base model path does not exist: {tmp}/models/absent",
    ),
    case(
        "model-folder-without-config",
        lambda ws: ws.config({"fine_tuner": {"base_model_id": ws.model_copy("no-config", "config.json")}}),
        ModelError, "[fine_tuner] base_model_id", "{tmp}/no-config has no config.json",
    ),
    case(
        "model-config-not-json",
        lambda ws: ws.config({"fine_tuner": {"base_model_id": ws.model_copy("bad-config", config="{not json")}}),
        ModelError, "{tmp}/bad-config/config.json is not valid JSON",
    ),
    case(
        "model-folder-without-weights",
        lambda ws: ws.config({"fine_tuner": {"base_model_id": ws.model_copy("no-weights", "*.safetensors")}}),
        ModelError, "{tmp}/no-weights has no weights",
    ),
    case(
        "unknown-embedded-model",
        lambda ws: ws.config({"fine_tuner": {"base_model_id": "embedded:gpt-9"}}),
        ModelError, "[fine_tuner] base_model_id = 'embedded:gpt-9' is not an embedded model",
    ),
    case(
        "hub-model-offline-and-not-cached",
        lambda ws: ws.config({"fine_tuner": {"base_model_id": "nobody-here/no-such-model"}}),
        ModelError, "[fine_tuner] base_model_id = 'nobody-here/no-such-model'", "HF_HUB_OFFLINE",
        env={"HF_HUB_OFFLINE": "1"},
    ),
    case(
        "tokenizer-without-chat-template",
        lambda ws: ws.config({"fine_tuner": {"base_model_id": ws.model_copy("no-template", "chat_template.jinja")}}),
        ModelError, "{tmp}/no-template has no chat template", "[fine_tuner] chat_template is unset",
    ),
    case(
        "chat-template-file-missing",
        lambda ws: ws.config({"fine_tuner": {"chat_template": "templates/absent.jinja"}}),
        ModelError, "[fine_tuner] chat_template", "'templates/absent.jinja' is neither a known family",
    ),
    case(
        "end-of-turn-token-not-in-the-vocabulary",
        lambda ws: ws.config({"fine_tuner": {"end_of_turn_token": "<|eot_id|>"}}),
        ModelError, "end-of-turn token '<|eot_id|>'", "[fine_tuner] end_of_turn_token",
        "is not a token of the tokenizer in",
    ),
    case(
        "adapter-of-another-base-model",
        lambda ws: _with_adapter(ws, "wider"),
        ModelError, "does not fit base model", "[fine_tuner] base_model_id = 'embedded:tiny-llama'",
        "model.layers.0.self_attn.q_proj", "[4, 48]", "[32, 32]",
    ),
    case(
        "adapter-with-more-layers-than-the-base",
        lambda ws: _with_adapter(ws, "deeper"),
        ModelError, "adapts model.layers.2.self_attn.q_proj", "does not have",
    ),
    case(
        "adapter-folder-is-not-an-adapter",
        lambda ws: _with_adapter(ws, "not-an-adapter"),
        ModelError, "has no adapter_config.json (not a PEFT adapter)",
    ),
    # ----------------------------------------------------------------------------------------- tracking
    case(
        "unreachable-tracking-server",
        lambda ws: ws.config({"mlflow": {"tracking_uri": f"http://127.0.0.1:{free_port()}"}}),
        TrackingUnavailableError, "http://127.0.0.1:", "(from [mlflow] tracking_uri) is not reachable",
        "required = false",
    ),
    case(
        "tracking-store-under-a-file",
        lambda ws: ws.config({"mlflow": {"tracking_uri": f"sqlite:///{ws.file('plain-file', 'x')}/mlflow.db"}}),
        TrackingUnavailableError, "{tmp}/plain-file", "[mlflow] tracking_uri",
    ),
    case(
        "unknown-tracking-scheme",
        lambda ws: ws.config({"mlflow": {"tracking_uri": "htps://mlflow.example.com"}}),
        ConfigError, "[mlflow] tracking_uri", "unknown scheme 'htps'", "did you mean 'https'",
    ),
    case(
        "file-store-tracking-uri",
        lambda ws: ws.config({"mlflow": {"tracking_uri": str(ws.root / "mlruns")}}),
        ConfigError, "[mlflow] tracking_uri", "file store", "sqlite:///",
    ),
    case(
        "experiment-name-dots",
        lambda ws: ws.config({"mlflow": {"experiment_name": ".."}}),
        ConfigError, "[mlflow] experiment_name", "'..'",
    ),
    case(
        "experiment-name-blank",
        lambda ws: ws.config({"mlflow": {"experiment_name": "   "}}),
        ConfigError, "[mlflow] experiment_name", "is blank",
    ),
    case(
        "experiment-name-too-long",
        lambda ws: ws.config({"mlflow": {"experiment_name": "x" * 501}}),
        ConfigError, "[mlflow] experiment_name", "longer than MLflow's 500 characters",
    ),
    case(
        "run-name-with-a-slash",
        lambda ws: ws.config({"mlflow": {"run_name": "nightly/run"}}),
        ConfigError, "[mlflow] run_name", "'/'",
    ),
]  # fmt: skip


def _adapter(base: Any, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_model: ResolvedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LoRA adapters saved by PEFT: one for the tiny model, and two for models of other shapes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    small = {"vocab_size": 320, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
    wider = LlamaForCausalLM(LlamaConfig(hidden_size=48, num_hidden_layers=2, **small))
    deeper = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=3, **small))
    (root / "not-an-adapter").mkdir()
    return {
        "matching": _adapter(AutoModelForCausalLM.from_pretrained(tiny_model.path), root / "matching"),
        "wider": _adapter(wider, root / "wider"),
        "deeper": _adapter(deeper, root / "deeper"),
        "not-an-adapter": root / "not-an-adapter",
    }


@pytest.fixture
def workspace(
    tmp_path: Path,
    write_config: Callable[..., Path],
    tiny_model: ResolvedModel,
    adapters: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> Workspace:
    for name in (*SECRET_ENV_VARS, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return Workspace(tmp_path, write_config, tiny_model.path, adapters)


def test_the_unchanged_ci_config_passes_preflight(workspace: Workspace) -> None:
    workspace.adapter = workspace.adapters["matching"]
    report = preflight(load_settings(workspace.config()), adapter=workspace.adapter)
    assert report.base_model_dir == workspace.tiny
    assert {d.key: d.usable for d in report.datasets} == {
        "[fine_tuner] training_data_id": 400,
        "[fine_tuner] validation_data_id": 40,
        "[inferencer] testing_data_id": 60,
    }
    assert any("fit max_length = 256" in item for item in report.passed)
    assert any("fits the base model" in item for item in report.passed)
    assert report.tracked and report.warnings == []
    assert not workspace.artifacts.exists()


def test_the_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.error for c in CASES} == set(PREFLIGHT_ERRORS)
    assert all(issubclass(error, FtAssetsError) for error in PREFLIGHT_ERRORS)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_early_with_a_precise_error(
    bad: Case, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in bad.env.items():
        monkeypatch.setenv(name, value)
    config = bad.setup(workspace)
    started = time.perf_counter()
    with pytest.raises(PREFLIGHT_ERRORS) as caught:
        preflight(load_settings(config), phases=bad.phases, adapter=workspace.adapter)
    elapsed = time.perf_counter() - started

    assert type(caught.value) is bad.error, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    for fragment in bad.fragments:
        expected = (
            fragment.format(**workspace.names())
            if "{tmp}" in fragment or "{config}" in fragment
            else fragment
        )
        assert expected in message, f"{expected!r} not in: {message}"
    assert elapsed < MAX_PREFLIGHT_S
    assert not workspace.artifacts.exists(), "preflight wrote into the artifacts root"


def test_a_hub_validation_set_is_read_from_validation_dataset_split(workspace: Workspace) -> None:
    hub = {"validation_data_id": "someowner/some-dataset", "validation_dataset_split": "dev"}
    with pytest.raises(DatasetError) as caught:  # offline: the hub lookup fails, naming what it asked for
        preflight(load_settings(workspace.config({"fine_tuner": hub})), phases={"finetuning"})
    message = str(caught.value)
    assert message.startswith("[fine_tuner] validation_data_id = 'someowner/some-dataset': ")
    assert "split 'dev'" in message


def test_preflight_skips_what_the_selected_phases_do_not_need(workspace: Workspace) -> None:
    broken_training = _train_file(workspace, ["not json"])
    report = preflight(load_settings(broken_training), phases={"evaluation"})
    assert [d.key for d in report.datasets] == ["[inferencer] testing_data_id"]
    with pytest.raises(DatasetError, match="line 1: malformed JSON"):
        preflight(load_settings(broken_training), phases={"finetuning"})


def test_an_unreachable_optional_store_is_a_warning(workspace: Workspace) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    config = workspace.config({"mlflow": {"tracking_uri": uri, "required": False}})
    report = preflight(load_settings(config), phases={"evaluation"})
    assert not report.tracked
    assert any(uri in warning and "untracked" in warning for warning in report.warnings)


def test_dropped_rows_are_reported_as_warnings(workspace: Workspace) -> None:
    rows = [qa(), qa(answer=""), qa(answer=LONG_ANSWER), qa()]
    fine_tuner = {
        "training_data_id": workspace.jsonl("train.jsonl", rows),
        "validation_data_id": "",
        "max_length": 128,
        "on_bad_rows": "drop",
    }
    report = preflight(load_settings(workspace.config({"fine_tuner": fine_tuner})), phases={"finetuning"})
    assert {d.key: (d.rows, d.usable) for d in report.datasets} == {"[fine_tuner] training_data_id": (4, 3)}
    assert any("1 unusable rows are dropped" in w for w in report.warnings)
    assert any("1 rows are longer and are dropped" in w for w in report.warnings)


def test_preflight_knows_where_the_base_model_phase_caches_embedded_models(
    tiny_model: ResolvedModel, model_cache: Path
) -> None:
    assert embedded_model_dir(EMBEDDED_TINY, model_cache) == tiny_model.path


def test_preflight_cli_exit_status(workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    from ft_assets.preflight import main

    assert main(["--config", str(workspace.config()), "--phases", "evaluation"]) == 0
    assert "passed" in capsys.readouterr().out
    bad = workspace.config(
        {"evaluator": {"metrics": ["answer_accuracy"], "primary_metric": "answer_accuracy"}}
    )
    assert main(["--config", str(bad), "--phases", "evaluation"]) == 1
    assert "MetricsError: evaluator.metrics ['answer_accuracy']" in capsys.readouterr().err
