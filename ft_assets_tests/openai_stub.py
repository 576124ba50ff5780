"""A local OpenAI-compatible HTTP server for tests: the only stand-in for the paid judge service.

It speaks the real wire format (``POST /v1/chat/completions`` with ``usage``) on 127.0.0.1, so the
code under test runs its real client stack (openai -> httpx -> instructor -> ragas). Answers are
deterministic and built from the request: the default :func:`ragas_judge_responder` finds the
response schema (a tool, ``response_format.json_schema``, or the system message of instructor's JSON
mode) and the ``input:`` block of the ragas prompt, and answers as a perfectly literal judge would (a
statement is supported when it occurs in the context, an answer is accurate when it equals the
reference...), delivered in kind: a tool call, bare JSON in JSON mode, prose around JSON otherwise.

Failures are chosen per request by content: ``failures={"row-7 marker": "http500"}`` makes every
request whose messages contain that text fail in that way. Modes:

- ``http500``: HTTP 500 with an OpenAI-style error body;
- ``garbage``: HTTP 200 whose body is not JSON;
- ``bad_json``: a valid completion (with ``usage``) whose message content is not JSON;
- ``hang``: never answers (until the server stops), so the client's timeout fires;
- ``trickle``: sends headers at once, then the body one byte every ``trickle_interval_s``
  (keeps a per-read timeout from firing; only an overall deadline stops it).

The server records every request body and its headers, the number served per status, the usage it
reported in well-formed completions, and the highest number of requests in flight at once.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

Responder = Callable[[dict[str, Any]], str]
FAILURE_MODES = ("http500", "garbage", "bad_json", "hang", "trickle")


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def _sentences(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part.strip()]


def _last_json_after(text: str, marker: str) -> dict[str, Any]:
    start = text.rfind(marker)
    if start < 0:
        raise ValueError(f"request has no {marker!r} block")
    brace = text.index("{", start + len(marker))
    value, _ = json.JSONDecoder().raw_decode(text, brace)
    return value


def _schema_title(request: dict[str, Any]) -> str:
    """The response model's name, wherever the client put the schema: a tool (instructor TOOLS mode),
    ``response_format.json_schema`` (JSON_SCHEMA / structured outputs) or the system message (JSON mode)."""
    tools = request.get("tools") or []
    if tools:
        return str(tools[0]["function"]["name"])
    response_format = request.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        spec = response_format["json_schema"]
        return str(spec.get("schema", {}).get("title") or spec["name"])
    for message in request["messages"]:
        if message.get("role") == "system" and "json_schema" in str(message.get("content")):
            return str(_last_json_after(str(message["content"]), "json_schema:")["title"])
    raise ValueError(
        "request names no response schema (no tools, json_schema or instructor JSON-mode prompt)"
    )


def _assistant_message(request: dict[str, Any], content: str) -> dict[str, Any]:
    """``content`` delivered the way the request asked: a tool call, bare JSON, or prose around JSON."""
    tools = request.get("tools") or []
    if tools:
        call = {
            "id": "call_stub",
            "type": "function",
            "function": {"name": tools[0]["function"]["name"], "arguments": content},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if (request.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        return {"role": "assistant", "content": content}
    # Without JSON mode a chat model wraps its answer in prose, as real ones do.
    return {"role": "assistant", "content": f"Sure! Here is the answer:\n```json\n{content}\n```"}


def ragas_judge_responder(request: dict[str, Any]) -> str:
    """Answer a ragas 0.4 collections-metric prompt as a literal-minded judge, as JSON text.

    :class:`OpenAIStub` then delivers it as the request asked (tool call, JSON mode, or plain chat).
    """
    messages = request["messages"]
    title = _schema_title(request)
    data = _last_json_after(str(messages[-1]["content"]), "\ninput:")
    answer: dict[str, Any]
    if title == "ClaimDecompositionOutput":
        answer = {"claims": _sentences(data["response"])}
    elif title == "NLIStatementOutput":
        context = _normalise(data["context"])
        answer = {
            "statements": [
                {"statement": s, "reason": "literal match", "verdict": int(_normalise(s) in context)}
                for s in data["statements"]
            ]
        }
    elif title == "AnswerAccuracyOutput":
        same = _normalise(data["user_answer"]) == _normalise(data["reference_answer"])
        answer = {"rating": 4 if same else 0}
    elif title == "StatementGeneratorOutput":
        answer = {"statements": _sentences(data["answer"])}
    elif title == "ClassificationWithReason":
        truth = {_normalise(s) for s in data["ground_truth"]}
        said = {_normalise(s) for s in data["answer"]}
        answer = {
            "TP": [{"statement": s, "reason": "in both"} for s in data["answer"] if _normalise(s) in truth],
            "FP": [
                {"statement": s, "reason": "not in truth"}
                for s in data["answer"]
                if _normalise(s) not in truth
            ],
            "FN": [
                {"statement": s, "reason": "not said"}
                for s in data["ground_truth"]
                if _normalise(s) not in said
            ],
        }
    elif title == "AnswerRelevanceOutput":
        answer = {"question": data["response"], "noncommittal": 0}
    else:
        raise ValueError(f"the stub judge does not know the response model {title!r}")
    return json.dumps(answer)


def count_tokens(text: str) -> int:
    """The stub's token count: whitespace-separated words (deterministic, and differs per request)."""
    return len(text.split())


