"""``python -m chatbot_site.serve <daphne arguments>``: daphne, with every connection's memory and
lifetime bounded. It takes daphne's command line unchanged.

Plain daphne, serving clients directly, lets one client take as much as it likes: a request body is
read whole before the application sees it (the 413 for a body over the limit came after all of it
was in memory); Twisted resets its idle timer on every byte, so a client sending its headers a byte
at a time (slowloris) holds its connection forever, and enough of them use up the descriptors; a
response goes into a buffer that grows whatever the client reads; and daphne's own 400s are HTML or
empty. Installed here, per connection (settings read from ``django.conf.settings`` when used):

- ``LIMITS_MAX_BODY_BYTES``: a ``Content-Length`` over it is answered ``413 body_too_large`` when
  the headers end, before a byte of the body is read; a chunked body is cut off at the limit.
- ``SERVER_HEADER_TIMEOUT_SECONDS``: the request line and headers must have arrived this long after
  the connection opened or its last response ended, a deadline that bytes do not move (``408`` if a
  part came, else a plain close). A body upload that sends nothing for as long is closed too.
- ``SERVER_MAX_CONNECTIONS``: at the limit a new connection takes the place of the one that has been
  waiting longest for a request head (as nginx reuses idle keep-alive connections), so slow-header
  connections cannot lock everybody out; with none waiting it gets ``503 too_many_connections``.
- ``SERVER_MAX_UNSENT_BYTES``: with more output than this not yet taken by the kernel, the ASGI
  ``send`` waits until the client has read it, which pauses the application's response; a client
  that reads nothing for ``SERVER_HEADER_TIMEOUT_SECONDS`` meanwhile is dropped. This bounds what
  the server holds; the kernel's socket buffer comes on top (outside the process: up to the maximum
  of ``net.ipv4.tcp_wmem``, 4 MiB by default), and what the application holds for a response it has
  not sent yet is its own.

- Request starts take turns: at most HEADS_PER_TURN new request heads are parsed per turn of the
  event loop (``GET``/``HEAD /health`` always at once); the others wait, unread, in arrival order.
  A burst of 1,000 connections otherwise had all of their parsing and first application steps in
  the same few loop turns (500 to 1,800 callbacks and 50 to 200 ms each) and a ``/health`` among
  them took half a second.

Every error is the API's JSON, ``{"error": "<sentence>", "code": "<stable_snake_case>"}``.
"""

# ruff: noqa: N802 - the overrides keep Twisted's camelCase method names

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from chatbot_site import loop

# daphne.server makes the event loop Twisted runs on (ours: loop.install) and installs the asyncio
# reactor on it: it is imported before anything that imports twisted.internet.reactor.
loop.install()
import daphne.server  # noqa: E402
import django  # noqa: E402
from daphne.cli import CommandLineInterface  # noqa: E402
from daphne.http_protocol import HTTPFactory, WebRequest  # noqa: E402
from django.conf import settings  # noqa: E402
from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.internet.base import DelayedCall  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402
from twisted.web import http  # noqa: E402

from core.errors import ApiError  # noqa: E402

logger = logging.getLogger(__name__)
reactor: Any = _reactor  # Twisted types the module as an interface

# After an error answer to a client that may still be sending (a body over the limit, a bad
# request), the connection is half-closed and what arrives is dropped for this long before it is
# cut: closing a socket with unread bytes in it makes the kernel send a reset, which can destroy the
# answer still on its way. A connection refused for want of a slot lingers less: its descriptor is
# one the process is short of.
LINGER_SECONDS = 2.0
REFUSED_LINGER_SECONDS = 0.5
# Descriptors a process needs beyond its connections: the database, the thread pool, Ollama's
# sockets, logs. The soft open-file limit is raised (within the hard one) to cover both.
RESERVED_DESCRIPTORS = 256
# How often a connection that waits for its client to read checks whether the client read anything.
STALL_CHECK_MAX_SECONDS = 1.0
FULL_LOG_INTERVAL_SECONDS = 10.0
# New request heads handed to Twisted's parser (and so to daphne and the application) per turn of
# the event loop; the rest wait their turn. Each costs about 1 to 2 ms of the loop from its parse to
# its first bytes out, so a turn stays short enough for a probe to get through a burst.
HEADS_PER_TURN = 8
# The garbage collector's thresholds (Python's are 700, 10, 10). Under a burst of 1,000 streams the
# defaults ran a full collection every second or so, each 40-90 ms with the loop stopped (the
# longest /health waits left); with these none ran during the burst and the young ones stayed short.
GC_THRESHOLDS = (2000, 20, 20)


