"""The MLflow tree of a sweep: one sweep run, one child run per candidate, the candidate's phase runs
nested beneath it (the phases attach to the candidate's run as their parent, through the tracking
resource's ``parent_run_id``), and the shared base-model inference's phase run, a child of the sweep run.

Runs are found again by tag, safely when several processes ask at once (:func:`find_or_create_parent`):
the sweep's by ``ft_assets.sweep_id``, a candidate's by ``ft_assets.sweep_candidate`` = ``<sweep id>/<name>``.
So a resumed sweep keeps its tree, and a new sweep id (another config) starts a new one. A candidate run
carries the swept values as params (``sweep.rank`` ...) beside the whole config (``finetuner_rank`` ...),
which is what MLflow's compare view and parallel-coordinates plot read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ft_assets.secrets import redact
from ft_assets.sweeps.candidates import Candidate, SweepPlan
from ft_assets.tracking_options import LogSink, TrackingOptions, check_reachable
from ft_assets.tracking_store import (
    client_for,
    ensure_experiment,
    find_or_create_parent,
    store_artifacts,
    store_metrics,
    store_params,
    store_tags,
)

TAG_SWEEP_ID = "ft_assets.sweep_id"
TAG_SWEEP_CANDIDATE = "ft_assets.sweep_candidate"
TAG_CANDIDATE = "ft_assets.candidate"
TAG_WINNER = "ft_assets.sweep_winner"
ROLE_SWEEP = "sweep"
ROLE_CANDIDATE = "candidate"


@contextmanager
def _optional(options: TrackingOptions, what: str, log: LogSink) -> Iterator[None]:
    """Errors in the block propagate, unless ``[mlflow] required = false`` (then a warning)."""
    try:
        yield
    except Exception as error:
        if options.required:
            raise
        log.warning(f"MLflow: {what} is not tracked (required = false): {redact(str(error))}")


def _sweep_run(options: TrackingOptions, plan: SweepPlan, log: LogSink) -> tuple[Any, str, str]:
    """A client of the store, the experiment id and the sweep's run id (found, or created)."""
    check_reachable(options.tracking_uri, options.source("tracking_uri"))
    client = client_for(options.tracking_uri)  # like the phases' client: URI credentials moved out first
    experiment_id = ensure_experiment(
        client, options.tracking_uri, options.experiment_name, options.source("experiment_name")
    )
    run = find_or_create_parent(
        client,
        experiment_id,
        plan.sweep_id,
        f"{plan.name}-{plan.sweep_id[:8]}",
        {},
        key_tag=TAG_SWEEP_ID,
        role=ROLE_SWEEP,
    )
    keys = sorted({key for candidate in plan.candidates for key in candidate.params})
    params = {
        "sweep_candidates": len(plan.candidates),
        "sweep_keys": ",".join(keys),
        "sweep_names": ",".join(plan.names),
    }
    store_params(client, run.info.run_id, params, log)
    return client, experiment_id, str(run.info.run_id)


def sweep_run(options: TrackingOptions, plan: SweepPlan, log: LogSink) -> str | None:
    """The MLflow run id of the sweep (found, or created): the parent of the shared base-model inference's
    phase run, beside the candidates' runs. ``None`` when untracked, as in :func:`candidate_run`."""
    with _optional(options, f"sweep {plan.name}", log):
        return _sweep_run(options, plan, log)[2]
    return None


def reopen_sweep_run(options: TrackingOptions, run_id: str, log: LogSink) -> None:
    """Mark the sweep's run RUNNING again once its base inference phase has ended it (a phase leaves its
    parent FINISHED): the candidates are still to come; :func:`record_leaderboard` ends it."""
    with _optional(options, f"the status of sweep run {run_id}", log):
        client_for(options.tracking_uri).update_run(run_id, status="RUNNING")


def candidate_run(
    options: TrackingOptions, plan: SweepPlan, candidate: Candidate, log: LogSink
) -> str | None:
    """The MLflow run id of ``candidate`` (created, under the sweep's run, when missing). ``None`` when the
    store cannot be reached and ``[mlflow] required = false``: the phases then run untracked."""
    with _optional(options, f"sweep candidate {candidate.name}", log):
        client, experiment_id, sweep_run_id = _sweep_run(options, plan, log)
        tags = {
            "mlflow.parentRunId": sweep_run_id,
            TAG_SWEEP_ID: plan.sweep_id,
            TAG_CANDIDATE: candidate.name,
        }
        run = find_or_create_parent(
            client,
            experiment_id,
            f"{plan.sweep_id}/{candidate.name}",
            candidate.name,
            tags,
            key_tag=TAG_SWEEP_CANDIDATE,
            role=ROLE_CANDIDATE,
        )
        params = {f"sweep.{key}": value for key, value in candidate.params.items()}
        store_params(client, run.info.run_id, {"candidate": candidate.name, **params}, log)
        return str(run.info.run_id)
    return None


def record_leaderboard(
    options: TrackingOptions, plan: SweepPlan, board: Mapping[str, Any], files: tuple[Path, ...], log: LogSink
) -> str | None:
    """Log the leaderboard on the sweep run (files as artifacts, the winner as a tag, the winner's primary
    mean as ``winner_<metric>``) and mark it FINISHED; returns the sweep run's id (``None`` when
    untracked, as in :func:`candidate_run`)."""
    with _optional(options, "the sweep leaderboard", log):
        client, _experiment, run_id = _sweep_run(options, plan, log)
        store_artifacts(client, run_id, files)
        winner = next((row for row in board["candidates"] if row["candidate"] == board["winner"]), None)
        store_tags(client, run_id, {TAG_WINNER: board["winner"] or "none", "sweep_rule": board["rule"]})
        if winner is not None:
            store_metrics(client, run_id, {f"winner_{board['primary_metric']}": winner["mean"]}, None)
        client.set_terminated(run_id, "FINISHED")
        return run_id
    return None


def log_candidate_metrics(
    options: TrackingOptions, run_id: str, cost: Mapping[str, Any], log: LogSink
) -> None:
    """Training cost on the candidate's run (``train_steps``, ``train_tokens``, ``train_seconds``), beside the
    ``eval_*`` scores the evaluation logs there, so MLflow's compare view shows cost against quality."""
    values = {
        "train_steps": cost["steps"],
        "train_tokens": cost["trained_tokens"],
        "train_seconds": cost["train_seconds"],
    }
    with _optional(options, f"the training cost of run {run_id}", log):
        store_metrics(client_for(options.tracking_uri), run_id, values, None)
