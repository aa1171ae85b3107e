"""A small HTTP client for OpenAI-compatible servers (stdlib only).

JSON requests, server-sent-event streams, an API key from the environment, a timeout on
every socket operation plus a wall-clock deadline per request, and bounded retries with
exponential backoff on the failures that retrying can fix (connection refused or reset,
timeouts, 429 / 502 / 503 / 504). Anything else is an answer and is returned or raised
at once. Nothing here knows about models.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

RETRY_STATUSES = (429, 502, 503, 504)


class ServerDown(Exception):
    """The server did not answer (refused, reset, timed out) after every retry, or a reply
    broke off. `reason` is the short cause ("connection refused", "timed out")."""

    def __init__(self, message: str, reason: str):
        self.reason = reason
        super().__init__(message)


class ServerRejected(Exception):
    """The server answered with an HTTP error status."""

    def __init__(self, status: int, url: str, body: str):
        self.status, self.url, self.body = status, url, body
        super().__init__(f"HTTP {status} from {url}: {' '.join(body.split())[:300]}")


class HttpClient:
    """One server: `base_url` is the API root (e.g. http://127.0.0.1:8000/v1)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0,
                 retries: int = 2, backoff_s: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.requests = 0            # requests sent, retries included
        self.retried = 0             # attempts that were retried
        self.answered = 0            # replies received whole (any HTTP status)
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def _request(self, path: str, body: dict | None) -> urllib.request.Request:
        headers = {"Accept": "application/json, text/event-stream"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return urllib.request.Request(self.url(path), data=data, headers=headers,
                                      method="POST" if body is not None else "GET")

    def _open(self, path: str, body: dict | None):
        """urlopen with bounded retries; returns the open response."""
        url = self.url(path)
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                time.sleep(min(self.backoff_s * (2 ** (attempt - 1)), 8.0))
            with self._lock:
                self.requests += 1
            try:
                return urllib.request.urlopen(self._request(path, body), timeout=self.timeout_s)
            except urllib.error.HTTPError as exc:
                self._answered()
                text = _read_error(exc)
                if exc.code in RETRY_STATUSES and attempt < self.retries:
                    last = f"HTTP {exc.code}"
                    continue
                raise ServerRejected(exc.code, url, text) from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError,
                    OSError) as exc:
                last = _reason(exc)
        raise ServerDown(f"{url} did not answer ({last}; timeout {self.timeout_s:g} s, "
                         f"{self.retries + 1} attempt{'s' if self.retries else ''})", last)

    def _answered(self) -> None:
        with self._lock:
            self.answered += 1

    def get_json(self, path: str) -> Any:
        return self._read_json(path, None)

    def post_json(self, path: str, body: dict) -> Any:
        return self._read_json(path, body)

    def _read_json(self, path: str, body: dict | None) -> Any:
        url = self.url(path)
        for attempt in range(self.retries + 1):
            response = self._open(path, body)
            try:
                with response:
                    raw = response.read()
            except (socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
                if attempt < self.retries:
                    self.retried += 1
                    continue
                raise ServerDown(f"{url} stopped answering while sending its reply "
                                 f"({_reason(exc)}; timeout {self.timeout_s:g} s)",
                                 _reason(exc)) from None
            self._answered()
            try:
                return json.loads(raw.decode("utf-8"))
            except ValueError:
                raise ServerRejected(200, url, f"not JSON: {raw[:200]!r}") from None
        raise AssertionError("unreachable")

    def stream(self, path: str, body: dict) -> Iterator[tuple[float, Any]]:
        """POST and yield (perf_counter time of arrival, parsed JSON) per SSE `data:` event,
        until `[DONE]` or the end of the stream. A stream that stalls for timeout_s, runs
        past its wall-clock deadline, or ends before either `[DONE]` or an event with a
        `finish_reason` (a server that died mid-reply) raises ServerDown. Not retried once
        started."""
        url = self.url(path)
        deadline = time.perf_counter() + self.timeout_s * 20
        response = self._open(path, body)
        with response:
            ctype = response.headers.get("Content-Type", "")
            if "event-stream" not in ctype:  # a server that ignored stream: true
                raw = response.read()
                self._answered()
                yield time.perf_counter(), json.loads(raw.decode("utf-8"))
                return
            finished = False
            while True:
                try:
                    line = response.readline()
                except (socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
                    raise ServerDown(f"{url} stalled mid-stream ({_reason(exc)}; timeout "
                                     f"{self.timeout_s:g} s)", _reason(exc)) from None
                if not line:
                    if not finished:   # neither [DONE] nor a finish_reason: cut off
                        raise ServerDown(f"{url} closed the stream before its last event",
                                         "the stream broke off")
                    self._answered()
                    return
                if time.perf_counter() > deadline:
                    raise ServerDown(f"{url} streamed past the deadline of "
                                     f"{self.timeout_s * 20:g} s (20 x timeout_s)", "timed out")
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self._answered()
                    return
                try:
                    event = json.loads(payload.decode("utf-8"))
                except ValueError:
                    raise ServerRejected(200, url, f"bad stream event: {payload[:200]!r}") from None
                if isinstance(event, dict) and "error" in event and "choices" not in event:
                    raise ServerRejected(500, url, f"error in stream: {event['error']}")
                finished = finished or _finishes(event)
                yield time.perf_counter(), event


def _finishes(event: Any) -> bool:
    """Whether a stream event closes its choice (carries a finish_reason)."""
    choices = event.get("choices") if isinstance(event, dict) else None
    return any(isinstance(c, dict) and c.get("finish_reason") for c in choices or [])


def _read_error(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    for kind, said in ((http.client.RemoteDisconnected, "connection closed without a reply"),
                       (ConnectionRefusedError, "connection refused"),
                       (ConnectionResetError, "connection reset"),
                       (ConnectionAbortedError, "connection aborted")):
        if isinstance(reason, kind):
            return said
    return " ".join(str(reason).split())[:200] or type(reason).__name__
