"""``make soak``: N concurrent streams for M minutes against the emulator; does the server leak?

Starts the Ollama emulator and the service on the embedded default (as ``make bench`` does), keeps
``--streams`` SSE chat streams running back to back (mostly unique prompts, so cache misses that go
through the scheduler and fill the response cache; one in five a repeat, a cache hit), and samples
the server process every ``--sample-seconds``: RSS, open file descriptors, threads, and asyncio
tasks (``chatbot_event_loop_tasks`` from ``/metrics``). Prints the samples, the least-squares RSS
slope after ``--warmup-minutes`` (target: under 1 MB per minute) and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.run import ROOT, SERVER_PY, Emulator, Procs, daphne_command, free_port, rss_mb, wait_http

SLOPE_TARGET_MB_PER_MIN = 1.0


def process_figures(pid: int) -> tuple[float, int, int]:
    """RSS (MB), open file descriptors, threads of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    return rss_mb(pid), fds, threads


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else float("nan")


class Load:
    """Back-to-back streams; counts what completed and what failed."""

    def __init__(self, base: str, streams: int) -> None:
        self.base, self.streams = base, streams
        self.completed = self.failed = self.tokens = 0
        self.stop = asyncio.Event()

    async def one_client(self, client: httpx.AsyncClient, index: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            text = f"soak repeat {n % 10}" if random.random() < 0.2 else f"soak {index} {n} {time.time_ns()}"
            body = {"messages": [{"role": "user", "content": text}], "stream": True}
            try:
                async with client.stream("POST", f"{self.base}/api/chat-optimized", json=body) as response:
                    done = False
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            self.tokens += 1
                            done = done or '"done":true' in line
                    if response.status_code == 200 and done:
                        self.completed += 1
                    else:
                        self.failed += 1
            except httpx.HTTPError:
                self.failed += 1
                await asyncio.sleep(0.2)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.streams * 2)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(self.one_client(client, i) for i in range(self.streams)))


async def event_loop_tasks(client: httpx.AsyncClient, base: str) -> int:
    text = (await client.get(f"{base}/metrics")).text
    match = re.search(r"^chatbot_event_loop_tasks\S* (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else -1


async def soak(args: argparse.Namespace, base: str, pid: int) -> dict[str, Any]:
    load = Load(base, args.streams)
    runner = asyncio.create_task(load.run())
    started = time.monotonic()
    samples: list[dict[str, Any]] = []
    print(f"{'min':>6} {'rss MB':>8} {'fds':>5} {'threads':>7} {'tasks':>6} {'done':>8} {'failed':>6}")
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() - started < args.minutes * 60:
            await asyncio.sleep(args.sample_seconds)
            rss, fds, threads = process_figures(pid)
            tasks = await event_loop_tasks(client, base)
            sample = {
                "minute": round((time.monotonic() - started) / 60, 3),
                "rss_mb": round(rss, 2),
                "fds": fds,
                "threads": threads,
                "tasks": tasks,
                "completed": load.completed,
                "failed": load.failed,
            }
            samples.append(sample)
            print(
                f"{sample['minute']:6.2f} {rss:8.1f} {fds:5d} {threads:7d} {tasks:6d} "
                f"{load.completed:8d} {load.failed:6d}",
                flush=True,
            )
    load.stop.set()
    await asyncio.wait_for(runner, 90)
    after = [s for s in samples if s["minute"] >= args.warmup_minutes]
    rss_slope = slope([(s["minute"], s["rss_mb"]) for s in after])
    return {
        "streams": args.streams,
        "minutes": args.minutes,
        "warmup_minutes": args.warmup_minutes,
        "completed": load.completed,
        "failed": load.failed,
        "requests_per_s": round(load.completed / (args.minutes * 60), 1),
        "rss_slope_mb_per_min": round(rss_slope, 3),
        "fds_slope_per_min": round(slope([(s["minute"], s["fds"]) for s in after]), 3),
        "tasks_slope_per_min": round(slope([(s["minute"], s["tasks"]) for s in after]), 3),
        "rss_mb_after_warmup": [after[0]["rss_mb"], after[-1]["rss_mb"]] if after else [],
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warmup-minutes", type=float, default=2)
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--json", default=str(ROOT / "artifacts" / "soak.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="chatbot-soak-"))
    procs = Procs(workdir)
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update({"LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    try:
        emulator = Emulator(procs, env)
        env.update(
            {
                "OLLAMA_API_URL": emulator.url,
                "OLLAMA_MODEL": "llama3.2:1b",
                "QUEUE_MAX_CONCURRENT": str(args.streams),
                "BATCH_MAX_BATCH_SIZE": str(args.streams),
                "QUEUE_MAX_QUEUE_SIZE": "10000",
                "SQLITE_PATH": str(workdir / "soak.sqlite3"),
            }
        )
        subprocess.run([SERVER_PY, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
        port = free_port()
        server = procs.start(
            daphne_command(port),
            env,
            "server",
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health")
        print(
            f"soak: {args.streams} streams for {args.minutes} min against the emulator "
            f"(50 ms first token, 10 ms/token, 64 tokens); server pid {server.pid}; logs in {workdir}"
        )
        result = asyncio.run(soak(args, base, server.pid))
        result["machine"] = (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        )
    finally:
        procs.stop()
    verdict = "met" if result["rss_slope_mb_per_min"] < SLOPE_TARGET_MB_PER_MIN else "NOT MET"
    print(
        f"\nRSS slope after {args.warmup_minutes} min warm-up: {result['rss_slope_mb_per_min']} MB/min "
        f"(target < {SLOPE_TARGET_MB_PER_MIN}: {verdict}); fds {result['fds_slope_per_min']}/min, "
        f"tasks {result['tasks_slope_per_min']}/min; {result['completed']} streams completed "
        f"({result['requests_per_s']}/s), {result['failed']} failed"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if verdict == "met" and result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
