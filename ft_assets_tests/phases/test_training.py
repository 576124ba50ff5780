"""Fine-tuning on the tiny embedded Llama: labels, methods, trainer arguments, outputs, EOS, resume.

Real components throughout (TRL SFTTrainer, PEFT, bitsandbytes on CPU, a real subprocess killed with
SIGKILL); one LoRA run is trained once per module and shared by the output, merge and EOS tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerCallback

from ft_assets.config import InferencerConfig, Settings, load_settings
from ft_assets.config_sections import DatasetColumns
from ft_assets.phases.checkpoints import (
    checkpoint_root,
    last_checkpoint,
    prune_stale_checkpoints,
    training_fingerprint,
)
from ft_assets.phases.datasets import DatasetError, LoadedDataset, load_dataset
from ft_assets.phases.generation import generate_rows, load_for_inference
from ft_assets.phases.io import sha256_file
from ft_assets.phases.label_masks import tokenize_example, trained_token_count
from ft_assets.phases.models import (
    CHATML_TEMPLATE,
    MODEL_INFO_FILE,
    ModelError,
    ResolvedModel,
    detect_device,
    load_tokenizer,
    resolve_base_model,
)
from ft_assets.phases.training import (
    TrainingResult,
    build_trainer,
    load_training_data,
    prepare_examples,
    train,
)
from ft_assets_tests.conftest import CI_CONFIG, PROJECT_ROOT

SHORT_ANSWERS = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Italy?", "Rome."),
    ("Where does Maria live?", "Lyon."),
    ("What is the capital of Spain?", "Madrid."),
    ("How old is Maria?", "34"),
    ("Is the fox quick?", "Yes."),
    ("Is the dog lazy?", "Yes."),
    ("Is the dog quick?", "No."),
]
#: Far above max_length = 256 tokens once templated.
OVERLONG_QUESTION = "The quick brown fox jumps over the lazy dog. " * 60
MAX_NEW_TOKENS = 16
#: A Jinja template file for ``chat_template``: ChatML with a default system turn.
BRIEF_CHATML = (
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nAnswer briefly.<|im_end|>\\n' }}"
    "{%- endif -%}" + CHATML_TEMPLATE
)


def write_rows(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
    return path


def settings_for(root: Path, model_cache: Path, train_file: Path, **fine_tuner: Any) -> Settings:
    """config/ci.toml with outputs under ``root``, ``train_file`` as the only data, and overrides."""
    overrides = {
        "fine_tuner": {"training_data_id": str(train_file), "validation_data_id": None, **fine_tuner},
        "pipeline": {"artifacts_root": str(root / "artifacts"), "model_cache_dir": str(model_cache)},
    }
    return load_settings(CI_CONFIG, overrides=overrides)


def _validated_settings(root: Path, model_cache: Path, data_dir: Path, **fine_tuner: Any) -> Settings:
    """settings_for() the short answers, with the validation file."""
    validation = str(data_dir / "validation.jsonl")
    return settings_for(
        root, model_cache, data_dir / "short.jsonl", validation_data_id=validation, **fine_tuner
    )


def run_training(
    settings: Settings, base: ResolvedModel, output_dir: Path, **kwargs: Any
) -> tuple[TrainingResult, LoadedDataset]:
    """train() as the CLI calls it: checkpoints under ``<artifacts_root>/fine_tuned_model/checkpoints``."""
    train_set, validation_set = load_training_data(settings)
    result = train(
        settings,
        base,
        train_set,
        validation_set,
        output_dir=output_dir,
        checkpoint_root=checkpoint_root(settings),
        **kwargs,
    )
    return result, train_set


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run ~4x faster on one thread when the 2 CI cores are shared (OpenMP spin-waits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("training_data")
    write_rows(root / "short.jsonl", SHORT_ANSWERS)
    # row 9 is too long for max_length: the shared run drops it
    write_rows(root / "short_plus_overlong.jsonl", [*SHORT_ANSWERS, (OVERLONG_QUESTION, "No.")])
    write_rows(root / "validation.jsonl", SHORT_ANSWERS[:2])
    (root / "brief_chatml.jinja").write_text(BRIEF_CHATML)
    return root


@pytest.fixture(scope="module")
def learnable_base(tiny_model: ResolvedModel, model_cache: Path) -> ResolvedModel:
    """The tiny Llama with 25x larger embeddings, as a local base model.

    With hidden size 32 and the default init (std 0.02) of the tied embeddings, logits stay below ~0.7
    whatever LoRA does (the final RMSNorm fixes the hidden-state norm), so a LoRA run cannot fit
    even 8 short answers; with wider embeddings it does in 40 steps.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = model_cache / "tiny-llama-wide-embeddings"
    if not (target / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(tiny_model.path)
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(25)
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(tiny_model.path).save_pretrained(target)
    return resolve_base_model(str(target), cache_dir=model_cache, base_dir=PROJECT_ROOT)


@dataclass
class SharedRun:
    result: TrainingResult
    train_set: LoadedDataset
    settings: Settings
    relayed_logs: list[tuple[dict[str, float], int]]


@pytest.fixture(scope="module")
def shared_run(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, data_dir: Path, learnable_base: ResolvedModel
) -> SharedRun:
    """40 LoRA steps at a high learning rate on 8 short answers, merged copy included, overlong row dropped."""
    root = tmp_path_factory.mktemp("shared_run")
    settings = settings_for(
        root,
        model_cache,
        data_dir / "short_plus_overlong.jsonl",
        base_model_id=str(learnable_base.path),
        max_steps=40,
        learning_rate=0.02,
        rank=8,
        lora_alpha=16,
        lora_dropout=0.0,
        per_device_train_batch_size=8,
        logging_steps=10,
        save_steps=1000,
        on_bad_rows="drop",
        merge_adapter=True,
        chat_template=str(data_dir / "brief_chatml.jinja"),
    )
    logs: list[tuple[dict[str, float], int]] = []
    result, train_set = run_training(
        settings,
        learnable_base,
        root / "adapter",
        on_log=lambda entry, step: logs.append((dict(entry), step)),
    )
    return SharedRun(result, train_set, settings, logs)


# ------------------------------------------------------------------------------------------ labels


def _trainer_for(
    tmp_path: Path, model_cache: Path, base: ResolvedModel, train_file: Path, **fine_tuner: Any
) -> tuple[Any, Any]:
    settings = settings_for(tmp_path, model_cache, train_file, **fine_tuner)
    tokenizer = load_tokenizer(base.path)
    train_set, _ = load_training_data(settings)
    examples, validation, _ = prepare_examples(settings, train_set, None, tokenizer)
    trainer = build_trainer(
        settings,
        base,
        tokenizer,
        examples,
        validation,
        checkpoint_dir=tmp_path / "checkpoints",
        device=detect_device("cpu"),
    )
    return trainer, tokenizer


@pytest.mark.parametrize("responses_only", [True, False])
def test_labels_mask_the_prompt_only_when_training_on_responses(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path, responses_only: bool
) -> None:
    trainer, tokenizer = _trainer_for(
        tmp_path, model_cache, tiny_model, data_dir / "short.jsonl", train_on_responses_only=responses_only
    )
    # the batches the trainer really trains on: its dataset through its collator (with padding)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(SHORT_ANSWERS))])
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    for row, (question, answer) in enumerate(SHORT_ANSWERS):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        real = batch["attention_mask"][row].bool()
        assert (labels[~real] == -100).all(), "padding is never trained"
        ids, labels = ids[real].tolist(), labels[real].tolist()
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
        assert ids[: len(prompt)] == prompt
        trained = [token for token, label in zip(ids, labels, strict=True) if label != -100]
        if responses_only:
            assert labels[: len(prompt)] == [-100] * len(prompt)
            # the template's newline after the end-of-turn token is formatting, not answer: untrained
            assert trained == ids[len(prompt) : -1] and labels[-1] == -100
            assert tokenizer.decode(trained) == f"{answer}<|im_end|>"
        else:
            assert trained == ids
            assert tokenizer.decode(trained).startswith(f"<|im_start|>user\n{question}")
        assert eos in trained, "the end-of-turn EOS must be learned, or generation never stops"


def test_trainer_arguments_follow_the_config(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    trainer, _ = _trainer_for(
        tmp_path,
        model_cache,
        tiny_model,
        data_dir / "short.jsonl",
        epochs=3.0,
        max_steps=-1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        learning_rate=3e-4,
        lr_scheduler_type="linear",
        warmup_ratio=0.1,
        weight_decay=0.01,
        optim="adafactor",
        seed=7,
        max_length=200,
        logging_steps=3,
        save_steps=6,
        save_total_limit=1,
        group_by_length=True,
        gradient_checkpointing=True,
    )
    args = trainer.args
    assert (args.num_train_epochs, args.max_steps) == (3.0, -1)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (2, 4)
    assert (args.learning_rate, args.lr_scheduler_type.value, args.weight_decay) == (3e-4, "linear", 0.01)
    assert args.get_warmup_steps(100) == 10, "warmup_ratio is a fraction of the total steps"
    assert (args.optim.value, args.seed, args.data_seed, args.max_length) == ("adafactor", 7, 7, 200)
    assert (args.logging_steps, args.save_steps, args.save_total_limit) == (3, 6, 1)
    assert args.activation_checkpointing and args.gradient_checkpointing
    assert isinstance(trainer._get_train_sampler(), LengthGroupedSampler)
    # CPU: fp32 weights and no mixed precision
    assert not (args.bf16 or args.fp16) and args.use_cpu
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


# ------------------------------------------------------------------------------------------ refusals


def test_overlong_rows_are_an_error_naming_the_row(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    settings = settings_for(tmp_path, model_cache, data_dir / "short_plus_overlong.jsonl")
    with pytest.raises(DatasetError, match=r"row 9: \d+ tokens after templating exceeds max_length=256"):
        run_training(settings, tiny_model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"push_to_hub": True, "hub_model_id": "someone/adapter"},
            "push_to_hub = true needs a Hugging Face token",
        ),
    ],
)
def test_unsafe_or_impossible_setups_are_refused_before_writing(
    tmp_path: Path,
    model_cache: Path,
    tiny_model: ResolvedModel,
    data_dir: Path,
    overrides: dict[str, Any],
    message: str,
) -> None:
    settings = settings_for(tmp_path, model_cache, data_dir / "short.jsonl", **overrides)
    with pytest.raises(ModelError, match=message):
        run_training(settings, tiny_model, tmp_path / "out", hub_token=None)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ methods


