"""Where a dataset's rows come from: a local file (JSONL, JSON, CSV, parquet file or folder) or a Hugging
Face Hub dataset, read as raw ``(row number, row)`` pairs, and its data version (content hash or hub
revision). Normalising rows into chat examples is :mod:`ft_assets.phases.datasets`' job.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ft_assets.errors import FtAssetsError

_LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class DatasetError(FtAssetsError, ValueError):
    """A dataset that cannot be used; the message names the file (or hub id), rows and columns at fault."""


def _looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.fullmatch(source)) and not source.lower().endswith(_LOCAL_SUFFIXES)


def locate(source: str, base_dir: Path) -> Path | str:
    """An existing local path, or the hub id ``source`` names; anything else is a DatasetError."""
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = path.resolve()
    if path.exists():
        return path
    if _looks_like_hub_id(source):
        return source
    raise DatasetError(f"dataset file not found: {path}")


def _parquet_shards(directory: Path) -> list[Path]:
    shards = sorted(directory.rglob("*.parquet"))
    if not shards:
        raise DatasetError(f"{directory}: directory holds no .parquet files")
    return shards


def data_version(source: str, *, base_dir: Path, revision: str | None = None) -> str:
    """A version string that changes when the dataset's content changes.

    A local file gives ``sha256:<hex>`` of its bytes; a local directory of parquet shards gives a sha256
    over each shard's relative name and digest, in sorted order. A hub dataset gives
    ``hf:<revision>`` (``hf:main`` when unpinned) without any network call, so only a pinned
    revision (a commit sha) identifies content: pin ``dataset_revision`` to make reruns reproducible.
    """
    location = locate(source, base_dir)
    if isinstance(location, str):
        return f"hf:{revision or 'main'}"
    if location.is_file():
        return f"sha256:{_file_digest(location).hexdigest()}"
    combined = hashlib.sha256()
    for shard in _parquet_shards(location):
        combined.update(shard.relative_to(location).as_posix().encode() + b"\0")
        combined.update(_file_digest(shard).digest())
    return f"sha256:{combined.hexdigest()}"


def _file_digest(path: Path) -> Any:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256")


# --------------------------------------------------------------------------------------------- readers

RawRows = list[tuple[int, Any]]


def _read_jsonl(path: Path) -> RawRows:
    rows: RawRows = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DatasetError(
                    f"{path}: line {number}: malformed JSON ({error.msg} at column {error.colno})"
                ) from None
            except RecursionError:
                raise DatasetError(f"{path}: line {number}: JSON nested too deeply to read") from None
    return rows


def _read_json(path: Path) -> RawRows:
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply to read") from None
    if isinstance(document, Mapping) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DatasetError(f'{path}: expected a JSON list of objects or {{"data": [...]}}')
    return list(enumerate(document, 1))


#: The longest CSV cell read (the csv module's default, 131,072 characters, is shorter than many documents).
CSV_MAX_CELL_CHARS = 1 << 24


def _read_csv(path: Path) -> RawRows:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_MAX_CELL_CHARS))
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            # Cells beyond the header land under the key None; they have no column name to map.
            return [(n, {k: v for k, v in r.items() if k is not None}) for n, r in enumerate(reader, 1)]
        except csv.Error as error:
            if "field larger than field limit" in str(error):
                raise DatasetError(
                    f"{path}: line {reader.line_num}: a cell is longer than {csv.field_size_limit():,} "
                    "characters, the most a CSV cell may hold here; shorten it or use JSONL or parquet"
                ) from None
            raise DatasetError(f"{path}: line {reader.line_num}: malformed CSV ({error})") from None


def _read_parquet(path: Path) -> RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = _parquet_shards(path) if path.is_dir() else [path]
    records: list[Any] = []
    for shard in shards:
        try:
            # to_pylist gives plain lists/dicts (pandas would give numpy arrays for list columns).
            records.extend(pq.read_table(shard).to_pylist())
        except (pa.ArrowException, OSError) as error:
            raise DatasetError(f"{shard}: unreadable parquet file ({error})") from None
    return list(enumerate(records, 1))


_READERS: dict[str, Callable[[Path], RawRows]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_local(path: Path) -> RawRows:
    reader = _read_parquet if path.is_dir() else _READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(_LOCAL_SUFFIXES)} "
            "or a directory of .parquet shards"
        )
    try:
        return reader(path)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_hub(hub_id: str, *, split: str, revision: str | None, token: str | None) -> RawRows:
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, revision=revision, split=split, token=token)
    # `datasets` signals a missing repo, split, network or auth problem with many unrelated types.
    except Exception as error:
        raise DatasetError(
            f"hub dataset {hub_id!r} (revision {revision or 'main'}, split {split!r}) could not be loaded: "
            f"{type(error).__name__}: {error}"
        ) from error
    return list(enumerate(dataset, 1))
