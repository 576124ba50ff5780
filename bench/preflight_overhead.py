"""Time the automatic preflight adds to a run: the tiny chain with its preflight vs with it skipped, side by side.

Skipped = the run carries the ``ft_assets/preflight`` tag for every phase, as when ``FineTunePipeline`` has
checked them before starting it. Runs alternate, in one warm process (the imports are shared, as in a real run).
Usage: ``python bench/preflight_overhead.py [--repeats 3]``. Last line: ``ratio=<with/skipped>``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tracking_overhead import run_chain, write_config

from ft_assets.assets.common import PREFLIGHT_TAG
from ft_assets.jobs import PHASES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    skip = {PREFLIGHT_TAG: ",".join(PHASES)}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        config = write_config(root, "chain", {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"})
        run_chain(config)  # warm-up: imports, tiny model cache, sqlite migrations
        times: dict[str, list[float]] = {"with preflight": [], "skipped": []}
        for _ in range(args.repeats):
            times["with preflight"].append(run_chain(config))
            times["skipped"].append(run_chain(config, skip))
    best = {name: min(values) for name, values in times.items()}
    for name, seconds in best.items():
        print(f"{name:<15} best of {args.repeats}: {seconds:.2f} s")
    print(f"ratio={best['with preflight'] / best['skipped']:.3f}")


if __name__ == "__main__":
    main()
