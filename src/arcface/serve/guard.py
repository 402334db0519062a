"""The service's front door: a pure ASGI middleware that decides from the request headers, before the app runs.

For every HTTP request, in this order:

1. **Request id.** A random id, in ``scope["arcface.request_id"]`` and the ``X-Request-ID`` response header of every
   answer; a failure's log line and its JSON 500 carry it.
2. **Authentication.** Every ``/v1`` path needs ``Authorization: Bearer KEY`` with one of the configured keys
   (compared with :func:`hmac.compare_digest` against every key, no early exit). A missing or wrong key is answered
   401 from the headers alone: ``receive()`` is never called, so not one byte of the body is read, parsed, buffered
   or written anywhere, and the connection is closed. Elsewhere (``/health``) a valid key only sets
   ``scope["arcface.authenticated"]``.
3. **Rate limit.** A token bucket per key (per client address with ``allow_no_auth``): ``rate`` requests per second
   on average, bursts of ``burst``; over it, 429 with ``Retry-After``.
4. **Body limit and timeout.** A declared ``Content-Length`` over the route's limit is answered 413 at once. Then
   ``receive`` is wrapped: the bytes actually received are counted (chunked bodies included), and the moment they pass
   the limit the guard answers 413 itself; if the whole body has not arrived ``body_timeout`` seconds after the
   headers, it answers 408. Either way the app's ``receive`` then reports a disconnect and whatever the app sends
   afterwards is dropped.
5. **Connection close.** Any answer sent while part of the request body is still unread carries
   ``Connection: close``, so the server closes the connection instead of reading the rest to reuse it.
6. **Headers.** ``X-Content-Type-Options: nosniff`` on every answer; on HTML answers also a Content-Security-Policy
   (scripts and styles from this origin only), ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.
7. **Catch-all.** An exception the app did not turn into an answer is logged with its traceback and the request id,
   and answered with a JSON 500 naming the request id (never a plain-text 500).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from arcface.serve.errors import error_body

__all__ = ["AUTHENTICATED", "REQUEST_ID", "Guard", "RateLimiter"]

logger = logging.getLogger(__name__)

REQUEST_ID = "arcface.request_id"
"""ASGI scope key of the request id."""
AUTHENTICATED = "arcface.authenticated"
"""ASGI scope key: True when the request carried a valid key."""

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
"""Content-Security-Policy of the web page: nothing inline, nothing from another origin."""
_LIMIT_NAMES = "max_upload_bytes per image on upload routes, max_json_bytes elsewhere"
DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
"""The API docs page (Swagger UI sets inline styles; its scripts still come from this service only)."""


class RateLimiter:
    """Token buckets: ``rate`` tokens per second up to ``burst``; a request takes one.

    Args:
        rate: tokens per second (0: no limit).
        burst: bucket size.
        max_buckets: buckets kept (the least recently used go first; a forgotten bucket starts full).
    """

    def __init__(self, rate: float, burst: int, max_buckets: int = 10_000) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()

    def take(self, key: Any, now: float | None = None) -> float:
        """0.0 when ``key`` may go now (a token is taken), else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return wait


