"""Batched generation on the embedded tiny Llama (CPU, fp32): order, determinism, finish reasons, adapters,
the JSONL contract (atomic under kill) and the errors that name what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ft_assets.config import InferencerConfig, Settings
from ft_assets.dataset_specs import TESTING
from ft_assets.phases import generation
from ft_assets.phases.datasets import Example, load_configured, load_dataset
from ft_assets.phases.generation import (
    encode_prompts,
    finish,
    generate,
    generate_rows,
    load_for_inference,
)
from ft_assets.phases.models import (
    MODEL_INFO_FILE,
    ModelError,
    detect_device,
    load_chat_template,
    load_tokenizer,
)
from ft_assets.phases.system_prompt import SYSTEM_PROMPT_KEY

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_TEST = PROJECT_ROOT / "data" / "demo" / "test.jsonl"
CPU = detect_device("cpu")
ROW_KEYS = {
    "id",
    "system_prompt",
    "user_prompt",
    "assistant_response",
    "ground_truth",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
}
BRIEF_ANSWER = "Paris"
FULL_ANSWER = "The capital of France is Paris."


def config(**overrides: Any) -> InferencerConfig:
    return InferencerConfig(**{"max_new_tokens": 12, "batch_size": 4, **overrides})


def demo_examples(count: int, **columns: Any) -> list[Example]:
    return load_dataset(
        str(DEMO_TEST), InferencerConfig(**columns), base_dir=PROJECT_ROOT, split="test"
    ).examples[:count]


def user_turn(example_id: str, question: str) -> Example:
    return Example(id=example_id, messages=({"role": "user", "content": question},))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """The tiny model's operations are too small to share out: on a busy 2-core machine two threads mostly
    wait for each other (training the answering model took 21 s with two threads, 1.4 s with one)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(tiny_model: Any) -> tuple[Any, Any]:
    return load_for_inference(tiny_model.path, CPU)


