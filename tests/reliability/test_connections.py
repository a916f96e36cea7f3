"""Connections a client misuses, against the real server under daphne (``chatbot_site.serve``):
bodies over the limit, slow request heads, too many connections, readers that stop reading, and
requests daphne or Twisted cannot parse. Each test reports its figure in its assertion message."""

from __future__ import annotations

import json
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from tests.helpers import MODEL, messages, wait_for


def connect(server: Any, *, rcvbuf: int = 0, timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # a small receive buffer: the client's kernel takes little of what it does not read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", server.port))
    return sock


def read_response(sock: socket.socket, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 response with a Content-Length (what every error answer here has)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        assert more, f"connection closed before a response head: {data!r}"
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return int(status_line.split(" ")[1]), headers, body


def exchange(server: Any, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], Any]:
    with connect(server) as sock:
        sock.sendall(data)
        status, headers, body = read_response(sock, timeout)
    return status, headers, json.loads(body)


def chat_request(text: str, *, stream: bool) -> bytes:
    body = json.dumps(
        {"model": MODEL, "messages": messages(text), "options": {"seed": 1}, "stream": stream}
    ).encode()
    return (
        f"POST /api/chat-optimized HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) / 1024


TCP_ESTABLISHED = 1


def established(sock: socket.socket) -> bool:
    """Whether the server has not closed (or reset) this connection, read without reading from it:
    the first byte of Linux's ``tcp_info`` is the connection's state."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED


# --- bodies ----------------------------------------------------------------------------------------


def test_content_length_over_the_limit_is_413_json_before_the_body_is_sent(server):
    limit = settings.LIMITS_MAX_BODY_BYTES
    head = (
        f"POST /api/chat-optimized HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {limit + 1}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    started = time.monotonic()
    # No byte of the body is sent: the answer has to come from the headers alone (and before the
    # "100 Continue" a client would otherwise wait for).
    status, headers, body = exchange(server, head)
    took = time.monotonic() - started
    assert (status, headers["content-type"], body["code"]) == (413, "application/json", "body_too_large"), (
        status,
        headers,
        body,
    )
    assert body["error"] == f"The request body exceeds {limit} bytes.", body
    assert took < 2.0, f"the 413 took {took:.2f} s"
    with server.client() as client:
        assert client.get("/health").status_code == 200


def test_chunked_body_over_the_limit_is_refused_while_it_is_still_being_sent(server):
    total = 64 * 1024 * 1024  # what the client would send: far beyond the limit and the buffers
    chunk = b"x" * 65536
    piece = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent = 0
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/chat-optimized HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        try:
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                sock.sendall(piece)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, raw = read_response(sock)
    body = json.loads(raw)
    assert (status, headers["content-type"], body["code"]) == (413, "application/json", "body_too_large"), (
        status,
        body,
    )
    assert sent < total // 2, f"the client got to send {sent / 1e6:.1f} MB of a chunked body before the 413"


# --- request heads ---------------------------------------------------------------------------------


def test_slowloris_is_closed_at_the_header_deadline_while_health_answers_fast(start_server):
    timeout = 1.0
    server = start_server(SERVER_HEADER_TIMEOUT_SECONDS=timeout)
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    results: list[tuple[float, bytes]] = []
    lock = threading.Lock()

    def slowloris() -> None:
        sock = connect(server)
        opened, answer = time.monotonic(), b""
        sock.settimeout(0.5)
        try:
            for i in range(len(head)):  # a byte every 0.5 s: 60 s of head if nobody stops it
                sock.sendall(head[i : i + 1])
                try:
                    answer = sock.recv(65536)
                    break  # the server answered (or closed: b"")
                except TimeoutError:
                    continue
        except (BrokenPipeError, ConnectionResetError):
            pass
        with lock:
            results.append((time.monotonic() - opened, answer))
        sock.close()

    threads = [threading.Thread(target=slowloris) for _ in range(30)]
    for t in threads:
        t.start()
    latencies = []
    with server.client(timeout=5) as client:
        while any(t.is_alive() for t in threads) and len(latencies) < 100:
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.1)
    for t in threads:
        t.join(10)
    held = sorted(took for took, _ in results)
    assert len(held) == 30 and held[-1] < timeout + 1.0, f"slowloris connections held for {held} s"
    assert held[0] > timeout - 0.1, f"closed before the deadline: {held}"
    answers = {answer.split(b"\r\n", 1)[0] for _, answer in results}
    assert answers == {b"HTTP/1.1 408 Request Time-out"}, answers
    body = json.loads(results[0][1].split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "request_timeout", body
    assert max(latencies) < 0.5, f"/health took up to {max(latencies) * 1000:.0f} ms"


@pytest.mark.parametrize(
    "raw, what",
    [
        (b"GARBAGE\r\n\r\n", "a bad request line"),
        (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "a non-ASCII path"),
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Name: x\r\n\r\n", "a bad header name"),
        # Twisted lets this value through; daphne's own check refuses it.
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x0bb\r\n\r\n", "a bad header value"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", "a request line over 16 KB"),
    ],
)
def test_requests_daphne_cannot_parse_get_a_json_400(server, raw, what):
    status, headers, body = exchange(server, raw)
    assert (status, headers["content-type"], body["code"]) == (400, "application/json", "bad_request"), (
        what,
        status,
        body,
    )
    assert isinstance(body["error"], str) and body["error"], body


# --- connections -----------------------------------------------------------------------------------


def test_connections_beyond_the_limit_get_503_json_and_idle_ones_make_room(start_server, ollama):
    limit = 20
    server = start_server(SERVER_MAX_CONNECTIONS=limit, QUEUE_MAX_CONCURRENT=limit)
    ollama.configure(token_delay=0.1, token_count=200)  # 20 s streams: busy for the whole test
    streams = []
    try:
        for i in range(limit):
            sock = connect(server)
            sock.sendall(chat_request(f"busy stream {i}", stream=True))
            streams.append(sock)
        for sock in streams:  # every stream has its response under way
            assert sock.recv(12) == b"HTTP/1.1 200", "a stream was refused"
        status, headers, body = exchange(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (status, body["code"], headers.get("retry-after")) == (503, "too_many_connections", "1"), (
            status,
            headers,
            body,
        )
    finally:
        for sock in streams:
            sock.close()
    # Closed streams give their slots back; then idle keep-alive connections (waiting for a request
    # head, as slow-header clients do) cannot lock anyone out: the longest idle one makes room.
    with server.client(timeout=5) as client:
        wait_for(lambda: _health_ok(client), timeout=10, what="a slot after the streams closed")
    idle = [connect(server) for _ in range(limit)]
    try:
        with server.client(timeout=5) as client:
            codes = [client.get("/health").status_code for _ in range(3)]
        assert codes == [200, 200, 200], codes
    finally:
        for sock in idle:
            sock.close()


def _health_ok(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.TransportError:
        return False


# --- readers that stop reading ---------------------------------------------------------------------


def test_a_reader_that_stops_reading_is_dropped_and_its_output_stays_bounded(start_server, ollama):
    timeout = 1.0
    server = start_server(SERVER_HEADER_TIMEOUT_SECONDS=timeout, SERVER_MAX_UNSENT_BYTES=65536)
    assert server.proc is not None
    ollama.configure(token_count=20_000)
    request = chat_request("a large answer", stream=True)
    with connect(server) as sock:  # the answer, read whole once: from now on a cached answer
        sock.sendall(request)
        size, tail = 0, b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the chunked response
            data = sock.recv(1 << 20)
            assert data, "the connection closed before the end of the answer"
            size, tail = size + len(data), (tail + data)[-16:]
    assert size > 1_000_000, f"the answer is only {size} bytes"
    time.sleep(0.5)
    before = rss_mb(server.proc.pid)
    # Two clients each ask for the answer 80 times on one connection (pipelined, 26 KB of requests)
    # and read nothing. The kernel takes a few MB of a connection's output; the rest waits in the
    # server: plain daphne answered every request into its buffer, 80 copies per connection, and
    # kept them as long as the client stayed. Here the output waits for the client, which is
    # dropped; what is left is the application's own memory for the few answers under way.
    pipelined = 80
    socks = [connect(server, rcvbuf=16384) for _ in range(2)]
    try:
        for sock in socks:
            sock.sendall(request * pipelined)
        wait_for(
            lambda: not any(established(sock) for sock in socks),
            timeout=timeout + 15,
            what="the server to drop the clients that read nothing",
        )
        time.sleep(0.5)
        after = rss_mb(server.proc.pid)
    finally:
        for sock in socks:
            sock.close()
    growth = after - before
    assert growth < 20, (
        f"RSS {before:.1f} -> {after:.1f} MB for 2 x {pipelined} unread answers of {size / 1e6:.1f} MB"
    )
    with server.client(timeout=5) as client:
        assert client.get("/health").status_code == 200


def test_the_server_listens_with_a_backlog_for_bursts(server):
    """Twisted listens with a backlog of 50: a burst of connections beyond it had SYNs dropped, and
    each connection behind them (``/health`` too) waited a second for the client's retransmission."""
    from chatbot_site.serve import LISTEN_BACKLOG

    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to read the listening socket's backlog")
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    cap = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert int(listing[2]) == min(LISTEN_BACKLOG, cap), listing  # Send-Q of a listener: its backlog


def read_chunked_json(sock: socket.socket) -> tuple[int, str]:
    """A chunked JSON error answer (the API's, through daphne): its status and code."""
    sock.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        more = sock.recv(65536)
        assert more, f"connection closed mid-answer: {data!r}"
        data += more
    head, body = data.split(b"\r\n\r\n", 1)
    payload, rest = b"", body
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            break
        payload, rest = payload + rest[:size], rest[size + 2 :]
    return int(head.split(b" ")[1]), json.loads(payload)["code"]


def test_a_burst_of_request_heads_takes_turns_and_every_one_is_answered(server):
    """More new request heads at once than one loop turn parses (HEADS_PER_TURN): those beyond it
    wait their turn, unread, and are then answered in full; a kept-alive connection's next request
    takes its turn too, and a /health among them is parsed at once."""
    from chatbot_site.serve import HEADS_PER_TURN

    count = HEADS_PER_TURN * 25
    socks = [connect(server) for _ in range(count)]
    try:
        request = b"GET /api/no-such-endpoint HTTP/1.1\r\nHost: localhost\r\n\r\n"
        for sock in socks:
            sock.sendall(request)
        with server.client() as client:
            health = client.get("/health")
            assert (health.status_code, health.json()) == (200, {"status": "healthy"})
        answers = [read_chunked_json(sock) for sock in socks]
        assert answers == [(404, "not_found")] * count
        for sock in socks[: HEADS_PER_TURN * 2]:  # the same connections again
            sock.sendall(request)
        assert [read_chunked_json(sock) for sock in socks[: HEADS_PER_TURN * 2]] == [(404, "not_found")] * (
            HEADS_PER_TURN * 2
        )
    finally:
        for sock in socks:
            sock.close()
