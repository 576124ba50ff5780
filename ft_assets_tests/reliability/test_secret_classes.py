"""Issue 14's secret classes (items 5 to 8 and 12) and the settings round trip of issue 12: ``${VAR}`` in
run config, credentials in any URL, what the upload scan reads, secret-looking variable names, key-file
flags, MLflow key collisions, and settings that cross a process boundary unchanged by hostile secrets."""

import json
import logging
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from mlflow import MlflowClient

from ft_assets import secrets
from ft_assets.cli import build_parser, resolve_keys
from ft_assets.config import ConfigError, Settings, load_settings
from ft_assets.execution.request import PhaseRequest
from ft_assets.phases.checkpoints import checkpoint_root
from ft_assets.phases.models import MODEL_INFO_FILE, ResolvedModel
from ft_assets.phases.training import load_training_data, train
from ft_assets.preflight import preflight
from ft_assets.resources.settings import PipelineSettings
from ft_assets.resources.tracking import DAGSTER_TAG_TRACKING_URI, _tag_dagster_run
from ft_assets.secrets import SecretFoundError, is_secret_name, redact
from ft_assets.tracking import open_phase_run
from ft_assets.tracking_keys import TAG_KEY_COLLISIONS
from ft_assets.tracking_options import TrackingOptions
from ft_assets.tracking_run import OrchestratorRun, PhaseRun
from ft_assets_tests.reliability.support import fresh_store

DB_PASSWORD = "FAKEdbPW-5f1e9c3a7b"


