"""ComputeLauncher without a cluster: process command lines, the pod it would submit to Kubernetes (taken
at the API call), what may travel in a phase request, and the deploy/ run-config examples."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster_pipes import decode_param

from ft_assets.config import ConfigError, load_settings
from ft_assets.definitions import defs
from ft_assets.execution.launcher import ComputeLauncher, SecretEnv
from ft_assets.execution.request import REQUEST_EXTRA, PhaseRequest
from ft_assets.phases.models import ResolvedModel
from ft_assets.tracking_run import PhaseRun

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRETS = {
    "HF_TOKEN": "hf_launcherSecret0a1b2c3d",
    "OPENAI_API_KEY": "sk-launcherSecret4e5f6a7b",
    "MLFLOW_TRACKING_PASSWORD": "launcherMlflowSecret8c9d",
}
TRACKING_ENV = {
    "MLFLOW_TRACKING_URI": "http://mlflow.ml.svc:5000",
    "MLFLOW_RUN_ID": "c0ffee",
    "MLFLOW_EXPERIMENT_ID": "7",
}


def _request(write_config: Any, shared: Path, **mlflow: str) -> PhaseRequest:
    settings = load_settings(
        write_config({"pipeline": {"artifacts_root": str(shared / "artifacts")}, "mlflow": mlflow})
    )
    base = ResolvedModel("embedded:tiny-llama", shared / "models" / "tiny", "sha256:abc", "embedded-tiny")
    output = shared / "artifacts" / "fine_tuned_model" / "run-1"
    return PhaseRequest.finetuning(settings, base, output, tracking_required=True)


@pytest.mark.parametrize(
    ("launcher", "phase", "expected"),
    [
        (ComputeLauncher(), "finetuning", ["-m", "ft_assets.execution.phase"]),
        (
            ComputeLauncher(launcher="torchrun", num_processes=4),
            "finetuning",
            [
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                "4",
                "-m",
                "ft_assets.execution.phase",
            ],
        ),
        # inference is one process whatever launches fine-tuning
        (
            ComputeLauncher(launcher="torchrun", num_processes=4),
            "inference",
            ["-m", "ft_assets.execution.phase"],
        ),
    ],
)
def test_commands(launcher: ComputeLauncher, phase: str, expected: list[str]) -> None:
    assert launcher.command(phase) == [sys.executable, *expected]


def test_accelerate_commands() -> None:
    ddp = ComputeLauncher(launcher="accelerate", num_processes=2).command("finetuning")
    assert ddp[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "2"]
    assert "--multi_gpu" in ddp and ddp[-2:] == ["-m", "ft_assets.execution.phase"]
    port = ddp[ddp.index("--main_process_port") + 1]
    assert port.isdigit() and int(port) > 0  # a free port, not the shared default 29500
    fsdp = ComputeLauncher(launcher="accelerate", num_processes=2, extra_args=["--use_fsdp"]).command(
        "finetuning"
    )
    assert "--use_fsdp" in fsdp and "--multi_gpu" not in fsdp  # accelerate allows one mode flag
    assert "--multi_gpu" not in ComputeLauncher(launcher="accelerate").command("finetuning")


@pytest.mark.parametrize(
    ("launcher", "message"),
    [
        (ComputeLauncher(num_processes=2), "needs launcher = 'accelerate' or 'torchrun'"),
        (
            ComputeLauncher(launcher="accelerate", num_processes=2, extra_args=["--cpu"]),
            "--cpu starts a single",
        ),
    ],
)
def test_command_errors(launcher: ComputeLauncher, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        launcher.command("finetuning")


def test_request_carries_no_secrets(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    request = _request(
        write_config,
        tmp_path,
        tracking_uri=f"https://bob:{SECRETS['MLFLOW_TRACKING_PASSWORD']}@mlflow.example",
    )
    text = json.dumps(request.to_json())
    assert [name for name, value in SECRETS.items() if value in text] == []
    assert request.settings["mlflow"]["tracking_uri"] == "https://mlflow.example"
    restored = PhaseRequest.from_json(json.loads(text))
    assert restored == request
    assert restored.load_settings().fine_tuner == load_settings(write_config()).fine_tuner
    assert restored.resolved_base_model().path == tmp_path / "models" / "tiny"


class _PodSubmitted(Exception):
    """Raised where PipesK8sClient hands the pod to the Kubernetes API: the test ends there."""


def _submitted_pod(launcher: ComputeLauncher, request: PhaseRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The V1Pod ``launcher.run_phase`` would create, taken at ``create_namespaced_pod``."""
    from dagster_k8s import PipesK8sClient
    from dagster_k8s.client import DagsterKubernetesClient

    submitted: dict[str, Any] = {}

    class CoreApi:
        def create_namespaced_pod(self, namespace: str, body: Any) -> None:
            submitted.update(namespace=namespace, pod=body)
            raise _PodSubmitted

    class Client:
        core_api = CoreApi()

    monkeypatch.setattr(PipesK8sClient, "_load_k8s_config", lambda self: None)
    monkeypatch.setattr(DagsterKubernetesClient, "production_client", staticmethod(lambda: Client()))
    run = PhaseRun(
        "finetuning", dg.get_dagster_logger(), client=object(), tracking_uri=TRACKING_ENV["MLFLOW_TRACKING_URI"],  # type: ignore[arg-type]
        experiment_id="7", run_id="c0ffee", parent_run_id="beef",
    )  # fmt: skip

    @dg.asset(name="fine_tuned_model")
    def phase(context) -> None:  # type: ignore[no-untyped-def]  # Dagster cannot resolve a string annotation here
        launcher.run_phase(context, request, run)

    result = dg.materialize([phase], raise_on_error=False)
    assert not result.success and "_PodSubmitted" in str(result.all_events)
    assert submitted["namespace"] == "ml-training"
    return submitted["pod"]


