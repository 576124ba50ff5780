"""A phase's MLflow child run (:class:`PhaseRun`): what the phases log through, redacted and under
stable keys, and which no MLflow call outside the tracking modules bypasses."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ft_assets.secrets import redact, redact_value, refuse_secrets, strip_credentials

if TYPE_CHECKING:
    from mlflow import MlflowClient

from ft_assets.tracking_options import MLFLOW_UI_URL_ENV, LogSink
from ft_assets.tracking_store import dataset_entity, store_metrics, store_params, store_tags

#: Set to ``false`` in a phase process whose resolved ``log_model`` option is off (unset: on).
LOG_MODEL_ENV = "FT_ASSETS_MLFLOW_LOG_MODEL"


@dataclass(frozen=True)
class OrchestratorRun:
    """What the orchestrator knows about the run a phase belongs to."""

    run_id: str
    url: str | None = None
    child_tags: Mapping[str, str] = field(default_factory=dict)


class PhaseRun:
    """The MLflow child run of one phase. Every method is a no-op when tracking is disabled.

    With ``required = false`` a logging call that fails only logs a warning.
    """

    def __init__(
        self,
        phase: str,
        log: LogSink,
        *,
        client: MlflowClient | None = None,
        tracking_uri: str | None = None,
        experiment_id: str | None = None,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        required: bool = True,
        log_model: bool = True,
    ) -> None:
        self.phase = phase
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        #: Set by :meth:`log_peft_model` when it registered a model version.
        self.registered_model_version: str | None = None
        self._client = client
        self._log = log
        self._required = required
        #: ``[mlflow] log_model`` as resolved: ``False`` makes :meth:`log_peft_model` log nothing.
        self.log_model = log_model

    @property
    def enabled(self) -> bool:
        return self.run_id is not None and self._client is not None

    @property
    def url(self) -> str | None:
        """Link to the run in the tracking server's UI: the server itself for http(s) stores, else the
        UI that ``MLFLOW_UI_URL`` names (e.g. ``make mlflow-ui`` serving the same sqlite store)."""
        if not self.enabled:
            return None
        uri = str(self.tracking_uri)
        base = uri if uri.startswith(("http://", "https://")) else os.environ.get(MLFLOW_UI_URL_ENV, "")
        if not base:
            return None
        return f"{strip_credentials(base).rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    @contextmanager
    def _guard(self, action: str) -> Iterator[MlflowClient]:
        assert self._client is not None
        try:
            yield self._client
        except Exception as error:
            if self._required:
                raise
            self._log.warning(f"MLflow: could not {action} (run {self.run_id}): {redact(str(error))}")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params on the child run (idempotent; a changed value goes to ``<key>.2``)."""
        if self.enabled:
            with self._guard("log params") as client:
                store_params(client, str(self.run_id), params, self._log)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Metrics on the child run, names sanitized; non-numeric values become tags."""
        if self.enabled:
            with self._guard("log metrics") as client:
                store_metrics(client, str(self.run_id), metrics, step, self._log)

    def log_parent_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Metrics on the parent run (e.g. headline scores comparable across runs)."""
        if self.enabled:
            with self._guard("log parent metrics") as client:
                store_metrics(client, str(self.parent_run_id), metrics, None, self._log)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags on the child run, keys sanitized, values redacted."""
        if self.enabled:
            with self._guard("set tags") as client:
                store_tags(client, str(self.run_id), tags, self._log)

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload one file; refused (``ValueError``) when it contains a secret's value."""
        if self.enabled:
            with self._guard(f"log artifact {path}") as client:
                refuse_secrets([Path(path)])
                client.log_artifact(str(self.run_id), str(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Upload a folder; refused (``ValueError``) when any file in it contains a secret's value."""
        if self.enabled:
            with self._guard(f"log artifacts {directory}") as client:
                refuse_secrets(p for p in Path(directory).rglob("*") if p.is_file())
                client.log_artifacts(str(self.run_id), str(directory), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """``obj`` as JSON (or YAML for ``.yaml``/``.yml``), each string in it redacted (never the serialized
        text: a secret such as ``true`` would break it), as artifact ``artifact_file``."""
        if self.enabled:
            with self._guard(f"log {artifact_file}") as client:
                clean = redact_value(json.loads(json.dumps(obj, default=str)))
                if artifact_file.endswith((".yaml", ".yml")):
                    import yaml

                    text = yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)
                else:
                    text = json.dumps(clean, indent=2, ensure_ascii=False)
                client.log_text(str(self.run_id), text, artifact_file)

    def log_table(self, columns: Mapping[str, list[Any]], artifact_file: str) -> None:
        """``columns`` (name -> values) as an MLflow table artifact (the UI's table and evaluation views
        read it), text values redacted."""
        if self.enabled:
            with self._guard(f"log table {artifact_file}") as client:
                table = {
                    name: [redact(value) if isinstance(value, str) else value for value in values]
                    for name, values in columns.items()
                }
                client.log_table(str(self.run_id), table, artifact_file)

    def log_dataset(self, name: str, digest: str, source: str, context: str) -> None:
        """An MLflow dataset input (``context``: training, validation, evaluation...) on child and parent,
        plus param ``dataset_<name>_hash`` holding the full digest."""
        if not self.enabled:
            return
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with self._guard(f"log dataset {name}") as client:
            dataset_input = DatasetInput(
                dataset_entity(name, digest, source), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]
            )
            for run_id in (str(self.run_id), str(self.parent_run_id)):
                client.log_inputs(run_id, datasets=[dataset_input])
                store_params(client, run_id, {f"dataset_{name}_hash": digest}, self._log)

    def log_peft_model(
        self, model_dir: Path, name: str, registered_model_name: str | None = None
    ) -> str | None:
        """Log a PEFT adapter folder (adapter + tokenizer, ``save_pretrained``) as an MLflow
        transformers model in this run; returns its model URI. A local base model is referenced by
        path (adapter-only artifact). With ``registered_model_name`` the version lands in
        :attr:`registered_model_version`. Nothing is logged (``None``) with ``log_model`` off."""
        if not self.enabled or not self.log_model:
            return None
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise RuntimeError("log_peft_model must be called inside its phase_run block, in the same thread")
        with self._guard(f"log model {name}"):
            from peft import PeftModel
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from ft_assets.phases.prompts import adapter_base_path

            # adapter_config.json names the base portably (hub id, embedded name); the local copy is beside it
            base = str(adapter_base_path(Path(model_dir)))
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(model_dir))
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name=name,
                task="text-generation",
                pip_requirements=_model_requirements(),
                registered_model_name=registered_model_name,
                base_model_path=base if base and Path(base).is_dir() else None,
            )
            self.registered_model_version = (
                str(info.registered_model_version) if info.registered_model_version is not None else None
            )
            return info.model_uri
        return None

    def register_model(self, model_uri: str, registered_model_name: str, alias: str) -> str:
        """Register ``model_uri`` as a new version of ``registered_model_name`` and point ``alias`` at it;
        returns the version. A failure raises even with ``[mlflow] required = false``: registering is the
        point of the promotion phase, not a side record of it."""
        import mlflow

        active = mlflow.active_run()
        if not self.enabled or active is None or active.info.run_id != self.run_id:
            raise RuntimeError("register_model needs its tracked phase_run block, in the same thread")
        version = str(mlflow.register_model(model_uri, registered_model_name).version)
        assert self._client is not None
        self._client.set_registered_model_alias(registered_model_name, alias, version)
        return version

    def set_registry_alias(self, registered_model_name: str, version: str | int, alias: str) -> None:
        """Point registry alias ``alias`` (e.g. ``champion``) at ``version`` of a registered model."""
        if self.enabled:
            with self._guard(f"set alias {alias}") as client:
                client.set_registered_model_alias(registered_model_name, alias, str(version))

    def metadata(self) -> dict[str, str]:
        """Run id, UI link and parent id, for the orchestrator's materialization metadata."""
        values = {
            "mlflow_run_id": self.run_id,
            "mlflow_run_url": self.url,
            "mlflow_parent_run_id": self.parent_run_id,
        }
        return {key: value for key, value in values.items() if value}

    def subprocess_env(self, *, with_credentials: bool = False) -> dict[str, str]:
        """Variables that let a subprocess log into this child run. http(s) credentials stay in the
        inherited ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``; a database URI's own credentials
        are kept only ``with_credentials`` (a local child's environment, never a pod spec or a tag)."""
        if not self.enabled:
            return {}
        uri = str(self.tracking_uri)
        env = {
            "MLFLOW_TRACKING_URI": uri if with_credentials else strip_credentials(uri),
            "MLFLOW_RUN_ID": str(self.run_id),
            "MLFLOW_EXPERIMENT_ID": str(self.experiment_id),
        }
        return env if self.log_model else {**env, LOG_MODEL_ENV: "false"}


def _model_requirements() -> list[str]:
    pins = []
    for package in ("torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{package}=={metadata.version(package)}")
    return pins
