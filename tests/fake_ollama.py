"""An Ollama emulator: a real HTTP/1.1 server on a loopback port that speaks Ollama's API.

It answers as Ollama does (NDJSON streams with ``created_at`` in RFC 3339 and a final chunk carrying
``done_reason`` and the nanosecond metrics; ``{"error": ...}`` with Ollama's status codes; empty
prompts that load or unload a model), with deterministic replies derived from the request, so tests
can predict every token. Timing (first-token delay, inter-token delay, token count), a parallel limit
and fault modes are settable while it runs; it records every request and counts calls and in-flight
generations for the tests to read.

Use in tests: ``FakeOllama().start()`` runs it on its own thread and event loop. Standalone (for
``make bench`` or by hand): ``python -m tests.fake_ollama --port 11434``. Control endpoints
``GET /_emulator/stats`` and ``POST /_emulator/config`` expose the same knobs over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

VERSION = "0.12.6"
VOCAB = (
    "the a model answer token stream cache queue quick brown fox jumps over lazy dog rust python "
    "django channel worker light fast fair local shared memory reply with every word in order"
).split()
FAULTS = ("refuse", "hang", "http500", "busy", "stall", "malformed", "error_line", "cut")
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


@dataclass
class ModelInfo:
    name: str
    family: str = "llama"
    parameter_size: str = "8B"
    size: int = 4_920_753_328

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": "Q4_K_M",
        }


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
    token_count: int = 8
    parallel: int = 0  # 0 = unlimited; otherwise extra generations wait (as OLLAMA_NUM_PARALLEL)
    max_queue: int = 512  # generations waiting beyond this get 503 busy (as OLLAMA_MAX_QUEUE)
    fault: str | None = None
    fault_after: int = 1  # tokens sent before a mid-stream fault
    fault_times: int = 0  # a busy/http500 fault clears itself after this many requests (0: never)


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def request_signature(path: str, body: dict[str, Any]) -> str:
    """What identifies a generation request (for per-request call counts)."""
    subject = {
        "path": path,
        "model": body.get("model"),
        "messages": body.get("messages"),
        "prompt": body.get("prompt"),
        "system": body.get("system"),
        "options": body.get("options"),
        "format": body.get("format"),
    }
    return hashlib.sha256(json.dumps(subject, sort_keys=True).encode()).hexdigest()


def reply_tokens(body: dict[str, Any], count: int) -> list[str]:
    """The deterministic reply for a request: ``count`` tokens drawn from its hash."""
    seed = request_signature("", body).encode()
    tokens = []
    for i in range(count):
        digest = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        word = VOCAB[int.from_bytes(digest[:4], "big") % len(VOCAB)]
        tokens.append(word if i == 0 else " " + word)
    return tokens


def prompt_words(body: dict[str, Any]) -> int:
    if body.get("messages"):
        text = " ".join(str(m.get("content", "")) for m in body["messages"] if isinstance(m, dict))
    else:
        text = str(body.get("prompt") or "")
    return max(1, len(text.split()))


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FakeOllama:
    """The emulator. Attributes under "state" are safe to read from the test thread."""

    def __init__(self, *, models: list[str] | None = None, **settings: Any) -> None:
        self._initial = dict(settings)
        self.settings = Settings(**settings)
        self.models = {
            name: ModelInfo(name) for name in (models or ["llama3.2:1b", "deepseek-r1:8b", "qwen2.5:0.5b"])
        }
        self.host = "127.0.0.1"
        self.port = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._gate: asyncio.Semaphore | None = None
        self._release_hang: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # Live gauges: a reset leaves them alone (what is open stays open).
        self.in_flight = 0  # generation requests being answered right now
        self.connections_open = 0
        self.reset()

    # --- state the tests read ------------------------------------------------------------------

    def reset(self) -> None:
        """Forget requests and counters, unload models, restore the timings it was built with."""
        self._reset_state()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_loop_state)
            asyncio.run_coroutine_threadsafe(self._apply_listen_state(), self._loop).result(5)

    def _reset_state(self) -> None:
        with self._lock:
            self.requests: list[RecordedRequest] = []
            self.calls: collections.Counter[str] = collections.Counter()
            self.generations = 0  # generation requests received (chat + generate, not loads)
            self.max_in_flight = self.in_flight
            self.waiting = 0
            self.completed = 0
            self.aborted = 0  # generations whose client went away before the end
            self.faults_served = 0  # busy/http500 answers given
            self.loaded: dict[str, float] = {}  # model -> expiry (monotonic), -1 = forever
        self.settings = Settings(**self._initial)

    def configure(self, **settings: Any) -> None:
        """Change timing, parallelism or fault mode while running."""
        for key, value in settings.items():
            if not hasattr(self.settings, key):
                raise AttributeError(f"unknown emulator setting {key}")
            setattr(self.settings, key, value)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._reset_loop_state)
            if "fault" in settings:
                asyncio.run_coroutine_threadsafe(self._apply_listen_state(), self._loop).result(5)

    def calls_for(self, body: dict[str, Any], path: str = "/api/chat") -> int:
        """How many times a generation with this body reached the emulator."""
        with self._lock:
            return self.calls[request_signature(path, body)]

    def generation_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if r.path in ("/api/chat", "/api/generate") and not _is_load(r.body)
            ]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "generations": self.generations,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "waiting": self.waiting,
                "completed": self.completed,
                "aborted": self.aborted,
                "connections_open": self.connections_open,
                "faults_served": self.faults_served,
                "requests": len(self.requests),
                "loaded": sorted(self.loaded),
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
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    async def serve_forever(self, host: str, port: int) -> None:
        """Run in the current loop (the standalone entry point)."""
        self.host, self.port = host, port
        self._loop = asyncio.get_running_loop()
        await self._listen()
        await asyncio.Event().wait()

    async def _listen(self) -> None:
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
        parallel = self.settings.parallel
        self._gate = asyncio.Semaphore(parallel) if parallel > 0 else None
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
                request = await _read_request(reader)
                if request is None:
                    return
                method, path, headers, raw = request
                keep_open = await self._dispatch(method, path, raw, reader, writer)
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with self._lock:
                self.connections_open -= 1
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

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
            await _send_json(writer, 400, {"error": "invalid character in request body"})
            return True
        with self._lock:
            self.requests.append(RecordedRequest(method, path, body, time.monotonic()))
        if path.startswith("/_emulator/"):
            return await self._control(method, path, body, writer)
        routes = {
            ("POST", "/api/chat"): self._generation,
            ("POST", "/api/generate"): self._generation,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("GET", "/api/version"): self._version,
            ("POST", "/api/embed"): self._embed,
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
        }
        handler = routes.get((method, path))
        if handler is None:
            await _send_json(writer, 404, {"error": f"{method} {path} not found"})
            return True
        fault = self.settings.fault
        if fault == "hang" and path != "/":
            assert self._release_hang is not None
            await self._release_hang.wait()
            return False
        if fault == "http500" and path.startswith("/api/"):
            self._spend_fault()
            await _send_json(writer, 500, {"error": "llama runner process has terminated"})
            return True
        if not isinstance(body, dict):
            await _send_json(writer, 400, {"error": "request body must be a JSON object"})
            return True
        try:
            return await handler(path, body, reader, writer)
        except HttpError as exc:
            await _send_json(writer, exc.status, {"error": exc.message})
            return True

    # --- endpoints -----------------------------------------------------------------------------

    def _spend_fault(self) -> None:
        with self._lock:
            self.faults_served += 1
            if self.settings.fault_times > 0:
                self.settings.fault_times -= 1
                if self.settings.fault_times == 0:
                    self.settings.fault = None

    def _model(self, body: dict[str, Any]) -> ModelInfo:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "model is required")
        if name not in self.models:
            raise HttpError(404, f"model '{name}' not found")
        return self.models[name]

    def _keep(self, model: str, keep_alive: Any) -> None:
        """Record a model as loaded for ``keep_alive`` (seconds, or a duration string)."""
        seconds = _keep_alive_seconds(keep_alive)
        with self._lock:
            if seconds == 0:
                self.loaded.pop(model, None)
            else:
                self.loaded[model] = -1 if seconds < 0 else time.monotonic() + seconds

    async def _generation(
        self,
        path: str,
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        model = self._model(body)
        chat = path == "/api/chat"
        if chat and not isinstance(body.get("messages", []), list):
            raise HttpError(400, "messages must be an array")
        keep_alive = body.get("keep_alive", "5m")
        if isinstance(keep_alive, str) and keep_alive.strip().lstrip("-").isdigit():
            raise HttpError(400, f'time: missing unit in duration "{keep_alive}"')
        if _is_load(body):
            self._keep(model.name, keep_alive)
            reason = "unload" if _keep_alive_seconds(keep_alive) == 0 else "load"
            final = {"model": model.name, "created_at": _now_rfc3339()}
            if chat:
                final["message"] = {"role": "assistant", "content": ""}
            else:
                final["response"] = ""
            final.update({"done_reason": reason, "done": True})
            await _send_json(writer, 200, final)
            return True

        signature = request_signature(path, body)
        cfg = self.settings
        if cfg.fault == "busy":
            self._spend_fault()
            raise HttpError(503, BUSY_MESSAGE)
        with self._lock:
            if self.waiting >= cfg.max_queue:
                raise HttpError(503, BUSY_MESSAGE)
            self.calls[signature] += 1
            self.generations += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        finished = False
        try:
            if self._gate is not None:
                with self._lock:
                    self.waiting += 1
                try:
                    await self._gate.acquire()
                finally:
                    with self._lock:
                        self.waiting -= 1
            try:
                finished = await self._generate(path, body, model, reader, writer)
            finally:
                if self._gate is not None:
                    self._gate.release()
        finally:
            with self._lock:
                self.in_flight -= 1
                if finished:
                    self.completed += 1
                else:
                    self.aborted += 1
        return finished

    async def _generate(
        self,
        path: str,
        body: dict[str, Any],
        model: ModelInfo,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Produce the reply; returns True when it was delivered whole."""
        cfg = dataclasses.replace(self.settings)  # a change of settings applies to later requests
        chat = path == "/api/chat"
        started = time.monotonic_ns()
        options = body.get("options") or {}
        limit = options.get("num_predict") if isinstance(options, dict) else None
        count = cfg.token_count
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < count:
            count, reason = limit, "length"
        tokens = reply_tokens(body, count)
        load_ns = 0 if model.name in self.loaded else 1_500_000
        self._keep(model.name, body.get("keep_alive", "5m"))

        def chunk(text: str) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model.name, "created_at": _now_rfc3339()}
            if chat:
                out["message"] = {"role": "assistant", "content": text}
            else:
                out["response"] = text
            out["done"] = False
            return out

        def final() -> dict[str, Any]:
            out = chunk("")
            out["done"] = True
            out["done_reason"] = reason
            if not chat:
                out["context"] = list(range(1, prompt_words(body) + count + 1))
            elapsed = time.monotonic_ns() - started
            metrics = {
                "total_duration": max(elapsed, 1),
                "load_duration": load_ns,
                "prompt_eval_count": prompt_words(body),
                "prompt_eval_duration": 250_000,
                "eval_count": count,
                "eval_duration": max(elapsed - 250_000 - load_ns, 1) if count else 0,
            }
            out.update({k: v for k, v in metrics.items() if v})
            return out

        # The client going away (EOF on its side) stops the generation, as Ollama does.
        gone = asyncio.ensure_future(reader.read(1))
        try:
            if not body.get("stream", True):
                if await _sleep_unless(gone, cfg.first_token_delay + cfg.token_delay * max(count - 1, 0)):
                    return False
                if cfg.fault in ("stall", "malformed", "error_line", "cut"):
                    return await self._mid_stream_fault(cfg.fault, writer, gone, streaming=False)
                out = final()
                text = "".join(tokens)
                if chat:
                    out["message"]["content"] = text
                else:
                    out["response"] = text
                await _send_json(writer, 200, out)
                return True

            await _start_chunked(writer, 200, "application/x-ndjson")
            for i, token in enumerate(tokens):
                delay = cfg.first_token_delay if i == 0 else cfg.token_delay
                if await _sleep_unless(gone, delay):
                    return False
                if cfg.fault in ("stall", "malformed", "error_line", "cut") and i == cfg.fault_after:
                    return await self._mid_stream_fault(cfg.fault, writer, gone, streaming=True)
                await _write_chunk(writer, json.dumps(chunk(token)).encode() + b"\n")
            if not tokens and await _sleep_unless(gone, cfg.first_token_delay):
                return False
            await _write_chunk(writer, json.dumps(final()).encode() + b"\n")
            await _end_chunked(writer)
            return True
        except ConnectionError:
            return False
        finally:
            # The watcher must be gone before the connection reads the next request.
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await gone

    async def _mid_stream_fault(
        self, fault: str, writer: asyncio.StreamWriter, gone: asyncio.Future[bytes], *, streaming: bool
    ) -> bool:
        if fault == "stall":
            await gone  # hold the connection open and silent until the client gives up
            return False
        if fault == "cut":
            writer.transport.abort()
            return False
        if not streaming:
            await _start_chunked(writer, 200, "application/json")
        line = (
            b'{"model": "broken'
            if fault == "malformed"
            else b'{"error": "an error was encountered while running the model: out of memory"}'
        )
        await _write_chunk(writer, line + b"\n")
        await _end_chunked(writer)
        return False

    async def _tags(self, path: str, body: Any, reader: Any, writer: asyncio.StreamWriter) -> bool:
        models = [
            {
                "name": m.name,
                "model": m.name,
                "modified_at": "2025-01-30T10:00:00.000000000Z",
                "size": m.size,
                "digest": m.digest,
                "details": m.details(),
            }
            for m in self.models.values()
        ]
        await _send_json(writer, 200, {"models": models})
        return True

    async def _ps(self, path: str, body: Any, reader: Any, writer: asyncio.StreamWriter) -> bool:
        now = time.monotonic()
        with self._lock:
            for name, expiry in list(self.loaded.items()):
                if expiry != -1 and expiry < now:
                    del self.loaded[name]
            loaded = dict(self.loaded)
        models = []
        for name, expiry in loaded.items():
            m = self.models[name]
            if expiry == -1:
                expires = "2318-01-01T00:00:00Z"
            else:
                at = datetime.now(UTC) + timedelta(seconds=expiry - now)
                expires = at.isoformat(timespec="seconds").replace("+00:00", "Z")
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": m.size,
                    "digest": m.digest,
                    "details": m.details(),
                    "expires_at": expires,
                    "size_vram": m.size,
                    "context_length": 4096,
                }
            )
        await _send_json(writer, 200, {"models": models})
        return True

    async def _show(self, path: str, body: dict[str, Any], reader: Any, writer: asyncio.StreamWriter) -> bool:
        m = self._model(body)
        await _send_json(
            writer,
            200,
            {
                "modelfile": f"FROM {m.name}\n",
                "parameters": 'stop "<|eot_id|>"',
                "template": "{{ .Prompt }}",
                "details": m.details(),
                "model_info": {"general.architecture": m.family, "general.parameter_count": 8_030_261_248},
                "capabilities": ["completion"],
                "modified_at": "2025-01-30T10:00:00.000000000Z",
            },
        )
        return True

    async def _version(self, path: str, body: Any, reader: Any, writer: asyncio.StreamWriter) -> bool:
        await _send_json(writer, 200, {"version": VERSION})
        return True

    async def _root(self, path: str, body: Any, reader: Any, writer: asyncio.StreamWriter) -> bool:
        await _send(writer, 200, b"Ollama is running", "text/plain; charset=utf-8")
        return True

    async def _embed(
        self, path: str, body: dict[str, Any], reader: Any, writer: asyncio.StreamWriter
    ) -> bool:
        m = self._model(body)
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        vectors = []
        for text in inputs:
            digest = hashlib.sha256(f"{m.name}\0{text}".encode()).digest()
            vectors.append([round((b - 128) / 128, 6) for b in digest[:8]])
        with self._lock:
            self.calls[request_signature(path, body)] += 1
        await _send_json(
            writer,
            200,
            {
                "model": m.name,
                "embeddings": vectors,
                "total_duration": 1_000_000,
                "load_duration": 100_000,
                "prompt_eval_count": sum(len(t.split()) for t in inputs),
            },
        )
        return True

    async def _control(self, method: str, path: str, body: Any, writer: asyncio.StreamWriter) -> bool:
        if path == "/_emulator/stats":
            await _send_json(writer, 200, self.stats())
        elif path == "/_emulator/config" and method == "POST" and isinstance(body, dict):
            try:
                for key, value in body.items():
                    if not hasattr(self.settings, key):
                        raise AttributeError(key)
                    setattr(self.settings, key, value)
            except AttributeError as exc:
                await _send_json(writer, 400, {"error": f"unknown setting {exc}"})
                return True
            self._reset_loop_state()
            await _send_json(writer, 200, {"settings": self.settings.__dict__})
        elif path == "/_emulator/reset" and method == "POST":
            self._reset_state()
            self._reset_loop_state()
            await _send_json(writer, 200, {"ok": True})
        else:
            await _send_json(writer, 404, {"error": "unknown control endpoint"})
        return True


