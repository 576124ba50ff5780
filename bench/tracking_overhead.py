"""Time the MLflow tracking adds to the chain: the tiny chain tracked (sqlite) vs untracked, side by side.

Untracked = ``[mlflow] required = false`` with an unreachable URI, so every phase runs with tracking off.
Usage: ``python bench/tracking_overhead.py [--repeats 2]``. Last line: ``ratio=<tracked/untracked>``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg

from ft_assets.config import PROJECT_ROOT, relocated_config
from ft_assets.definitions import defs
from ft_assets.resources.settings import PipelineSettings


def write_config(root: Path, name: str, mlflow: dict[str, object]) -> Path:
    return relocated_config(
        PROJECT_ROOT / "config" / "ci.toml",
        root / f"{name}.toml",
        outputs_root=root,
        model_cache_dir=root / "model_cache",
        overrides={"pipeline": {"artifacts_root": str(root / name)}, "mlflow": mlflow},
    )


def run_chain(config: Path, tags: dict[str, str] | None = None) -> float:
    """Seconds one in-process run of the whole chain takes (a fresh ephemeral instance)."""
    job = defs.resolve_job_def("fine_tune_pipeline")
    started = time.perf_counter()
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        resources={**defs.resources, "settings": PipelineSettings(config_path=str(config))},
        tags=tags,
    )
    assert result.success
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        configs = {
            "tracked": write_config(root, "tracked", {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}),
            "untracked": write_config(
                root, "untracked", {"tracking_uri": "http://127.0.0.1:9", "required": False}
            ),
        }
        run_chain(configs["tracked"])  # warm-up: imports, tiny model cache, sqlite migrations
        best = {name: min(run_chain(config) for _ in range(args.repeats)) for name, config in configs.items()}
    for name, seconds in best.items():
        print(f"{name:<10} best of {args.repeats}: {seconds:.1f} s")
    print(f"ratio={best['tracked'] / best['untracked']:.2f}")


if __name__ == "__main__":
    main()
