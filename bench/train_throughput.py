"""Training throughput: the project's ``train()`` against a plain TRL SFTTrainer script, side by side.

Same base model, same data (``data/demo/train.jsonl`` as prompt/completion chat records), same LoRA
hyperparameters (r=16, alpha=32, all-linear, lr 1e-3, batch 8, N steps). Each side runs in its own
subprocess so its peak RSS is its own. Throughput is non-padding tokens per second (the trainer's
``num_input_tokens_seen`` with ``include_num_input_tokens_seen="non_padding"``, i.e. the sum of the
attention masks) read by the same callback on both sides, between the end of step 1 (model warm-up
excluded) and the end of step N.

The plain script keeps TRL's SFTConfig defaults except what CPU requires (``bf16=False``,
``use_cpu=True`` off CUDA) and the measurement switch above. So it runs with TRL's default
``gradient_checkpointing=True``, random sampling and no LoRA dropout, where the project defaults to no
checkpointing, length-grouped batches and ``lora_dropout=0.05``. The ``tuned`` side is the same script as
a careful TRL user writes it: checkpointing off and the project's length grouping.

    python bench/train_throughput.py                                  # embedded SmolLM2-135M, 10 steps
    python bench/train_throughput.py --model embedded:tiny-llama --steps 20

The last two lines are ``tuned_ratio=<platform / tuned tokens/s>`` and ``ratio=<platform / plain tokens/s>``;
the final loss printed for each side is the mean training loss over the run (the trainer's ``training_loss``).
``--profile`` times nothing: it records steps 2-3 of each side under ``torch.profiler`` and prints the
operators that cost the most CPU time, which is where the sides differ.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "
LORA = {"rank": 16, "lora_alpha": 32, "target_modules": "all-linear"}
LEARNING_RATE = 1e-3
BATCH_SIZE = 8
#: Operators listed per side by ``--profile``, by self CPU time.
PROFILE_ROWS = 15


def token_meter() -> Any:
    """A TrainerCallback that times steps 2..N and counts the non-padding tokens they consumed.

    Besides wall time it keeps the process CPU time: on a shared machine with one thread per side
    (``--threads 1``), tokens per CPU-second measure the work each side does, whatever the load.
    """
    from transformers import TrainerCallback

    class TokenMeter(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, float, int, int]] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            tokens = int(state.num_input_tokens_seen or 0)
            self.marks.append((time.perf_counter(), time.process_time(), tokens, state.global_step))

        def summary(self) -> dict[str, float]:
            if len(self.marks) < 2:
                raise SystemExit("need at least 2 training steps to measure throughput (--steps)")
            (t0, c0, n0, s0), (t1, c1, n1, s1) = self.marks[0], self.marks[-1]
            return {
                "measured_steps": s1 - s0,
                "tokens": n1 - n0,
                "seconds": t1 - t0,
                "tokens_per_s": (n1 - n0) / (t1 - t0),
                "tokens_per_cpu_s": (n1 - n0) / (c1 - c0),
            }

    return TokenMeter()


def step_profiler(first_step: int, steps: int) -> Any:
    """A TrainerCallback recording ``torch.profiler`` (CPU) over ``steps`` optimizer steps from ``first_step``."""
    import torch
    from transformers import TrainerCallback

    class StepProfiler(TrainerCallback):
        def __init__(self) -> None:
            self.profile: Any = None
            self.finished = False

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.profile is None and state.global_step + 1 == first_step:
                self.profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profile.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.profile is not None and not self.finished and state.global_step >= first_step + steps - 1:
                self.profile.__exit__(None, None, None)
                self.finished = True

        def table(self) -> str:
            if not self.finished:
                raise SystemExit(f"the profile needs at least {first_step + steps - 1} steps (--steps)")
            averages = self.profile.key_averages()
            return averages.table(sort_by="self_cpu_time_total", row_limit=PROFILE_ROWS)

    return StepProfiler()


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_platform(
    model_id: str, cache_dir: Path, data: Path, steps: int, scratch: Path, callbacks: list[Any]
) -> dict[str, Any]:
    from ft_assets.config import build_settings
    from ft_assets.phases.models import resolve_base_model
    from ft_assets.phases.training import load_training_data, train

    settings = build_settings(
        {
            "fine_tuner": {
                "base_model_id": model_id,
                "training_data_id": str(data),
                "validation_data_id": None,
                "learning_rate": LEARNING_RATE,
                "per_device_train_batch_size": BATCH_SIZE,
                "max_steps": steps,
                **LORA,
            },
            "pipeline": {"artifacts_root": str(scratch / "artifacts"), "model_cache_dir": str(cache_dir)},
        },
        source="bench/train_throughput.py",
        base_dir=PROJECT_ROOT,
    )
    base = resolve_base_model(model_id, cache_dir=cache_dir, base_dir=PROJECT_ROOT)
    train_set, validation_set = load_training_data(settings)
    meter = token_meter()
    result = train(
        settings,
        base,
        train_set,
        validation_set,
        output_dir=scratch / "adapter",
        checkpoint_root=scratch / "checkpoints",
        callbacks=[meter, *callbacks],
    )
    config = settings.fine_tuner
    return {
        **meter.summary(),
        "final_loss": result.metrics["train_loss_mean"],
        "setup": f"gradient_checkpointing={config.gradient_checkpointing}, "
        f"sampling={'group_by_length' if config.group_by_length else 'random'}, "
        f"lora_dropout={config.lora_dropout}, dtype={result.device.dtype}",
    }


def run_plain(
    model_path: Path, data: Path, steps: int, scratch: Path, callbacks: list[Any], tuned: bool = False
) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    rows = load_dataset("json", data_files=str(data), split="train")
    rows = rows.map(
        lambda row: {
            "prompt": [{"role": "user", "content": row["question"]}],
            "completion": [{"role": "assistant", "content": row["answer"]}],
        },
        remove_columns=rows.column_names,
    )
    on_cpu = not torch.cuda.is_available()
    # what a careful user changes: no activation recomputation, and batches of similar lengths
    careful = {"gradient_checkpointing": False, "train_sampling_strategy": "group_by_length"} if tuned else {}
    args = SFTConfig(
        output_dir=str(scratch / "plain"),
        max_steps=steps,
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        # what CPU requires; everything else stays TRL's default
        **({"bf16": False, "use_cpu": True} if on_cpu else {}),
        **careful,
    )
    meter = token_meter()
    trainer = SFTTrainer(
        model=str(model_path),
        args=args,
        train_dataset=rows,
        peft_config=LoraConfig(
            r=LORA["rank"],
            lora_alpha=LORA["lora_alpha"],
            target_modules=LORA["target_modules"],
            task_type="CAUSAL_LM",
        ),
        callbacks=[meter, *callbacks],
    )
    output = trainer.train()
    return {
        **meter.summary(),
        "final_loss": float(output.training_loss),
        "setup": f"gradient_checkpointing={args.gradient_checkpointing}, sampling={args.train_sampling_strategy}, "
        f"lora_dropout=0.0, dtype={next(trainer.model.parameters()).dtype}",
    }


def worker(args: argparse.Namespace) -> None:
    profiler = step_profiler(first_step=2, steps=2) if args.profile else None
    callbacks = [profiler] if profiler else []
    with tempfile.TemporaryDirectory(prefix=f"bench-{args.worker}-") as tmp:
        if args.worker == "platform":
            result = run_platform(args.model, args.cache_dir, args.data, args.steps, Path(tmp), callbacks)
        else:
            result = run_plain(
                args.model_path, args.data, args.steps, Path(tmp), callbacks, tuned=args.worker == "tuned"
            )
    result["peak_rss_mib"] = peak_rss_mib()
    if profiler:
        result["profile"] = profiler.table()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_side(name: str, args: argparse.Namespace, model_path: Path) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--worker", name, "--model", args.model, "--model-path", str(model_path),
        "--cache-dir", str(args.cache_dir), "--data", str(args.data), "--steps", str(args.steps),
        *(["--profile"] if args.profile else []),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    completed = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-4000:])
        raise SystemExit(f"{name} run failed with exit code {completed.returncode}")
    result = json.loads(lines[-1].removeprefix(RESULT_PREFIX))
    result["wall_s"] = time.perf_counter() - started
    return result


def describe(name: str, result: dict[str, Any]) -> str:
    return (
        f"{name:>8}: {result['tokens_per_s']:8.1f} non-padding tokens/s "
        f"({result['tokens']} tokens in {result['seconds']:.1f} s, {result['measured_steps']} steps; "
        f"{result['tokens_per_cpu_s']:.1f} per CPU-second), "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB, final loss {result['final_loss']:.3f}, "
        f"process wall {result['wall_s']:.0f} s; {result['setup']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="base_model_id")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--repeats", type=int, default=1, help="alternate the two sides this often; keep the best"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="OMP_NUM_THREADS for both sides (default: unset)"
    )
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT / "data" / "demo" / "train.jsonl")
    parser.add_argument("--cache-dir", type=Path, default=PROJECT_ROOT / "artifacts" / "base_model")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing: torch.profiler over steps 2-3 of each side, top operators by self CPU time",
    )
    parser.add_argument("--worker", choices=["platform", "plain", "tuned"], help=argparse.SUPPRESS)
    parser.add_argument("--model-path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data = args.data.resolve()
    if args.worker:
        worker(args)
        return

    from ft_assets.phases.models import resolve_base_model

    # convert/build the base model once, before timing anything
    base = resolve_base_model(args.model, cache_dir=args.cache_dir, base_dir=PROJECT_ROOT)
    print(
        f"model {args.model} ({base.path}), data {args.data}, {args.steps} steps, batch {BATCH_SIZE}, "
        f"LoRA r{LORA['rank']}/alpha{LORA['lora_alpha']} {LORA['target_modules']}, lr {LEARNING_RATE}, "
        f"OMP_NUM_THREADS={args.threads or os.environ.get('OMP_NUM_THREADS', 'unset')}, os.cpu_count()={os.cpu_count()}"
    )
    print(
        "plain TRL: SFTConfig defaults except bf16=False, use_cpu=True (CPU only); tuned TRL: the same with "
        "gradient_checkpointing=False, group_by_length; tokens/s over steps 2..N, non-padding tokens; "
        "best of each side over the repeats"
    )
    if args.profile:
        for name in ("platform", "plain", "tuned"):
            result = run_side(name, args, base.path)
            print(f"\n{name}: steps 2-3 under torch.profiler ({result['setup']})\n{result['profile']}")
        return
    runs: dict[str, list[dict[str, Any]]] = {"platform": [], "plain": [], "tuned": []}
    for repeat in range(args.repeats):
        for name, results in runs.items():
            results.append(run_side(name, args, base.path))
            print(f"run {repeat + 1}/{args.repeats} " + describe(name, results[-1]).strip(), flush=True)
    best = {name: max(results, key=lambda r: r["tokens_per_s"]) for name, results in runs.items()}
    for name, result in best.items():
        print(describe(name, result))
    rss = {name: result["peak_rss_mib"] for name, result in best.items()}
    print(
        f"rss_ratio={rss['platform'] / rss['tuned']:.3f} (platform / tuned peak RSS: the same settings, "
        f"checkpointing off); vs plain {rss['platform'] / rss['plain']:.3f} (gradient checkpointing on)"
    )
    cpu_best = {name: max(r["tokens_per_cpu_s"] for r in results) for name, results in runs.items()}
    print(
        f"cpu_ratio={cpu_best['platform'] / cpu_best['plain']:.3f} (tokens per CPU-second, best of each side)"
    )
    print(f"tuned_ratio={best['platform']['tokens_per_s'] / best['tuned']['tokens_per_s']:.3f}")
    print(f"ratio={best['platform']['tokens_per_s'] / best['plain']['tokens_per_s']:.3f}")


if __name__ == "__main__":
    main()