# --- helpers -----------------------------------------------------------------------------------


def _is_load(body: Any) -> bool:
    """An empty prompt (or no messages) only loads or unloads the model."""
    if not isinstance(body, dict):
        return False
    if "messages" in body:
        return not body.get("messages")
    return not body.get("prompt")


def _keep_alive_seconds(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    total, number, i = 0.0, "", 0
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("-")
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = next((u for u in ("ns", "us", "µs", "ms", "h", "m", "s") if text.startswith(u, i)), None)
        if unit is None or not number:
            return 300.0
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    return sign * total


async def _sleep_unless(gone: asyncio.Future[bytes], seconds: float) -> bool:
    """Sleep; returns True if the client went away meanwhile (or already had)."""
    if gone.done():
        return True
    if seconds <= 0:
        await asyncio.sleep(0)
        return gone.done()
    done, _ = await asyncio.wait({gone}, timeout=seconds)
    return bool(done)


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
    return method, path, headers, body


def _head(status: int, content_type: str, extra: str) -> bytes:
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    return (
        f"HTTP/1.1 {status} {reason.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Date: {datetime.now(UTC).strftime('%a, %d %b %Y %H:%M:%S GMT')}\r\n"
        f"{extra}\r\n"
    ).encode()


async def _send(writer: asyncio.StreamWriter, status: int, payload: bytes, content_type: str) -> None:
    writer.write(_head(status, content_type, f"Content-Length: {len(payload)}\r\n") + payload)
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, value: Any) -> None:
    await _send(writer, status, json.dumps(value).encode(), "application/json; charset=utf-8")


async def _start_chunked(writer: asyncio.StreamWriter, status: int, content_type: str) -> None:
    writer.write(_head(status, content_type, "Transfer-Encoding: chunked\r\n"))
    await writer.drain()


async def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _end_chunked(writer: asyncio.StreamWriter) -> None:
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the Ollama emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--first-token-delay", type=float, default=0.05)
    parser.add_argument("--token-delay", type=float, default=0.01)
    parser.add_argument("--token-count", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=0)
    args = parser.parse_args()
    emulator = FakeOllama(
        first_token_delay=args.first_token_delay,
        token_delay=args.token_delay,
        token_count=args.token_count,
        parallel=args.parallel,
    )
    print(f"Ollama emulator on http://{args.host}:{args.port}", flush=True)  # noqa: T201
    asyncio.run(emulator.serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
