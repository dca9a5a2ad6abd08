"""A small OpenAI-compatible server for tests: embeddings and chat, real HTTP on loopback.

``POST /v1/embeddings`` answers in the shape of OpenAI's API
(``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}],
"model": ..., "usage": {...}}``), with ``encoding_format`` ``float`` or ``base64`` and an
optional ``dimensions``. A vector is a deterministic function of its text (:func:`stub_vector`:
hashed words, so texts that share words are close).

``POST /v1/chat/completions`` answers in the shape of OpenAI's chat API
(``{"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content":
...}, "finish_reason": "stop"}], "usage": {"prompt_tokens", "completion_tokens",
"total_tokens"}}``; tokens are counted as whitespace-separated words). The content is
scripted: the next answers queued with :meth:`OpenAIStubServer.queue_chat` (a string, or a
function of the request's messages), else ``chat_default(messages)``.

The server

- checks ``Authorization: Bearer <key>`` and answers a wrong or missing key with 401 and
  OpenAI's error JSON;
- fails the next requests on demand (:meth:`OpenAIStubServer.fail_next`, e.g. 429 or 500),
  whichever endpoint they are for;
- waits ``chat_delay`` seconds before every chat answer (to make latency measurable);
- records every request it receives (time, status, model, inputs, path, messages, answer) in
  ``requests``.

Use it as a context manager; it listens on 127.0.0.1 on a free port:

>>> with OpenAIStubServer(api_key="sk-test") as stub:
...     client = openai.OpenAI(api_key="sk-test", base_url=stub.base_url)

or by hand: ``python -m tests.openai_stub_server --port 8089 --api-key sk-test``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeAlias, cast

import numpy as np

ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", None),
}
"""OpenAI's error ``type`` and ``code`` per HTTP status."""
EMBEDDINGS_PATH = "/v1/embeddings"
CHAT_PATH = "/v1/chat/completions"

Messages: TypeAlias = list[dict[str, Any]]
ChatAnswer: TypeAlias = str | Callable[[Messages], str]
"""A scripted chat answer: the content itself, or a function of the request's messages."""


def default_chat_answer(messages: Messages) -> str:
    """The stub's answer when nothing is queued: always the move ``attack``."""
    return '{"move": "attack", "reason": "the stub always attacks"}'


def stub_vector(text: str, dim: int) -> np.ndarray:
    """The server's unit vector for ``text``: a signed hash of each word into ``dim`` slots."""
    vector = np.zeros(dim)
    for word in re.findall(r"\w+", text.lower()) or [text]:
        digest = hashlib.sha256(word.encode()).digest()
        vector[int.from_bytes(digest[:4], "little") % dim] += 1.0 if digest[4] % 2 else -1.0
    norm = np.linalg.norm(vector)
    return vector / norm if norm else np.eye(dim)[0]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    time: float
    status: int
    model: str | None
    inputs: tuple[str, ...]
    path: str = EMBEDDINGS_PATH
    messages: tuple[dict[str, Any], ...] = ()
    """Chat requests: the messages sent."""
    answer: str | None = None
    """Chat requests answered 200: the content the stub answered."""
    body: dict[str, Any] | None = None
    """The request's JSON body as received."""


