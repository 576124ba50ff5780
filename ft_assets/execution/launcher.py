"""Where phases compute: in the Dagster step's process, in a local subprocess (optionally several,
under ``accelerate launch`` or ``torchrun`` for DDP/FSDP), or in a Kubernetes pod; the last two through
Dagster Pipes.

Whatever the mode, the phase runs :func:`ft_assets.execution.phase.execute`, logs into the MLflow child run the
asset opened, and the asset gets the same value, metadata and data version back. Secrets reach an external
process only as environment variables: inherited by a subprocess, ``secretKeyRef`` entries in a pod spec.
The GPU assets follow this resource; evaluation always runs in process (see ``ft_assets.assets.evaluation``).
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from ft_assets.asset_values import AssetValue
from ft_assets.config import ConfigError
from ft_assets.execution.processes import ORCHESTRATOR_ENV, ProcessIdentity
from ft_assets.execution.recovery import fail_orphaned_runs
from ft_assets.execution.request import REQUEST_EXTRA, VALUE_MESSAGE_KEY, PhaseOutcome, PhaseRequest
from ft_assets.tracking_run import PhaseRun

REMOTE_MODULE = "ft_assets.execution.phase"
#: Op tags of the GPU assets: under the Celery executor their steps go to the `gpu` queue, which only
#: workers on GPU machines serve (deploy/celery/celery-executor.yaml). Other executors ignore the tag.
GPU_STEP_TAGS = {"dagster-celery/queue": "gpu"}
#: accelerate launch flags that choose the distributed mode themselves.
_ACCELERATE_MODE_FLAGS = {"--multi_gpu", "--use_fsdp", "--use_deepspeed", "--use_megatron_lm", "--tpu"}
_CONTAINER_NAME = "ft-assets-phase"


class SecretEnv(dg.Config):
    """An environment variable of the pod read from a Kubernetes Secret (``secretKeyRef``)."""

    name: str = Field(description="environment variable in the pod, e.g. HF_TOKEN")
    secret: str = Field(description="name of the Kubernetes Secret")
    key: str = Field(description="key inside the Secret")


@dataclass(frozen=True)
class PhaseResult:
    """A phase's outcome on the orchestrator's side: the asset value, its metadata and data version."""

    value: AssetValue
    metadata: Mapping[str, dg.MetadataValue]
    data_version: dg.DataVersion | None = None

    def output(self, tracking_metadata: Mapping[str, dg.MetadataValue]) -> dg.Output[AssetValue]:
        """The asset's Output, with the MLflow run links of its phase run."""
        return dg.Output(
            self.value, metadata={**tracking_metadata, **self.metadata}, data_version=self.data_version
        )