@pytest.fixture(scope="module")
def answering_model(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model taught to answer "... briefly." with "Paris" + EOS and "... fully." with a long sentence.

    A real reason to stop: the model emits EOS because it learned to, not because its logits were forced.
    """
    import torch

    model, tokenizer = load_for_inference(tiny_model.path, CPU)
    questions = ["What is the capital of France?", "Name the city.", "Where is the Louvre?"]
    pairs = [(f"{q} Answer briefly.", BRIEF_ANSWER) for q in questions]
    pairs += [(f"{q} Answer fully.", FULL_ANSWER) for q in questions]
    prompts = encode_prompts(tokenizer, [user_turn(str(i), q) for i, (q, _) in enumerate(pairs)])
    answers = [
        tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for _, a in pairs
    ]
    width = max(len(p) + len(a) for p, a in zip(prompts, answers, strict=True))
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    labels = torch.full((len(pairs), width), -100)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        end = len(prompt) + len(answer)
        ids[row, :end] = torch.tensor(prompt + answer)
        labels[row, len(prompt) : end] = torch.tensor(answer)
        mask[row, :end] = 1
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    target = tmp_path_factory.mktemp("answering") / "model"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def adapter_dir(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter on the tiny base laid out as training publishes it (random B, so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    )
    target = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_model.path).save_pretrained(target)
    write_info(target, base_model_path=str(tiny_model.path), base_model_hash=tiny_model.content_hash)
    return target


@pytest.fixture(scope="module")
def adapted(adapter_dir: Path) -> tuple[Any, Any]:
    """The tiny model with the random adapter merged: unlike the bare random model, which only repeats the
    prompt's last newline, it writes varied text, so comparisons of outputs are not vacuous."""
    return load_for_inference(adapter_dir, CPU)


def write_info(adapter: Path, **info: Any) -> None:
    (adapter / MODEL_INFO_FILE).write_text(json.dumps(info))


def copy_adapter(adapter_dir: Path, tmp_path: Path, **info: Any) -> Path:
    copy = tmp_path / "adapter"
    shutil.copytree(adapter_dir, copy)
    write_info(copy, **info)
    return copy


# ------------------------------------------------------------------------------------------ batching


def test_batched_rows_keep_input_order_and_equal_one_at_a_time(adapted: tuple[Any, Any]) -> None:
    model, tokenizer = adapted
    examples = demo_examples(12)
    lengths = [len(ids) for ids in encode_prompts(tokenizer, examples)]
    assert lengths != sorted(lengths) and lengths != sorted(lengths, reverse=True)  # sorting must reorder

    batched = generate_rows(model, tokenizer, examples, config(batch_size=5))
    single = generate_rows(model, tokenizer, examples, config(batch_size=1))

    assert [row["id"] for row in batched] == [e.id for e in examples]
    assert [row["user_prompt"] for row in batched] == [e.user_prompt for e in examples]
    assert [row["prompt_tokens"] for row in batched] == lengths
    assert batched == single
    assert len({row["assistant_response"] for row in batched}) > 1  # the comparison is not vacuous


def test_greedy_is_deterministic_and_sampling_follows_the_seed(adapted: tuple[Any, Any]) -> None:
    model, tokenizer = adapted
    examples = demo_examples(6)
    greedy = generate_rows(model, tokenizer, examples, config())
    assert generate_rows(model, tokenizer, examples, config()) == greedy

    sampling = config(do_sample=True, temperature=1.0, seed=7)
    sampled = generate_rows(model, tokenizer, examples, sampling)
    assert generate_rows(model, tokenizer, examples, sampling) == sampled
    reseeded = generate_rows(model, tokenizer, examples, config(do_sample=True, temperature=1.0, seed=8))
    assert [r["assistant_response"] for r in reseeded] != [r["assistant_response"] for r in sampled]
    assert [r["assistant_response"] for r in sampled] != [r["assistant_response"] for r in greedy]


# ------------------------------------------------------------------------------------------ finish reasons


@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["pad!=eos", "pad==eos (SmolLM2)"])
def test_finish_reasons_eos_and_length_in_one_batch(answering_model: Path, pad_is_eos: bool) -> None:
    model, tokenizer = load_for_inference(answering_model, CPU)
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    assert (tokenizer.pad_token_id == tokenizer.eos_token_id) is pad_is_eos
    examples = [
        user_turn("brief-1", "Name the city. Answer briefly."),
        user_turn("full-1", "Name the city. Answer fully."),
        user_turn("brief-2", "What is the capital of France? Answer briefly."),
    ]
    rows = generate_rows(model, tokenizer, examples, config(max_new_tokens=6, batch_size=3))

    brief_tokens = len(tokenizer(BRIEF_ANSWER, add_special_tokens=False)["input_ids"])
    assert len(tokenizer(FULL_ANSWER, add_special_tokens=False)["input_ids"]) > 6
    for row in (rows[0], rows[2]):
        assert (row["assistant_response"], row["finish_reason"]) == (BRIEF_ANSWER, "eos")
        assert row["completion_tokens"] == brief_tokens + 1  # the EOS is a generated token
    assert rows[1]["finish_reason"] == "length"
    assert rows[1]["completion_tokens"] == 6
    assert FULL_ANSWER.startswith(rows[1]["assistant_response"]) and rows[1]["assistant_response"]


@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["pad!=eos", "pad==eos (SmolLM2)"])
def test_stop_string_cuts_the_text_and_ends_the_row(answering_model: Path, pad_is_eos: bool) -> None:
    model, tokenizer = load_for_inference(answering_model, CPU)
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    examples = [
        user_turn("full", "Where is the Louvre? Answer fully."),
        user_turn("brief", "Name the city. Answer briefly."),
    ]
    rows = generate_rows(model, tokenizer, examples, config(max_new_tokens=20, stop_strings=[" capital"]))

    assert (rows[0]["assistant_response"], rows[0]["finish_reason"]) == ("The", "stop")
    # Tokens generated up to and including the one that completes " capital", from the answer's offsets.
    encoding = tokenizer(FULL_ANSWER, add_special_tokens=False, return_offsets_mapping=True)
    stop_end = FULL_ANSWER.index(" capital") + len(" capital")
    assert rows[0]["completion_tokens"] == sum(
        1 for start, _ in encoding["offset_mapping"] if start < stop_end
    )
    assert (rows[1]["assistant_response"], rows[1]["finish_reason"]) == (BRIEF_ANSWER, "eos")


