"""Where and how a phase runs: the phase request and entry point (in process, a subprocess under
accelerate/torchrun, or a Kubernetes pod through Dagster Pipes), the launcher resource, the lifetime of
phase processes and the recovery of runs whose orchestrator died. The phases themselves
(:mod:`ft_assets.phases`) know nothing of this."""
