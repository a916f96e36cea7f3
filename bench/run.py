"""``make bench``: the service against the Ollama emulator, side by side with the emulator called directly.

Starts the emulator (50 ms to the first token, 10 ms between tokens, 64 tokens) and the service
(embedded default, or ``--scaled``: two daphne processes and two workers on Redis + PostgreSQL), runs
every scenario, prints a table and writes JSON (``--json``). Only loopback addresses are used. The
service runs with the configuration a user gets (its default logging included).

Cost is measured, not only ratios: the CPU time the service's processes (servers and workers) spent
during a scenario, from ``/proc/<pid>/stat``, per request and per relayed token, one stream at a
time and 16 at once; and the time the gateway adds to the first token (its p50 and p99 minus the
emulator's, called directly the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
# The service runs on the runtime requirements only, as `make run` installs them (`make bench` builds
# .venv-runtime): the test tools in .venv add modules the server would import (httpx loads its CLI,
# and with it rich and pygments, when they are installed), which is not what production runs.
SERVER_PY = os.environ.get("BENCH_SERVER_PYTHON") or PY
TARGETS = {
    "cpu_ms_per_request_1": ("<=", 30),
    "cpu_ms_per_request_16": ("<=", 20),
    "added_ttft_p50_ms_1": ("<=", 5),
    "added_ttft_p99_ms_1": ("<=", 10),
    "ttft_p50_ratio": ("<=", 1.3),
    "tokens_per_second_ratio": (">=", 0.95),
    "cache_hit_rps_ratio": (">=", 0.10),
    "dedup_upstream_calls_stream": ("==", 1),
    "dedup_upstream_calls_plain": ("==", 1),
    "cancel_still_running_after_1s": ("==", 0),
    "rss_idle_mb": ("<=", 80),
    "rss_peak_mb": ("<=", 150),
    "start_to_healthy_s": ("<=", 1.5),
    "queue_completed_per_s": (">=", 300),  # 150 scaled out (SCALED_TARGETS)
    "servers_2_tokens_ratio": (">=", 1.8),
    "servers_3_tokens_ratio": (">=", 2.5),
}


SCALED_TARGETS = {"queue_completed_per_s": (">=", 150)}


def daphne_command(port: int) -> list[str]:
    """The service on a loopback port, as `make run` starts it (daphne's CLI through the launcher)."""
    return [
        SERVER_PY, "-m", "chatbot_site.serve", "-b", "127.0.0.1", "-p", str(port), "chatbot_site.asgi:application"
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU time the processes have used (all their threads), from /proc."""
    total = 0
    for proc in procs:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return total / CLOCK_TICKS


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_http(url: str, timeout: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{url} not up within {timeout}s")


class Emulator:
    def __init__(
        self,
        procs: Procs,
        env: dict[str, str],
        *,
        token_delay: float = 0.01,
        parallel: int = 0,
        name: str = "",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        procs.start(
            [PY, "-m", "tests.fake_ollama", "--port", str(self.port), "--first-token-delay", "0.05",
             "--token-delay", str(token_delay), "--token-count", "64", "--parallel", str(parallel)],
            env, f"emulator{name}",
        )  # fmt: skip
        wait_http(f"{self.url}/api/version")

    def configure(self, **settings: Any) -> None:
        httpx.post(f"{self.url}/_emulator/config", json=settings).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_emulator/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_emulator/stats").json()


# --- scenarios -------------------------------------------------------------------------------------


async def stream_one(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], sse: bool
) -> tuple[float, int, float]:
    """Time to first token, tokens received, total time, for one streaming request."""
    started = time.perf_counter()
    first, tokens = 0.0, 0
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if not line or line.startswith(":") or line.startswith("event:"):
                continue
            data = json.loads(line[6:] if sse else line)
            content = data.get("content") if sse else (data.get("message") or {}).get("content")
            if content:
                tokens += 1
                if not first:
                    first = time.perf_counter() - started
    return first, tokens, time.perf_counter() - started


async def streaming_misses(url: str, sse: bool, clients: int, prompts: int, tag: str) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(clients * prompts):
            queue.put_nowait(i)
        results: list[tuple[float, int, float]] = []

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                text = f"{tag} unique prompt {i} {time.time_ns()}"
                body: dict[str, Any] = {
                    "model": "llama3.2:1b",
                    "messages": [{"role": "user", "content": text}],
                }
                body["stream"] = True
                results.append(await stream_one(client, url, body, sse))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    ttft = [r[0] * 1000 for r in results]
    tokens = sum(r[1] for r in results)
    return {
        "requests": len(results),
        "ttft_p50_ms": round(percentile(ttft, 50), 1),
        "ttft_p99_ms": round(percentile(ttft, 99), 1),
        "total_s": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "tokens": tokens,
    }


def costed(service: list[subprocess.Popen[bytes]], run: Any) -> dict[str, Any]:
    """A streaming scenario's figures with the service's CPU per request and per relayed token."""
    before = cpu_seconds(service)
    found = asyncio.run(run)
    spent = (cpu_seconds(service) - before) * 1000
    found["cpu_ms_per_request"] = round(spent / max(found["requests"], 1), 1)
    found["cpu_ms_per_token"] = round(spent / max(found["tokens"], 1), 3)
    return found


def wrk(url: str, body: dict[str, Any], seconds: int = 10, connections: int = 50) -> dict[str, Any]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("JSON {\\"p50\\": %d, \\"p99\\": %d, \\"non2xx\\": %d}\\n",'
        " latency:percentile(50), latency:percentile(99), summary.errors.status))\nend\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    script.unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    extra = json.loads(out.split("JSON ", 1)[1].splitlines()[0])
    return {
        "rps": round(rps, 1),
        "p50_ms": extra["p50"] / 1000,
        "p99_ms": extra["p99"] / 1000,
        "non_2xx": extra["non2xx"],
    }


async def dedup(base: str, emulator: Emulator, stream: bool) -> int:
    emulator.reset()
    text = f"dedup {stream} {time.time_ns()}"
    body = {"messages": [{"role": "user", "content": text}], "stream": stream, "model": "llama3.2:1b"}
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> None:
            if stream:
                await stream_one(client, f"{base}/api/chat-optimized", body, True)
            else:
                (await client.post(f"{base}/api/chat-optimized", json=body)).raise_for_status()

        await asyncio.gather(*(one() for _ in range(20)))
    return emulator.stats()["generations"]


async def cancellation(base: str, emulator: Emulator) -> int:
    emulator.reset()
    async with httpx.AsyncClient(timeout=60) as client:

        async def leave(i: int) -> None:
            body = {"messages": [{"role": "user", "content": f"leave {i} {time.time_ns()}"}], "stream": True,
                    "model": "llama3.2:1b"}  # fmt: skip
            async with client.stream("POST", f"{base}/api/chat-optimized", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith('data: {"content"'):
                        return

        await asyncio.gather(*(leave(i) for i in range(10)))
    await asyncio.sleep(1)
    return emulator.stats()["in_flight"]


async def queue_throughput(base: str, count: int = 500) -> float:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as client:
        sem = asyncio.Semaphore(32)

        async def submit(i: int) -> str:
            async with sem:
                body = {
                    "messages": [{"role": "user", "content": f"queued {i} {time.time_ns()}"}],
                    "model": "llama3.2:1b",
                }
                r = await client.post(f"{base}/api/chat-queue", json=body)
                r.raise_for_status()
                return r.json()["request_id"]

        started = time.perf_counter()
        await asyncio.gather(*(submit(i) for i in range(count)))
        while True:
            overview = (await client.get(f"{base}/api/chat-queue")).json()
            done = overview["by_status"]["completed"] + overview["by_status"]["failed"]
            if overview["queue_length"] == 0 and overview["processing"] == 0 and done >= count:
                break
            await asyncio.sleep(0.05)
        return count / (time.perf_counter() - started)


# --- the run ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--scaled", action="store_true", help="two daphne + two workers on Redis + PostgreSQL"
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=4, help="unique prompts per client")
    parser.add_argument("--json", default=str(ROOT / "artifacts" / "bench.json"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: `make bench` installs it (apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="chatbot-bench-"))
    procs = Procs(workdir)
    base_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    base_env.update({"PYTHONUNBUFFERED": "1"})
    base_env.pop("LOG_LEVEL", None)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "clients": args.clients,
    }
    try:
        emulator = Emulator(procs, base_env)
        env = {
            **base_env,
            "OLLAMA_API_URL": emulator.url,
            "OLLAMA_MODEL": "llama3.2:1b",
            # The latency scenarios measure the path, not the queue: every client's request is
            # started at once (slots and the batch a claim takes both cover all clients).
            "QUEUE_MAX_CONCURRENT": str(max(args.clients, 20)),
            "BATCH_MAX_BATCH_SIZE": str(max(args.clients, 20)),
            "QUEUE_MAX_QUEUE_SIZE": "10000",
            "BATCH_TIMEOUT_MS": "0",
            "SQLITE_PATH": str(workdir / "bench.sqlite3"),
        }
        if args.scaled:
            env.update({
                "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
                "DATABASE_URL": os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
                "REDIS_KEY_PREFIX": f"chatbot-bench-{os.getpid()}",
                "QUEUE_EMBEDDED_WORKER": "false",
            })  # fmt: skip
        subprocess.run([SERVER_PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [SERVER_PY, "manage.py", "clear_cache"], cwd=ROOT, env=env, check=True, capture_output=True
        )
        ports = [free_port() for _ in range(2 if args.scaled else 1)]
        started = time.monotonic()
        servers = [
            procs.start(
                daphne_command(port),
                env,
                f"server{port}",
            )
            for port in ports
        ]
        wait_http(f"http://127.0.0.1:{ports[0]}/health")
        results["start_to_healthy_s"] = round(time.monotonic() - started, 3)
        for port in ports[1:]:
            wait_http(f"http://127.0.0.1:{port}/health")
        service = list(servers)
        if args.scaled:
            for i in range(2):
                service.append(
                    procs.start([SERVER_PY, "manage.py", "runworker", "chat-worker"], env, f"worker{i}")
                )
        base = f"http://127.0.0.1:{ports[0]}"
        time.sleep(1.0)
        results["rss_idle_mb"] = round(sum(rss_mb(s.pid) for s in servers), 1)

        peak = [0.0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], sum(rss_mb(s.pid) for s in servers))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # One stream at a time: what a request costs, and adds to its first token, on its own.
        alone = 20
        asyncio.run(streaming_misses(f"{emulator.url}/api/chat", False, 1, 2, "warm-up direct"))
        asyncio.run(streaming_misses(f"{base}/api/chat-optimized", True, 1, 2, "warm-up gateway"))
        results["single_direct"] = asyncio.run(
            streaming_misses(f"{emulator.url}/api/chat", False, 1, alone, "direct one")
        )
        results["single_gateway"] = costed(
            service, streaming_misses(f"{base}/api/chat-optimized", True, 1, alone, "gateway one")
        )
        direct = asyncio.run(
            streaming_misses(f"{emulator.url}/api/chat", False, args.clients, args.prompts, "direct")
        )
        emulator.reset()
        gateway = costed(
            service,
            streaming_misses(f"{base}/api/chat-optimized", True, args.clients, args.prompts, "gateway"),
        )
        sampling.set()
        sampler.join()
        results["rss_peak_mb"] = round(peak[0], 1)
        results["streaming_direct"], results["streaming_gateway"] = direct, gateway
        results["ttft_p50_ratio"] = round(gateway["ttft_p50_ms"] / direct["ttft_p50_ms"], 3)
        results["tokens_per_second_ratio"] = round(gateway["tokens_per_s"] / direct["tokens_per_s"], 3)
        single, single_direct = results["single_gateway"], results["single_direct"]
        results["cpu_ms_per_request_1"] = single["cpu_ms_per_request"]
        results["cpu_ms_per_request_16"] = gateway["cpu_ms_per_request"]
        results["cpu_ms_per_token_1"] = single["cpu_ms_per_token"]
        results["cpu_ms_per_token_16"] = gateway["cpu_ms_per_token"]
        for p in ("p50", "p99"):
            results[f"added_ttft_{p}_ms_1"] = round(single[f"ttft_{p}_ms"] - single_direct[f"ttft_{p}_ms"], 1)
            results[f"added_ttft_{p}_ms_16"] = round(gateway[f"ttft_{p}_ms"] - direct[f"ttft_{p}_ms"], 1)

        # Deterministic (temperature 0): a sampling request repeated by the same owner soon after is
        # a Regenerate ([cache] regenerate_within_seconds) and generated afresh, not a hit.
        hit_body = {
            "messages": [{"role": "user", "content": "cached question"}],
            "model": "llama3.2:1b",
            "options": {"temperature": 0},
        }
        httpx.post(f"{base}/api/chat-optimized", json=hit_body, timeout=60).raise_for_status()
        results["cache_hits_gateway"] = wrk(f"{base}/api/chat-optimized", hit_body)
        emulator.configure(first_token_delay=0, token_delay=0)
        results["emulator_full_path"] = wrk(f"{emulator.url}/api/chat", {**hit_body, "stream": False})
        results["cache_hit_rps_ratio"] = round(
            results["cache_hits_gateway"]["rps"] / results["emulator_full_path"]["rps"], 3
        )
        emulator.configure(first_token_delay=0.05, token_delay=0.01)

        results["dedup_upstream_calls_stream"] = asyncio.run(dedup(base, emulator, True))
        results["dedup_upstream_calls_plain"] = asyncio.run(dedup(base, emulator, False))
        results["cancel_still_running_after_1s"] = asyncio.run(cancellation(base, emulator))

        # Queue throughput: zero-delay emulator, max_concurrent 4: restart the service with it.
        for server in servers:
            server.send_signal(signal.SIGTERM)
            server.wait(15)
        emulator.configure(first_token_delay=0, token_delay=0, token_count=8)
        queue_env = {**env, "QUEUE_MAX_CONCURRENT": "4", "BATCH_MAX_BATCH_SIZE": "3"}
        for port in ports:
            procs.start(
                daphne_command(port),
                queue_env,
                f"queue{port}",
            )
            wait_http(f"http://127.0.0.1:{port}/health")
        results["queue_completed_per_s"] = round(asyncio.run(queue_throughput(base)), 1)
        results["servers"] = servers_scaling(procs, env, ports, scaled=args.scaled)
        one = results["servers"]["1"]["tokens_per_s"]
        for n in (2, 3):
            results[f"servers_{n}_tokens_ratio"] = round(results["servers"][str(n)]["tokens_per_s"] / one, 3)
    finally:
        procs.stop()

    verdicts = {}
    for key, (op, target) in {**TARGETS, **(SCALED_TARGETS if args.scaled else {})}.items():
        value = results[key]
        ok = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
        verdicts[key] = {"value": value, "target": f"{op} {target}", "met": ok}
    results["targets"] = verdicts
    print_table(results, args.scaled)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nJSON: {args.json}  (logs: {workdir})")
    return 0


SCALING_CLIENTS = 12  # enough to fill three servers of 4 slots; with fewer servers the rest queue


def servers_scaling(procs: Procs, env: dict[str, str], ports: list[int], *, scaled: bool) -> dict[str, Any]:
    """Tokens/s through the gateway with 1, 2 and 3 emulators behind it, each running at most 4
    generations at once (OLLAMA_NUM_PARALLEL=4) at 40 tokens/s per generation, as a GPU would;
    the gateway's max_concurrent is 4 per server. 12 streaming clients, 4 unique prompts each."""
    emulators = [Emulator(procs, env, token_delay=0.025, parallel=4, name=f"-gpu{i}") for i in range(3)]
    found: dict[str, Any] = {}
    for n in (1, 2, 3):
        for proc in procs.procs:
            if proc.args[:1] == [SERVER_PY] and proc.poll() is None and "tests.fake_ollama" not in proc.args:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        fleet_env = {
            **env,
            "OLLAMA_SERVERS": ",".join(f"gpu{i}={e.url}" for i, e in enumerate(emulators[:n])),
            "QUEUE_MAX_CONCURRENT": "4",
            "BATCH_MAX_BATCH_SIZE": "4",
        }
        for port in ports:
            procs.start(daphne_command(port), fleet_env, f"fleet{n}-{port}")
            wait_http(f"http://127.0.0.1:{port}/health")
        if scaled:
            for i in range(2):
                procs.start(
                    [SERVER_PY, "manage.py", "runworker", "chat-worker"], fleet_env, f"fleet{n}-worker{i}"
                )
        for emulator in emulators:
            emulator.reset()
        base = f"http://127.0.0.1:{ports[0]}"
        found[str(n)] = asyncio.run(
            streaming_misses(f"{base}/api/chat-optimized", True, SCALING_CLIENTS, 4, f"fleet{n}")
        )
        found[str(n)]["max_in_flight_per_server"] = [e.stats()["max_in_flight"] for e in emulators[:n]]
    return found


def print_table(r: dict[str, Any], scaled: bool) -> None:
    out = [
        f"chatbot-backend bench ({'scaled out: 2 daphne + 2 workers, Redis + PostgreSQL' if scaled else 'embedded default'}); {r['machine']}",
        "",
        "| scenario | gateway | direct (emulator) |",
        "|---|---|---|",
        f"| one stream at a time, TTFT p50 / p99 (added) | {r['single_gateway']['ttft_p50_ms']} / {r['single_gateway']['ttft_p99_ms']} ms (+{r['added_ttft_p50_ms_1']} / +{r['added_ttft_p99_ms_1']}) | {r['single_direct']['ttft_p50_ms']} / {r['single_direct']['ttft_p99_ms']} ms |",
        f"| CPU per streamed request, 1 / {r['clients']} at once | {r['cpu_ms_per_request_1']} / {r['cpu_ms_per_request_16']} ms ({r['cpu_ms_per_token_1']} / {r['cpu_ms_per_token_16']} ms per token) | n/a |",
        f"| {r['streaming_gateway']['requests']} streams, {r['clients']} at once: added TTFT p50 / p99 | +{r['added_ttft_p50_ms_16']} / +{r['added_ttft_p99_ms_16']} ms | |",
        f"| streaming misses, TTFT p50 / p99 | {r['streaming_gateway']['ttft_p50_ms']} / {r['streaming_gateway']['ttft_p99_ms']} ms | {r['streaming_direct']['ttft_p50_ms']} / {r['streaming_direct']['ttft_p99_ms']} ms |",
        f"| streaming misses, tokens/s ({r['streaming_gateway']['requests']} requests) | {r['streaming_gateway']['tokens_per_s']} | {r['streaming_direct']['tokens_per_s']} |",
        f"| streaming misses, total time | {r['streaming_gateway']['total_s']} s | {r['streaming_direct']['total_s']} s |",
        *(
            f"| {n} Ollama server{'s' if n > 1 else ''} (4 parallel each), tokens/s | "
            f"{r['servers'][str(n)]['tokens_per_s']} (TTFT p50 {r['servers'][str(n)]['ttft_p50_ms']} ms) | n/a |"
            for n in (1, 2, 3)
        ),
        f"| non-streaming cache hits (wrk, 50 conns) | {r['cache_hits_gateway']['rps']} req/s, p50 {r['cache_hits_gateway']['p50_ms']} ms, p99 {r['cache_hits_gateway']['p99_ms']} ms | full path {r['emulator_full_path']['rps']} req/s, p50 {r['emulator_full_path']['p50_ms']} ms |",
        "",
        "| figure | value | target | met |",
        "|---|---|---|---|",
    ]
    for key, verdict in r["targets"].items():
        out.append(
            f"| {key} | {verdict['value']} | {verdict['target']} | {'yes' if verdict['met'] else 'NO'} |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    raise SystemExit(main())
