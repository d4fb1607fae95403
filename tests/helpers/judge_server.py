"""A scriptable OpenAI-compatible chat-completions server on 127.0.0.1, run in a thread.

Each request is routed to an item key (by default the first `item-<n>` found in its messages) and
answered with the next `Action` of that key's script; when the script is used up, its last action
repeats (so `[status(500)]` is an item that never gets a usable reply). Unscripted keys get
`default`. Every request is recorded (path, headers, raw body, time, key) so tests can count calls,
check waiting times and search for leaked secrets.

    with JudgeServer({"item-1": [status(429, retry_after=0.2), reply('{"pred": "yes", "score": 4}')]}) as server:
        client = openai.OpenAI(base_url=server.url, api_key="k")

`GET .../models` answers `models_action` (by default a list naming DEFAULT_MODEL, as vLLM lists what
it serves); those requests are counted in `model_listings`, not recorded with the chat requests.

`closed_url()` is a base URL on 127.0.0.1 where nothing listens (connections are refused).
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

DEFAULT_MODEL = "judge-test-0613"


@dataclass
class Action:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    content_type: str = "application/json"


def reply(content: str, model: str = DEFAULT_MODEL, prompt_tokens: int = 50, completion_tokens: int = 10,
          delay: float = 0.0) -> Action:
    """A normal chat completion whose message content is `content`."""
    body = {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return Action(body=json.dumps(body).encode(), delay=delay)


def status(code: int, retry_after: float | str | None = None, headers: dict[str, str] | None = None) -> Action:
    """An error reply (e.g. 429 with Retry-After, 500) with an OpenAI-style error body."""
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(retry_after)
    body = {"error": {"message": f"scripted error {code}", "type": "test", "code": str(code)}}
    return Action(status=code, body=json.dumps(body).encode(), headers=all_headers)


def slow(seconds: float, content: str) -> Action:
    """A valid reply that only starts after `seconds` (beyond a short client timeout)."""
    return reply(content, delay=seconds)


def raw(body: bytes | str, content_type: str = "application/json", code: int = 200) -> Action:
    """Any body at all (malformed JSON, a JSON object without `choices`, HTML, ...)."""
    return Action(status=code, body=body.encode() if isinstance(body, str) else body, content_type=content_type)


def model_list(*ids: str) -> Action:
    """A `GET /v1/models` reply naming `ids` (vLLM also gives `root`, the weights it loaded)."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "test", "root": f"/models/{name}"}
            for name in ids]
    return Action(body=json.dumps({"object": "list", "data": data}).encode())


def closed_url() -> str:
    """An OpenAI-style base URL on a 127.0.0.1 port that was free a moment ago (nothing listens there)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    time: float
    key: str | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def _key_from_messages(pattern: re.Pattern) -> Callable[[Any], str | None]:
    def key_of(payload: Any) -> str | None:
        try:
            text = "\n".join(str(m.get("content", "")) for m in payload["messages"])
        except (TypeError, KeyError, AttributeError):
            return None
        match = pattern.search(text)
        return match.group(0) if match else None
    return key_of


class JudgeServer:
    def __init__(self, script: dict[str, list[Action]] | None = None, default: Action | None = None,
                 key_pattern: str = r"\bitem-\d+\b", key_of: Callable[[Any], str | None] | None = None,
                 models_action: Action | None = None):
        self.models_action = models_action or model_list(DEFAULT_MODEL)
        self.model_listings = 0
        self.script = {key: list(actions) for key, actions in (script or {}).items()}
        self.default = default or reply('{"pred": "yes", "score": 5}')
        self.key_of = key_of or _key_from_messages(re.compile(key_pattern))
        self.requests: list[RecordedRequest] = []
        self._served: dict[str | None, int] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- inspection
    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def calls(self, key: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if key is None or r.key == key]

    def set_script(self, key: str, actions: list[Action]) -> None:
        """Replace one key's script and start it from its first action."""
        with self._lock:
            self.script[key] = list(actions)
            self._served[key] = 0

    # -- serving
    def _next_action(self, key: str | None) -> Action:
        with self._lock:
            index = self._served.get(key, 0)
            self._served[key] = index + 1
            actions = self.script.get(key) if key is not None else None
        if not actions:
            return self.default
        return actions[min(index, len(actions) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if not self.path.rstrip("/").endswith("/models"):
                    self._send(Action(status=404, body=b'{"error": {"message": "no such route"}}'))
                    return
                with server._lock:
                    server.model_listings += 1
                self._send(server.models_action)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = json.loads(body)
                except json.JSONDecodeError:
                    payload = None
                key = server.key_of(payload)
                with server._lock:
                    server.requests.append(
                        RecordedRequest(self.path, dict(self.headers.items()), body, time.monotonic(), key))
                self._send(server._next_action(key))

            def _send(self, action: Action) -> None:
                if action.delay:
                    time.sleep(action.delay)
                try:
                    self.send_response(action.status)
                    self.send_header("Content-Type", action.content_type)
                    self.send_header("Content-Length", str(len(action.body)))
                    for name, value in action.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(action.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point of a slow reply

        return Handler

    def start(self) -> "JudgeServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="judge-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
