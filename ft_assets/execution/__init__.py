"""Where and how a phase runs: the phase request and entry point (in process, a subprocess under
accelerate/torchrun, or a Kubernetes pod through Dagster Pipes), the phase bodies (fine-tuning, inference,
evaluation) that drive the framework-free logic of :mod:`ft_assets.phases` and log it to MLflow, the
launcher resource, the lifetime of phase processes and the recovery of runs whose orchestrator died. The
phase logic itself (:mod:`ft_assets.phases`) knows nothing of this."""