def test_finish_counts_generated_pad_tokens_and_ignores_padding(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer("Paris", add_special_tokens=False)["input_ids"]

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    # A pad token the model generated before reaching the length limit is a generated token.
    assert finish([*word, pad, *word], [eos], [], decode) == ("ParisParis", "length", 2 * len(word) + 1)
    assert finish([*word, eos, pad, pad], [eos], [], decode) == ("Paris", "eos", len(word) + 1)
    # pad == eos: the padding after a stop string must not turn the reason into "eos".
    assert finish([*word, eos, eos], [eos], ["ris"], decode) == ("Pa", "stop", len(word))
    assert finish([*word, pad, pad], [eos], ["ris"], decode) == ("Pa", "stop", len(word))


# ------------------------------------------------------------------------------------------ adapters, templates


def test_adapter_is_merged_and_changes_the_outputs(
    tiny_model: Any, tiny: tuple[Any, Any], adapter_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_for_inference(adapter_dir, CPU)
    assert not isinstance(model, PeftModel)
    assert not any("lora" in name for name, _ in model.named_modules())

    inputs = tokenizer(["Extract name, city and age as JSON"], return_tensors="pt")
    unmerged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model.path), adapter_dir)
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs).logits, unmerged(**inputs).logits, rtol=1e-4, atol=1e-4)

    examples = demo_examples(4)
    adapted = generate_rows(model, tokenizer, examples, config())
    base = generate_rows(*tiny, examples, config())
    assert [r["assistant_response"] for r in adapted] != [r["assistant_response"] for r in base]
    assert [r["prompt_tokens"] for r in adapted] == [r["prompt_tokens"] for r in base]


def test_adapter_on_a_base_of_another_shape_names_both(
    tiny_model: Any, adapter_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    wider = AutoConfig.from_pretrained(tiny_model.path)
    wider.hidden_size, wider.intermediate_size = 64, 128
    other_base = tmp_path / "wider-base"
    AutoModelForCausalLM.from_config(wider).save_pretrained(other_base)
    adapter = copy_adapter(adapter_dir, tmp_path, base_model_path=str(other_base))

    with pytest.raises(ModelError) as error:
        load_for_inference(adapter, CPU)
    message = str(error.value)
    assert str(adapter) in message and str(other_base) in message
    assert "hidden_size 64" in message and "size mismatch" in message


def test_adapter_base_changed_or_missing(tiny_model: Any, adapter_dir: Path, tmp_path: Path) -> None:
    changed = copy_adapter(
        adapter_dir, tmp_path, base_model_path=str(tiny_model.path), base_model_hash="sha256:0"
    )
    with pytest.raises(ModelError, match=r"expects base model .* sha256:0.*changed"):
        load_for_inference(changed, CPU)
    shutil.rmtree(changed)
    gone = copy_adapter(adapter_dir, tmp_path, base_model_path=str(tmp_path / "deleted-base"))
    with pytest.raises(ModelError, match=r"deleted-base, which is not available"):
        load_for_inference(gone, CPU)


def test_missing_model_dir_and_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"model directory does not exist: {tmp_path / 'nope'}"):
        load_for_inference(tmp_path / "nope", CPU)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("not a model")
    with pytest.raises(ModelError, match=r"empty holds neither a model \(config.json\) nor an adapter"):
        load_for_inference(tmp_path / "empty", CPU)


def test_chat_template_rules(tiny_model: Any, adapter_dir: Path, tmp_path: Path) -> None:
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model.path, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((no_template / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ModelError, match=f"tokenizer at {no_template} has no chat template"):
        load_for_inference(no_template, CPU)

    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] ")
    template = load_chat_template(str(plain), tmp_path)
    example = [user_turn("q", "Capital of France?")]
    # A plain model directory takes the configured template, as training applies it to the base model...
    _, tokenizer = load_for_inference(no_template, CPU, chat_template=template)
    assert (
        tokenizer.decode(encode_prompts(tokenizer, example)[0]) == "[user] Capital of France?\n[assistant] "
    )
    # ...a trained adapter keeps the template it was trained with.
    _, tokenizer = load_for_inference(adapter_dir, CPU, chat_template=template)
    assert tokenizer.decode(encode_prompts(tokenizer, example)[0]).startswith(
        "<|im_start|>user\nCapital of France?"
    )