@pytest.fixture(autouse=True)
def _no_secrets_left_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values registered by a test (expansions, key files) must not mask text in the tests after it."""
    monkeypatch.setattr(secrets, "_registered", set())


def _tracked(settings: Settings, uri: str) -> TrackingOptions:
    return TrackingOptions.resolve(settings, {"tracking_uri": uri, "log_system_metrics": False})


# ----------------------------------------------------------------------------- item 5: ${VAR} expansion


def test_a_run_config_override_cannot_expand_an_environment_variable(
    write_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_DB_PASSWORD", DB_PASSWORD)
    resource = PipelineSettings(
        config_path=str(write_config()), mlflow={"run_name_prefix": "${SOME_DB_PASSWORD}"}
    )
    with pytest.raises(ConfigError, match=r"mlflow\.run_name_prefix .*expanded in the TOML config file only"):
        resource.load()


def test_a_value_expanded_in_the_toml_never_reaches_mlflow_params(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store_template: Path
) -> None:
    monkeypatch.setenv("SOME_DB_PASSWORD", DB_PASSWORD)
    config = write_config({"fine_tuner": {"hub_model_id": "team/${SOME_DB_PASSWORD}"}})
    settings = load_settings(config)
    assert settings.fine_tuner.hub_model_id == f"team/{DB_PASSWORD}"  # the phase itself sees the value
    uri = fresh_store(mlflow_store_template, tmp_path / "store")
    with open_phase_run(
        _tracked(settings, uri), "evaluation", settings, OrchestratorRun(uuid.uuid4().hex)
    ) as run:
        run.set_tags({"note": f"pushing to team/{DB_PASSWORD}"})
    client = MlflowClient(uri)
    for run_id in (str(run.run_id), str(run.parent_run_id)):
        data = client.get_run(run_id).data
        stored = json.dumps([data.params, data.tags])
        assert DB_PASSWORD not in stored
    assert client.get_run(str(run.parent_run_id)).data.params["finetuner_hub_model_id"] == "team/***"


# ------------------------------------------------------------------------- item 6: credentials in URLs


def test_judge_url_credentials_stay_out_of_error_messages(write_config: Any) -> None:
    judged = {"metrics": ["answer_accuracy"], "primary_metric": "answer_accuracy"}
    for url in ("https://judge:FAKEjudgePW77@judge.example/v1", "ftp://judge:FAKEjudgePW77@judge.example/v1"):
        settings = load_settings(write_config({"evaluator": {**judged, "judge": {"base_url": url}}}))
        with pytest.raises(Exception) as raised:
            preflight(settings, phases=["evaluation"], env={})
        assert "judge.example" in str(raised.value)
        assert "FAKEjudgePW77" not in str(raised.value)


def test_a_database_tracking_uri_keeps_its_password_out_of_run_tags_but_not_from_the_subprocess(
    tmp_path: Path,
) -> None:
    uri = "postgresql+psycopg2://mlflow:FAKEpgPW-42@db.example:5432/mlflow"
    tracked = PhaseRun(
        "finetuning", logging.getLogger(__name__), client=object(), tracking_uri=uri,  # type: ignore[arg-type]
        experiment_id="1", run_id="child", parent_run_id="parent",
    )  # fmt: skip

    @dg.asset
    def tagged(context: dg.AssetExecutionContext) -> None:
        _tag_dagster_run(context, tracked)

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([tagged], instance=instance)
        tags = instance.get_run_by_id(result.run_id).tags
        events = [str(record) for record in instance.all_logs(result.run_id)]
    assert tags[DAGSTER_TAG_TRACKING_URI] == "postgresql+psycopg2://db.example:5432/mlflow"
    assert "FAKEpgPW-42" not in json.dumps(dict(tags)) + "".join(events)
    assert (
        tracked.subprocess_env(with_credentials=True)["MLFLOW_TRACKING_URI"] == uri
    )  # a local child connects
    assert "FAKEpgPW-42" not in json.dumps(tracked.subprocess_env())  # what a pod spec may hold


# ---------------------------------------------------------------- item 7: the scan reads what is written


def test_the_upload_scan_finds_a_secret_deflated_inside_a_workbook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store_template: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-FAKEdeflated-1a2b3c4d5e")
    workbook = tmp_path / "report.xlsx"
    with zipfile.ZipFile(workbook, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("xl/sharedStrings.xml", "<t>judge said: bad key sk-FAKEdeflated-1a2b3c4d5e</t>" * 20)
    assert b"sk-FAKEdeflated" not in workbook.read_bytes()  # only the decompressed member holds it
    uri = fresh_store(mlflow_store_template, tmp_path / "store")
    settings = Settings(base_dir=tmp_path)
    with (
        pytest.raises(
            SecretFoundError, match=r"report\.xlsx!xl/sharedStrings\.xml: it contains the value of OPENAI"
        ),
        open_phase_run(
            _tracked(settings, uri), "evaluation", settings, OrchestratorRun(uuid.uuid4().hex)
        ) as run,
    ):
        run.log_artifact(workbook)
    assert "report.xlsx" not in [item.path for item in MlflowClient(uri).list_artifacts(str(run.run_id))]


# -------------------------------------------------------------- item 8: names, URLs and key-file flags


@pytest.mark.parametrize(
    "name",
    ["PGPASSWORD", "DB_PASS", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN_RO", "MY_API_KEY",
     "SMTP_PASSWORD_FILE", "SENTRY_DSN", "PRIVATE_KEY"],
)  # fmt: skip
def test_env_to_tag_refuses_secret_looking_names(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "FAKEvalue-0123456789")
    with pytest.raises(ConfigError, match=rf"env_to_tag lists {name!r}, which holds a secret"):
        TrackingOptions.resolve(Settings(base_dir=tmp_path), {"env_to_tag": ["USER", name]})


def test_env_to_tag_refuses_a_url_variable_with_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_URL", "https://backup:FAKEbackupPW@store.example/")
    monkeypatch.setenv("DOCS_URL", "https://docs.example/")
    TrackingOptions.resolve(Settings(base_dir=tmp_path), {"env_to_tag": ["DOCS_URL"]})
    with pytest.raises(ConfigError, match="BACKUP_URL"):
        TrackingOptions.resolve(Settings(base_dir=tmp_path), {"env_to_tag": ["BACKUP_URL"]})
    assert not is_secret_name("USER") and not is_secret_name("DOCS_URL", "https://docs.example/")


def test_redact_masks_a_token_user_name_and_a_password_holding_an_at_sign() -> None:
    text = "clone https://ghp_FAKEtoken1234@github.com/x and https://bob:p@ss@w0rd@db.example/y"
    clean = redact(text)
    assert "ghp_FAKEtoken1234" not in clean and "p@ss@w0rd" not in clean and "w0rd" not in clean
    assert clean == "clone https://***@github.com/x and https://bob:***@db.example/y"


def test_keys_can_come_from_a_file_or_stdin_instead_of_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "hf.key"
    key_file.write_text("hf_FAKEfileTOKEN9876\n", encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("sk-FAKEstdinKEY-5432\n"))
    argv = ["--hf-key-file", str(key_file), "--openai-key-file", "-"]
    assert resolve_keys(build_parser().parse_args(argv)) == ("hf_FAKEfileTOKEN9876", "sk-FAKEstdinKEY-5432")
    assert redact("token hf_FAKEfileTOKEN9876") == "token ***"  # registered as a secret
    help_text = build_parser().format_help()
    assert "--hf-key-file" in help_text and "/proc/<pid>/cmdline" in help_text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--hf-key", "x", "--hf-key-file", str(key_file)])


# ------------------------------------------------------------------------- item 12: key collisions


def test_keys_that_collide_across_calls_and_in_tags_are_all_kept_and_reported(
    tmp_path: Path, mlflow_store_template: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = fresh_store(mlflow_store_template, tmp_path / "store")
    settings = Settings(base_dir=tmp_path)
    with (
        caplog.at_level(logging.WARNING),
        open_phase_run(
            _tracked(settings, uri), "evaluation", settings, OrchestratorRun(uuid.uuid4().hex)
        ) as run,
    ):
        run.log_metrics({"a=b": 1.0})
        run.log_metrics({"a:b": 2.0})
        run.log_metrics({"a=b": 3.0}, step=1)  # the same name again: the same key as the first time
        run.set_tags({"x=y": "first", "x:y": "second"})
        run.log_params({"p=q": "one"})
        run.log_params({"p:q": "two"})
    client = MlflowClient(uri)
    data = client.get_run(str(run.run_id)).data
    history = [m.value for m in client.get_metric_history(str(run.run_id), "a:b")]
    assert history == [1.0, 3.0]
    collisions = json.loads(data.tags[TAG_KEY_COLLISIONS])
    assert set(collisions) == {"a:b", "x=y", "p:q"}
    assert data.metrics[collisions["a:b"]] == 2.0
    assert {data.tags["x:y"], data.tags[collisions["x=y"]]} == {"first", "second"}
    assert data.params["p:q"] == "one" and data.params[collisions["p:q"]] == "two"
    warned = [r.getMessage() for r in caplog.records if TAG_KEY_COLLISIONS in r.getMessage()]
    assert len(warned) == 3


# ------------------------------------------------------------ issue 12: the settings round trip


ROUND_TRIP = """
import json, sys
from ft_assets.execution.request import PhaseRequest
request = PhaseRequest.from_json(json.load(sys.stdin))
print(json.dumps(request.load_settings().model_dump(mode="json")))
"""


@pytest.mark.parametrize("hostile", ["true", "demo", "data", "test.jsonl", "fine_tuner", "0.05"])
def test_hostile_secret_values_do_not_change_the_settings_a_subprocess_phase_receives(
    hostile: str,
    write_config: Any,
    tmp_path: Path,
    tiny_model: ResolvedModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", hostile)
    monkeypatch.setenv("FT_PROMPT_WORD", "FAKEexpanded-77")
    config = write_config(
        {"inferencer": {"system_prompt_override_text": "Answer: true or false, ${FT_PROMPT_WORD}"}}
    )
    settings = load_settings(config)
    request = PhaseRequest.finetuning(settings, tiny_model, tmp_path / "out", tracking_required=False)
    assert request.load_settings() is settings  # in process: the object itself
    wire = json.dumps(request.to_json())
    assert "FAKEexpanded-77" not in wire and "${FT_PROMPT_WORD}" in wire  # it travels as its template
    received = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP], input=wire, capture_output=True, text=True, check=True
    )
    assert json.loads(received.stdout) == settings.model_dump(mode="json")


def test_url_credentials_are_stripped_from_a_phase_request(
    write_config: Any, tiny_model: ResolvedModel
) -> None:
    uri = "https://bob:FAKEhttpPW-31@mlflow.example"
    settings = load_settings(write_config({"mlflow": {"tracking_uri": uri}}))
    request = PhaseRequest.finetuning(settings, tiny_model, Path("/tmp/out"), tracking_required=False)
    wire = json.dumps(request.to_json())
    assert "FAKEhttpPW-31" not in wire and "https://mlflow.example" in wire


def test_a_logged_dict_stays_valid_json_whatever_the_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store_template: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "true")
    uri = fresh_store(mlflow_store_template, tmp_path / "store")
    settings = Settings(base_dir=tmp_path)
    with open_phase_run(
        _tracked(settings, uri), "evaluation", settings, OrchestratorRun(uuid.uuid4().hex)
    ) as run:
        run.log_dict({"passed": True, "note": "the password is true"}, "summary.json")
    stored = MlflowClient(uri).download_artifacts(str(run.run_id), "summary.json", str(tmp_path))
    assert json.loads(Path(stored).read_text()) == {"passed": True, "note": "the password is ***"}


def test_a_value_expanded_in_the_toml_stays_out_of_the_published_model(
    write_config: Any, tmp_path: Path, tiny_model: ResolvedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_DB_PASSWORD", DB_PASSWORD)
    config = write_config({"fine_tuner": {"max_steps": 1, "hub_model_id": "team/${SOME_DB_PASSWORD}"}})
    settings = load_settings(config)
    train_set, validation_set = load_training_data(settings)
    output = tmp_path / "adapter"
    train(
        settings,
        tiny_model,
        train_set,
        validation_set,
        output_dir=output,
        checkpoint_root=checkpoint_root(settings),
    )
    assert [p.name for p in output.rglob("*") if p.is_file() and DB_PASSWORD.encode() in p.read_bytes()] == []
    assert json.loads((output / MODEL_INFO_FILE).read_text())["config"]["hub_model_id"] == "team/***"