class _Exchange:
    """One request/response as the guard sees it: what the client declared and sent, whether an answer started, and
    the wrapped ``receive`` and ``send`` the app is given."""

    def __init__(self, scope: dict, receive: Callable, send: Callable, body_timeout: float) -> None:
        self.rid = secrets.token_hex(8)
        scope[REQUEST_ID] = self.rid
        headers = scope["headers"]
        length_values = [v for k, v in headers if k == b"content-length"]
        chunked = any(k == b"transfer-encoding" for k, _ in headers)
        ok = len(length_values) == 1 and length_values[0].isdigit()
        self.declared = int(length_values[0]) if ok else None
        self.body_done = not (chunked or bool(self.declared) or (bool(length_values) and self.declared is None))
        self.received = 0
        self.started = False  # the response has started (ours or the app's)
        self.responded = False  # the guard answered itself: the app's answer is dropped
        path = scope["path"]
        self.html_csp = DOCS_CSP if path == "/docs" or path.startswith("/docs/") else PAGE_CSP
        self.limit = 0
        self.body_timeout = body_timeout
        self.deadline = asyncio.get_running_loop().time() + body_timeout
        self._receive = receive
        self._send = send

    async def send(self, message: dict) -> None:
        """The app's ``send``: the guard's headers added, nothing once the guard answered itself."""
        if self.responded:
            return  # the guard answered already; the app's late answer goes nowhere
        if message["type"] == "http.response.start":
            self.started = True
            out = list(message.get("headers", []))
            names = {k.lower() for k, _ in out}
            out.append((b"x-request-id", self.rid.encode()))
            out.append((b"x-content-type-options", b"nosniff"))
            ctype = next((v for k, v in out if k.lower() == b"content-type"), b"")
            if ctype.startswith(b"text/html"):
                out += [
                    (b"content-security-policy", self.html_csp.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
            if not self.body_done and b"connection" not in names:
                out.append((b"connection", b"close"))  # the rest of the body is not worth reading
            message = {**message, "headers": out}
        await self._send(message)

    async def answer(self, status: int, code: str, text: str, extra: dict[str, str] | None = None) -> None:
        """The guard's own JSON answer (the connection is closed when a body is pending)."""
        if self.started or self.responded:
            return
        hdrs = [(b"content-type", b"application/json")]
        hdrs += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
        await self.send({"type": "http.response.start", "status": status, "headers": hdrs})
        await self.send({"type": "http.response.body", "body": error_body(code, text)})
        self.responded = True

    async def receive(self) -> dict:
        """The app's ``receive``: the body's bytes counted against :attr:`limit`, within the time allowed."""
        if self.responded:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()  # after the body: e.g. waiting for the client to go
        loop = asyncio.get_running_loop()
        try:
            message = await asyncio.wait_for(self._receive(), timeout=max(0.0, self.deadline - loop.time()))
        except asyncio.TimeoutError:
            await self.answer(408, "timeout", f"the request body did not arrive within {self.body_timeout:g} s")
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                await self.answer(413, "too_large", f"request body exceeds the limit of {self.limit:,} bytes for this "
                                  f"route ({_LIMIT_NAMES})")  # fmt: skip
                return {"type": "http.disconnect"}
            if not message.get("more_body", False):
                self.body_done = True
        else:
            self.body_done = True  # the client went away
        return message


class Guard:
    """The ASGI middleware (see the module docstring); add it with ``app.add_middleware(Guard, ...)``.

    Args:
        app: the ASGI app it wraps.
        keys: the accepted bearer keys (empty: no authentication, ``allow_no_auth``).
        body_limit: ``(method, path) -> bytes`` the body of that request may have.
        body_timeout: seconds from the end of the headers to the end of the body.
        rate: requests per second per key (0: no limit).
        burst: bucket size of the rate limit.
    """

    def __init__(
        self,
        app: Callable,
        *,
        keys: Sequence[str],
        body_limit: Callable[[str, str], int],
        body_timeout: float,
        rate: float,
        burst: int,
    ) -> None:
        self.app = app
        self.keys = tuple(k.encode("ascii") for k in keys)
        self.body_limit = body_limit
        self.body_timeout = float(body_timeout)
        self.limiter = RateLimiter(rate, burst)

    def _key_index(self, headers: list[tuple[bytes, bytes]]) -> int | None:
        """Index of the configured key the request carries, or None (no, several or a wrong Authorization)."""
        values = [v for k, v in headers if k == b"authorization"]
        if len(values) != 1:
            return None
        scheme, _, token = values[0].strip().partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        found = None
        for i, key in enumerate(self.keys):  # no early exit: the time does not say which key came close
            if hmac.compare_digest(token, key):
                found = i
        return found

    async def _refused(self, scope: dict, ex: _Exchange) -> bool:
        """Authentication, rate limit and declared body length: True when the guard answered (the app never runs)."""
        path, headers = scope["path"], scope["headers"]
        is_api = path == "/v1" or path.startswith("/v1/")
        if self.keys:
            key = self._key_index(headers)
            scope[AUTHENTICATED] = key is not None
            if is_api and key is None:
                scheme = b"bearer" in b" ".join(v.lower() for k, v in headers if k == b"authorization")
                await ex.answer(
                    401, "unauthorized",
                    "wrong API key" if scheme else "missing API key: send 'Authorization: Bearer KEY'",
                    {"WWW-Authenticate": 'Bearer error="invalid_token"' if scheme else "Bearer"},
                )  # fmt: skip
                return True
            bucket: Any = ("key", key)
        else:
            scope[AUTHENTICATED] = True
            bucket = ("client", (scope.get("client") or ("?",))[0])
        wait = self.limiter.take(bucket) if is_api else 0.0
        if wait > 0:
            await ex.answer(429, "rate_limited", f"too many requests; retry in {wait:.1f} s",
                            {"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip
            return True
        ex.limit = self.body_limit(scope["method"], path)
        if ex.declared is not None and ex.declared > ex.limit:
            await ex.answer(413, "too_large", f"request body of {ex.declared:,} bytes exceeds the limit of "
                            f"{ex.limit:,} bytes for this route ({_LIMIT_NAMES})")  # fmt: skip
            return True
        return False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = _Exchange(scope, receive, send, self.body_timeout)
        if await self._refused(scope, ex):
            return
        try:
            await self.app(scope, ex.receive, ex.send)
        except Exception:  # the catch-all
            if ex.responded:
                return  # the app tripped over the disconnect the guard gave it: already answered
            logger.exception("request %s: %s %s failed", ex.rid, scope["method"], scope["path"])
            if ex.started:
                raise  # half an answer went out: only closing the connection is left
            await ex.answer(500, "internal", f"internal error; request id {ex.rid} (the server log has the details)")
