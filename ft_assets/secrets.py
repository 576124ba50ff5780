"""Secrets, in one place: which values are secret, how text and structured values are redacted, how
credentials are taken out of URLs, and the scan that refuses to upload a file holding a secret.

A value is secret when it is the value of one of :data:`SECRET_ENV_VARS`, of any environment variable whose
name looks like a secret (:func:`is_secret_name`: ``PGPASSWORD``, ``DB_PASS``, ``*_TOKEN*``...), or was
registered with :func:`register_secret` (every value that came from a ``${VAR}`` expansion, keys read with
``--hf-key-file``). Credentials inside any URL (``scheme://user:password@host``, ``scheme://token@host``)
are secret whatever the scheme.

Registered values belong to the run that registered them: inside :func:`secret_scope` (each Dagster step,
through the settings resource) they are secret until the scope ends, so a long-lived process does not keep
an old run's values and refuse a later run's files for holding them. Values registered outside any scope
(a CLI run, one per process) stay for the process. The environment's secrets are always secret.

Redaction of text replaces substrings (it is meant for messages, logs and tags); structured data (settings
crossing a process boundary) is never redacted by substring: :func:`redact_value` walks dicts and lists and
replaces whole strings only.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import urllib.parse
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from ft_assets.errors import FtAssetsError

HF_TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SECRET_ENV_VARS = (
    *HF_TOKEN_VARS,
    "OPENAI_API_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
#: Shorter values are not treated as secrets: redacting e.g. "1" would mangle every number.
MIN_SECRET_LENGTH = 4

#: Variables found by name only (not listed above) count from this length: short values of such names
#: (``XDG_SESSION_TYPE=tty``-like false positives) would otherwise mask common words in every message.
MIN_GUESSED_SECRET_LENGTH = 8
MASK = "***"

_SECRET_NAME = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE|(^|_)PASS($|_)|(^|_)PW($|_)"
    r"|_KEY|^KEY($|_)|^API_?KEY|_DSN$|^DSN$|(^|_)AUTH|^DATABASE_URL$|^DB_URL$",
    re.IGNORECASE,
)
#: ``scheme://userinfo@``: the user info runs to the last ``@`` before the path, so a password holding
#: ``@`` is masked whole, and a token used as the user name (``https://TOKEN@host``) is masked too.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s\"'<>]*)@")

_CHUNK = 1 << 24


class _Scope:
    """The values one run registered; open while its :func:`secret_scope` block runs."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.open = True


#: Registered outside any scope: secret for the rest of the process.
_registered: set[str] = set()
#: Every open scope, whatever its thread: a concurrent run's values stay secret for every thread.
_open_scopes: list[_Scope] = []
_current_scope: ContextVar[_Scope | None] = ContextVar("ft_assets_secret_scope", default=None)
_lock = threading.Lock()


class SecretFoundError(FtAssetsError, ValueError):
    """A file about to leave the machine (an MLflow artifact) holds a secret's value."""


def is_secret_name(name: str, value: str | None = None) -> bool:
    """Whether an environment variable called ``name`` (holding ``value``, when known) is a secret.

    Names: anything with PASSWORD/PASSWD/SECRET/TOKEN/CREDENTIAL/PRIVATE, a ``PASS``/``PW``/``KEY``/``AUTH``
    word, ``*_DSN``, ``DATABASE_URL``; and any variable whose value is a URL with credentials.
    """
    if name in SECRET_ENV_VARS or _SECRET_NAME.search(name):
        return True
    return value is not None and has_url_credentials(value)


@contextmanager
def secret_scope() -> Iterator[None]:
    """Values registered in the block (by this thread) are secret until it ends, then released; scopes
    nest. A value registered while no scope is open stays secret for the process."""
    scope = _Scope()
    with _lock:
        _open_scopes.append(scope)
    token = _current_scope.set(scope)
    try:
        yield
    finally:
        with _lock:
            scope.open = False
            _open_scopes.remove(scope)
        # Ended from another context (ValueError): registrations there go to the process, the scope is closed.
        with contextlib.suppress(ValueError):
            _current_scope.reset(token)


