"""The system prompt follows the model: set in ``[fine_tuner]`` only, inference uses it; stored with the model,
it is used when a later config sets none; a different one configured is used, with a warning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from ft_assets import definitions as code_location
from ft_assets.config import build_settings, load_settings
from ft_assets.phases.system_prompt import SystemPrompt, preflight_warnings
from ft_assets.preflight import preflight
from ft_assets_tests.helpers import pipeline_resources

PROMPT = "Réponds uniquement en JSON — 谢谢."


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_inference_set_takes_the_training_columns_it_does_not_set_itself() -> None:
    settings = build_settings(
        {
            "fine_tuner": {
                "question_column": "q",
                "ground_truth_column": "a",
                "system_prompt_override_text": PROMPT,
            },
            # set explicitly, to the default value: it still wins over [fine_tuner]'s
            "inferencer": {"question_column": "question"},
        }
    )
    inferencer = settings.inferencer
    assert (inferencer.question_column, inferencer.ground_truth_column) == ("question", "a")
    assert inferencer.system_prompt_override_text == PROMPT
    # a round trip (how settings reach a subprocess phase) keeps the resolved values
    again = build_settings(settings.model_dump(mode="json"))
    assert again.inferencer == inferencer
    # "" is how a section says "no system prompt column" when [fine_tuner] names one
    none_here = build_settings(
        {"fine_tuner": {"system_prompt_column": "sys"}, "inferencer": {"system_prompt_column": ""}}
    )
    assert not SystemPrompt.of(none_here.inferencer).configured


def test_preflight_warns_when_inference_uses_another_system_prompt(write_config: Any) -> None:
    differs = build_settings(
        {
            "fine_tuner": {"system_prompt_override_text": PROMPT},
            "inferencer": {"system_prompt_override_text": "Hi"},
        }
    )
    (warning,) = preflight_warnings(differs, trains=True)
    assert "'Hi'" in warning and repr(PROMPT) in warning
    # a run that only infers does not know the model it will get: the phase warns when it does
    assert preflight_warnings(differs, trains=False) == []
    same = build_settings({"fine_tuner": {"system_prompt_override_text": PROMPT}})
    assert preflight_warnings(same, trains=True) == []
    config = write_config(
        {
            "fine_tuner": {"system_prompt_override_text": PROMPT},
            "inferencer": {"system_prompt_override_text": "Hi"},
        }
    )

    report = preflight(load_settings(config), phases=["finetuning", "inference"])
    assert any("inference uses system_prompt_override_text = 'Hi'" in item for item in report.warnings)


def run_job(job: str, config: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    result = code_location.defs.resolve_job_def(job).execute_in_process(
        instance=instance, resources=pipeline_resources(config)
    )
    assert result.success
    return result


def test_a_system_prompt_set_only_in_fine_tuner_is_used_by_inference_and_stored_with_the_model(
    write_config: Any,
) -> None:
    no_baseline = {"run_baseline": False}
    config = write_config(
        {"fine_tuner": {"system_prompt_override_text": PROMPT, "max_steps": 1}, "inferencer": no_baseline}
    )
    instance = dg.DagsterInstance.ephemeral()
    chain = run_job("fine_tune_pipeline", config, instance)
    rows = read_jsonl(chain.output_for_node("inference_results").path)
    assert len(rows) == 60 and {row["system_prompt"] for row in rows} == {PROMPT}
    tuned = chain.output_for_node("fine_tuned_model")
    stored = json.loads((Path(tuned.path) / "ft_assets_model.json").read_text(encoding="utf-8"))
    assert stored["system_prompt"] == tuned.system_prompt == {"override_text": PROMPT, "column": None}
    metadata = chain.asset_materializations_for_node("fine_tuned_model")[0].metadata
    assert metadata["system_prompt"].value == f"system_prompt_override_text = {PROMPT!r}"

    # a config that sets no system prompt anywhere: inference of the trained model uses the stored one
    plain = write_config({"inferencer": no_baseline}, name="plain.toml")
    later = run_job("inference_job", plain, instance)
    later_rows = read_jsonl(later.output_for_node("inference_results").path)
    assert {row["system_prompt"] for row in later_rows} == {PROMPT}

    # another one configured wins, and the run log says the model was trained with something else
    other = write_config(
        {"inferencer": {**no_baseline, "system_prompt_override_text": "Be terse."}}, name="o.toml"
    )
    third = run_job("inference_job", other, instance)
    rows = read_jsonl(third.output_for_node("inference_results").path)
    assert {row["system_prompt"] for row in rows} == {"Be terse."}
    warnings = [
        e.user_message
        for e in instance.all_logs(third.run_id)
        if e.step_key == "inference_results" and e.level == 30  # WARNING
    ]
    assert any(
        "inference uses system_prompt_override_text = 'Be terse.'" in w and repr(PROMPT) in w
        for w in warnings
    ), warnings
