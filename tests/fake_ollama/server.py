"""The emulator itself: state, lifecycle, HTTP dispatch and the /_emulator control endpoints."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .anthropic_layer import AnthropicLayer, anthropic_error
from .catalogue import ModelInfo, build_models
from .engine import Generation, GenerationRecord
from .native import NativeEndpoints
from .openai_layer import OpenAILayer, openai_error
from .responses import ResponsesLayer
from .rules import HttpError
from .sched import Scheduling
from .wire import read_request, send, send_json


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any
    at: float


@dataclass
class Settings:
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    token_count: int = 8  # content tokens per reply (a tool call costs as much)
    think_token_count: int = 6  # thinking tokens at think=true/"medium" (low x0.5, high x2, max x3)
    tool_call_count: int = 1  # tool calls a tools-capable model makes when it calls tools
    parallel: int = 0  # per loaded model (OLLAMA_NUM_PARALLEL); 0 = unlimited
    max_queue: int = 512  # generations waiting beyond this get 503 busy (as OLLAMA_MAX_QUEUE)
    max_loaded_models: int = 0  # OLLAMA_MAX_LOADED_MODELS; 0 = unlimited
    load_delay: float = 0.0  # seconds a model load (or reload) takes
    embed_delay: float = 0.0  # seconds each embedding input holds its runner slot
    default_num_ctx: int = 4096  # the automatic num_ctx (Ollama picks 4k/32k/256k by VRAM)
    default_keep_alive: float = 300.0  # OLLAMA_KEEP_ALIVE, seconds
    fault: str | None = None
    fault_after: int = 1  # chunks sent before a mid-stream fault
    fault_times: int = 0  # a busy/http500 fault clears itself after this many requests (0: never)


class FakeOllama(Generation, NativeEndpoints, OpenAILayer, ResponsesLayer, AnthropicLayer, Scheduling):
    """The emulator. Attributes under "state" are safe to read from the test thread."""

    def __init__(
        self, *, models: Iterable[str | ModelInfo | dict[str, Any]] | None = None, **settings: Any
    ) -> None:
        self._initial = dict(settings)
        self.settings = Settings(**settings)
        self.models: dict[str, ModelInfo] = build_models(models)
        self.host = "127.0.0.1"
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._pending: asyncio.Lock | None = None
        self._release_hang: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # Live gauges: a reset leaves them alone (what is open stays open).
        self.in_flight = 0  # generation requests being answered right now (any surface)
        self.connections_open = 0
        self.reset()

    # --- state the tests read ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget requests and counters, unload models, restore the settings it was built with."""
        self._reset_state()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_loop_state)
            asyncio.run_coroutine_threadsafe(self._apply_listen_state(), self._loop).result(5)

    def _reset_state(self) -> None:
        with self._lock:
            self.requests: list[RecordedRequest] = []
            self.calls: collections.Counter[str] = collections.Counter()
            self.completed_calls: collections.Counter[str] = collections.Counter()
            self.by_surface: collections.Counter[str] = collections.Counter()
            self.generation_log: list[GenerationRecord] = []
            self.generations = 0  # generation requests served (chat + generate + /v1, not loads)
            self.embeddings = 0  # embedding requests served (/api/embed, /api/embeddings, /v1/embeddings)
            self.max_in_flight = self.in_flight
            self.waiting = 0
            self.completed = 0
            self.aborted = 0  # generations whose client went away before the end
            self.faults_served = 0  # busy/http500 answers given
            self.tool_calls_made = 0
            self.thinking_generations = 0
            self._reset_runners()
        self.settings = Settings(**self._initial)

    def configure(self, **settings: Any) -> None:
        """Change timing, parallelism, scheduling or fault mode while running."""
        for key, value in settings.items():
            if not hasattr(self.settings, key):
                raise AttributeError(f"unknown emulator setting {key}")
            setattr(self.settings, key, value)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_loop_state)
            if "fault" in settings:
                asyncio.run_coroutine_threadsafe(self._apply_listen_state(), self._loop).result(5)

    def calls_for(self, body: dict[str, Any], path: str = "/api/chat") -> int:
        """How many times a generation with this body reached the emulator. A /v1 request counts
        both under its own body and path and under the native request Ollama translates it to."""
        from .rules import request_signature

        with self._lock:
            return self.calls[request_signature(path, body)]

    def completed_for(self, body: dict[str, Any], path: str = "/api/chat") -> int:
        """How many generations with this body the emulator finished (sent ``done`` for)."""
        from .rules import request_signature

        with self._lock:
            return self.completed_calls[request_signature(path, body)]

    def generation_requests(self) -> list[RecordedRequest]:
        """Native /api/chat and /api/generate requests that generate (not loads), as received."""
        with self._lock:
            return [
                r for r in self.requests if r.path in ("/api/chat", "/api/generate") and not _is_load(r.body)
            ]

    def generations_received(self) -> list[GenerationRecord]:
        """Every generation served (any surface), with the options and runner options it got."""
        with self._lock:
            return list(self.generation_log)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._expire_idle()
            return {
                "generations": self.generations,
                "embeddings": self.embeddings,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "waiting": self.waiting,
                "completed": self.completed,
                "aborted": self.aborted,
                "connections_open": self.connections_open,
                "faults_served": self.faults_served,
                # Requests besides the status reads a gateway polls (its health probes).
                "requests": sum(1 for r in self.requests if not _is_status_read(r)),
                "status_reads": sum(1 for r in self.requests if _is_status_read(r)),
                "loaded": sorted(self.runners),
                "model_loads": self.model_loads,
                "model_unloads": self.model_unloads,
                "reloads": self.reloads,
                "evictions": self.evictions,
                "in_flight_by_model": {k: v for k, v in self.in_flight_by_model.items() if v},
                "max_in_flight_by_model": dict(self.max_in_flight_by_model),
                "waiting_by_model": {k: v for k, v in self.waiting_by_model.items() if v},
                "max_received_by_model": dict(self.max_received_by_model),
                "by_surface": dict(self.by_surface),
                "tool_calls": self.tool_calls_made,
                "thinking_generations": self.thinking_generations,
                "runners": self.runner_stats(),
            }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FakeOllama:
        """Start on a thread of its own; returns once it is listening."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self._listen())
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ollama", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("emulator did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def serve_forever(self, host: str, port: int) -> None:
        """Run in the current loop (the standalone entry point)."""
        self.host, self.port = host, port
        self._loop = asyncio.get_running_loop()
        await self._listen()
        await asyncio.Event().wait()

    async def _listen(self) -> None:
        self._loop_thread = threading.get_ident()
        self._reset_loop_state()
        self._server = await asyncio.start_server(
            self._handle_connection, self.host, self.port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _apply_listen_state(self) -> None:
        """'refuse' is Ollama gone: open connections drop and new ones are refused."""
        if self.settings.fault == "refuse" and self._server is not None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif self.settings.fault != "refuse" and self._server is None:
            await self._listen()

    def _reset_loop_state(self) -> None:
        if self._pending is None or not self._pending.locked():
            self._pending = asyncio.Lock()
        with self._lock:
            for runner in self.runners.values():
                runner.gate = None  # a new parallel setting applies to the next generations
        if self._release_hang is not None:
            self._release_hang.set()
        self._release_hang = asyncio.Event()

    # --- HTTP/1.1 ------------------------------------------------------------------------------

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections_open += 1
        self._writers.add(writer)
        try:
            while True:
                request = await read_request(reader)
                if request is None:
                    return
                method, path, headers, raw = request
                keep_open = await self._dispatch(method, path, raw, reader, writer)
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:  # stop(): end quietly (asyncio logs a cancelled handler)
            return
        finally:
            with self._lock:
                self.connections_open -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    ROUTES: dict[tuple[str, str], str] = {
        ("POST", "/api/chat"): "_generation",
        ("POST", "/api/generate"): "_generation",
        ("GET", "/api/tags"): "_tags",
        ("HEAD", "/api/tags"): "_tags",
        ("GET", "/api/ps"): "_ps",
        ("POST", "/api/show"): "_show",
        ("GET", "/api/version"): "_version",
        ("HEAD", "/api/version"): "_version",
        ("POST", "/api/embed"): "_embed",
        ("POST", "/api/embeddings"): "_embeddings",
        ("GET", "/"): "_root",
        ("HEAD", "/"): "_root",
        ("POST", "/v1/chat/completions"): "_v1_chat",
        ("POST", "/v1/completions"): "_v1_completions",
        ("POST", "/v1/embeddings"): "_v1_embeddings",
        ("GET", "/v1/models"): "_v1_models",
        ("GET", "/v1/models/:model"): "_v1_model",
        ("POST", "/v1/responses"): "_v1_responses",
        ("POST", "/v1/messages"): "_v1_messages",
    }

    def _route(self, method: str, path: str) -> tuple[str | None, bool]:
        """(handler name, whether the path exists for another method)."""
        key = (
            "/v1/models/:model"
            if path.startswith("/v1/models/") and "/" not in path[11:] and path[11:]
            else path
        )
        handler = self.ROUTES.get((method, key))
        return handler, handler is None and any(p == key for _, p in self.ROUTES)

    async def _compat_error(self, path: str, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if path == "/v1/messages":
            await send_json(
                writer, status, anthropic_error(status, message), "application/json", newline=True
            )
        elif path.startswith("/v1/"):
            await send_json(writer, status, openai_error(status, message), "application/json", newline=True)
        else:
            await send_json(writer, status, {"error": message})

    async def _dispatch(
        self,
        method: str,
        path: str,
        raw: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; returns whether the connection may be reused."""
        path = path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            with self._lock:
                self.requests.append(
                    RecordedRequest(method, path, raw.decode("utf-8", "replace"), time.monotonic())
                )
            await self._compat_error(path, writer, 400, "invalid character in request body")
            return True
        with self._lock:
            self.requests.append(RecordedRequest(method, path, body, time.monotonic()))
        if path.startswith("/_emulator/"):
            return await self._control(method, path, body, writer)
        name, other_method = self._route(method, path)
        if name is None:  # gin: HandleMethodNotAllowed, then its plain 404
            if other_method:
                await send(writer, 405, b"405 method not allowed", "text/plain")
            else:
                await send(writer, 404, b"404 page not found", "text/plain")
            return True
        fault = self.settings.fault
        if fault == "hang" and path != "/":
            assert self._release_hang is not None
            await self._release_hang.wait()
            return False
        if fault == "http500" and (path.startswith("/api/") or path.startswith("/v1/")):
            self._spend_fault()
            await self._compat_error(path, writer, 500, "llama runner process has terminated")
            return True
        if method == "POST" and not raw.strip():
            await self._compat_error(
                path, writer, 400, "EOF" if path.startswith("/v1/") else "missing request body"
            )
            return True
        if not isinstance(body, dict):
            await self._compat_error(path, writer, 400, "request body must be a JSON object")
            return True
        try:
            return await getattr(self, name)(path, body, reader, writer)
        except HttpError as exc:
            await self._compat_error(path, writer, exc.status, exc.message)
            return True

    def _spend_fault(self) -> None:
        with self._lock:
            self.faults_served += 1
            if self.settings.fault_times > 0:
                self.settings.fault_times -= 1
                if self.settings.fault_times == 0:
                    self.settings.fault = None

    async def _control(self, method: str, path: str, body: Any, writer: asyncio.StreamWriter) -> bool:
        if path == "/_emulator/stats":
            await send_json(writer, 200, self.stats())
        elif path == "/_emulator/config" and method == "POST" and isinstance(body, dict):
            try:
                for key, value in body.items():
                    if not hasattr(self.settings, key):
                        raise AttributeError(key)
                    setattr(self.settings, key, value)
            except AttributeError as exc:
                await send_json(writer, 400, {"error": f"unknown setting {exc}"})
                return True
            self._reset_loop_state()
            await send_json(writer, 200, {"settings": self.settings.__dict__})
        elif path == "/_emulator/reset" and method == "POST":
            self._reset_state()
            self._reset_loop_state()
            await send_json(writer, 200, {"ok": True})
        else:
            await send_json(writer, 404, {"error": "unknown control endpoint"})
        return True


STATUS_READS = ("/api/version", "/api/tags", "/api/ps")


def _is_status_read(request: RecordedRequest) -> bool:
    return request.method == "GET" and request.path in STATUS_READS


def _is_load(body: Any) -> bool:
    """An empty prompt (or no messages) only loads or unloads the model."""
    if not isinstance(body, dict):
        return False
    if "messages" in body:
        return not body.get("messages")
    return not body.get("prompt")