@dataclass
class StubStats:
    """What the server saw and answered; read it after the code under test has finished."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    max_in_flight: int = 0


class OpenAIStub:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 (use as a context manager)."""

    def __init__(
        self,
        *,
        responder: Responder = ragas_judge_responder,
        failures: Mapping[str, str] | None = None,
        delay_s: float = 0.0,
        trickle_interval_s: float = 0.1,
    ) -> None:
        for key, mode in (failures or {}).items():
            if mode not in FAILURE_MODES:
                raise ValueError(f"failure mode {mode!r} for {key!r} is not one of {FAILURE_MODES}")
        self.responder = responder
        self.failures = dict(failures or {})
        self.delay_s = delay_s
        self.trickle_interval_s = trickle_interval_s
        self.stats = StubStats()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stub is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> OpenAIStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                return

            def do_POST(self) -> None:
                stub._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="openai-stub", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.set()  # wakes hanging handlers so shutdown does not wait for them
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _failure_for(self, request: dict[str, Any]) -> str | None:
        text = json.dumps(request.get("messages", []), ensure_ascii=False)
        for key, mode in self.failures.items():
            if key in text:
                return mode
        return None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.stats.in_flight += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, self.stats.in_flight)
        try:
            self._answer(handler)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing left to answer
        finally:
            with self._lock:
                self.stats.in_flight -= 1

    def _send(
        self, handler: BaseHTTPRequestHandler, status: int, body: bytes, *, trickle: bool = False
    ) -> bool:
        """Write one response; False when the server stopped before the whole body went out."""
        with self._lock:
            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not trickle:
            handler.wfile.write(body)
            return True
        handler.wfile.flush()
        for index in range(len(body)):
            if self._closing.wait(self.trickle_interval_s):
                return False
            handler.wfile.write(body[index : index + 1])
            handler.wfile.flush()
        return True

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        request = json.loads(handler.rfile.read(length) or b"{}")
        with self._lock:
            self.stats.requests.append(request)
            self.stats.headers.append({key.lower(): value for key, value in handler.headers.items()})
        if handler.path.rstrip("/") != "/v1/chat/completions":
            self._send(handler, 404, json.dumps({"error": {"message": f"no route {handler.path}"}}).encode())
            return
        mode = self._failure_for(request)
        if self.delay_s:
            time.sleep(self.delay_s)
        if mode == "hang":
            self._closing.wait()
            return
        if mode == "http500":
            body = {"error": {"message": "stub: internal error", "type": "server_error", "code": None}}
            self._send(handler, 500, json.dumps(body).encode())
            return
        if mode == "garbage":
            self._send(handler, 200, b"<html>this is not json</html>")
            return
        try:
            content = "I cannot answer in JSON, sorry." if mode == "bad_json" else self.responder(request)
        except (ValueError, KeyError, TypeError) as error:
            self._send(handler, 400, json.dumps({"error": {"message": f"stub: {error}"}}).encode())
            return
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in request.get("messages", []))
        completion_tokens = count_tokens(content)
        completion = {
            "id": f"chatcmpl-stub-{len(self.stats.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": _assistant_message(request, content),
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        if self._send(handler, 200, json.dumps(completion).encode(), trickle=mode == "trickle"):
            # Only usage the client could have read counts, so tests can compare totals exactly.
            with self._lock:
                self.stats.prompt_tokens += prompt_tokens
                self.stats.completion_tokens += completion_tokens


@pytest.fixture
def openai_stub() -> Iterator[Callable[..., OpenAIStub]]:
    """Fixture factory: ``stub = openai_stub(failures={...})`` starts one; all stop at teardown.

    Import it into a test module (``from ft_assets_tests.openai_stub import openai_stub``) to use it.
    """
    started: list[OpenAIStub] = []

    def start(**kwargs: Any) -> OpenAIStub:
        stub = OpenAIStub(**kwargs).__enter__()
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stub.__exit__(None, None, None)