def test_the_end_of_turn_token_becomes_the_eos(tiny_model: Any, tmp_path: Path) -> None:
    own = load_tokenizer(tiny_model.path)
    assert own.eos_token == "<|im_end|>"
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}")
    # a Jinja file keeps the tokenizer's EOS unless end_of_turn_token names the template's own
    assert load_tokenizer(
        tiny_model.path, chat_template=load_chat_template(str(plain), tmp_path)
    ).eos_token == ("<|im_end|>")
    configured = load_chat_template(str(plain), tmp_path, "<|endoftext|>")
    assert load_tokenizer(tiny_model.path, chat_template=configured).eos_token == "<|endoftext|>"
    # without a chat_template, the token applies to the tokenizer's own template, which stays
    only_token = load_tokenizer(
        tiny_model.path, chat_template=load_chat_template(None, tmp_path, "<|endoftext|>")
    )
    assert only_token.eos_token == "<|endoftext|>" and only_token.chat_template == own.chat_template
    assert load_chat_template("chatml", tmp_path, "<|endoftext|>")[1] == "<|endoftext|>"
    with pytest.raises(
        ModelError, match=r"end-of-turn token '<\|eot_id\|>' .* is not a token of the tokenizer"
    ):
        load_tokenizer(tiny_model.path, chat_template=load_chat_template("chatml", tmp_path, "<|eot_id|>"))


def test_system_prompt_override_reaches_the_prompt(adapted: tuple[Any, Any]) -> None:
    model, tokenizer = adapted
    override = "You extract JSON."
    plain, overridden = demo_examples(2), demo_examples(2, system_prompt_override_text=override)
    prompt = tokenizer.decode(encode_prompts(tokenizer, overridden)[0])
    assert prompt.startswith(f"<|im_start|>system\n{override}<|im_end|>\n<|im_start|>user\n")
    rows = generate_rows(model, tokenizer, overridden, config(max_new_tokens=2))
    assert [row["system_prompt"] for row in rows] == [override, override]
    base_rows = generate_rows(model, tokenizer, plain, config(max_new_tokens=2))
    assert all(r["prompt_tokens"] > b["prompt_tokens"] for r, b in zip(rows, base_rows, strict=True))


def test_plain_text_rows_are_continued_without_a_template(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    example = Example(id="t", messages=(), text="The quick brown fox")
    assert encode_prompts(tokenizer, [example]) == [tokenizer("The quick brown fox")["input_ids"]]
    (row,) = generate_rows(model, tokenizer, [example], config(max_new_tokens=2))
    assert (row["user_prompt"], row["system_prompt"], row["ground_truth"]) == (
        "The quick brown fox",
        None,
        None,
    )


def test_vllm_backend_fails_clearly_without_vllm_or_cuda(tiny_model: Any) -> None:
    from ft_assets.phases.vllm_backend import generate_rows_vllm

    with pytest.raises(ModelError, match=r"backend = 'vllm' needs (vLLM|a CUDA GPU)"):
        generate_rows_vllm(tiny_model.path, demo_examples(1), config(backend="vllm"))


def test_vllm_engine_honours_batch_size_and_serves_an_adapter_on_its_base(
    tiny_model: Any, tmp_path: Path
) -> None:
    from ft_assets.phases.vllm_backend import engine_arguments

    args, weights, is_adapter = engine_arguments(tiny_model.path, config(backend="vllm", batch_size=7))
    assert (args["max_num_seqs"], args["model"], weights, is_adapter) == (
        7,
        str(tiny_model.path),
        tiny_model.path,
        False,
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"r": 4, "base_model_name_or_path": str(tiny_model.path)})
    )
    args, weights, is_adapter = engine_arguments(adapter, config(backend="vllm", batch_size=3))
    assert (args["enable_lora"], args["max_lora_rank"], args["max_num_seqs"], weights, is_adapter) == (
        True,
        4,
        3,
        tiny_model.path,
        True,
    )