class OpenAIStubServer:
    """OpenAI-compatible ``/v1/embeddings`` and ``/v1/chat/completions`` endpoints on
    127.0.0.1, in a background thread."""

    def __init__(self, api_key: str = "sk-test", dim: int = 16, port: int = 0,
                 chat_default: Callable[[Messages], str] = default_chat_answer,
                 chat_delay: float = 0.0) -> None:
        self.api_key = api_key
        self.dim = dim
        self.chat_default = chat_default
        self.chat_delay = chat_delay
        self.requests: list[RecordedRequest] = []
        self._failures: deque[int] = deque()
        self._chat_answers: deque[ChatAnswer] = deque()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.stub = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def batch_sizes(self) -> list[int]:
        """Inputs per answered embeddings request, in order."""
        return [len(r.inputs) for r in self.requests
                if r.status == 200 and r.path == EMBEDDINGS_PATH]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The chat requests received, in order, whatever their status."""
        with self._lock:
            return [r for r in self.requests if r.path == CHAT_PATH]

    def fail_next(self, *statuses: int) -> None:
        """Answer the next ``len(statuses)`` requests with these HTTP error statuses."""
        with self._lock:
            self._failures.extend(statuses)

    def queue_chat(self, *answers: ChatAnswer) -> None:
        """Answer the next successful chat requests with these contents, in order."""
        with self._lock:
            self._chat_answers.extend(answers)

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (for running the stub by hand)."""
        with self._server:
            self._server.serve_forever()

    def __enter__(self) -> OpenAIStubServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def answer(self, path: str, authorization: str | None, body: bytes) -> tuple[int, Any]:
        """The status and JSON of one request (the HTTP handler only moves bytes)."""
        request = _parse(body)
        status, payload = self._respond(path, authorization, request)
        inputs = request.get("input", [])
        messages = request.get("messages")
        answer = None
        if path == CHAT_PATH and status == 200:
            answer = payload["choices"][0]["message"]["content"]
        with self._lock:
            self.requests.append(RecordedRequest(
                time.monotonic(), status, request.get("model"),
                tuple([inputs] if isinstance(inputs, str) else inputs), path,
                tuple(messages) if isinstance(messages, list) else (), answer, request))
        return status, payload

    def _respond(self, path: str, authorization: str | None,
                 request: dict[str, Any]) -> tuple[int, Any]:
        if path not in (EMBEDDINGS_PATH, CHAT_PATH):
            return _error(404, f"Unknown request URL: POST {path}.")
        if authorization != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided. You can find your API key at "
                               "https://platform.openai.com/account/api-keys.")
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            return _error(failure, f"Injected failure {failure}.")
        if path == CHAT_PATH:
            return self._chat(request)
        inputs = request.get("input")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(
                isinstance(t, str) and t for t in texts):
            return _error(400, "'input' must be a non-empty string or list of non-empty strings.")
        return 200, self._embeddings(request, texts)

    def _embeddings(self, request: dict[str, Any], texts: list[str]) -> dict[str, Any]:
        dim = int(request.get("dimensions") or self.dim)
        as_base64 = request.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            vector = stub_vector(text, dim)
            embedding: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode() \
                if as_base64 else vector.tolist()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(t.split()) for t in texts)
        return {"object": "list", "data": data, "model": request.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


    def _chat(self, request: dict[str, Any]) -> tuple[int, Any]:
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages):
            return _error(400, "'messages' must be a non-empty list of {role, content} "
                               "objects with string content.")
        with self._lock:
            scripted = self._chat_answers.popleft() if self._chat_answers else None
        script = self.chat_default if scripted is None else scripted
        content = script if isinstance(script, str) else script(messages)
        if self.chat_delay:
            time.sleep(self.chat_delay)
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        completion_tokens = len(content.split())
        with self._lock:
            number = len(self.requests)
        return 200, {
            "id": f"chatcmpl-stub-{number}", "object": "chat.completion",
            "created": int(time.time()), "model": request.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def _parse(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body or b"{}")
    except json.JSONDecodeError:
        return {}
    return request if isinstance(request, dict) else {}


def _error(status: int, message: str) -> tuple[int, Any]:
    kind, code = ERRORS.get(status, ("server_error", None))
    return status, {"error": {"message": message, "type": kind, "param": None, "code": code}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stub: OpenAIStubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        stub = cast(_Server, self.server).stub
        status, payload = stub.answer(self.path, self.headers.get("Authorization"), body)
        content = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests read ``requests`` instead of a log."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--api-key", default="sk-test")
    parser.add_argument("--dim", type=int, default=16)
    args = parser.parse_args()
    stub = OpenAIStubServer(api_key=args.api_key, dim=args.dim, port=args.port)
    print(f"OpenAI-compatible embeddings and chat at {stub.base_url} (key {args.api_key})")
    stub.serve_forever()


if __name__ == "__main__":
    main()
