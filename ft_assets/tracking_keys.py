"""MLflow keys (metric, param and tag names) and metric values, made valid, and kept apart per run.

Keys follow the seed's rule (``=`` becomes ``:``, anything outside ``[A-Za-z0-9_\\-. :/]`` becomes ``_``)
plus MLflow's own: no empty path segments (``a//b``, ``/x``, ``x/``), no ``.``/``..`` segments, at most
250 characters (longer names keep a prefix and a stable hash), never empty. The result always passes
MLflow's validator, so one odd name never makes MLflow reject a whole batch.

Sanitizing maps several names onto one key (``a=b`` and ``a:b``). :class:`RunKeys` keeps, per MLflow run,
the key each original name got: the first name to claim a key keeps it (within one call, names that were
already valid keys claim first, so the choice does not depend on their order); a later, different name
gets the key plus a 6-hex-digit hash of its own name, and the collision is reported (a warning and the tag
:data:`TAG_KEY_COLLISIONS`) instead of one value silently overwriting or dropping the other.

Metric values: anything ``float()`` accepts except strings is a metric; an integer too large for a float
(``10**400``) becomes ``±inf`` (stored as ``±1.797e308`` by MLflow) rather than failing the batch.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import posixpath
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from ft_assets.secrets import redact

MAX_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 8000
#: The tag that lists, as ``original name -> key``, every name of the run that had to give way.
TAG_KEY_COLLISIONS = "ft_assets.key_collisions"

_SEED_INVALID = re.compile(r"[^a-zA-Z0-9_\-. :/]")
_MLFLOW_KEY = re.compile(r"[/\w.\- :]*")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]


def is_valid_key(key: str) -> bool:
    """Whether MLflow accepts ``key`` as a metric, param or tag name (its rules, restated)."""
    if not key or len(key) > MAX_KEY_LENGTH or not _MLFLOW_KEY.fullmatch(key):
        return False
    norm = posixpath.normpath(key)
    return norm == key and norm != "." and not norm.startswith(("..", "/"))


def with_suffix(key: str, original: str) -> str:
    """``key`` (shortened to fit) plus the hash of ``original``: a key of its own for a colliding name."""
    return f"{key[: MAX_KEY_LENGTH - 7].rstrip('/')}_{_digest(original)}"


def sanitize_metric_name(name: str) -> str:
    """A valid MLflow key for ``name`` (also used for params and tags); see the module notes."""
    key = _SEED_INVALID.sub("_", str(name).replace("=", ":"))
    key = "/".join("_" if part in (".", "..") else part for part in key.split("/") if part)
    if key.startswith(".."):
        key = "_" + key[1:]
    key = key or "_"
    if len(key) > MAX_KEY_LENGTH:
        key = with_suffix(key, str(name))
    # Cannot happen with the rules above; kept so that no name ever reaches MLflow invalid.
    return key if is_valid_key(key) else f"key_{_digest(str(name))}"


def as_float(value: Any) -> float | None:
    """``value`` as a metric value, or ``None`` when it is not a number (strings never are)."""
    if isinstance(value, str | bytes):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float range: keep it visible as the infinity it rounds to
        return (math.inf if value > 0 else -math.inf) if isinstance(value, numbers.Real) else None
    except (TypeError, ValueError):
        return None


class RunKeys:
    """The key of every name logged to one MLflow run (see the module notes)."""

    def __init__(self) -> None:
        self._key_of: dict[str, str] = {}
        self._owner_of: dict[str, str] = {}
        #: original name -> the key it got instead of the one it collided on
        self.collisions: dict[str, str] = {}
        self._lock = threading.Lock()

    def assign(self, names: Iterable[str]) -> tuple[dict[str, str], dict[str, str]]:
        """The key of each of ``names``, and the collisions this call added (name -> key)."""
        ordered = sorted({str(n) for n in names}, key=lambda n: (sanitize_metric_name(n) != n, n))
        keys, added = {}, {}
        with self._lock:
            for name in ordered:
                if name not in self._key_of:
                    key = base = sanitize_metric_name(name)
                    attempt = 0
                    while self._owner_of.get(key, name) != name:
                        attempt += 1
                        key = with_suffix(base, name if attempt == 1 else f"{name}#{attempt}")
                    if key != base:
                        self.collisions[name] = added[name] = key
                    self._key_of[name], self._owner_of[key] = key, name
                keys[name] = self._key_of[name]
        return keys, added


_runs: dict[str, RunKeys] = {}
_runs_lock = threading.Lock()


def run_keys(run_id: str) -> RunKeys:
    """The process-wide key map of MLflow run ``run_id``."""
    with _runs_lock:
        return _runs.setdefault(run_id, RunKeys())


def sanitize_metrics(
    values: Mapping[str, Any], keys: RunKeys | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """Split ``values`` into valid numeric metrics and text values (for tags), keys from ``keys``
    (a fresh map when ``None``: collisions are then resolved within this batch only)."""
    mapping, _ = (keys or RunKeys()).assign(k for k, v in values.items() if v is not None)
    metrics: dict[str, float] = {}
    texts: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            continue
        key = mapping[str(name)]
        number = as_float(value)
        if number is None:
            texts[key] = redact(str(value))[:MAX_TAG_VALUE_LENGTH]
        else:
            metrics[key] = number
    return metrics, texts
