"""Print where the latest run's outputs are and how to open the Dagster and MLflow UIs (used by ``make demo``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg

from ft_assets.phases.formatting import estimate_text

ASSETS = (
    "base_model",
    "fine_tuned_model",
    "base_inference_results",
    "inference_results",
    "evaluation_report",
)


def _latest_metadata(instance: dg.DagsterInstance, asset: str) -> dict[str, object]:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if event is None or event.asset_materialization is None:
        return {}
    return {
        key: getattr(value, "value", value) for key, value in event.asset_materialization.metadata.items()
    }


def _cell(mean: object, low: object = None, high: object = None) -> str:
    return estimate_text(mean, low, high, missing="-")


def comparison_table(summary_path: Path) -> str:
    """Base vs fine-tuned means and the paired delta from an evaluation summary JSON, each with its
    confidence interval, as an aligned text table."""
    document = json.loads(summary_path.read_text())
    metrics = document["metrics"]
    tuned, base = metrics["fine_tuned"], metrics["base"] or {}
    comparison = document.get("comparison") or {}
    confidence = document.get("bootstrap", {}).get("confidence", 0.95)
    width = 24
    lines = [f"{'metric':<22}{'base':>{width}}{'fine-tuned':>{width}}{'delta (paired)':>{width}}"]
    for name, stats in tuned.items():
        base_stats, paired = base.get(name, {}), comparison.get(name, {})
        cells = [
            _cell(base_stats.get("mean"), base_stats.get("ci_low"), base_stats.get("ci_high")),
            _cell(stats["mean"], stats.get("ci_low"), stats.get("ci_high")),
            _cell(paired.get("delta"), paired.get("delta_ci_low"), paired.get("delta_ci_high")),
        ]
        lines.append(f"{name:<22}" + "".join(f"{cell:>{width}}" for cell in cells))
    lines.append(
        f"[low, high]: {confidence:.0%} paired bootstrap interval; delta over rows scored on both sides"
    )
    return "\n".join(lines)


def main() -> int:
    instance = dg.DagsterInstance.get()
    print("\nOutputs of the latest materializations:")
    for asset in ASSETS:
        metadata = _latest_metadata(instance, asset)
        where = (
            metadata.get("output_path")
            or metadata.get("model_path")
            or metadata.get("summary_json")
            or "(not materialized)"
        )
        print(f"  {asset:<24} {where}")
        if metadata.get("mlflow_run_url"):
            print(f"  {'':<24} MLflow: {metadata['mlflow_run_url']}")
    report = _latest_metadata(instance, "evaluation_report")
    if report.get("summary_json"):
        print("\nBase vs fine-tuned on the held-out test split:")
        print(comparison_table(Path(str(report["summary_json"]))))
    print("\nDagster UI:  make ui         -> http://127.0.0.1:3000")
    print("MLflow UI:   make mlflow-ui  -> http://127.0.0.1:5000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