def _result(outcome: PhaseOutcome) -> PhaseResult:
    # The converter Pipes itself applies to reported metadata (private: Dagster exports no public one), so
    # in-process and external runs match exactly.
    from dagster._core.definitions.metadata.external_metadata import metadata_map_from_external

    return PhaseResult(
        outcome.value,
        metadata_map_from_external(outcome.metadata),  # type: ignore[arg-type]
        dg.DataVersion(outcome.data_version) if outcome.data_version else None,
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ComputeLauncher(dg.ConfigurableResource):
    """How the GPU phases (``fine_tuned_model``, ``inference_results``, ``base_inference_results``) run.

    * ``in_process`` (default): in the Dagster step's own process.
    * ``subprocess``: ``python -m ft_assets.execution.phase`` through ``PipesSubprocessClient``; fine-tuning
      runs under ``launcher`` (``accelerate launch`` / ``torchrun`` with ``num_processes`` processes, for
      DDP or FSDP via ``extra_args``). Inference always runs as one process.
    * ``kubernetes``: the same command in a pod through ``PipesK8sClient`` (image, namespace, GPU limits,
      node selector, tolerations, service account, secrets as ``secretKeyRef``). Artifacts and the model
      cache must live on ``shared_volume_claim``, mounted at the same path in the pod, and MLflow must be a
      tracking server (or a sqlite file on that volume).
    """

    mode: Literal["in_process", "subprocess", "kubernetes"] = "in_process"
    launcher: Literal["python", "accelerate", "torchrun"] = Field(
        default="python", description="fine-tuning process launcher (inference always runs as one process)"
    )
    num_processes: int = Field(default=1, ge=1, description="processes (usually GPUs) for fine-tuning")
    extra_args: list[str] = Field(
        default_factory=list,
        description="extra launcher arguments, e.g. ['--use_fsdp', '--fsdp_sharding_strategy', 'FULL_SHARD']",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="extra non-secret environment variables for the external process"
    )
    # kubernetes
    image: str | None = Field(default=None, description="image with ft-assets installed (kubernetes)")
    namespace: str | None = Field(default=None, description="default: the current namespace, else 'default'")
    gpus: int = Field(default=1, ge=0, description="GPUs requested per pod (kubernetes)")
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str | None = Field(default=None, description="CPU request and limit, e.g. '8'")
    memory: str | None = Field(default=None, description="memory request and limit, e.g. '64Gi'")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, str]] = Field(
        default_factory=list,
        description="e.g. [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
    )
    service_account: str | None = None
    secret_env: list[SecretEnv] = Field(
        default_factory=list, description="secrets as secretKeyRef env vars: HF_TOKEN, OPENAI_API_KEY..."
    )
    shared_volume_claim: str | None = Field(
        default=None, description="PersistentVolumeClaim holding artifacts_root and model_cache_dir"
    )
    shared_volume_path: str | None = Field(
        default=None, description="where that volume is mounted, in the pod and the orchestrator alike"
    )
    kubeconfig_file: str | None = None
    kube_context: str | None = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run with GPU steps is starting: first release the pool slots of runs whose process was killed,
        which would otherwise block its GPU steps for good (:mod:`ft_assets.execution.recovery`)."""
        if context.instance is not None:
            fail_orphaned_runs(context.instance, context.log.warning if context.log else None)

    def command(self, phase: str, python: str = sys.executable) -> list[str]:
        """The external process's command line for ``phase`` (no secrets: those travel as env vars)."""
        module = ["-m", REMOTE_MODULE]
        if phase != "finetuning" or self.launcher == "python":
            if phase == "finetuning" and self.num_processes > 1:
                raise ConfigError(
                    f"launcher resource: num_processes = {self.num_processes} needs launcher = 'accelerate' "
                    "or 'torchrun'"
                )
            return [python, *module]
        n = str(self.num_processes)
        if self.launcher == "torchrun":
            # --standalone: a free rendezvous port, so concurrent runs on one host do not collide
            return [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n,
                    *self.extra_args, *module]  # fmt: skip
        if "--cpu" in self.extra_args:
            raise ConfigError(
                "launcher resource: accelerate launch --cpu starts a single process whatever "
                "--num_processes says; leave --cpu out (without CUDA, the processes train on the CPU over gloo)"
            )
        mode = []
        if self.num_processes > 1 and not _ACCELERATE_MODE_FLAGS & set(self.extra_args):
            mode = ["--multi_gpu"]  # also the multi-process mode on CPU-only hosts
        return [python, "-m", "accelerate.commands.launch", "--num_processes", n, "--num_machines", "1",
                "--main_process_port", str(_free_port()), *mode, *self.extra_args, *module]  # fmt: skip

    def run_phase(
        self, context: dg.AssetExecutionContext, request: PhaseRequest, run: PhaseRun
    ) -> PhaseResult:
        """Run ``request`` where this resource says, logging into ``run`` (the phase's MLflow child run)."""
        if self.mode == "in_process":
            from ft_assets.execution.phase import execute

            return _result(execute(request, run, context.log))
        extras = {REQUEST_EXTRA: request.to_json()}
        # a local child inherits credentials through its environment; a pod spec must never hold them
        env = {**self.env, **run.subprocess_env(with_credentials=self.mode == "subprocess")}
        if self.mode == "subprocess":
            # the phase's processes stop if this one is killed, rather than train on for nobody
            env[ORCHESTRATOR_ENV] = ProcessIdentity.of(os.getpid()).encode()
            invocation = dg.PipesSubprocessClient().run(
                context=context, command=self.command(request.phase), extras=extras, env=env
            )
        else:
            from dagster_k8s import PipesK8sClient

            client = PipesK8sClient(kubeconfig_file=self.kubeconfig_file, kube_context=self.kube_context)
            invocation = client.run(context=context, extras=extras, **self.pod_arguments(request, env))
        materialization = invocation.get_materialize_result(implicit_materialization=False)
        values = [m[VALUE_MESSAGE_KEY] for m in invocation.get_custom_messages() if VALUE_MESSAGE_KEY in m]
        if len(values) != 1:
            raise dg.DagsterPipesExecutionError(
                f"{request.phase}: expected one value message from {REQUEST_EXTRA} process, got {len(values)}"
            )
        return PhaseResult(
            request.value_type.from_json(values[0]),
            materialization.metadata or {},
            materialization.data_version,
        )

    def pod_arguments(self, request: PhaseRequest, env: Mapping[str, str]) -> dict[str, Any]:
        """``PipesK8sClient.run`` arguments (image, command, namespace, env, pod spec and metadata).

        Secrets appear only as ``secretKeyRef``: no value from this process's environment enters the spec.
        """
        if not self.image:
            raise ConfigError("launcher resource: mode = 'kubernetes' needs image")
        if self.launcher != "python" and self.num_processes > max(self.gpus, 1):
            raise ConfigError(
                f"launcher resource: num_processes = {self.num_processes} exceeds gpus = {self.gpus} per pod"
            )
        self._check_shared_paths(request, env)
        limits = {self.gpu_resource: str(self.gpus)} if self.gpus else {}
        limits.update({k: v for k, v in (("cpu", self.cpu), ("memory", self.memory)) if v})
        container: dict[str, Any] = {
            "name": _CONTAINER_NAME,
            "env": [
                {"name": s.name, "valueFrom": {"secretKeyRef": {"name": s.secret, "key": s.key}}}
                for s in self.secret_env
            ],
            "resources": {"limits": limits, "requests": dict(limits)},
        }
        spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
        if self.shared_volume_claim and self.shared_volume_path:
            container["volumeMounts"] = [{"name": "shared", "mountPath": self.shared_volume_path}]
            spec["volumes"] = [
                {"name": "shared", "persistentVolumeClaim": {"claimName": self.shared_volume_claim}}
            ]
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            spec["tolerations"] = [dict(t) for t in self.tolerations]
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        phase_label = request.phase.replace("_", "-")
        return {
            "image": self.image,
            "command": self.command(request.phase, python="python"),
            "namespace": self.namespace,
            "env": dict(env),
            "base_pod_spec": spec,
            "base_pod_meta": {
                "labels": {"app.kubernetes.io/part-of": "ft-assets", "ft-assets/phase": phase_label}
            },
        }

    def _check_shared_paths(self, request: PhaseRequest, env: Mapping[str, str]) -> None:
        """A pod sees only the shared volume: outputs, models and a sqlite MLflow store must live on it."""
        shared = Path(self.shared_volume_path) if self.shared_volume_path else None
        paths = {"output": request.output, "model_dir": request.model_dir}
        if request.base_model:
            paths["base model"] = request.base_model["path"]
        for what, inference in (
            ("scored inference", request.scored_inference),
            ("baseline", request.baseline_inference),
        ):
            if inference:
                paths[what] = inference["path"]
        uri = env.get("MLFLOW_TRACKING_URI", "")
        if urllib.parse.urlsplit(uri).scheme in ("sqlite", "file", ""):
            paths["MLflow store"] = uri.removeprefix("sqlite:///").removeprefix("file://") or None
        for what, value in paths.items():
            if value and (shared is None or shared not in Path(value).parents):
                raise ConfigError(
                    f"launcher resource: the {what} {value} is not on the shared volume "
                    f"({self.shared_volume_path or 'shared_volume_path is unset'}); a pod cannot reach it. "
                    "Put [pipeline] artifacts_root / model_cache_dir there and use an MLflow server."
                )
