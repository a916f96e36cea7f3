"""The chat and generate handlers (server/routes.go ChatHandler, GenerateHandler) and the
deterministic "model" behind them. Every surface (/api/*, /v1/*) ends up here, as in Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from .binding import bind_generation, render
from .catalogue import COMPLETION, INSERT, THINKING, TOOLS, VISION, ModelInfo
from .rules import (
    BUSY_MESSAGE,
    MULTIMODAL_REFUSED,
    HttpError,
    content_tokens,
    format_error,
    options_from_map,
    plan_tool_calls,
    prompt_words,
    request_signature,
    thinking_count,
    thinking_tokens,
    token_logprob,
)
from .sched import Runner
from .sinks import Sink
from .wire import now_rfc3339, sleep_unless

MID_STREAM_FAULTS = ("stall", "malformed", "error_line", "cut")


@dataclass
class GenerationRecord:
    """One generation as the native handler saw it (whatever surface the client used)."""

    path: str  # the native handler: /api/chat or /api/generate
    surface: str  # what the client called: /api/chat, /v1/chat/completions, /v1/messages...
    model: str
    body: dict[str, Any]  # the native request (for /v1 surfaces, Ollama's translation)
    options: dict[str, Any]  # as Options.FromMap kept them (unknown keys and nulls skipped)
    ignored_options: list[str]
    runner_options: dict[str, Any]
    think: Any
    tools: int
    stream: bool
    at: float


class Generation:
    """Mixin for FakeOllama: the native chat and generate handlers."""

    async def _generation(self, path: str, body: dict[str, Any], reader: Any, writer: Any) -> bool:
        return await self._serve_generation(path, body, reader, writer, Sink(writer))

    async def _serve_generation(
        self,
        path: str,
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sink: Sink,
        *,
        surface: str | None = None,
        surface_body: dict[str, Any] | None = None,
        relax_thinking: bool = False,
    ) -> bool:
        """Answer one chat/generate request through ``sink``; returns whether the connection may
        be reused. ``surface`` is the path the client called, when a /v1 layer translated it."""
        try:
            return await self._generation_flow(
                path, body, reader, writer, sink, surface or path, surface_body, relax_thinking
            )
        except HttpError as exc:
            await sink.error(exc.status, exc.message)
            return True

    async def _generation_flow(
        self,
        path: str,
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sink: Sink,
        surface: str,
        surface_body: dict[str, Any] | None,
        relax_thinking: bool,
    ) -> bool:
        chat = path == "/api/chat"
        req = bind_generation(path, body)
        model = self._model(body, missing=(400, "model is required") if chat else None)
        asked = body.get("model")
        is_load = not req["messages"] if chat else not body.get("prompt")
        keep_alive = req["keep_alive"]
        if is_load and keep_alive == 0:
            self._expire_model(model.name)
            out: dict[str, Any] = {"model": asked, "created_at": now_rfc3339()}
            out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
            out.update({"done": True, "done_reason": "unload"})
            await sink.whole(out)
            return True
        if (
            not chat
            and body.get("raw")
            and (body.get("template") or body.get("system") or body.get("context"))
        ):
            raise HttpError(400, "raw mode does not support template, system, or context")

        caps = [COMPLETION]
        if chat and req["tools"]:
            caps.append(TOOLS)
        if not chat and body.get("suffix"):
            caps.append(INSERT)
        think = req["think"]
        if model.has(THINKING):
            think = True if think is None else think
        elif think is not None and think is not False:
            if not relax_thinking:
                raise HttpError(400, f'"{asked}" does not support thinking')
            think = None  # the Anthropic layer drops it ("relax_thinking")
        missing = [c for c in caps if not model.has(c)]
        if COMPLETION in missing:
            raise HttpError(400, f'"{asked}" does not support {"chat" if chat else "generate"}')
        if missing:
            raise HttpError(400, f"{model.full_name} does not support {chr(10).join(missing)}")
        parsed, ignored = options_from_map(req["options"])

        cfg = self.settings
        if not is_load:
            if cfg.fault == "busy":
                self._spend_fault()
                raise HttpError(503, BUSY_MESSAGE)
            with self._lock:
                if self.waiting >= cfg.max_queue:
                    raise HttpError(503, BUSY_MESSAGE)
        runner_req = self._runner_request(model, parsed, keep_alive, body.get("shift"))
        runner = await self._acquire(model, runner_req)
        try:
            if is_load:
                out = {"model": asked, "created_at": now_rfc3339()}
                out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
                out.update({"done": True, "done_reason": "load"})
                await sink.whole(out)
                return True
            images = [group for group in req["images"] if group]
            if images and not model.has(VISION):
                raise HttpError(400, MULTIMODAL_REFUSED)
            if model.family == "mllama" and any(len(group) > 1 for group in images):
                raise HttpError(
                    500 if chat else 400,
                    "this model only supports one image while more than one image requested",
                )
            problem = format_error(body.get("format"))
            if problem:
                raise HttpError(500, problem)
            if body.get("_debug_render_only"):
                info: dict[str, Any] = {"rendered_template": render(path, body)}
                if sum(len(g) for g in images):
                    info["image_count"] = sum(len(g) for g in images)
                out = {"model": asked, "created_at": now_rfc3339()}
                out.update({"message": {"role": "", "content": ""}} if chat else {"response": ""})
                out.update({"done": False, "_debug_info": info})
                await sink.whole(out)
                return True
            return await self._run(
                path,
                body,
                req,
                model,
                runner,
                runner_req,
                parsed,
                ignored,
                think,
                sink,
                reader,
                writer,
                surface,
                surface_body,
            )
        finally:
            self._release(runner)

    async def _run(
        self,
        path: str,
        body: dict[str, Any],
        req: dict[str, Any],
        model: ModelInfo,
        runner: Runner,
        runner_req: Any,
        parsed: dict[str, Any],
        ignored: list[str],
        think: Any,
        sink: Sink,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        surface: str,
        surface_body: dict[str, Any] | None,
    ) -> bool:
        stream = body.get("stream") is not False
        with self._lock:
            self.calls[request_signature(path, body)] += 1
            if surface != path and surface_body is not None:
                self.calls[request_signature(surface, surface_body)] += 1
            self.generations += 1
            self.by_surface[surface] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.generation_log.append(
                GenerationRecord(
                    path,
                    surface,
                    model.name,
                    body,
                    parsed,
                    ignored,
                    dict(runner.options),
                    think,
                    len(req.get("tools") or []),
                    stream,
                    time.monotonic(),
                )
            )
        finished = False
        try:
            gate = await self._slot(runner)
            try:
                finished = await self._produce(
                    path, body, req, model, runner_req, parsed, think, sink, reader, writer
                )
            finally:
                self._free_slot(runner, gate)
        finally:
            with self._lock:
                self.in_flight -= 1
                if finished:
                    self.completed += 1
                    self.completed_calls[request_signature(path, body)] += 1
                else:
                    self.aborted += 1
        return finished

    def _plan(
        self, path: str, body: dict[str, Any], req: dict[str, Any], model: ModelInfo, think: Any
    ) -> list:
        """What the model emits: (kind, value, cost in tokens) for thinking, content, tool calls."""
        cfg = self.settings
        events: list[tuple[str, Any, int]] = []
        if think not in (None, False) and model.has(THINKING):
            count = thinking_count(think, cfg.think_token_count)
            events += [("thinking", t, 1) for t in thinking_tokens(body, count)]
        messages = req.get("messages") or []
        last_role = str(messages[-1].get("role", "")).lower() if messages else ""
        if path == "/api/chat" and req.get("tools") and model.has(TOOLS) and last_role == "user":
            events += [
                ("tool", c, max(cfg.token_count, 1)) for c in plan_tool_calls(body, cfg.tool_call_count)
            ]
        else:
            events += [("content", t, 1) for t in content_tokens(body, cfg.token_count)]
        return events

    async def _produce(
        self,
        path: str,
        body: dict[str, Any],
        req: dict[str, Any],
        model: ModelInfo,
        runner_req: Any,
        parsed: dict[str, Any],
        think: Any,
        sink: Sink,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Produce the reply; returns True when it was delivered whole."""
        cfg = dataclasses.replace(self.settings)  # a change of settings applies to later requests
        chat = path == "/api/chat"
        asked = body.get("model")
        started = time.monotonic_ns()
        events = self._plan(path, body, req, model, think)
        total = sum(cost for _, _, cost in events)
        limit = parsed.get("num_predict")
        reason, eval_count = "stop", total
        if isinstance(limit, int) and 0 <= limit < total:
            reason, eval_count = "length", limit
            kept, spent = [], 0
            for event in events:
                if spent + event[2] > limit:
                    break
                kept.append(event)
                spent += event[2]
            events = kept
        restart = chat and body.get("format") is not None and any(e[0] == "thinking" for e in events)
        load_ns = self._last_load_ns(model) if runner_req.loaded else 0
        signature = request_signature("", body)
        top = req["top_logprobs"] if body.get("logprobs") else -1
        with self._lock:
            self.tool_calls_made += sum(1 for e in events if e[0] == "tool")
            self.thinking_generations += any(e[0] == "thinking" for e in events)

        def logprobs_for(kind: str, index: int, token: str) -> list[dict[str, Any]]:
            return [token_logprob(token, f"{signature}\0{kind}\0{index}", max(top, 0))] if top >= 0 else []

        def chunk(kind: str, value: Any, index: int) -> dict[str, Any]:
            out: dict[str, Any] = {"model": asked, "created_at": now_rfc3339()}
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": value if kind == "content" else ""}
                if kind == "thinking":
                    message["thinking"] = value
                if kind == "tool":
                    message["tool_calls"] = [value]
                out["message"] = message
            else:
                out["response"] = value if kind == "content" else ""
                if kind == "thinking":
                    out["thinking"] = value
            out["done"] = False
            if kind != "tool":
                lps = logprobs_for(kind, index, value)
                if lps:
                    out["logprobs"] = lps
            return out

        def final(content: str = "", thinking: str = "", calls: list | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {"model": asked, "created_at": now_rfc3339()}
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if thinking:
                    message["thinking"] = thinking
                if calls:
                    message["tool_calls"] = calls
                out["message"] = message
            else:
                out["response"] = content
                if thinking:
                    out["thinking"] = thinking
            out.update({"done": True, "done_reason": reason})
            if not chat:
                out["context"] = list(range(1, prompt_words(body) + eval_count + 1))
            elapsed = time.monotonic_ns() - started
            metrics = {
                "total_duration": max(elapsed + load_ns, 1),
                "load_duration": load_ns,
                "prompt_eval_count": prompt_words(body),
                "prompt_eval_duration": 250_000,
                "eval_count": eval_count,
                "eval_duration": max(elapsed - 250_000, 1) if eval_count else 0,
            }
            out.update({k: v for k, v in metrics.items() if v})
            return out

        def delays() -> list[float]:
            out, position = [], 0
            for kind, _, cost in events:
                wait = 0.0
                for _ in range(cost):
                    wait += cfg.first_token_delay if position == 0 else cfg.token_delay
                    position += 1
                if restart and kind != "thinking" and out and events[len(out) - 1][0] == "thinking":
                    wait += cfg.first_token_delay  # structured outputs: thinking, then a restart
                out.append(wait)
            return out

        waits = delays()
        # The client going away (EOF on its side) stops the generation, as Ollama does.
        gone = asyncio.ensure_future(reader.read(1))
        try:
            if not body.get("stream", True):
                if await sleep_unless(gone, sum(waits) if events else cfg.first_token_delay):
                    return False
                if cfg.fault in MID_STREAM_FAULTS:
                    return await self._mid_stream_fault(cfg.fault, sink, writer, gone, streaming=False)
                thinking = "".join(v for k, v, _ in events if k == "thinking")
                content = "".join(v for k, v, _ in events if k == "content")
                calls = [v for k, v, _ in events if k == "tool"]
                logprobs = [
                    lp for i, (k, v, _) in enumerate(events) if k != "tool" for lp in logprobs_for(k, i, v)
                ]
                out = final(content, thinking, calls)
                if logprobs:
                    out["logprobs"] = logprobs
                await sink.whole(out)
                return True

            for i, (kind, value, _) in enumerate(events):
                if await sleep_unless(gone, waits[i]):
                    return False
                if cfg.fault in MID_STREAM_FAULTS and i == cfg.fault_after:
                    return await self._mid_stream_fault(cfg.fault, sink, writer, gone, streaming=True)
                await sink.chunk(chunk(kind, value, i))
            if not events and await sleep_unless(gone, cfg.first_token_delay):
                return False
            await sink.chunk(final())
            await sink.finish()
            return True
        except ConnectionError:
            return False
        finally:
            # The watcher must be gone before the connection reads the next request.
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await gone

    def _last_load_ns(self, model: ModelInfo) -> int:
        runner = self.runners.get(model.name)
        return int(runner.load_seconds * 1e9) if runner else 1_500_000

    async def _mid_stream_fault(
        self,
        fault: str,
        sink: Sink,
        writer: asyncio.StreamWriter,
        gone: asyncio.Future[bytes],
        *,
        streaming: bool,
    ) -> bool:
        if fault == "stall":
            await gone  # hold the connection open and silent until the client gives up
            return False
        if fault == "cut":
            writer.transport.abort()
            return False
        await sink.fault(fault, streaming)
        return False
