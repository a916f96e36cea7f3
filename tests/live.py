"""The real server for end-to-end tests: daphne serving ``chatbot_site.asgi`` in its own process.

The test binds a loopback socket on an ephemeral port and hands its file descriptor to daphne, so
there is no port race. The server uses the test database (and, on the scaled-out run, the same Redis
with the test key prefix) and the Ollama emulator given in its environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


class LiveServer:
    """One daphne process; ``url`` is its base URL, ``log`` its combined output so far."""

    def __init__(self, env: dict[str, str], log_path: Path, *, args: list[str] | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after = 0.0

    def start(self, timeout: float = 20.0) -> LiveServer:
        fd = self._sock.fileno()
        cmd = [
            sys.executable,
            "-m",
            "chatbot_site.serve",  # daphne's CLI with the connection limits installed
            "--fd",
            str(fd),
            *self.args,
            "chatbot_site.asgi:application",
        ]
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, pass_fds=[fd], stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_healthy(timeout)
        self.ready_after = time.monotonic() - self.started_at
        return self

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"server not healthy within {timeout}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def kill(self) -> None:
        """kill -9: no clean-up at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, as an init system would; kill -9 if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._sock.close()


def server_env(base: dict[str, str], overrides: dict[str, Any]) -> dict[str, str]:
    """The environment for a server process: the test settings plus per-test overrides."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    env.update(base)
    env.update({k: str(v) for k, v in overrides.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    """``manage.py runworker chat-worker`` in its own process (the scaled-out worker)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "runworker", "chat-worker"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while "started" not in self.log:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log}")
            time.sleep(0.05)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    kill = LiveServer.kill

    def stop(self, timeout: float = 15.0) -> int | None:
        return LiveServer.stop(self, timeout)  # type: ignore[arg-type]