class ModelProbe(TrainerCallback):
    """Keeps the model the trainer trains, to inspect its layers."""

    model: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.model = model


def _base_layer(model: Any) -> Any:
    return next(module for name, module in model.named_modules() if name.endswith("q_proj.base_layer"))


def _check_rslora_with_checkpointing(model: Any, adapter: dict[str, Any]) -> None:
    assert adapter["use_rslora"] is True
    assert model.is_activation_checkpointing


def _check_dora(model: Any, adapter: dict[str, Any]) -> None:
    assert adapter["use_dora"] is True
    assert hasattr(
        model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj"), "lora_magnitude_vector"
    )


def _check_4bit(model: Any, adapter: dict[str, Any]) -> None:
    layer = _base_layer(model)
    assert type(layer).__name__ == "Linear4bit"
    assert layer.weight.quant_state.quant_type == "nf4"
    assert layer.weight.quant_state.nested, "double quantization"


def _check_8bit(model: Any, adapter: dict[str, Any]) -> None:
    assert type(_base_layer(model)).__name__ == "Linear8bitLt"


METHODS: dict[str, tuple[dict[str, Any], Callable[[Any, dict[str, Any]], None]]] = {
    "rslora+checkpointing": (
        {"use_rslora": True, "gradient_checkpointing": True},
        _check_rslora_with_checkpointing,
    ),
    "dora+chatml-family": ({"use_dora": True, "chat_template": "chatml"}, _check_dora),
    "qlora-4bit": ({"load_in_4bit": True}, _check_4bit),
    "lora-8bit": ({"load_in_8bit": True}, _check_8bit),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_lora_variants_train_and_save_their_adapter(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path, method: str
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    overrides, check = METHODS[method]
    base_parameters = AutoModelForCausalLM.from_pretrained(tiny_model.path).num_parameters()
    settings = settings_for(tmp_path, model_cache, data_dir / "short.jsonl", max_steps=2, **overrides)
    probe = ModelProbe()
    result, _ = run_training(settings, tiny_model, tmp_path / "out", callbacks=[probe])

    adapter_config = json.loads((result.output_dir / "adapter_config.json").read_text())
    check(probe.model, adapter_config)
    assert result.metrics["steps"] == 2
    assert 0 < result.metrics["trainable_share"] < 1
    # quantized weights count as many parameters as the plain ones (4-bit storage packs two per byte)
    assert result.metrics["total_params"] == base_parameters + result.metrics["trainable_params"]
    weights = load_file(result.output_dir / "adapter_model.safetensors")
    lora_b = [tensor for name, tensor in weights.items() if "lora_B" in name]
    # B starts at zero: non-zero B means the optimizer really updated the adapter
    assert lora_b and all(tensor.abs().sum() > 0 for tensor in lora_b)
    info = json.loads((result.output_dir / MODEL_INFO_FILE).read_text())
    assert info["chat_template_source"] == overrides.get("chat_template", "tokenizer")
    # a pushed adapter names its base as another machine can: the embedded name, the local path beside it
    assert adapter_config["base_model_name_or_path"] == "embedded:tiny-llama"
    assert info["base_model_path"] == str(tiny_model.path)
    quantization = {"qlora-4bit": "nf4-4bit", "lora-8bit": "int8"}.get(method)
    assert info["base_quantization"] == result.base_quantization == quantization
    assert info["evaluation_base"] == result.evaluation_base
    assert ("unquantized" in result.evaluation_base) is (quantization is not None)


def test_packing_trains_exactly_like_padded_batches_and_counts_tokens(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    from safetensors.torch import load_file

    common = {"max_steps": 2, "per_device_train_batch_size": 4, "lora_dropout": 0.0, "group_by_length": False}
    runs = {}
    for pack in (False, True):
        root = tmp_path / f"pack-{pack}"
        settings = settings_for(root, model_cache, data_dir / "short.jsonl", packing=pack, **common)
        runs[pack], train_set = run_training(settings, tiny_model, root / "out")
    padded, packed = runs[False], runs[True]
    losses = {pack: [e["loss"] for e in run.log_history if "loss" in e] for pack, run in runs.items()}
    assert losses[True] == pytest.approx(losses[False], abs=1e-4)
    weights = {pack: load_file(run.output_dir / "adapter_model.safetensors") for pack, run in runs.items()}
    for name, tensor in weights[False].items():
        assert (tensor - weights[True][name]).abs().max() < 1e-5, name

    # 2 steps of 4 = each of the 8 rows once: trained = their answer tokens, seen = all their tokens
    tokenizer = load_tokenizer(tiny_model.path)
    records = [tokenize_example(example, tokenizer) for example in train_set.examples]
    for run in (padded, packed):
        assert run.metrics["trained_tokens"] == sum(trained_token_count(r["labels"]) for r in records)
        assert run.metrics["seen_tokens"] == sum(len(r["input_ids"]) for r in records)
    assert padded.metrics["trained_tokens"] < padded.metrics["seen_tokens"] / 2


def test_validation_runs_five_times_without_eval_steps(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    settings = _validated_settings(tmp_path, model_cache, data_dir, max_steps=10)
    result, _ = run_training(settings, tiny_model, tmp_path / "out")
    evaluations = [entry for entry in result.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [2, 4, 6, 8, 10], "every 10 // 5 steps"
    assert result.metrics["eval_loss"] == evaluations[-1]["eval_loss"], "step 10 saw the published model"


def test_the_published_model_is_evaluated_when_no_evaluation_saw_it(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    settings = _validated_settings(tmp_path, model_cache, data_dir, max_steps=5, eval_steps=3)
    result, _ = run_training(settings, tiny_model, tmp_path / "out")
    evaluations = [entry for entry in result.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evaluations] == [3, 5], "step 3, then the final weights of step 5"
    assert result.metrics["eval_loss"] == evaluations[-1]["eval_loss"]


def test_a_merge_keeps_every_stop_id_of_the_base(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    base_dir = tmp_path / "base-with-stop-list"
    AutoModelForCausalLM.from_pretrained(tiny_model.path).save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(tiny_model.path).save_pretrained(base_dir)
    generation = GenerationConfig.from_pretrained(tiny_model.path)
    generation.eos_token_id = [0, 1]  # <|endoftext|>, <|im_start|>: neither is the end-of-turn <|im_end|>
    generation.save_pretrained(base_dir)
    base = resolve_base_model(str(base_dir), cache_dir=model_cache, base_dir=PROJECT_ROOT)
    settings = settings_for(
        tmp_path,
        model_cache,
        data_dir / "short.jsonl",
        max_steps=1,
        merge_adapter=True,
        base_model_id=str(base_dir),
    )
    result, _ = run_training(settings, base, tmp_path / "out")
    merged = GenerationConfig.from_pretrained(result.merged_dir)
    end_of_turn = AutoTokenizer.from_pretrained(result.merged_dir).convert_tokens_to_ids("<|im_end|>")
    assert merged.eos_token_id == [0, 1, end_of_turn]
    adapter_config = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base_dir), "a local base has only its path"


def test_full_fine_tuning_saves_a_complete_model(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    settings = settings_for(
        tmp_path, model_cache, data_dir / "short.jsonl", max_steps=2, method="full", merge_adapter=True
    )
    result, _ = run_training(settings, tiny_model, tmp_path / "out")

    assert result.metrics["trainable_share"] == 1.0
    assert result.merged_dir is None, "a full fine-tune is already a complete model"
    assert not (result.output_dir / "adapter_config.json").exists()
    tuned = AutoModelForCausalLM.from_pretrained(result.output_dir)
    before = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    changed = [
        name
        for (name, p), q in zip(tuned.named_parameters(), before.parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert "model.layers.0.mlp.down_proj.weight" in changed


def test_early_stopping_ends_training_when_validation_loss_stalls(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    # a learning rate this small leaves the validation loss bit-for-bit unchanged: no improvement ever
    settings = _validated_settings(
        tmp_path,
        model_cache,
        data_dir,
        learning_rate=1e-30,
        max_steps=20,
        eval_steps=1,
        early_stopping_patience=2,
    )
    result, _ = run_training(settings, tiny_model, tmp_path / "out")

    evals = [entry["eval_loss"] for entry in result.log_history if "eval_loss" in entry]
    assert result.metrics["steps"] == 3, (
        "first evaluation sets the best, two more without improvement stop it"
    )
    assert len(evals) == 3, "three evaluations; the published model is the best of them, not evaluated again"
    assert len(set(evals)) == 1
    assert result.metrics["eval_loss"] == evals[0]


# ------------------------------------------------------------------------------------------ outputs


def test_outputs_hold_adapter_tokenizer_template_and_metadata(
    shared_run: SharedRun, learnable_base: ResolvedModel, data_dir: Path
) -> None:
    result, settings = shared_run.result, shared_run.settings
    out = result.output_dir
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        MODEL_INFO_FILE,
        "log_history.json",
        "loss_curve.png",
    ):
        assert (out / name).is_file(), name
    # the configured template file, not the base tokenizer's, travels with the adapter
    assert (out / "chat_template.jinja").read_text() == BRIEF_CHATML
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"

    info = json.loads((out / MODEL_INFO_FILE).read_text())
    assert info["base_model_id"] == str(learnable_base.path)
    assert info["base_model_hash"] == learnable_base.content_hash
    assert info["data_versions"] == {"train": f"sha256:{sha256_file(data_dir / 'short_plus_overlong.jsonl')}"}
    assert info["config"] == settings.fine_tuner.model_dump(mode="json")
    assert info["metrics"]["steps"] == 40 and info["eos_token"] == "<|im_end|>"
    assert info["fingerprint"] == result.fingerprint and info["dropped_rows"] == 1
    assert info["chat_template_source"] == str(data_dir / "brief_chatml.jinja")
    assert [bad.row for bad in result.dropped_rows] == [9]
    # trained rows: the 8 short ones, in 40 steps of 8
    assert result.metrics["trained_tokens"] > 0 and result.metrics["tokens_per_s"] > 0
    # checkpoints are removed once the adapter is published
    checkpoints = checkpoint_root(shared_run.settings)
    assert not (checkpoints / result.fingerprint).exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]

    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert losses[-1] < losses[0] - 2, f"the adapter should fit 8 short answers: {losses}"
    relayed = shared_run.relayed_logs
    assert [step for entry, step in relayed if "loss" in entry] == [1, 10, 20, 30, 40]
    assert all(entry["tokens_per_s"] > 0 for entry, _ in relayed if "loss" in entry)


def test_generation_stops_at_the_trained_end_of_turn(
    shared_run: SharedRun, learnable_base: ResolvedModel
) -> None:
    result = shared_run.result
    examples = [example for example in shared_run.train_set.examples if example.row <= len(SHORT_ANSWERS)]
    config = InferencerConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=8)
    device = detect_device("cpu")

    base_rows = generate_rows(*load_for_inference(learnable_base.path, device), examples, config)
    assert all(row["finish_reason"] == "length" for row in base_rows), "the untrained base never stops"

    tuned_rows = generate_rows(*load_for_inference(result.output_dir, device), examples, config)
    assert [row["finish_reason"] for row in tuned_rows] == ["eos"] * len(SHORT_ANSWERS)
    assert all(0 < row["completion_tokens"] < MAX_NEW_TOKENS for row in tuned_rows)
    assert not any("<|im_" in row["assistant_response"] for row in tuned_rows)


def test_merged_model_reloads_standalone_and_matches_the_adapter(
    shared_run: SharedRun, learnable_base: ResolvedModel
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = shared_run.result
    assert result.merged_dir == result.output_dir / "merged"
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.merged_dir)
    assert not hasattr(merged, "peft_config")
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(learnable_base.path), result.output_dir
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": SHORT_ANSWERS[0][0]}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        assert torch.allclose(merged(**prompt).logits, adapted(**prompt).logits, atol=1e-4)
        output = merged.generate(**prompt, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    new_tokens = output[0, prompt["input_ids"].shape[1] :].tolist()
    assert merged.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.eos_token_id in new_tokens and len(new_tokens) < MAX_NEW_TOKENS


# ------------------------------------------------------------------------------------------ resume


def test_fingerprint_ignores_bookkeeping_keys_but_not_training_ones(
    tiny_model: ResolvedModel, data_dir: Path, model_cache: Path, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, model_cache, data_dir / "short.jsonl")
    config = settings.fine_tuner
    data = {"train": "sha256:aa"}
    same = training_fingerprint(config, tiny_model, data)
    assert (
        training_fingerprint(
            config.model_copy(update={"logging_steps": 99, "save_steps": 7}), tiny_model, data
        )
        == same
    )
    for changed in ({"learning_rate": 0.5}, {"max_steps": 9}, {"rank": 2}):
        assert training_fingerprint(config.model_copy(update=changed), tiny_model, data) != same
    assert training_fingerprint(config, tiny_model, {"train": "sha256:bb"}) != same


def test_killed_run_resumes_from_its_newest_checkpoint(
    tmp_path: Path, write_config: Callable[..., Path], tiny_model: ResolvedModel, data_dir: Path
) -> None:
    max_steps = 30
    fine_tuner = {
        "training_data_id": str(data_dir / "short.jsonl"),
        "validation_data_id": str(data_dir / "validation.jsonl"),
        "max_steps": max_steps,
        "save_steps": 3,
        "save_total_limit": 2,
    }
    config_path = write_config({"fine_tuner": fine_tuner})
    output = tmp_path / "adapter"
    settings = load_settings(config_path)
    checkpoints = checkpoint_root(settings)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ft_assets.phases.training",
            "--config",
            str(config_path),
            "--output",
            str(output),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        checkpoint = None
        while checkpoint is None:
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            assert not output.exists(), "nothing may be published before training ends"
            checkpoint = next((last_checkpoint(d) for d in checkpoints.glob("*")), None)
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists(), "a killed run leaves no adapter at the output path"
    killed_at = int(checkpoint.name.removeprefix("checkpoint-"))
    assert killed_at < max_steps

    # a changed training config does not pick up the other job's checkpoints
    changed = load_settings(config_path, overrides={"fine_tuner": {"max_steps": 2}})
    fresh, _ = run_training(changed, tiny_model, tmp_path / "changed")
    assert fresh.resumed_from_step is None and fresh.metrics["steps"] == 2

    result, _ = run_training(settings, tiny_model, output)
    newest_saved = result.resumed_from_step
    assert newest_saved is not None and killed_at <= newest_saved < max_steps
    assert result.metrics["steps"] == max_steps
    # tokens/s counts this run's steps only, not the ones restored from the checkpoint
    assert 0 < result.metrics["trained_tokens"] < result.log_history[-1]["num_input_tokens_seen"]
    info = json.loads((output / MODEL_INFO_FILE).read_text())
    assert info["resumed_from_step"] == newest_saved and info["metrics"]["steps"] == max_steps
    model, tokenizer = load_for_inference(output, detect_device("cpu"))
    assert tokenizer.eos_token == "<|im_end|>" and model is not None
    assert not (checkpoints / result.fingerprint).exists()


def test_text_rows_train_on_the_whole_text(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel
) -> None:
    rows = [{"text": f"The quick brown fox {i}"} for i in range(4)]
    path = tmp_path / "text.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    loaded = load_dataset(str(path), DatasetColumns(), base_dir=tmp_path, require_ground_truth=True)
    assert loaded.format == "text"
    trainer, tokenizer = _trainer_for(tmp_path, model_cache, tiny_model, path)
    record = trainer.train_dataset[0]
    assert record["labels"] == record["input_ids"]
    assert tokenizer.decode(record["input_ids"]).endswith("<|im_end|>")


def _age(folder: Path, days: float) -> None:
    """Date ``folder`` and everything in it ``days`` back."""
    stamp = time.time() - days * 86400
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (stamp, stamp))


def test_checkpoints_of_abandoned_jobs_are_pruned_when_training_starts(
    tmp_path: Path, model_cache: Path, tiny_model: ResolvedModel, data_dir: Path
) -> None:
    settings = settings_for(tmp_path, model_cache, data_dir / "short.jsonl", max_steps=1)
    root = checkpoint_root(settings)
    abandoned, recent, touched = root / "abandoned", root / "recent", root / "old-but-touched"
    for folder in (abandoned, recent, touched):
        (folder / "checkpoint-2").mkdir(parents=True)
        (folder / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"x")
    _age(abandoned, 15)
    _age(recent, 13)
    _age(touched, 30)
    os.utime(touched / "checkpoint-2" / "adapter_model.safetensors")  # one file written just now

    run_training(settings, tiny_model, tmp_path / "out")  # default retention: 14 days
    assert sorted(p.name for p in root.iterdir()) == ["old-but-touched", "recent"]

    kept_forever = settings.model_copy(
        update={"pipeline": settings.pipeline.model_copy(update={"checkpoint_retention_days": None})}
    )
    _age(recent, 400)
    assert prune_stale_checkpoints(root, keep="recent", max_age_days=1) == []
    run_training(kept_forever, tiny_model, tmp_path / "out-2")
    assert (root / "recent").is_dir()
    assert prune_stale_checkpoints(root, keep="none", max_age_days=365) == [root / "recent"]