def test_kubernetes_pod_spec(write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes.client import ApiClient

    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    launcher = ComputeLauncher(
        mode="kubernetes",
        launcher="torchrun",
        num_processes=2,
        image="registry.example.com/ft-assets:1.4.0",
        namespace="ml-training",
        gpus=2,
        cpu="16",
        memory="120Gi",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        service_account="ft-assets-runner",
        secret_env=[
            SecretEnv(name="HF_TOKEN", secret="hf-token", key="token"),
            SecretEnv(name="OPENAI_API_KEY", secret="openai", key="api-key"),
            SecretEnv(name="MLFLOW_TRACKING_PASSWORD", secret="mlflow-auth", key="password"),
        ],
        shared_volume_claim="ft-assets-data",
        shared_volume_path=str(tmp_path),
        env={"NCCL_DEBUG": "WARN"},
    )
    request = _request(
        write_config,
        tmp_path,
        tracking_uri=f"http://bob:{SECRETS['MLFLOW_TRACKING_PASSWORD']}@mlflow.ml.svc:5000",
    )
    pod = _submitted_pod(launcher, request, monkeypatch)

    spec = pod.spec
    [container] = spec.containers
    assert container.image == "registry.example.com/ft-assets:1.4.0"
    assert container.command == [
        "python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "ft_assets.execution.phase",
    ]  # fmt: skip
    assert container.resources.limits == {"nvidia.com/gpu": "2", "cpu": "16", "memory": "120Gi"}
    assert container.resources.requests == container.resources.limits
    assert spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert [(t.key, t.operator, t.effect) for t in spec.tolerations] == [
        ("nvidia.com/gpu", "Exists", "NoSchedule")
    ]
    assert spec.service_account_name == "ft-assets-runner"
    assert spec.restart_policy == "Never"
    assert spec.volumes[0].persistent_volume_claim.claim_name == "ft-assets-data"
    assert container.volume_mounts[0].mount_path == str(tmp_path)
    assert pod.metadata.labels["ft-assets/phase"] == "finetuning"

    env = {e.name: e for e in container.env}
    for name, secret, key in [("HF_TOKEN", "hf-token", "token"), ("OPENAI_API_KEY", "openai", "api-key"),
                              ("MLFLOW_TRACKING_PASSWORD", "mlflow-auth", "password")]:  # fmt: skip
        assert env[name].value is None
        assert (env[name].value_from.secret_key_ref.name, env[name].value_from.secret_key_ref.key) == (
            secret,
            key,
        )
    assert {name: env[name].value for name in TRACKING_ENV} == TRACKING_ENV
    assert env["NCCL_DEBUG"].value == "WARN"
    pipes_context = decode_param(env["DAGSTER_PIPES_CONTEXT"].value)
    assert PhaseRequest.from_json(pipes_context["data"]["extras"][REQUEST_EXTRA]) == request

    # no secret value anywhere in the pod, the Pipes context it carries included
    rendered = json.dumps(ApiClient().sanitize_for_serialization(pod)) + json.dumps(pipes_context)
    assert [name for name, value in SECRETS.items() if value in rendered] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"shared_volume_path": "/mnt/elsewhere"}, "the output .* is not on the shared volume"),
        ({"image": None}, "needs image"),
        ({"num_processes": 4}, "num_processes = 4 exceeds gpus = 2"),
    ],
)
def test_kubernetes_refuses_what_a_pod_cannot_run(
    write_config: Any, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    fields = {"mode": "kubernetes", "image": "ft-assets:1", "launcher": "torchrun", "gpus": 2,
              "shared_volume_claim": "data", "shared_volume_path": str(tmp_path), **change}  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        ComputeLauncher(**fields).pod_arguments(_request(write_config, tmp_path), TRACKING_ENV)


def test_kubernetes_refuses_a_local_sqlite_store(write_config: Any, tmp_path: Path) -> None:
    launcher = ComputeLauncher(mode="kubernetes", image="ft-assets:1", shared_volume_claim="data",
                               shared_volume_path=str(tmp_path))  # fmt: skip
    local = {**TRACKING_ENV, "MLFLOW_TRACKING_URI": "sqlite:////home/me/mlflow.db"}
    with pytest.raises(
        ConfigError, match=re.escape("MLflow store /home/me/mlflow.db is not on the shared volume")
    ):
        launcher.pod_arguments(_request(write_config, tmp_path), local)
    shared = {**TRACKING_ENV, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    assert launcher.pod_arguments(_request(write_config, tmp_path), shared)["env"] == shared


def _job(executor: dg.ExecutorDefinition | None = None) -> dg.JobDefinition:
    from ft_assets.resources.settings import PipelineSettings
    from ft_assets.resources.tracking import MlflowTracking

    job = dg.define_asset_job("deploy_check", selection=dg.AssetSelection.all(), executor_def=executor)
    resources = {
        **defs.resources,
        "settings": PipelineSettings(),
        "mlflow": MlflowTracking(),
        "launcher": ComputeLauncher(),
    }
    return dg.Definitions(assets=defs.assets, jobs=[job], resources=resources).resolve_job_def("deploy_check")


@pytest.mark.parametrize("example", ["k8s/launcher.yaml", "multi-gpu.yaml"])
def test_launcher_examples_are_valid_run_config(example: str) -> None:
    run_config = yaml.safe_load((DEPLOY / example).read_text())
    assert dg.validate_run_config(_job(), run_config)
    ComputeLauncher(**run_config["resources"]["launcher"]["config"])


def test_k8s_executor_example_is_valid_run_config() -> None:
    from dagster_k8s import k8s_job_executor

    run_config = yaml.safe_load((DEPLOY / "k8s" / "k8s-executor.yaml").read_text())
    assert dg.validate_run_config(_job(k8s_job_executor), run_config)
    gpu_step = run_config["execution"]["config"]["per_step_k8s_config"]["fine_tuned_model"]
    assert gpu_step["container_config"]["resources"]["limits"]["nvidia.com/gpu"]


def test_gpu_assets_keep_the_gpu_pool_whatever_the_launcher() -> None:
    from ft_assets.execution.launcher import GPU_STEP_TAGS

    for key in ("fine_tuned_model", "inference_results", "base_inference_results"):
        assets_def = defs.get_assets_def(key)
        assert assets_def.op.pool == "gpu"  # the step holds the slot while its pod or subprocess runs
        assert GPU_STEP_TAGS.items() <= assets_def.op.tags.items()
        assert "launcher" in assets_def.required_resource_keys
