"""Issue 14's output and concurrency classes (items 2, 3, 4, 9, 10, 11): permissions of published outputs,
lone surrogates and huge CSV cells up front, huge integer metrics, a fingerprint by content, one training
per checkpoint folder, and a dataset sensor that never gets stuck."""

import fcntl
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ft_assets.automation import snapshot_dataset
from ft_assets.config import load_settings
from ft_assets.phases.checkpoints import checkpoint_root, lock_path, training_fingerprint
from ft_assets.phases.datasets import DatasetError, load_dataset
from ft_assets.phases.io import atomic_directory, atomic_file, write_json
from ft_assets.phases.metrics import MetricScores
from ft_assets.phases.models import ResolvedModel, configured_chat_template
from ft_assets.phases.reports import write_report
from ft_assets.phases.training import load_training_data
from ft_assets.preflight import preflight
from ft_assets.tracking_keys import sanitize_metrics
from ft_assets_tests.reliability.support import PROJECT_ROOT
from ft_assets_tests.test_automation import SensorHarness, append_row

DEMO = PROJECT_ROOT / "data" / "demo"

# ------------------------------------------------------------------------------------ item 2: umask


@pytest.mark.parametrize(
    ("umask", "folder_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)]
)
def test_published_folders_and_files_honour_the_umask(
    umask: int, folder_mode: int, file_mode: int, tmp_path: Path
) -> None:
    previous = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "base_model") as scratch:
            write_json(scratch / "model_info.json", {"ok": True})
        with atomic_file(tmp_path / "inference_results.jsonl") as handle:
            handle.write("{}\n")
        report = write_report(
            tmp_path / "evaluation_report",
            rows=[{"id": "a", "user_prompt": "Q?", "assistant_response": "A", "ground_truth": "A"}],
            scores=MetricScores(per_row={"exact_match": [1.0]}, errors={"exact_match": [None]}),
            baseline_rows=None,
            baseline_scores=None,
            primary_metric="exact_match",
            provenance={},
            durations_s={},
        )
    finally:
        os.umask(previous)
    folders = [tmp_path / "base_model", tmp_path / "evaluation_report"]
    files = [
        tmp_path / "base_model" / "model_info.json",
        tmp_path / "inference_results.jsonl",
        report.json_path,
    ]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {
        str(p): oct(folder_mode) for p in folders
    }
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {
        str(p): oct(file_mode) for p in files
    }


# ------------------------------------------------------------------ item 3: lone surrogates up front


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"id": "q\ud800", "question": "Q?", "answer": "A"}, "id"),
        ({"id": "r1", "question": "Q?", "answer": "A", "contexts": ["fine", "bad \udfff"]}, "contexts[1]"),
    ],
)
def test_a_lone_surrogate_in_any_output_field_is_refused_up_front(
    row: dict[str, Any], field: str, write_config: Callable[..., Path], tmp_path: Path
) -> None:
    test_set = tmp_path / "test.jsonl"
    good = json.dumps({"id": "r0", "question": "Q?", "answer": "A"})
    test_set.write_text(good + "\n" + json.dumps(row) + "\n", encoding="utf-8")  # \\ud800 escapes: valid JSON
    settings = load_settings(write_config({"inferencer": {"testing_data_id": str(test_set)}}))
    with pytest.raises(DatasetError) as raised:
        preflight(settings, phases=["inference"], env={})
    message = str(raised.value)
    assert str(test_set) in message and "row 2" in message and field in message and "surrogate" in message


# --------------------------------------------------------------------- item 4: huge cells and numbers


def test_a_csv_cell_over_the_csv_module_default_limit_loads(tmp_path: Path) -> None:
    document = "ж" * 200_000  # over csv's default 131,072-character field limit
    path = tmp_path / "long.csv"
    path.write_text(f'question,answer\n"{document}",short\n', encoding="utf-8")
    loaded = load_dataset(
        str(path), load_settings(PROJECT_ROOT / "config" / "ci.toml").inferencer, base_dir=tmp_path
    )
    assert loaded.examples[0].user_prompt == document


def test_a_csv_cell_over_the_raised_limit_says_so(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text('question,answer\n"' + "x" * ((1 << 24) + 10) + '",short\n', encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"huge\.csv: line \d+: a cell is longer than 16,777,216 characters"
    ):
        load_dataset(
            str(path), load_settings(PROJECT_ROOT / "config" / "ci.toml").inferencer, base_dir=tmp_path
        )


def test_an_integer_metric_beyond_float_range_is_kept_as_infinity() -> None:
    metrics, texts = sanitize_metrics({"huge": 10**400, "tiny": -(10**400), "fine": 3})
    assert metrics == {"huge": math.inf, "tiny": -math.inf, "fine": 3.0} and texts == {}


# ------------------------------------------------------------------ item 9: fingerprint by content


def test_editing_the_chat_template_file_changes_the_training_fingerprint(
    write_config: Callable[..., Path], tiny_model: ResolvedModel, tmp_path: Path
) -> None:
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}", encoding="utf-8")
    settings = load_settings(write_config({"fine_tuner": {"chat_template": str(template)}}))
    data = {"train": "sha256:aa"}

    def fingerprint() -> str:
        return training_fingerprint(settings.fine_tuner, tiny_model, data, configured_chat_template(settings))

    before = fingerprint()
    assert fingerprint() == before
    template.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}")
    edited = fingerprint()
    assert edited != before
    moved = tmp_path / "moved.jinja"
    shutil.copy(template, moved)
    settings.fine_tuner.chat_template = str(moved)
    assert fingerprint() == edited  # the same content under another name: the same job


