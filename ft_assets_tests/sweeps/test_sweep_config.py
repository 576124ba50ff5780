"""The [sweep] section: validation errors naming [sweep] and the key, candidate expansion and names."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path
from typing import Any

import pytest

from ft_assets.config import ConfigError, build_settings, load_settings
from ft_assets.sweeps.candidates import candidate_settings, expand, format_value, plan_sweep


def sweep(section: dict[str, Any], **others: Any) -> Any:
    return build_settings({"sweep": section, **others}, source="sweep.toml")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"grid": {"rnak": [8]}},
            "[sweep] grid: unknown key 'rnak': not a [fine_tuner] key (did you mean 'rank'?)",
        ),
        (
            {"grid": {"inferencer": {"batchsize": [4]}}},
            "unknown key 'inferencer.batchsize': not a [inferencer] key",
        ),
        ({"grid": {"evaluator": {"metrics": [["bleu_score"]]}}}, "[sweep] grid: unknown section 'evaluator'"),
        ({"grid": {"rank": []}}, "[sweep] grid: rank = [] is empty: list at least one value"),
        ({"grid": {"rank": 8}}, "[sweep] grid: rank = 8 must be a list of values, e.g. rank = [8]"),
        ({"grid": {"rank": ["eight"]}}, "[sweep] grid: rank = 'eight': Input should be a valid integer"),
        (
            {"grid": {"learning_rate": [1e-3, -1.0]}},
            "[sweep] grid: learning_rate = -1.0: Input should be greater than 0",
        ),
        (
            {"grid": {"inferencer": {"top_p": [0.5, 2.0]}}},
            "inferencer.top_p = 2.0: Input should be less than or equal to 1",
        ),
        ({"grid": {"rank": [8, 8]}}, "[sweep] grid: rank = [8, 8] lists a value twice"),
        ({"grid": {"rank": [8], "fine_tuner": {"rank": [16]}}}, "'rank' is listed twice"),
        ({"gird": {"rank": [8]}}, "[sweep] unknown key 'gird' (did you mean 'grid'?)"),
        ({"grid": {"rank": [8]}, "method": "bayes"}, "[sweep] method: Input should be 'grid' or 'random'"),
        (
            {"grid": {"rank": [4, 8, 16]}, "max_candidates": 2},
            "[sweep] the grid has 3 combinations, more than max_candidates = 2",
        ),
        ({"grid": {"rank": [4, 8]}, "method": "random"}, "[sweep] method = 'random' needs samples"),
        (
            {"grid": {"rank": [4, 8]}, "method": "random", "samples": 3},
            "samples = 3 is more than the grid's 2 combinations",
        ),
        ({"grid": {"rank": [4, 8]}, "samples": 1}, "[sweep] samples is for method = 'random'"),
        ({"grid": {"rank": [4]}, "name": "my sweep"}, "[sweep] name: String should match pattern"),
    ],
)
def test_an_invalid_sweep_section_names_sweep_and_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        sweep(section)
    assert str(error.value).startswith("sweep.toml: ")
    assert message in str(error.value)


def test_a_bad_sweep_in_a_file_fails_config_load_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "sweep.toml"
    config.write_text('[sweep.grid]\nrank = [8, 16]\nlearning_rate = ["fast"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{config}: [sweep] grid: learning_rate = 'fast'")):
        load_settings(config)


def test_a_candidate_invalid_as_a_whole_fails_the_plan_naming_it() -> None:
    # each value is valid alone; method = 'full' with 4-bit weights is refused by [fine_tuner]'s own check
    settings = sweep({"grid": {"method": ["lora", "full"], "load_in_4bit": [True]}})
    with pytest.raises(ConfigError) as error:
        plan_sweep(settings, source="sweep.toml")
    text = str(error.value)
    assert text.startswith(
        "sweep.toml: [sweep] candidate mfull-li41 (method = 'full', load_in_4bit = True): [fine_tuner]"
    )
    assert "quantized weights cannot be fully fine-tuned" in text


def test_no_grid_is_no_sweep() -> None:
    settings = build_settings({})
    assert not settings.sweep.enabled and expand(settings) == []
    with pytest.raises(ConfigError, match=re.escape("there is no sweep: add a [sweep.grid] table")):
        plan_sweep(settings)


def test_grid_candidates_cover_the_product_in_order_with_readable_names() -> None:
    settings = sweep(
        {"grid": {"rank": [8, 16], "learning_rate": [5e-4, 1e-3], "inferencer": {"max_new_tokens": [32]}}}
    )
    plan = plan_sweep(settings)
    assert plan.names == ["r8-lr5e-4-mnt32", "r8-lr1e-3-mnt32", "r16-lr5e-4-mnt32", "r16-lr1e-3-mnt32"]
    expected = list(itertools.product([8, 16], [5e-4, 1e-3]))
    got = [(plan.settings[n].fine_tuner.rank, plan.settings[n].fine_tuner.learning_rate) for n in plan.names]
    assert got == expected
    assert {plan.settings[n].inferencer.max_new_tokens for n in plan.names} == {32}
    # untouched keys keep the config's values; a candidate has no sweep of its own
    first = plan.settings[plan.names[0]]
    assert first.fine_tuner.lora_alpha == settings.fine_tuner.lora_alpha and not first.sweep.enabled
    assert plan.candidate("r16-lr1e-3-mnt32").params == {
        "rank": 16,
        "learning_rate": 1e-3,
        "inferencer.max_new_tokens": 32,
    }
    with pytest.raises(ConfigError, match="has no candidate 'r32'"):
        plan.candidate("r32")


def test_random_sample_is_seeded_and_draws_distinct_grid_points() -> None:
    grid = {"rank": [4, 8, 16, 32], "lora_alpha": [8, 16, 32], "lora_dropout": [0.0, 0.05, 0.1]}
    section = {"grid": grid, "method": "random", "samples": 5, "seed": 7}
    names = plan_sweep(sweep(section)).names
    assert names == plan_sweep(sweep(section)).names and len(set(names)) == 5
    # the same draw, independently: indices into the product in grid order, last key fastest
    product = list(itertools.product(*grid.values()))
    drawn = [product[i] for i in sorted(random.Random(7).sample(range(len(product)), 5))]
    assert [c.params for c in expand(sweep(section))] == [
        dict(zip(grid, point, strict=True)) for point in drawn
    ]
    assert plan_sweep(sweep({**section, "seed": 8})).names != names


def test_names_are_safe_partition_keys_and_run_names() -> None:
    settings = sweep(
        {
            "grid": {
                "base_model_id": ["embedded:tiny-llama", "org/Model v2"],
                "use_rslora": [True],
                "seed": [1],
                "inferencer": {"seed": [1, 2]},
            }
        }
    )
    names = plan_sweep(settings).names
    assert names == [
        "bmiembedded_tiny-llama-ur1-seed1-inferencer.seed1",
        "bmiembedded_tiny-llama-ur1-seed1-inferencer.seed2",
        "bmiModel_v2-ur1-seed1-inferencer.seed1",
        "bmiModel_v2-ur1-seed1-inferencer.seed2",
    ]
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._+\-]{1,64}", name), name
        assert "..." not in name


def test_a_name_too_long_keeps_a_prefix_and_a_stable_hash() -> None:
    settings = sweep({"grid": {"hub_model_id": ["x" * 80, "x" * 79 + "y"]}})
    names = plan_sweep(settings).names
    assert [len(n) for n in names] == [64, 64] and names[0] != names[1]
    assert names == plan_sweep(settings).names and names[0].startswith("hmixxxx")


@pytest.mark.parametrize(
    ("value", "text"),
    [(5e-4, "5e-4"), (1e-3, "1e-3"), (2e-5, "2e-5"), (1.5e-4, "1.5e-4"), (0.05, "0.05"), (0.1, "0.1"), (3, "3"),
     (True, "1"), (False, "0"), ("HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M"), (["q", "v"], "q+v")],
)  # fmt: skip
def test_value_formatting(value: Any, text: str) -> None:
    assert format_value(value) == text


def test_candidate_settings_keep_the_base_dir_and_validate() -> None:
    settings = sweep({"grid": {"rank": [8]}})
    candidate = expand(settings)[0]
    built = candidate_settings(settings, candidate)
    assert built.base_dir == settings.base_dir and built.fine_tuner.rank == 8


def test_the_demo_sweep_config_plans_four_smollm2_candidates() -> None:
    plan = plan_sweep(load_settings("config/sweep.toml"), source="config/sweep.toml")
    assert plan.names == ["lr2e-4-r8", "lr2e-4-r16", "lr1e-3-r8", "lr1e-3-r16"]
    for settings in plan.settings.values():
        assert settings.fine_tuner.base_model_id == "embedded:smollm2-135m-instruct"
        assert settings.resolve_path(settings.fine_tuner.training_data_id).is_file()
