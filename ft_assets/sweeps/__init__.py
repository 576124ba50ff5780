"""Sweeps: several candidates from one config (a grid or a seeded random sample over ``[fine_tuner]`` and
``[inferencer]`` keys), trained, run and evaluated side by side as partitions, then ranked on a leaderboard.

Framework-free: :mod:`.section` (the ``[sweep]`` model), :mod:`.candidates` (expansion, names, candidate
settings), :mod:`.leaderboard` (ranking, the winner rule, JSON + xlsx), :mod:`.tracking` (the MLflow sweep
tree). Dagster: :mod:`.assets` (the partitioned assets and the leaderboard) and :mod:`.launch` (``ft-pipeline
--sweep``).
"""