def is_probe(method: bytes, target: bytes) -> bool:
    """A liveness probe (``GET``/``HEAD /health``, any query): it skips the head turns and its
    application task runs ahead of the backlog, since it must answer under any load."""
    return method in (b"GET", b"HEAD") and target.split(b"?", 1)[0] == b"/health"


def probe_head(data: bytes) -> bool:
    """Whether the first bytes of a request head are a probe's request line."""
    method, _, rest = data.partition(b" ")
    return is_probe(method, rest.split(b" ", 1)[0])


def error_body(message: str, code: str) -> bytes:
    """The API's error JSON (``core.errors.ApiError.as_dict``)."""
    return json.dumps(ApiError(message, code=code).as_dict()).encode()


def error_response(status: int, code: str, message: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 error answer that ends the connection, in the API's JSON shape."""
    body = error_body(message, code)
    reason = http.RESPONSES.get(status, b"Error").decode("ascii")
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "X-Content-Type-Options: nosniff",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def body_too_large() -> bytes:
    limit = settings.LIMITS_MAX_BODY_BYTES
    return error_response(413, "body_too_large", f"The request body exceeds {limit} bytes.")


def unsent_bytes(transport: Any) -> int:
    """Output written to a Twisted transport that the kernel has not taken yet (both its buffers)."""
    return (
        len(getattr(transport, "dataBuffer", b""))
        - getattr(transport, "offset", 0)
        + getattr(transport, "_tempDataLen", 0)
    )


class GuardedChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 connection with a deadline for each request head, the body limit, a
    connection slot, and JSON answers for what it cannot parse."""

    def __init__(self) -> None:
        super().__init__()
        self.holds_slot = False
        self.closing = False  # answered and on its way out: whatever the client sends is dropped
        self._head_call: DelayedCall | None = None
        self._head_started = False
        self._abort_call: DelayedCall | None = None
        self.held: list[bytes] | None = None  # a request head's bytes waiting for their turn

    @property
    def pool(self) -> GuardedHTTPFactory:
        factory = self.factory
        assert isinstance(factory, GuardedHTTPFactory)
        return factory

    # --- the connection's life ------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.pool.take_slot(self):
            message = "The server has too many open connections; try again shortly."
            response = error_response(503, "too_many_connections", message, retry_after=1)
            self.answer_and_close(response, linger=REFUSED_LINGER_SECONDS)
            return
        self.wait_for_head()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.held = None  # its turn, if it comes, is skipped
        self.pool.release_slot(self)
        self._stop_head_wait()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        super().connectionLost(reason)

    def answer_and_close(self, response: bytes, *, linger: float = 0) -> None:
        """Send ``response`` (a whole answer) and close; later bytes from the client are dropped.
        With ``linger``, only our side is shut and the client has that long to finish."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        self._stop_head_wait()
        self.setTimeout(None)
        transport: Any = self.transport
        transport.write(response)
        # The channel stops being the transport's producer, as Twisted's own loseConnection does: a
        # paused producer would keep the transport from finishing its half-close.
        self._networkProducer.unregisterProducer()
        if linger and hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            transport.resumeProducing()  # keep reading (and dropping) until the client stops
            delay = linger
        else:
            transport.loseConnection()
            # Twisted's close still sends what the transport holds (the end of a previous
            # response, say); a client that has not taken it within the head timeout is cut off.
            delay = max(LINGER_SECONDS, settings.SERVER_HEADER_TIMEOUT_SECONDS)
        self._abort_call = reactor.callLater(delay, transport.abortConnection)

    def evict(self) -> None:
        """Give up this idle connection's slot to a new one (at SERVER_MAX_CONNECTIONS)."""
        self.pool.release_slot(self)
        self.answer_and_close(b"")

    # --- request heads: a deadline, not an idle timer ----------------------------------------------

    def wait_for_head(self) -> None:
        """Start the deadline for the next request line and headers."""
        self._stop_head_wait()
        self._head_started = False
        self._head_call = reactor.callLater(settings.SERVER_HEADER_TIMEOUT_SECONDS, self._head_timed_out)
        self.pool.idle[self] = None

    def _stop_head_wait(self) -> None:
        if self._head_call is not None and self._head_call.active():
            self._head_call.cancel()
        self._head_call = None
        self.pool.idle.pop(self, None)

    def _head_timed_out(self) -> None:
        self._head_call = None
        self.pool.idle.pop(self, None)
        if not self._head_started:  # an idle keep-alive connection: close it, say nothing
            self.answer_and_close(b"")
            return
        timeout = settings.SERVER_HEADER_TIMEOUT_SECONDS
        logger.debug("closing a connection whose request head took over %s s", timeout)
        message = f"The request line and headers did not arrive within {timeout:g} s."
        self.answer_and_close(error_response(408, "request_timeout", message))

    def requestDone(self, request: http.Request) -> None:
        # Before Twisted's: it may parse a pipelined request at once, whose head stops this wait.
        if self.persistent and not self.closing:
            self.wait_for_head()
        super().requestDone(request)

    # --- what the client sends --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self.held is not None:
            self.held.append(data)
            return
        if self._head_call is not None:
            self._head_started = True
            if not self.pool.take_turn(self, data):
                # Not read further until its turn: what the client sends meanwhile waits in the kernel.
                self.held = [data]
                transport: Any = self.transport
                transport.pauseProducing()
                return
        super().dataReceived(data)

    def resume_head(self) -> None:
        """Its turn: parse what was held (the turn is counted by the caller)."""
        held, self.held = self.held, None
        if held is None or self.closing or self.transport is None:
            return
        transport: Any = self.transport
        transport.resumeProducing()
        super().dataReceived(b"".join(held))

    def lineReceived(self, line: bytes) -> None:
        if not self.closing:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.closing:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        self._stop_head_wait()
        # Twisted would read the body into a file and daphne then into memory, all of it, before
        # the application could refuse it; a declared length over the limit is refused now (and
        # before Twisted's automatic "100 Continue", so a client that waits for it sends nothing).
        if self.length is not None and self.length > settings.LIMITS_MAX_BODY_BYTES:
            self.answer_and_close(body_too_large(), linger=LINGER_SECONDS)
            return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if not self.closing:
            super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's answer is a bare "400 Bad Request" with no body (a malformed request line or
        # header, too many or too large headers, a malformed chunk).
        message = "The request could not be parsed: malformed request line, header or chunk."
        self.answer_and_close(error_response(400, "bad_request", message), linger=LINGER_SECONDS)

    def lineLengthExceeded(self, line: bytes) -> None:
        # Twisted closes without a word when a line outgrows MAX_LENGTH.
        message = f"A request line or header is longer than {self.MAX_LENGTH} bytes."
        self.answer_and_close(error_response(400, "bad_request", message), linger=LINGER_SECONDS)


class GuardedRequest(WebRequest):
    """daphne's request with the chunked-body limit, JSON errors, and a send path that waits for
    a slow client. It registers itself as its channel's streaming producer, so Twisted tells it
    when the transport has sent all it held (``resumeProducing``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.body_bytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._stall_call: DelayedCall | None = None
        self._stall_level = 0
        self._stall_since = 0.0
        super().__init__(*args, **kwargs)

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or getattr(channel, "closing", False):
            return
        self.body_bytes += len(data)
        if self.body_bytes > settings.LIMITS_MAX_BODY_BYTES and isinstance(channel, GuardedChannel):
            channel.answer_and_close(body_too_large(), linger=LINGER_SECONDS)
            return
        super().handleContentChunk(data)

    def process(self) -> Any:
        upgrade = self.requestHeaders.getRawHeaders(b"upgrade") or [b""]
        if upgrade[0].lower() == b"websocket" and isinstance(self.channel, GuardedChannel):
            # daphne hands the socket to its WebSocket protocol and this channel never hears of
            # its end: its slot is given back now (daphne times WebSocket handshakes out itself).
            self.channel.pool.release_slot(self.channel)
        if is_probe(self.method, self.path):
            # The probe's application task runs ahead of the backlog (chatbot_site.loop).
            return loop.urgent(super().process)
        return super().process()

    # --- the response ---------------------------------------------------------------------------

    def handle_reply(self, message: dict[str, Any]) -> None:
        super().handle_reply(message)
        if (
            message.get("type") == "http.response.start"
            and self.producer is None
            and self.channel is not None
            and not self.finished
        ):
            self.registerProducer(self, True)

    def finish(self) -> None:
        if self.producer is not None:
            self.unregisterProducer()  # Twisted logs an error for a producer left registered
        self._wake()
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        self._wake()
        super().connectionLost(reason)

    def basic_error(self, status: int, status_text: bytes, body: str) -> None:
        """daphne's own error answers (an invalid header, a non-ASCII path or query string, an
        application exception), as JSON."""
        if self._response_started:
            # Nothing can be said once a response began (daphne would raise in its application
            # checker, which then stops for good): the cut response is closed.
            if self.channel is not None:
                self.channel.loseConnection()
            return
        code = {400: "bad_request", 500: "internal_error"}.get(status, "server_error")
        payload = error_body(body.rstrip(".") + ".", code)
        self.handle_reply(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"Content-Type", b"application/json"),
                    (b"Content-Length", str(len(payload)).encode()),
                    (b"X-Content-Type-Options", b"nosniff"),
                ],
            }
        )
        self.handle_reply({"type": "http.response.body", "body": payload})

    # --- backpressure -----------------------------------------------------------------------------

    async def wait_for_client(self) -> None:
        """Return once the connection's unsent output is within SERVER_MAX_UNSENT_BYTES, or it
        closed. A client that reads nothing for SERVER_HEADER_TIMEOUT_SECONDS is dropped."""
        while (
            self.channel is not None
            and not self._disconnected
            and unsent_bytes(self.transport) > settings.SERVER_MAX_UNSENT_BYTES
        ):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._watch_stall()
            await waiter

    # IPushProducer: Twisted pauses at its own 64 KiB; only the resume (all sent) matters here.
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        self._wake()

    def stopProducing(self) -> None:
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None

    def _watch_stall(self) -> None:
        if self._stall_call is not None:
            return
        self._stall_level, self._stall_since = unsent_bytes(self.transport), time.monotonic()
        self._stall_call = reactor.callLater(self._stall_interval(), self._check_stall)

    @staticmethod
    def _stall_interval() -> float:
        return max(0.05, min(STALL_CHECK_MAX_SECONDS, settings.SERVER_HEADER_TIMEOUT_SECONDS / 4))

    def _check_stall(self) -> None:
        self._stall_call = None
        if not self._waiters or self.channel is None or self.transport is None:
            return
        level, now = unsent_bytes(self.transport), time.monotonic()
        if level < self._stall_level:
            self._stall_level, self._stall_since = level, now
        elif now - self._stall_since >= settings.SERVER_HEADER_TIMEOUT_SECONDS:
            logger.info(
                "dropping a client that read nothing of its response for %s s (%d bytes unsent)",
                settings.SERVER_HEADER_TIMEOUT_SECONDS,
                level,
            )
            self.transport.abortConnection()
            return
        self._stall_call = reactor.callLater(self._stall_interval(), self._check_stall)


def _guarded_protocol(factory: GuardedHTTPFactory) -> Any:
    """What Twisted's HTTPFactory builds per connection, with the guarded channel inside."""
    return http._GenericHTTPChannelProtocol(GuardedChannel())


