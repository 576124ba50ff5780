"""The config model: TOML -> pydantic, precise errors, env references, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_assets.config import DEFAULT_CONFIG_PATH, ConfigError, Settings, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def test_bundled_configs_load() -> None:
    demo = load_settings(DEFAULT_CONFIG_PATH)
    assert demo.fine_tuner.base_model_id == "embedded:smollm2-135m-instruct"
    assert demo.resolve_path(demo.fine_tuner.training_data_id).is_file()
    ci = load_settings(Path("config/ci.toml"))
    assert ci.fine_tuner.base_model_id == "embedded:tiny-llama"


def test_unknown_key_names_file_section_key_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "[fine_tuner]\nrnak = 8\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    message = str(error.value)
    assert str(path) in message
    assert "[fine_tuner] unknown key 'rnak'" in message
    assert "did you mean 'rank'" in message


def test_unknown_section_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "[fine_tunner]\nrank = 8\n")
    with pytest.raises(ConfigError, match=r"unknown section \[fine_tunner\].*did you mean 'fine_tuner'"):
        load_settings(path)


def test_wrong_type_names_section_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, '[inferencer]\nbatch_size = "lots"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert "[inferencer] batch_size" in str(error.value)
    assert "'lots'" in str(error.value)


def test_nested_section_error_path(tmp_path: Path) -> None:
    path = write(tmp_path, "[evaluator.judge]\nmax_concurrency = 0\n")
    with pytest.raises(ConfigError, match=r"\[evaluator.judge\] max_concurrency"):
        load_settings(path)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_settings(write(tmp_path, "[fine_tuner\nrank = 8\n"))


def test_env_references_are_expanded_and_unset_ones_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, '[mlflow]\nexperiment_name = "exp-${TEAM}"\n')
    monkeypatch.setenv("TEAM", "nlp")
    assert load_settings(path).mlflow.experiment_name == "exp-nlp"
    monkeypatch.delenv("TEAM")
    with pytest.raises(ConfigError, match=r"mlflow.experiment_name refers to \$\{TEAM\}"):
        load_settings(path)


def test_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="load_in_4bit and load_in_8bit"):
        load_settings(write(tmp_path, "[fine_tuner]\nload_in_4bit = true\nload_in_8bit = true\n"))
    with pytest.raises(ConfigError, match=r"unknown metric 'rouge'.*did you mean 'rouge_score'"):
        load_settings(write(tmp_path, '[evaluator]\nmetrics = ["rouge"]\nprimary_metric = "rouge"\n'))


def test_overrides_win_over_file_and_paths_resolve_against_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[fine_tuner]\nrank = 8\ntraining_data_id = "train.jsonl"\n')
    settings = load_settings(path, {"fine_tuner": {"rank": 4}})
    assert settings.fine_tuner.rank == 4
    assert settings.resolve_path(settings.fine_tuner.training_data_id) == tmp_path / "train.jsonl"


def test_flat_params_are_prefixed_per_section() -> None:
    params = Settings().flat_params()
    assert params["finetuner_rank"] == "16"
    assert params["evaluator_judge_model"] == "gpt-4o-mini"
    assert {key.split("_")[0] for key in params} == {
        "finetuner",
        "inferencer",
        "evaluator",
        "mlflow",
        "pipeline",
    }
