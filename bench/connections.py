"""``.venv/bin/python -m bench.connections``: one server process's memory and ``/health`` latency while
clients misuse their connections; plain ``daphne`` ("before") beside ``chatbot_site.serve`` ("after").

Starts the Ollama emulator and the service as ``bench/run.py`` does (embedded default, loopback
only), each server with an open-file limit of 1,024 (a common default; the launcher raises its own
soft limit as far as the hard one lets it). Every case gets a fresh server: its RSS is read when idle,
sampled every 50 ms during the case (peak), and read again 2 s after the clients left ("after");
``/health`` is called on a new connection every 100 ms throughout (max latency, failures). Cases:

- ``bodies``: 4 clients at once each send a 100 MB body (``Content-Length``) to ``/api/chat-optimized``
  as fast as the server takes it.
- ``slow_readers``: 20 clients stream one large cached answer (``--large-tokens`` tokens, SSE) and each
  reads 16 KB every 0.1 s for ``--slow-hold`` seconds (longer: the twenty replays alone take a while).
- ``unread_sse``: 1,000 clients ask for a cached answer as SSE (``--sse-tokens`` tokens) and never
  read, for ``--hold`` seconds.
- ``slowloris``: 1,000 clients send a request head a byte every 0.5 s, for ``--hold`` seconds.
- ``pipelined``: 2 clients each send 40 requests for a cached answer (``--pipelined-tokens`` tokens,
  SSE) on one connection at once and read nothing, for ``--hold`` seconds.

Clients that read nothing leave a few MB per connection in the kernel's socket buffers on loopback
(``net.ipv4.tcp_wmem``): memory, but not the server's RSS; only output beyond that stays in the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import queue
import resource
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.run import ROOT, SERVER_PY, Emulator, Procs, daphne_command, free_port, rss_mb, wait_http

SERVER_NOFILE = 1024
HEALTH_TIMEOUT = 5.0
MODEL = "llama3.2:1b"


def launcher_command(port: int) -> list[str]:
    return daphne_command(port)


def plain_daphne_command(port: int) -> list[str]:
    """The same command line on daphne's own CLI."""
    cmd = daphne_command(port)
    cmd[cmd.index("chatbot_site.serve")] = "daphne"
    return cmd


def chat_body(tokens: int, stream: bool) -> bytes:
    """A deterministic request (a seed), so every repeat is a cache hit."""
    return json.dumps({
        "model": MODEL,
        "messages": [{"role": "user", "content": f"connections bench, {tokens} tokens"}],
        "options": {"seed": 7},
        "stream": stream,
    }).encode()  # fmt: skip


def post_head(path: str, body_length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_length}\r\n\r\n"
    ).encode()


def probe_health(port: int, timeout: float) -> tuple[float, bool]:
    """One ``GET /health`` on a new connection, raw: milliseconds from connect to the whole answer.

    No HTTP client library: creating an httpx client alone costs about 7 ms of CPU (its TLS
    context), which the figure measured before as the server's latency."""
    started = time.perf_counter()
    ok = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            ok = answer.startswith(b"HTTP/1.1 200") and b'"status": "healthy"' in answer
    except OSError:
        pass
    return (time.perf_counter() - started) * 1000, ok


def health_prober(port: int, stop: Any, results: Any) -> None:
    """A process of its own calling /health every 100 ms: the load's client, in the parent, shares
    no interpreter (and no GIL) with it."""
    began = time.monotonic()
    while not stop.is_set():
        at = time.monotonic() - began
        results.put((at, *probe_health(port, HEALTH_TIMEOUT)))
        time.sleep(0.1)


