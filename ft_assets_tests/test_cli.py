"""``ft-pipeline``: flags, exit status, one-line failures, and keys that are used but never kept."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from ft_assets.cli import build_parser, main, pipeline_overrides
from ft_assets_tests.openai_stub import openai_stub  # noqa: F401  (pytest fixture)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FT_PIPELINE = Path(sys.executable).parent / "ft-pipeline"
HF_KEY = "hf_cliTestKey8c1f7e02a9"
OPENAI_KEY = "sk-cliTestKey5d3b9a41c7"


def overrides(*argv: str) -> dict[str, bool]:
    return pipeline_overrides(build_parser().parse_args(list(argv)))


def test_flags_override_only_what_they_name() -> None:
    assert overrides() == {}
    assert overrides("--skip-finetuning", "--enable-inference", "--stop-after-inference") == {
        "enable_finetuning": False,
        "enable_inference": True,
        "stop_after_inference": True,
    }
    assert overrides("--enable-evaluation", "--stop-after-finetuning") == {
        "enable_evaluation": True,
        "stop_after_finetuning": True,
    }


def test_enabling_and_skipping_one_phase_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--enable-inference", "--skip-inference"])
    assert raised.value.code == 2
    assert (
        "argument --skip-inference: not allowed with argument --enable-inference" in capsys.readouterr().err
    )


def test_a_mistyped_key_flag_never_echoes_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--hf-kye", HF_KEY, f"--openai-kye={OPENAI_KEY}"])
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err and "--hf-kye" in err
    assert HF_KEY not in err and OPENAI_KEY not in err


def test_abbreviated_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--openai", OPENAI_KEY])
    assert OPENAI_KEY not in capsys.readouterr().err


def test_everything_skipped_succeeds_and_says_why(
    write_config: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config()
    argv = ["--config", str(config), "--dagster-home", str(tmp_path / "home")]
    assert main([*argv, "--skip-finetuning", "--skip-inference", "--skip-evaluation"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "finetuning: skipped ([pipeline] enable_finetuning = false)",
        "inference: skipped ([pipeline] enable_inference = false)",
        "evaluation: skipped ([pipeline] enable_evaluation = false)",
    ]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (
            ["--skip-finetuning"],
            "ft-pipeline: error: cannot run inference + evaluation: it needs base_model, fine_tuned_model, "
            "never materialized",
        ),
        (
            ["--config", "/nonexistent/pipeline.toml"],
            "ft-pipeline: error: config file not found: /nonexistent",
        ),
    ],
)
def test_failures_exit_1_with_a_one_line_reason(
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    reason: str,
) -> None:
    config = write_config()
    assert main(["--config", str(config), "--dagster-home", str(tmp_path / "home"), *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(reason)


def test_keys_are_used_for_the_run_and_stored_nowhere(
    write_config: Callable[..., Path],
    tmp_path: Path,
    openai_stub,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = openai_stub()
    config = write_config(
        {
            "fine_tuner": {"max_steps": 1},
            "evaluator": {
                "metrics": ["rouge_score", "answer_accuracy"],
                "judge": {"base_url": stub.base_url},
            },
            "mlflow": {"log_system_metrics": False, "log_model": False},
        }
    )
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "OPENAI_API_KEY", "DAGSTER_HOME")}
    completed = subprocess.run(
        [
            *(str(FT_PIPELINE), "--config", str(config), "--dagster-home", str(home)),
            *("--hf-key", HF_KEY, "--openai-key", OPENAI_KEY),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=600,
    )
    out, err = completed.stdout.decode(), completed.stderr.decode()
    assert completed.returncode == 0, err[-3000:]
    summary = [
        line for line in out.splitlines() if line.startswith(("finetuning:", "inference:", "evaluation:"))
    ]
    assert [line.split(": ")[:2] for line in summary] == [
        ["finetuning", "completed"],
        ["inference", "completed"],
        ["evaluation", "completed"],
    ], out
    # Any request the judge endpoint saw carried the key from the command line (the tiny model's answers are
    # mostly empty, and empty answers are scored without a request: the control below is the real proof).
    assert {h.get("authorization") for h in stub.stats.headers} <= {f"Bearer {OPENAI_KEY}"}

    # The same evaluation without the key fails before scoring: the successful run above used the key.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    argv = ["--config", str(config), "--dagster-home", str(home), "--skip-finetuning", "--skip-inference"]
    assert main(argv) == 1
    assert "need an API key" in capsys.readouterr().err

    leaks = [
        str(path)
        for path in tmp_path.rglob("*")
        if path.is_file() and any(key.encode() in path.read_bytes() for key in (HF_KEY, OPENAI_KEY))
    ]
    assert leaks == []
    assert HF_KEY not in out + err and OPENAI_KEY not in out + err
    assert (tmp_path / "mlflow.db").is_file() and (home / "history").is_dir()  # the stores searched exist
