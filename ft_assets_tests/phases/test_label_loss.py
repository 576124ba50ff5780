"""The LM head run only at labelled positions gives the model's own loss and the same LoRA gradients."""

from __future__ import annotations

from typing import Any

import pytest

from ft_assets.phases.datasets import Example
from ft_assets.phases.label_loss import labelled_positions_loss, trl_head_is_compact
from ft_assets.phases.label_masks import tokenize_example
from ft_assets.phases.models import ResolvedModel, load_tokenizer
from ft_assets.phases.packing import TrainingCollator

TURNS = [
    ("Extract the city: Maria Lopez lives in Lyon.", "Lyon"),
    ("Quelle est la capitale de l'Italie ?", "Rome, depuis 1871."),
    ("Is the dog lazy?", "Yes."),
]


def _lora_model(tiny_model: ResolvedModel) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.path)
    # random B (not PEFT's zeros) so that every adapter weight has a gradient
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(base, config)


def _grads(model: Any) -> dict[str, Any]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("pack", [False, True])
def test_loss_and_lora_gradients_equal_the_full_forward(tiny_model: ResolvedModel, pack: bool) -> None:
    import torch

    tokenizer = load_tokenizer(tiny_model.path)
    records = [
        tokenize_example(
            Example(
                id=str(i), messages=({"role": "user", "content": q}, {"role": "assistant", "content": a})
            ),
            tokenizer,
        )
        for i, (q, a) in enumerate(TURNS)
    ]
    batch = TrainingCollator(tokenizer.pad_token_id, pack=pack)(records)
    model = _lora_model(tiny_model)

    reference = model(**batch, use_cache=False)  # transformers' loss over the full logits
    reference.loss.backward()
    expected = _grads(model)
    model.zero_grad()
    loss, logits, targets = labelled_positions_loss(model, batch)
    loss.backward()
    got = _grads(model)

    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert logits.shape == (labelled, len(tokenizer)), "logits only where the next token is labelled"
    assert labelled < batch["input_ids"].numel() / 2, "most positions are prompt: the saving is real"
    assert abs(float(loss) - float(reference.loss)) < 1e-5
    assert targets.tolist() == batch["labels"][:, 1:][batch["labels"][:, 1:] != -100].tolist()
    assert expected.keys() == got.keys() and any("lora_A" in name for name in got)
    for name, gradient in expected.items():
        assert torch.allclose(got[name], gradient, atol=1e-6, rtol=1e-4), name
    assert any(float(g.abs().sum()) > 0 for g in got.values())


def test_trl_s_fused_head_is_used_only_where_it_is_compact() -> None:
    import torch
    from transformers.utils import is_triton_available

    padded = {"attention_mask": torch.ones(2, 5, dtype=torch.long)}
    packed = {"attention_mask": torch.ones(1, 1, 10, 10, dtype=torch.bool)}
    # on the CPU TRL's head scores every position: ours runs
    assert not trl_head_is_compact("cpu", padded)
    assert trl_head_is_compact("cuda", padded) is is_triton_available()
    # its token metric would sum a packed batch's 4D mask
    assert not trl_head_is_compact("cuda", packed)
