"""Security: no secret is stored or printed, hub pushes are opt-in and private, outputs stay inside their
roots, and the servers the README starts listen on 127.0.0.1 only."""

import io
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ft_assets.assets.common import run_output_dir
from ft_assets.config import FineTunerConfig, load_settings
from ft_assets.phases.models import ModelError, ResolvedModel
from ft_assets.phases.training import load_training_data, train
from ft_assets.resources.settings import PipelineSettings
from ft_assets_tests.reliability.support import (
    CLI_SECRETS,
    ENV_SECRETS,
    PROJECT_ROOT,
    ConcurrentChains,
    fresh_store,
)

SECRETS = {**ENV_SECRETS, **CLI_SECRETS}


# ------------------------------------------------------------------------------------------ secret audit


def blobs(path: Path) -> Iterator[tuple[str, bytes]]:
    """The bytes of ``path``, and of each member when it is a zip (xlsx workbooks are zips of deflated XML)."""
    data = path.read_bytes()
    yield str(path), data
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield f"{path}!{member}", archive.read(member)


def secret_hits(roots: list[Path]) -> tuple[list[str], int]:
    """Where any secret value occurs under ``roots`` (files and zip members), and how many blobs were read."""
    hits, scanned = [], 0
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            for where, data in blobs(path):
                scanned += 1
                hits += [f"{name} in {where}" for name, value in SECRETS.items() if value.encode() in data]
    return hits, scanned


