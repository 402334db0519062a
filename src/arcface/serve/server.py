"""``arcface serve``: the app under uvicorn, with the connection limits uvicorn does not have.

uvicorn (0.x, h11) offers ``timeout_keep_alive`` (an idle connection between requests is closed),
``h11_max_incomplete_event_size`` (the request line and headers may take at most that many bytes, 400 above) and
``limit_concurrency`` (503 past that many connections and tasks), but no time limit on receiving a request's headers
or body, and no limit per client. So:

- **Header timeout**: :class:`GuardedH11Protocol` closes a connection whose next request's headers are not complete
  ``header_timeout`` seconds after it opened or after the previous answer (a client sending one header line every
  few seconds is cut off; an idle keep-alive connection is closed earlier by ``timeout_keep_alive``).
- **Body timeout**: the ASGI guard (:mod:`arcface.serve.guard`) answers 408 when the body is not complete
  ``body_timeout`` seconds after the headers.
- **Connections per client**: at most ``max_connections_per_client`` open connections per client address; one more
  is answered 429 and closed at once. Behind a reverse proxy every connection comes from the proxy: raise it or set 0
  (off) there, and let the proxy limit its clients.
- **Connections in all**: at most ``max_connections`` open connections; one more is answered 503 (JSON, with
  ``Retry-After``) and closed. (uvicorn's own ``limit_concurrency`` would answer a plain-text 503.)
- **Malformed requests** that h11 cannot parse (or headers over :data:`MAX_HEADER_BYTES`) are answered with a JSON
  400 instead of uvicorn's plain-text one.

The protocol is always h11 (uvicorn's pure-Python parser, also when httptools is installed), so these limits and
the header size limit hold the same everywhere.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from arcface.serve.settings import Settings

__all__ = ["MAX_HEADER_BYTES", "GuardedH11Protocol", "protocol_class", "serve"]

MAX_HEADER_BYTES = 16 * 1024
"""Most bytes of a request line and headers (uvicorn's ``h11_max_incomplete_event_size``)."""


def _raw_answer(status: int, reason: str, code: str, message: str, extra: str = "") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"connection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a cap on connections per client address.

    Configured by :func:`protocol_class` (class attributes ``header_timeout``, ``per_client``, ``open_per_client``).
    """

    header_timeout: float = 10.0
    per_client: int = 0
    max_connections: int = 0
    open_per_client: Counter = Counter()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._armed_cycle: Any = None
        self._peer = self.client[0] if self.client else None
        self._counted = False
        if self.max_connections > 0 and len(self.connections) > self.max_connections:
            self.logger.warning("over %d connections; refused one from %s", self.max_connections, self._peer)
            msg = f"the service has {self.max_connections} connections open; retry shortly"
            transport.write(_raw_answer(503, "Service Unavailable", "busy", msg, "retry-after: 1\r\n"))
            transport.close()
            return
        if self.per_client > 0 and self._peer is not None:
            if self.open_per_client[self._peer] >= self.per_client:
                self.logger.warning("%s: over %d connections from this address; refused", self._peer, self.per_client)
                msg = f"at most {self.per_client} connections per client"
                transport.write(_raw_answer(
                    429, "Too Many Requests", "too_many_connections", msg, "retry-after: 1\r\n"
                ))
                transport.close()
                return
            self.open_per_client[self._peer] += 1
            self._counted = True
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if getattr(self, "_counted", False):
            self._counted = False
            self.open_per_client[self._peer] -= 1
            if self.open_per_client[self._peer] <= 0:
                del self.open_per_client[self._peer]
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is None or self.cycle.response_complete:  # not already on a pipelined next request
            self._arm()

    def send_400_response(self, msg: str) -> None:
        """h11 could not parse the request: a JSON 400 (uvicorn's own is plain text), then close."""
        self._disarm()
        self.transport.write(_raw_answer(400, "Bad Request", "bad_request", f"malformed HTTP request ({msg})"))
        self.transport.close()

    def _arm(self) -> None:
        """Start waiting for the next request's headers."""
        self._disarm()
        if self.transport.is_closing():
            return
        self._armed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is self._armed_cycle and not self.transport.is_closing():  # no request began since
            self.logger.info("%s: request headers not complete within %g s; connection closed",
                             self._peer, self.header_timeout)  # fmt: skip
            msg = f"request headers not complete within {self.header_timeout:g} s"
            self.transport.write(_raw_answer(408, "Request Timeout", "timeout", msg))
            self.transport.close()


def protocol_class(settings: Settings) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with the settings' header timeout and per-client cap."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {
            "header_timeout": float(settings.header_timeout),
            "per_client": int(settings.max_connections_per_client),
            "max_connections": int(settings.max_connections),
            "open_per_client": Counter(),
        },
    )


def serve(app: Any, settings: Settings, host: str, port: int) -> None:
    """Serve ``app`` with uvicorn on ``host:port`` until interrupted, with the settings' connection limits."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_class(settings),
        timeout_keep_alive=int(settings.keep_alive_timeout),
        limit_concurrency=None,  # max_connections is enforced by the protocol, with a JSON answer
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=10,
        log_level="info",
    )
    uvicorn.Server(config).run()