class GuardedHTTPFactory(HTTPFactory):
    """daphne's HTTP factory, building guarded channels and counting their slots."""

    protocol = _guarded_protocol

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.open_connections = 0
        # Connections waiting for a request head, the longest waiting first (dicts keep order).
        self.idle: dict[GuardedChannel, None] = {}
        self._full_logged_at = -FULL_LOG_INTERVAL_SECONDS
        self.turn_heads = 0  # heads parsed in this turn of the loop
        self.waiting: deque[GuardedChannel] = deque()  # heads waiting for a turn, oldest first
        self._turn_call: DelayedCall | None = None

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = GuardedRequest
        # Twisted's idle timer (12 hours by default) still covers a body upload that stalls.
        protocol.timeOut = settings.SERVER_HEADER_TIMEOUT_SECONDS
        return protocol

    def take_slot(self, channel: GuardedChannel) -> bool:
        """A slot for a new connection: a free one, else an idle connection's; False if none."""
        limit = settings.SERVER_MAX_CONNECTIONS
        if self.open_connections >= limit:
            oldest = next(iter(self.idle), None)
            if oldest is None:
                now = time.monotonic()
                if now - self._full_logged_at >= FULL_LOG_INTERVAL_SECONDS:
                    self._full_logged_at = now
                    logger.warning("%d connections open (SERVER_MAX_CONNECTIONS): answering 503", limit)
                return False
            oldest.evict()
        self.open_connections += 1
        channel.holds_slot = True
        return True

    # --- turns ------------------------------------------------------------------------------------

    def take_turn(self, channel: GuardedChannel, data: bytes) -> bool:
        """Whether ``channel``'s new request head may be parsed now; if not, it joins the queue."""
        if probe_head(data):
            return True
        now = not self.waiting and self.turn_heads < HEADS_PER_TURN
        if now:
            self.turn_heads += 1
        else:
            self.waiting.append(channel)
        self._next_turn()  # the count starts again next turn, and the waiting get theirs
        return now

    def _next_turn(self) -> None:
        if self._turn_call is None:
            self._turn_call = reactor.callLater(0, self._turn)

    def _turn(self) -> None:
        """A new turn of the loop: the oldest waiting heads are parsed, up to HEADS_PER_TURN."""
        self._turn_call = None
        self.turn_heads = 0
        while self.waiting and self.turn_heads < HEADS_PER_TURN:
            channel = self.waiting.popleft()
            if channel.held is not None:
                self.turn_heads += 1
                channel.resume_head()
        if self.waiting or self.turn_heads:
            self._next_turn()

    def release_slot(self, channel: GuardedChannel) -> None:
        self.idle.pop(channel, None)
        if channel.holds_slot:
            channel.holds_slot = False
            self.open_connections -= 1