# ------------------------------------------------------------------------------------------ JSONL contract


def test_jsonl_schema_and_a_rerun_replaces_the_file(tiny_model: Any, tmp_path: Path) -> None:
    dataset = load_configured(TESTING, Settings(base_dir=PROJECT_ROOT))
    output = tmp_path / "out" / "inference_results.jsonl"
    output.parent.mkdir()
    output.write_text('{"stale": true}\n' * 100)

    result = generate(tiny_model.path, dataset, config(batch_size=16, max_new_tokens=6), output)

    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == result.rows == len(dataset.examples) == 60
    assert [row["id"] for row in rows] == [e.id for e in dataset.examples]
    for row, example in zip(rows, dataset.examples, strict=True):
        assert set(row) == ROW_KEYS
        assert row["user_prompt"] == example.user_prompt and row["ground_truth"] == example.ground_truth
        assert row["system_prompt"] is None and isinstance(row["assistant_response"], str)
        assert row["finish_reason"] in ("eos", "stop", "length")
        assert 0 < row["completion_tokens"] <= 6 and row["prompt_tokens"] > 0
    assert result.generated_tokens == sum(r["completion_tokens"] for r in rows)
    assert sum(result.finish_reasons.values()) == 60
    assert (
        result.metrics["rows_per_s"] > 0
        and result.metrics["finish_length"] == result.finish_reasons["length"]
    )
    assert list(output.parent.iterdir()) == [output]  # no temp file left behind


@pytest.mark.timeout(300)
def test_killed_inference_publishes_nothing_and_a_rerun_completes(
    tiny_model: Any, write_config: Any, tmp_path: Path
) -> None:
    output = tmp_path / "results" / "inference_results.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    slow = write_config({"inferencer": {"batch_size": 1, "max_new_tokens": 64}}, name="slow.toml")
    module = [sys.executable, "-m", "ft_assets.phases.generation"]
    arguments = ["--model", str(tiny_model.path), "--output", str(output)]
    process = subprocess.Popen(
        [*module, "--config", str(slow), *arguments],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if "inference: 1/60 rows" in line:
            break
    assert any("inference: 1/60 rows" in line for line in seen), "".join(seen)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not output.exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())  # not even a temp file

    quick = write_config({"inferencer": {"batch_size": 16, "max_new_tokens": 4}}, name="quick.toml")
    generation.main(["--config", str(quick), *arguments])  # the same entry point, in this process
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 60 and all(set(row) == ROW_KEYS for row in rows)


def test_the_command_line_runs_a_trained_model_with_its_trained_system_prompt(
    tiny_model: Any, write_config: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trained = tmp_path / "trained-model"
    shutil.copytree(tiny_model.path, trained)
    prompt = "Réponds en JSON — 日本語で"
    (trained / MODEL_INFO_FILE).write_text(
        json.dumps({SYSTEM_PROMPT_KEY: {"override_text": prompt, "column": None}}), encoding="utf-8"
    )
    output = tmp_path / "out" / "inference_results.jsonl"
    arguments = ["--model", str(trained), "--output", str(output)]

    unset = write_config({"inferencer": {"batch_size": 32, "max_new_tokens": 2}}, name="unset.toml")
    generation.main(["--config", str(unset), *arguments])
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 60 and {row["system_prompt"] for row in rows} == {prompt}

    other = {"batch_size": 32, "max_new_tokens": 2, "system_prompt_override_text": "Be brief."}
    configured = write_config({"inferencer": other}, name="configured.toml")
    with caplog.at_level("WARNING"):
        generation.main(["--config", str(configured), *arguments])
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert {row["system_prompt"] for row in rows} == {"Be brief."}, "a configured prompt wins"
    assert any(prompt in record.getMessage() for record in caplog.records), "and the mismatch is said"