class Watch:
    """Samples the server's RSS (peak) and times /health on a new connection every 100 ms."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.latencies: list[float] = []
        self.slow: list[tuple[float, float]] = []  # (seconds into the case, ms) of calls over 100 ms
        self.failures = 0
        self._stop = threading.Event()
        self._rss_thread = threading.Thread(target=self._rss, daemon=True)
        context = multiprocessing.get_context("spawn")
        self._probe_stop, self._results = context.Event(), context.Queue()
        self._prober = context.Process(target=health_prober, args=(port, self._probe_stop, self._results))

    def __enter__(self) -> Watch:
        self._rss_thread.start()
        self._prober.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._probe_stop.set()
        self._rss_thread.join()
        self._prober.join(HEALTH_TIMEOUT + 5)
        while True:
            try:
                at, latency, ok = self._results.get(timeout=0.5)
            except queue.Empty:
                break
            self.latencies.append(latency)
            if latency > 100:
                self.slow.append((round(at, 1), round(latency, 1)))
            self.failures += not ok

    def _rss(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.05)


async def connect(port: int, rcvbuf: int = 0, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # a small receive buffer: the client's kernel takes little of what it does not read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def read_status(sock: socket.socket, timeout: float) -> str:
    """The status line of whatever answer arrives (empty if the connection closed first)."""
    loop = asyncio.get_running_loop()
    data = b""
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout):
            while b"\r\n" not in data:
                more = await loop.sock_recv(sock, 4096)
                if not more:
                    break
                data += more
    return data.split(b"\r\n", 1)[0].decode(errors="replace") if b"\r\n" in data else ""


# --- the cases -------------------------------------------------------------------------------------


async def bodies(port: int, args: argparse.Namespace) -> dict[str, Any]:
    size = 100 * 1_000_000
    loop = asyncio.get_running_loop()

    async def one() -> tuple[str, int]:
        sock = await connect(port)
        sent = 0
        reader = asyncio.ensure_future(read_status(sock, 120))
        chunk = b"x" * 1_000_000
        with contextlib.suppress(OSError):
            await loop.sock_sendall(sock, post_head("/api/chat-optimized", size))
            while sent < size and not reader.done():
                await loop.sock_sendall(sock, chunk)
                sent += len(chunk)
        status = await reader
        sock.close()
        return status, sent

    results = await asyncio.gather(*(one() for _ in range(4)))
    return {
        "answers": sorted({status for status, _ in results}),
        "mb_sent_per_client": [round(sent / 1e6) for _, sent in results],
    }


async def slow_readers(port: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = chat_body(args.large_tokens, True)
    stop = time.monotonic() + args.slow_hold

    async def one() -> int:
        sock = await connect(port, rcvbuf=16384)
        got = 0
        with contextlib.suppress(OSError):
            await loop.sock_sendall(sock, post_head("/api/chat-optimized", len(body)) + body)
            while time.monotonic() < stop:
                data = await loop.sock_recv(sock, 16384)
                if not data:
                    break
                got += len(data)
                await asyncio.sleep(0.1)
        sock.close()
        return got

    got = await asyncio.gather(*(one() for _ in range(20)))
    return {"mb_read_per_client": round(statistics.mean(got) / 1e6, 2)}


async def unread_sse(port: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = chat_body(args.sse_tokens, True)
    request = post_head("/api/chat-optimized", len(body)) + body
    gate = asyncio.Semaphore(100)
    socks: list[socket.socket] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                sock = await connect(port, rcvbuf=4096)
                await loop.sock_sendall(sock, request)
                socks.append(sock)
            except (OSError, TimeoutError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(1000)))
    await asyncio.sleep(args.hold)
    for sock in socks:
        sock.close()
    return {"connected": len(socks), "connect_failed": failed}


async def slowloris(port: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(100)
    started = time.monotonic()
    closed_after: list[float] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                sock = await connect(port)
            except (OSError, TimeoutError):
                failed += 1
                return
        opened = time.monotonic()
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
        closed = asyncio.ensure_future(loop.sock_recv(sock, 4096))
        try:
            for i in range(len(head) + 10_000):
                if closed.done() or time.monotonic() - started > args.hold:
                    break
                byte = head[i : i + 1] if i < len(head) else b"a"
                await loop.sock_sendall(sock, byte)
                await asyncio.wait([closed], timeout=0.5)
        except OSError:
            pass
        if closed.done() or time.monotonic() - started <= args.hold:
            closed_after.append(time.monotonic() - opened)
        closed.cancel()
        sock.close()

    await asyncio.gather(*(one() for _ in range(1000)))
    return {
        "closed_by_server": len(closed_after),
        "closed_after_s_median": round(statistics.median(closed_after), 1) if closed_after else None,
        "connect_failed": failed,
    }


async def pipelined(port: int, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = chat_body(args.pipelined_tokens, True)
    request = post_head("/api/chat-optimized", len(body)) + body
    socks = [await connect(port, rcvbuf=16384) for _ in range(2)]
    for sock in socks:
        await loop.sock_sendall(sock, request * 40)
    await asyncio.sleep(args.hold)
    # The first byte of Linux's tcp_info is the connection's state (1: established).
    open_ = sum(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == 1 for sock in socks)
    for sock in socks:
        sock.close()
    return {"still_open": open_}


CASES: dict[str, Callable[[int, argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "bodies": bodies,
    "slow_readers": slow_readers,
    "unread_sse": unread_sse,
    "slowloris": slowloris,
    "pipelined": pipelined,
}


# --- the run ---------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="chatbot-connections-"))
        self.procs = Procs(self.workdir)
        base_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        base_env.update({"LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
        self.base_env = base_env
        self.env: dict[str, str] = {}

    def start_server(self, command: list[str], name: str) -> subprocess.Popen[bytes]:
        def limit() -> None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(SERVER_NOFILE, hard), hard))

        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit
        )
        self.procs.procs.append(proc)
        return proc

    def stop_server(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def prepare(self) -> None:
        emulator = Emulator(self.procs, self.base_env)
        self.env = {
            **self.base_env,
            "OLLAMA_API_URL": emulator.url,
            "OLLAMA_MODEL": MODEL,
            "QUEUE_MAX_QUEUE_SIZE": "10000",
            "SQLITE_PATH": str(self.workdir / "bench.sqlite3"),
        }
        subprocess.run(
            [SERVER_PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=self.env, check=True
        )
        # The cached answers every server reads: made once (the cache is in the SQLite file).
        port = free_port()
        server = self.start_server(launcher_command(port), "prepare")
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            for tokens in (self.args.large_tokens, self.args.sse_tokens, self.args.pipelined_tokens):
                emulator.configure(first_token_delay=0, token_delay=0, token_count=tokens)
                with httpx.stream(
                    "POST", f"http://127.0.0.1:{port}/api/chat-optimized", content=chat_body(tokens, True),
                    headers={"Content-Type": "application/json"}, timeout=600,
                ) as response:  # fmt: skip
                    size = sum(len(b) for b in response.iter_bytes())
                print(f"cached answer of {tokens} tokens: {size / 1e6:.2f} MB as SSE")
        finally:
            self.stop_server(server)

    def run_case(self, name: str, command: Callable[[int], list[str]], label: str) -> dict[str, Any]:
        port = free_port()
        server = self.start_server(command(port), f"{label}-{name}")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/health")
            time.sleep(1.0)
            idle = rss_mb(server.pid)
            with Watch(server.pid, port) as watch:
                outcome = asyncio.run(CASES[name](port, self.args))
                time.sleep(2.0)
                after = rss_mb(server.pid)
            return {
                "rss_idle_mb": round(idle, 1),
                "rss_peak_mb": round(max(watch.peak, after), 1),
                "rss_after_mb": round(after, 1),
                "health_max_ms": round(max(watch.latencies), 1) if watch.latencies else None,
                "health_p50_ms": round(statistics.median(watch.latencies), 1) if watch.latencies else None,
                "health_failed": watch.failures,
                "health_over_100ms": watch.slow,
                "health_calls": len(watch.latencies),
                **outcome,
            }
        finally:
            self.stop_server(server)


def print_table(results: dict[str, dict[str, Any]], machine: str) -> None:
    print(f"\nchatbot-backend connection bench; {machine}; server open-file limit {SERVER_NOFILE}\n")
    print("| case | server | RSS idle / peak / after (MB) | /health p50 / max ms (failed/calls) | outcome |")
    print("|---|---|---|---|---|")
    for case, by_server in results.items():
        for label, r in by_server.items():
            rest = {k: v for k, v in r.items() if not k.startswith("rss_") and not k.startswith("health_")}
            print(
                f"| {case} | {label} | {r['rss_idle_mb']} / {r['rss_peak_mb']} / {r['rss_after_mb']} | "
                f"{r['health_p50_ms']} / {r['health_max_ms']} ({r['health_failed']}/{r['health_calls']}) | "
                f"{json.dumps(rest)} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument(
        "--servers", default="daphne,launcher", help="daphne (before), launcher (after), or both"
    )
    parser.add_argument("--hold", type=float, default=25.0, help="seconds the clients keep at it")
    parser.add_argument("--slow-hold", type=float, default=60.0, help="seconds the slow readers read")
    parser.add_argument("--large-tokens", type=int, default=100_000, help="the slow readers' answer")
    parser.add_argument("--sse-tokens", type=int, default=64, help="the unread streams' answer")
    parser.add_argument("--pipelined-tokens", type=int, default=20_000, help="the pipelined answer")
    parser.add_argument("--json", default=str(ROOT / "artifacts" / "bench-connections.json"))
    args = parser.parse_args()
    # The clients need a descriptor each, beyond any default limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    commands = {"daphne": plain_daphne_command, "launcher": launcher_command}
    bench = Bench(args)
    results: dict[str, dict[str, Any]] = {}
    try:
        bench.prepare()
        for case in args.cases.split(","):
            for label in args.servers.split(","):
                print(f"{case} on {label} ...", flush=True)
                results.setdefault(case, {})[label] = bench.run_case(case, commands[label], label)
    finally:
        bench.procs.stop()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print_table(results, machine)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"\nJSON: {args.json}  (logs: {bench.workdir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