# ---------------------------------------------------------- item 10: one training per checkpoint folder


def test_a_second_training_with_the_same_fingerprint_waits_for_the_first(
    write_config: Callable[..., Path], tiny_model: ResolvedModel, tmp_path: Path
) -> None:
    config = write_config({"fine_tuner": {"max_steps": 2}})
    settings = load_settings(config)
    versions = {
        name: data.content_hash
        for name, data in zip(("train", "validation"), load_training_data(settings), strict=True)
        if data
    }
    fingerprint = training_fingerprint(
        settings.fine_tuner, tiny_model, versions, configured_chat_template(settings)
    )
    root = checkpoint_root(settings)
    lock = lock_path(root, fingerprint)
    lock.parent.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "ft_assets.phases.training", "--config", str(config), "--output"]
    log = tmp_path / "second.log"
    with lock.open("a+") as held, log.open("w") as sink:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first training, still running
        second = subprocess.Popen([*command, str(tmp_path / "second")], env=env, stdout=sink, stderr=sink)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and second.poll() is None and "waiting for" not in log.read_text():
            time.sleep(0.5)
        time.sleep(2)  # were it not waiting, it would now be training
        # it neither finished nor started writing checkpoints into the folder the first one owns
        assert second.poll() is None, log.read_text()
        assert not (root / fingerprint).exists() and not (tmp_path / "second").exists()
    assert second.wait(timeout=600) == 0, log.read_text()
    output = log.read_text()
    assert "waiting for" in output and "same fingerprint" in output
    assert json.loads(output[output.rindex("{\n") :])["resumed_from_step"] is None
    assert (tmp_path / "second" / "adapter_config.json").is_file()


# ------------------------------------------------------------- item 11: a sensor that is never stuck


def test_two_datasets_of_identical_content_snapshot_under_one_root(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    shutil.copy(DEMO / "validation.jsonl", first)
    shutil.copy(DEMO / "validation.jsonl", second)
    version_a, copy_a = snapshot_dataset(first, tmp_path / "snapshots")
    version_b, copy_b = snapshot_dataset(second, tmp_path / "snapshots")
    assert version_a == version_b and copy_a.parent == copy_b.parent and copy_b.name == "b.jsonl"
    assert copy_b.read_bytes() == second.read_bytes() == copy_a.read_bytes()


def test_the_dataset_sensor_survives_a_renamed_identical_dataset_and_a_snapshot_failure(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    data = tmp_path / "datasets"
    data.mkdir()
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        shutil.copy(DEMO / name, data / name)

    def configure(validation: str) -> Path:
        return write_config(
            {
                "fine_tuner": {
                    "training_data_id": str(data / "train.jsonl"),
                    "validation_data_id": str(data / validation),
                },
                "inferencer": {"testing_data_id": str(data / "test.jsonl")},
            }
        )

    config = configure("validation.jsonl")
    home = tmp_path / "dagster_home"
    home.mkdir()
    ticks = SensorHarness(dg.DagsterInstance.from_config(str(home)), config)
    assert not ticks.tick().run_requests  # the baseline
    append_row(data / "train.jsonl", "1")
    assert len(ticks.tick().run_requests) == 1  # snapshots all three, validation.jsonl among them
    # the validation file renamed, content unchanged; then the training data changes again
    (data / "validation.jsonl").rename(data / "val.jsonl")
    configure("val.jsonl")
    append_row(data / "train.jsonl", "2")
    request = ticks.tick().run_requests[0]
    pinned = request.run_config["resources"]["settings"]["config"]["fine_tuner"]["validation_data_id"]
    assert Path(pinned).name == "val.jsonl" and Path(pinned).read_bytes() == (data / "val.jsonl").read_bytes()

    # a snapshot that cannot be written (a file where the snapshot folder goes) is reported once, not forever
    snapshots = load_settings(config).artifacts_root / "dataset_snapshots" / "training_dataset"
    shutil.rmtree(snapshots)
    snapshots.write_text("not a folder", encoding="utf-8")
    append_row(data / "train.jsonl", "3")
    failed = ticks.tick()
    assert not failed.run_requests and "could not snapshot the changed datasets" in str(failed.skip_reason)
    assert "training_dataset" in str(failed.skip_reason)
    assert str(failed.skip_reason.skip_message).startswith("could not snapshot")  # type: ignore[union-attr]
    assert ticks.tick().skip_reason.skip_message == "no dataset changed"  # type: ignore[union-attr]
