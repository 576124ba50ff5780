"""The config model: TOML -> pydantic, precise errors, env references, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from ft_assets.config import (
    DEFAULT_CONFIG_PATH,
    PROJECT_ROOT,
    ConfigError,
    Settings,
    load_settings,
    read_toml,
    relocated_config,
)


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


def test_defaults_that_do_not_trap_a_config_of_ones_own(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[fine_tuner]\ntraining_data_id = "train.jsonl"\n[inferencer]\ntesting_data_id = "test.jsonl"\n'
        '[evaluator]\nmetrics = ["exact_match", "chrf_score"]\n',
    )
    settings = load_settings(path)
    # no validation set unless one is configured (never the demo's, resolved against this folder)
    assert settings.fine_tuner.validation_data_id is None
    assert settings.evaluator.primary_metric == "exact_match"  # the first configured metric
    assert Settings().evaluator.primary_metric == "bleu_score"  # the first default metric
    chosen = load_settings(path, {"evaluator": {"primary_metric": "chrf_score"}})
    assert chosen.evaluator.primary_metric == "chrf_score"


def test_overrides_win_over_file_and_paths_resolve_against_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[fine_tuner]\nrank = 8\ntraining_data_id = "train.jsonl"\n')
    settings = load_settings(path, {"fine_tuner": {"rank": 4}})
    assert settings.fine_tuner.rank == 4
    assert settings.resolve_path(settings.fine_tuner.training_data_id) == tmp_path / "train.jsonl"


def test_relocated_config_works_elsewhere_with_outputs_under_root_and_overrides_winning(
    tmp_path: Path,
) -> None:
    source = PROJECT_ROOT / "config" / "ci.toml"
    root, cache = tmp_path / "outputs", tmp_path / "cache"
    (tmp_path / "elsewhere").mkdir()
    written = relocated_config(
        source,
        tmp_path / "elsewhere" / "copy.toml",
        outputs_root=root,
        model_cache_dir=cache,
        overrides={"fine_tuner": {"rank": 2}, "mlflow": {"log_system_metrics": False}},
    )
    assert written == tmp_path / "elsewhere" / "copy.toml"
    copy, original = load_settings(written), load_settings(source)
    assert copy.base_dir == tmp_path / "elsewhere"
    for section, key in (
        ("fine_tuner", "training_data_id"),
        ("fine_tuner", "validation_data_id"),
        ("inferencer", "testing_data_id"),
    ):
        value = getattr(getattr(copy, section), key)
        assert Path(value).is_absolute() and Path(value).is_file(), (key, value)
        assert copy.resolve_path(value) == original.resolve_path(getattr(getattr(original, section), key))
    assert copy.artifacts_root == root / "artifacts"
    assert copy.model_cache_dir == cache
    assert copy.mlflow.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert (copy.fine_tuner.rank, copy.mlflow.log_system_metrics) == (2, False)
    assert copy.fine_tuner.max_steps == original.fine_tuner.max_steps
    assert copy.mlflow.experiment_name == original.mlflow.experiment_name
    assert read_toml(written)["pipeline"].get("model_cache_dir") == str(cache)
    unset = relocated_config(source, tmp_path / "plain.toml", outputs_root=root)
    assert "model_cache_dir" not in read_toml(unset)["pipeline"]


def test_relocated_config_resolves_like_the_loader_and_leaves_hub_ids(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "data").mkdir()
    (project / "data" / "train.jsonl").write_text("{}\n")
    source = project / "config" / "run.toml"
    source.write_text(
        '[fine_tuner]\ntraining_data_id = "data/train.jsonl"\nvalidation_data_id = "org/validation"\n'
        '[inferencer]\ntesting_data_id = "org/name"\n'
    )
    data = read_toml(relocated_config(source, tmp_path / "copy.toml", outputs_root=tmp_path / "out"))
    assert data["fine_tuner"]["training_data_id"] == str(project / "data" / "train.jsonl")
    assert data["fine_tuner"]["validation_data_id"] == "org/validation"
    assert data["inferencer"]["testing_data_id"] == "org/name"


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