def test_the_scanner_finds_a_secret_inside_a_workbook(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "report.xlsx", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/sharedStrings.xml", f"<t>{CLI_SECRETS['--openai-key']}</t>")
    hits, _ = secret_hits([tmp_path])
    assert hits == [f"--openai-key in {tmp_path / 'report.xlsx'}!xl/sharedStrings.xml"]


def test_no_secret_is_stored_or_printed_by_two_chain_runs(
    concurrent_chains: ConcurrentChains, model_cache: Path
) -> None:
    """HF_TOKEN, OPENAI_API_KEY and MLFLOW_TRACKING_PASSWORD in the environment, --hf-key and --openai-key on
    the command line of both ``ft-pipeline`` runs: none of them in the MLflow store (sqlite bytes, artifacts,
    logged model), the Dagster instance (runs, event logs, IO manager pickles, compute logs), the outputs
    (JSONL, adapter, JSON, xlsx members) or the captured stdout/stderr."""
    root = concurrent_chains.root
    assert all(run.returncode == 0 for run in concurrent_chains.runs), [
        r.stderr[-2000:] for r in concurrent_chains.runs
    ]
    # the places the audit must have read, so that a missing one cannot pass unnoticed
    assert (root / "mlflow.db").stat().st_size > 0
    assert list((root / "mlartifacts").rglob("MLmodel")), "alpha's logged model is not in the store"
    assert list((concurrent_chains.home / "history" / "runs").glob("*.db"))
    assert list((concurrent_chains.home / "storage").rglob("*"))
    assert list((root / "artifacts").rglob("evaluation_report.xlsx"))
    assert all(
        (root / "captured" / f"{run.name}.{kind}").is_file()
        for run in concurrent_chains.runs
        for kind in ("stdout", "stderr")
    )

    hits, scanned = secret_hits([root, model_cache])
    assert hits == []
    assert scanned > 100
    # the CLI key, not the environment's, reached the judge: the flag took effect and was used
    sent = {headers.get("authorization") for headers in concurrent_chains.judge.headers}
    assert sent == {f"Bearer {CLI_SECRETS['--openai-key']}"}


# --------------------------------------------------------------------------------------------- hub pushes


def test_hub_pushes_are_off_and_private_unless_configured() -> None:
    default = FineTunerConfig()
    assert (default.push_to_hub, default.hub_private, default.hub_model_id) == (False, True, None)
    for name in ("pipeline.toml", "ci.toml"):
        tuner = load_settings(PROJECT_ROOT / "config" / name).fine_tuner
        assert (tuner.push_to_hub, tuner.hub_private) == (False, True), name


def test_training_refuses_a_hub_push_without_a_token_before_any_work(
    tmp_path: Path, write_config: Any, tiny_model: ResolvedModel
) -> None:
    settings = load_settings(
        write_config({"fine_tuner": {"push_to_hub": True, "hub_model_id": "me/adapter"}})
    )
    train_set, validation_set = load_training_data(settings)
    output, checkpoints = tmp_path / "adapter", tmp_path / "checkpoints"
    with pytest.raises(
        ModelError, match=r"push_to_hub = true needs a Hugging Face token \(HF_TOKEN or --hf-key\)"
    ):
        train(settings, tiny_model, train_set, validation_set, output_dir=output, checkpoint_root=checkpoints)
    assert not output.exists() and not checkpoints.exists()


# -------------------------------------------------------------------------------------------- output paths


def _output_dir_for(asset_name: str, config: Path) -> dg.ExecuteInProcessResult:
    """Materialize a probe asset that asks run_output_dir for ``asset_name``'s folder (a real context)."""

    @dg.asset(name="probe")
    def probe(context: dg.AssetExecutionContext, settings: PipelineSettings) -> str:
        return str(run_output_dir(settings.load(), asset_name, context))

    return dg.materialize(
        [probe],
        resources={"settings": PipelineSettings(config_path=str(config))},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


@pytest.mark.parametrize("asset_name", ["../outside", "../../etc", "/tmp/absolute", "a/../../b"])
def test_output_folders_cannot_escape_the_artifacts_root(
    asset_name: str, write_config: Any, tmp_path: Path
) -> None:
    result = _output_dir_for(asset_name, write_config())
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "escapes the artifacts root" in failure.step_failure_data.error.to_string()
    assert str(tmp_path / "artifacts") in failure.step_failure_data.error.to_string()


def test_a_symlink_inside_the_artifacts_root_cannot_redirect_outputs(
    write_config: Any, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "inference_results").symlink_to(outside, target_is_directory=True)
    result = _output_dir_for("inference_results", write_config())
    assert not result.success
    assert not list(outside.iterdir())


def test_a_plain_asset_folder_is_inside_the_root(write_config: Any, tmp_path: Path) -> None:
    result = _output_dir_for("inference_results", write_config())
    assert result.success
    assert (
        Path(result.output_for_node("probe")) == tmp_path / "artifacts" / "inference_results" / result.run_id
    )


@pytest.mark.parametrize("experiment_name", ["ci/../experiment", ".", ".."])
def test_mlflow_artifacts_stay_in_their_folder_whatever_the_experiment_name(
    experiment_name: str, write_config: Any, tmp_path: Path, mlflow_store_template: Path
) -> None:
    """A sqlite store keeps each experiment's artifacts in ``<store folder>/mlartifacts/<experiment>``."""
    from mlflow import MlflowClient

    from ft_assets.config import ConfigError
    from ft_assets.tracking import open_phase_run
    from ft_assets.tracking_options import TrackingOptions
    from ft_assets.tracking_run import OrchestratorRun

    settings = load_settings(write_config({"mlflow": {"experiment_name": experiment_name}}))
    fresh_store(mlflow_store_template, tmp_path)
    options = TrackingOptions.resolve(settings)
    try:
        with open_phase_run(options, "evaluation", settings, OrchestratorRun(run_id="security-test")) as run:
            run.log_metrics({"score": 1.0})
    except ConfigError:
        return  # refusing the name is as good as containing it
    experiment = MlflowClient(options.tracking_uri).get_experiment_by_name(experiment_name)
    location = Path(experiment.artifact_location.removeprefix("file://")).resolve()
    assert (tmp_path / "mlartifacts") in location.parents, location


# ------------------------------------------------------------------------------------------------ servers


def _server_commands(*overrides: str) -> dict[str, str]:
    """The commands ``make ui`` and ``make mlflow-ui`` would run (``make -n``: printed, not run)."""
    printed = subprocess.run(
        ["make", "-n", "ui", "mlflow-ui", *overrides],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\\\n", " ")
    commands = {}
    for line in printed.splitlines():
        for server in ("dagster dev", "dagster-webserver", "mlflow server", "mlflow ui"):
            if re.search(rf"(^|/|\s){server}\s", line):
                commands[server] = line
    return commands


def _host(command: str) -> str:
    match = re.search(r"(?:\s-h|\s--host)[\s=]+(\S+)", command)
    assert match, f"no host flag (the server's own default may not be loopback): {command}"
    return match.group(1)


def test_the_readme_servers_bind_to_loopback_by_default() -> None:
    if shutil.which("make") is None:
        pytest.fail("make is needed to read the Makefile's ui targets")
    commands = _server_commands()
    assert {"dagster dev", "mlflow server"} <= set(commands) or {"dagster dev", "mlflow ui"} <= set(
        commands
    ), commands
    assert {name: _host(command) for name, command in commands.items()} == dict.fromkeys(
        commands, "127.0.0.1"
    )
    # the value really comes from HOST: exposing them is an explicit choice
    exposed = _server_commands("HOST=0.0.0.0")
    assert {_host(command) for command in exposed.values()} == {"0.0.0.0"}
