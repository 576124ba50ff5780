"""``ft-pipeline``: run the pipeline's phases from the command line (the seed's flags, through Dagster).

Flags override ``[pipeline]`` in the config file; a phase that is disabled or comes after a
``--stop-after-*`` phase is skipped, which is not a failure. Exit status 0 on success; on failure 1, with a
one-line reason on stderr. Keys given with ``--hf-key``/``--openai-key`` (or read from a file or stdin with
``--hf-key-file``/``--openai-key-file``, which keeps them out of ``/proc/<pid>/cmdline``) reach the phases as
``HF_TOKEN`` / ``OPENAI_API_KEY`` in this process's environment only, and are never echoed, logged or stored.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import dagster as dg

from ft_assets.asset_values import AssetValue
from ft_assets.config import ConfigError
from ft_assets.jobs import PHASES
from ft_assets.secrets import redact, register_secret

EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse whose error messages never echo a value from the command line: a mistyped flag
    (``--hf-kye hf_...``) would otherwise print the secret after it."""

    _argv: Sequence[str] = ()

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {mask_values(message, self._argv)}\n")


def mask_values(message: str, argv: Sequence[str]) -> str:
    """``message`` with every command-line value (anything but a ``--flag``) replaced by ``***``."""
    for token in sorted(argv, key=len, reverse=True):
        value = token.partition("=")[2] if token.startswith("--") else token
        if value:
            message = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", "***", message)
    return message


def build_parser() -> argparse.ArgumentParser:
    """The ``ft-pipeline`` argument parser."""
    parser = _Parser(
        prog="ft-pipeline",
        allow_abbrev=False,
        description="Fine-tune, run inference and evaluate, as Dagster runs of the ft-assets assets. "
        "`ft-pipeline init --train FILE --test FILE` starts a config for your own data.",
    )
    parser.add_argument("--config", help="TOML config (default: $FT_ASSETS_CONFIG or config/pipeline.toml)")
    for flag, what, var in (
        ("hf", "Hugging Face token", "HF_TOKEN"),
        ("openai", "OpenAI key", "OPENAI_API_KEY"),
    ):
        keys = parser.add_mutually_exclusive_group()
        keys.add_argument(
            f"--{flag}-key",
            metavar="KEY",
            help=f"{what} for this run (as {var}); other local users can read it in ps and "
            f"/proc/<pid>/cmdline for the whole run: prefer ${var} or --{flag}-key-file",
        )
        keys.add_argument(
            f"--{flag}-key-file",
            metavar="PATH",
            help=f"read the {what} from the file PATH ('-': from stdin), so it is not on the command line",
        )
    for phase in PHASES:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            f"--enable-{phase}",
            dest=f"enable_{phase}",
            action="store_const",
            const=True,
            help=f"run the {phase} phase ([pipeline] enable_{phase} = true)",
        )
        group.add_argument(
            f"--skip-{phase}",
            dest=f"enable_{phase}",
            action="store_const",
            const=False,
            help=f"skip the {phase} phase ([pipeline] enable_{phase} = false)",
        )
    for phase in PHASES[:-1]:
        parser.add_argument(
            f"--stop-after-{phase}",
            dest=f"stop_after_{phase}",
            action="store_const",
            const=True,
            help=f"stop after the {phase} phase ([pipeline] stop_after_{phase} = true)",
        )
    parser.add_argument(
        "--dagster-home", help="Dagster instance folder (default: $DAGSTER_HOME or .dagster_home)"
    )
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="run (or resume) the config's [sweep]: every candidate not done yet, then the leaderboard",
    )
    return parser


def read_key_file(path: str, flag: str) -> str:
    """The key in ``path`` (``-``: stdin), surrounding whitespace removed; an error names the flag."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{flag} {path}: cannot read the key: {error.__class__.__name__}") from None
    key = text.strip()
    if not key:
        raise ConfigError(f"{flag} {path}: the file is empty")
    return key


def resolve_keys(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The HF and OpenAI keys from ``--*-key`` or ``--*-key-file`` (each registered as a secret)."""
    if args.hf_key_file == "-" and args.openai_key_file == "-":
        raise ConfigError(
            "--hf-key-file - and --openai-key-file - cannot both read stdin; use a file for one"
        )
    keys = []
    for flag in ("hf", "openai"):
        path = getattr(args, f"{flag}_key_file")
        key = read_key_file(path, f"--{flag}-key-file") if path else getattr(args, f"{flag}_key")
        if key:
            register_secret(key)
        keys.append(key)
    return keys[0], keys[1]


def pipeline_overrides(args: argparse.Namespace) -> dict[str, bool]:
    """The ``[pipeline]`` overrides the flags ask for (flags not given leave the config's value)."""
    keys = [f"enable_{phase}" for phase in PHASES] + [f"stop_after_{phase}" for phase in PHASES[:-1]]
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


def as_json(value: Any) -> Any:
    """``--json``: asset values as their JSON form, anything else JSON cannot hold as its text."""
    return value.to_json() if isinstance(value, AssetValue) else str(value)


def summary(results: dict[str, Any]) -> list[str]:
    """One line per phase: its status and where its outputs and MLflow runs are."""
    lines = []
    for phase, outcome in results["phases"].items():
        if outcome["status"] == "skipped":
            lines.append(f"{phase}: skipped ({outcome['reason']})")
            continue
        parts = []
        for name, asset in outcome["assets"].items():
            value = asset["value"]
            where = None
            if isinstance(value, AssetValue):
                where = getattr(value, "json_path", None) or getattr(value, "path", None)
            run = asset["mlflow_run_url"] or asset["mlflow_run_id"]
            parts.append(f"{name}" + (f" -> {where}" if where else "") + (f" (MLflow {run})" if run else ""))
        failed = [name for name, passed in outcome["checks"].items() if not passed]
        checks = f"; failed checks: {', '.join(failed)}" if failed else ""
        lines.append(f"{phase}: completed: {'; '.join(parts)}{checks}")
    if results["dagster_run_id"]:
        lines.append(
            f"Dagster run {results['dagster_run_id']}, MLflow parent run {results['mlflow_parent_run_id']}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ft-pipeline``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["init"]:
        from ft_assets.init_config import main as init_main

        return init_main(argv[1:])
    args = build_parser().parse_args(argv)
    # Beta notices about Dagster's own decorators say nothing to someone running the pipeline.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from ft_assets.pipeline import FineTunePipeline

    overrides = pipeline_overrides(args)
    try:
        hf_key, openai_key = resolve_keys(args)
        pipeline = FineTunePipeline(
            config_path=args.config,
            hf_key=hf_key,
            openai_key=openai_key,
            overrides={"pipeline": overrides} if overrides else None,
            dagster_home=args.dagster_home,
        )
        try:
            if args.sweep:
                from ft_assets.sweeps.launch import run_sweep, sweep_summary

                results = run_sweep(pipeline)
            else:
                results = pipeline.run_pipeline()
        finally:
            pipeline.close()
    except KeyboardInterrupt:
        print("ft-pipeline: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        print(f"ft-pipeline: error: {redact(reason)}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(results, indent=2, default=as_json))
    else:
        print("\n".join(sweep_summary(results) if args.sweep else summary(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