def register_secret(value: str) -> None:
    """Treat ``value`` as a secret (redacted everywhere it could be logged, refused in uploads) until the
    current :func:`secret_scope` ends; with none open, for the rest of the process."""
    if len(value) < MIN_SECRET_LENGTH:
        return
    scope = _current_scope.get()
    with _lock:
        (scope.values if scope is not None and scope.open else _registered).add(value)


def _registered_values() -> set[str]:
    with _lock:
        return _registered.union(*(scope.values for scope in _open_scopes))


def register_url_credentials(text: str) -> None:
    """Register the password of a URL in ``text`` (or its user name when it has no password: a token
    used as the user) as a secret, so messages that quote it outside the URL are masked too."""
    for match in _URL_USERINFO.finditer(text):
        user, colon, password = match.group("userinfo").partition(":")
        register_secret(urllib.parse.unquote(password if colon else user))
        register_secret(password if colon else user)


def secret_values(env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``(where it came from, value)`` of every known secret, longest value first."""
    source = os.environ if env is None else env
    found = [
        (name, value)
        for name, value in source.items()
        if len(value) >= (MIN_SECRET_LENGTH if name in SECRET_ENV_VARS else MIN_GUESSED_SECRET_LENGTH)
        and is_secret_name(name, value)
    ]
    found += [("a ${VAR} expansion or key file", value) for value in _registered_values()]
    unique = {value: name for name, value in reversed(found)}
    # Longest first, so a secret that contains another one is replaced whole.
    return sorted(((name, value) for value, name in unique.items()), key=lambda item: -len(item[1]))


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _password = match.group("userinfo").partition(":")
    if colon and user:
        return f"{match.group('scheme')}{user}:{MASK}@"
    return f"{match.group('scheme')}{MASK}@"


def redact(text: str) -> str:
    """``text`` with every secret value (see the module notes) and URL credentials replaced by ``***``."""
    for _name, value in secret_values():
        text = text.replace(value, MASK)
    return _URL_USERINFO.sub(_mask_userinfo, text)


def map_strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` with ``change`` applied to every string inside it (dict keys included); dicts, lists and
    tuples keep their shape, other leaves are kept as they are."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping):
        return {map_strings(key, change): map_strings(item, change) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(map_strings(item, change) for item in value)
    return value


def redact_value(value: Any) -> Any:
    """``value`` with each string inside it redacted (:func:`redact`), its structure unchanged: redacting
    serialized data instead could break it (a password ``true`` inside JSON text)."""
    return map_strings(value, redact)


def has_url_credentials(value: str) -> bool:
    """Whether ``value`` is a URL with a user name or password in it."""
    if "://" not in value or "@" not in value:
        return False
    try:
        return "@" in urllib.parse.urlsplit(value.strip()).netloc
    except ValueError:
        return True


def strip_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@`` part (what may be shown, tagged or passed on), any scheme."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return _URL_USERINFO.sub(r"\g<scheme>", uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def hf_token(env: Mapping[str, str] | None = None) -> str | None:
    """The Hugging Face token: ``HF_TOKEN``, else ``HUGGING_FACE_HUB_TOKEN``; ``None`` when neither is set."""
    source = os.environ if env is None else env
    return next((source[name] for name in HF_TOKEN_VARS if source.get(name)), None)


def _secret_in_bytes(data: bytes) -> str | None:
    for name, value in secret_values():
        if value.encode() in data:
            return name
    return None


def _scan(where: str, handle: IO[bytes]) -> None:
    tail = b""
    while chunk := handle.read(_CHUNK):
        # Overlap chunks so a secret split across a boundary is still found.
        if name := _secret_in_bytes(tail + chunk):
            raise SecretFoundError(f"refusing to upload {where}: it contains the value of {name}")
        tail = chunk[-256:]


def refuse_secrets(files: Iterable[Path]) -> None:
    """Raise :class:`SecretFoundError` naming the file (and zip member) that holds a secret's value.

    What is scanned is what a reader sees: the bytes of each file and, for a zip (xlsx, docx...), each member
    decompressed, since a deflated secret does not appear in the compressed bytes.
    """
    for path in files:
        with path.open("rb") as handle:
            _scan(str(path), handle)
        if not zipfile.is_zipfile(path):
            continue
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    with archive.open(member) as handle:
                        _scan(f"{path}!{member}", handle)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as error:
            raise SecretFoundError(
                f"refusing to upload {path}: its zip members cannot be read ({error})"
            ) from None
