"""Print where the latest run's outputs are and how to open the Dagster and MLflow UIs (used by ``make demo``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg

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


def comparison_table(summary_path: Path) -> str:
    """Base vs fine-tuned means from an evaluation summary JSON, as an aligned text table."""
    metrics = json.loads(summary_path.read_text())["metrics"]
    tuned, base, delta = metrics["fine_tuned"], metrics["base"] or {}, metrics["delta"] or {}
    lines = [f"{'metric':<22}{'base':>10}{'fine-tuned':>12}{'delta':>10}"]
    for name, stats in tuned.items():
        values = (base.get(name, {}).get("mean"), stats["mean"], delta.get(name))
        cells = [f"{v:.3f}" if isinstance(v, int | float) else "-" for v in values]
        lines.append(f"{name:<22}{cells[0]:>10}{cells[1]:>12}{cells[2]:>10}")
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