# Connections the kernel queues for accept() (Twisted's default is 50). A burst beyond it (a
# hundred clients connecting at once) made the kernel drop SYNs, and every connection that met a
# full queue, ``/health`` among them, waited for the client's SYN retransmission: one second, then
# three. The kernel caps it at net.core.somaxconn (4,096 on current Linux).
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """A Twisted TCP endpoint description with LISTEN_BACKLOG unless it names one."""
    if description.startswith("tcp:") and ":backlog=" not in description:
        return f"{description}:backlog={LISTEN_BACKLOG}"
    return description


class GuardedServer(daphne.server.Server):
    """daphne's server whose ASGI ``send`` waits while a client has not read its output, listening
    with a backlog of LISTEN_BACKLOG."""

    def __init__(self, *args: Any, endpoints: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, endpoints=[with_backlog(e) for e in endpoints or ()], **kwargs)

    async def handle_reply(self, protocol: Any, message: dict[str, Any]) -> None:
        await super().handle_reply(protocol, message)
        if (
            message.get("type") == "http.response.body"
            and message.get("more_body")
            and isinstance(protocol, GuardedRequest)
        ):
            await protocol.wait_for_client()


class GuardedCommandLine(CommandLineInterface):
    server_class = GuardedServer


def install() -> None:
    """Make daphne build its HTTP connections from the guarded classes."""
    # Server.run builds its factory by this module-level name.
    daphne.server.HTTPFactory = GuardedHTTPFactory


def raise_descriptor_limit() -> None:
    """Raise the soft open-file limit (never past the hard one) to the connections allowed plus
    RESERVED_DESCRIPTORS; a limit below that would fail accepts before SERVER_MAX_CONNECTIONS."""
    need = settings.SERVER_MAX_CONNECTIONS + RESERVED_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        logger.info("open-file limit raised from %d to %d", soft, target)
    if target < need:
        logger.warning(
            "open-file limit %d is below SERVER_MAX_CONNECTIONS + %d = %d: raise it (LimitNOFILE)",
            target,
            RESERVED_DESCRIPTORS,
            need,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Set Django up, install the guards, run daphne's command line."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatbot_site.settings")
    django.setup(set_prefix=False)  # as chatbot_site.asgi does
    install()
    # What start-up made (Django, the application, their modules) lives as long as the process: it
    # is kept out of the collector's sight, and the collector runs less often (GC_THRESHOLDS).
    reactor.callWhenRunning(gc.freeze)
    gc.set_threshold(*GC_THRESHOLDS)
    raise_descriptor_limit()
    GuardedCommandLine().run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
