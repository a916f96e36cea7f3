"""Ollama's scheduler, as far as a gateway can see it (server/sched.go).

- A request for a loaded model whose runner options match takes the runner at once; any other
  request goes through one pending queue, one load at a time.
- Runner options (num_ctx unless both sides use the automatic default, num_batch likewise,
  num_gpu unless negative, main_gpu, use_mmap, num_thread, draft_num_predict, and the context
  shift) that differ from the loaded runner's reload it, once its requests have finished.
- With ``max_loaded_models`` reached, loading another model unloads one: an idle runner first,
  in ByDurationAndName order (shortest keep_alive, then model path), else the first in that order
  once it goes idle. Ollama's default (0) is 3 per GPU; the emulator's 0 is unlimited.
- A runner serves ``parallel`` generations at once (OLLAMA_NUM_PARALLEL; the emulator's 0 is
  unlimited), but embedding models and the one-at-a-time architectures get 1.
- An idle runner unloads when its keep_alive runs out (0: at once).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .catalogue import VISION, ModelInfo

FOREVER = -1.0


@dataclass
class RunnerRequest:
    """What a request asks of the runner (api.Options.Runner after the defaults)."""

    options: dict[str, Any]
    num_ctx_auto: bool
    num_batch_auto: bool
    context_shift: bool
    session: float | None  # keep_alive in seconds (FOREVER), None when the request gave none
    loaded: bool = False  # set when this request's acquire loaded the runner


@dataclass
class Runner:
    model: ModelInfo
    options: dict[str, Any]
    num_ctx_auto: bool
    num_batch_auto: bool
    use_mmap_auto: bool
    context_shift: bool
    session: float
    expires: float = FOREVER  # monotonic deadline once idle
    refcount: int = 0
    load_seconds: float = 0.0
    gate: asyncio.Semaphore | None = None
    gate_size: int = -1
    unloaded: asyncio.Event = field(default_factory=asyncio.Event)


class Scheduling:
    """Mixin for FakeOllama: the runners and their counters (``self._lock`` guards them)."""

    def _reset_runners(self) -> None:
        self.runners: dict[str, Runner] = {}
        self.loaded: dict[str, float] = {}  # model -> expiry (monotonic), -1 = forever
        self.model_loads = 0
        self.model_unloads = 0
        self.reloads = 0
        self.evictions = 0
        self.in_flight_by_model: dict[str, int] = {}
        self.max_in_flight_by_model: dict[str, int] = {}
        self.waiting_by_model: dict[str, int] = {}
        # Requests of a model at the emulator at once, waiting for a slot included: what a gateway
        # that respects a one-at-a-time model keeps at 1.
        self.max_received_by_model: dict[str, int] = {}

    # --- what a request asks for -------------------------------------------------------------

    def _runner_request(
        self, model: ModelInfo, parsed: dict[str, Any], keep_alive: float | None, shift: Any
    ) -> RunnerRequest:
        """routes.go scheduleRunner + modelOptions, sched.go getRunner."""
        embedding_batch = model.has("embedding") and "num_batch" not in parsed
        opts = {
            "num_ctx": parsed.get("num_ctx", self.settings.default_num_ctx),
            "num_batch": parsed.get("num_batch", 512),
            "num_gpu": parsed.get("num_gpu", -1),
            "main_gpu": parsed.get("main_gpu"),
            "use_mmap": parsed.get("use_mmap"),
            "num_thread": parsed.get("num_thread", 0),
            "draft_num_predict": parsed.get("draft_num_predict", 0),
        }
        if embedding_batch:
            opts["num_batch"] = min(2048, opts["num_ctx"]) if opts["num_ctx"] > 0 else 2048
        opts["num_ctx"] = max(opts["num_ctx"], 4)
        if model.has(VISION):
            opts["num_ctx"] = max(opts["num_ctx"], 2048)  # multimodal models require at least 2048
        context_shift = shift if isinstance(shift, bool) else model.family != "deepseek2"
        return RunnerRequest(
            options=opts,
            num_ctx_auto="num_ctx" not in parsed,
            num_batch_auto="num_batch" not in parsed and not embedding_batch,
            context_shift=context_shift,
            session=keep_alive,
        )

    def _needs_reload(self, runner: Runner, req: RunnerRequest) -> bool:
        existing, new = dict(runner.options), dict(req.options)
        new["num_ctx"] = min(new["num_ctx"], runner.model.context_length)
        if runner.num_ctx_auto and req.num_ctx_auto:
            new["num_ctx"] = existing["num_ctx"]
        if runner.num_batch_auto and req.num_batch_auto:
            new["num_batch"] = existing["num_batch"]
        if runner.use_mmap_auto and new["use_mmap"] is None:
            new["use_mmap"] = existing["use_mmap"]
        if new["num_gpu"] < 0:
            existing["num_gpu"] = new["num_gpu"] = -1
        return runner.context_shift != req.context_shift or existing != new

    # --- taking and giving back a runner ------------------------------------------------------

    async def _acquire(self, model: ModelInfo, req: RunnerRequest) -> Runner:
        with self._lock:
            self._expire_idle()
            runner = self.runners.get(model.name)
            if runner is not None and not self._needs_reload(runner, req):
                return self._use(runner, req)
        with self._lock:
            self.waiting += 1  # in Ollama's pending queue (what OLLAMA_MAX_QUEUE bounds)
        try:
            return await self._schedule(model, req)
        finally:
            with self._lock:
                self.waiting -= 1

    async def _schedule(self, model: ModelInfo, req: RunnerRequest) -> Runner:
        assert self._pending is not None
        async with self._pending:  # processPending: one request at a time
            while True:
                with self._lock:
                    self._expire_idle()
                    runner = self.runners.get(model.name)
                    victim, reload = None, False
                    if runner is not None:
                        if not self._needs_reload(runner, req):
                            return self._use(runner, req)
                        victim, reload = runner, True
                    elif 0 < self.settings.max_loaded_models <= len(self.runners):
                        victim = self._runner_to_unload()
                if victim is None:
                    return await self._load(model, req)
                with self._lock:
                    if victim.refcount <= 0:
                        self._unload(victim)
                        if reload:
                            self.reloads += 1
                        else:
                            self.evictions += 1
                        continue
                    victim.session = 0.0  # expire as soon as its requests finish
                await victim.unloaded.wait()
                with self._lock:
                    if reload:
                        self.reloads += 1
                    else:
                        self.evictions += 1

    def _use(self, runner: Runner, req: RunnerRequest) -> Runner:
        runner.refcount += 1
        if req.session is not None:
            runner.session = req.session
        self._mark_loaded(runner)
        return runner

    async def _load(self, model: ModelInfo, req: RunnerRequest) -> Runner:
        started = time.monotonic()
        if self.settings.load_delay > 0:
            await asyncio.sleep(self.settings.load_delay)
        options = dict(req.options)
        options["num_ctx"] = min(options["num_ctx"], model.context_length)  # the effective context
        runner = Runner(
            model=model,
            options=options,
            num_ctx_auto=req.num_ctx_auto,
            num_batch_auto=req.num_batch_auto,
            use_mmap_auto=req.options["use_mmap"] is None,
            context_shift=req.context_shift,
            session=req.session if req.session is not None else self.settings.default_keep_alive,
            load_seconds=max(time.monotonic() - started, 0.0015),
        )
        req.loaded = True
        with self._lock:
            self.runners[model.name] = runner
            self.model_loads += 1
            return self._use(runner, RunnerRequest(options, False, False, False, None))

    def _release(self, runner: Runner) -> None:
        with self._lock:
            runner.refcount -= 1
            if runner.refcount > 0:
                return
            if runner.session == 0:
                self._unload(runner)
            else:
                self._mark_loaded(runner)

    def _mark_loaded(self, runner: Runner) -> None:
        if self.runners.get(runner.model.name) is not runner:
            return
        runner.expires = FOREVER if runner.session < 0 else time.monotonic() + runner.session
        self.loaded[runner.model.name] = runner.expires

    def _unload(self, runner: Runner) -> None:
        if self.runners.get(runner.model.name) is runner:
            del self.runners[runner.model.name]
            self.loaded.pop(runner.model.name, None)
            self.model_unloads += 1
        loop = getattr(self, "_loop", None)
        if loop is not None and threading.get_ident() != getattr(self, "_loop_thread", None):
            loop.call_soon_threadsafe(runner.unloaded.set)  # stats() may expire runners from a test thread
        else:
            runner.unloaded.set()

    def _expire_idle(self) -> None:
        now = time.monotonic()
        for runner in list(self.runners.values()):
            if runner.refcount <= 0 and runner.expires != FOREVER and runner.expires < now:
                self._unload(runner)

    def _expire_model(self, name: str) -> None:
        """expireRunner (an empty request with keep_alive 0): unload now, or when idle."""
        with self._lock:
            runner = self.runners.get(name)
            if runner is None:
                return
            runner.session = 0.0
            if runner.refcount <= 0:
                self._unload(runner)

    def _runner_to_unload(self) -> Runner | None:
        """findRunnerToUnload: ByDurationAndName (keep_alive as an unsigned duration, then the
        model's path), the first idle one, else the first."""
        order = sorted(
            self.runners.values(),
            key=lambda r: (float("inf") if r.session < 0 else r.session, f"sha256-{r.model.digest}"),
        )
        return next((r for r in order if r.refcount <= 0), order[0] if order else None)

    # --- generations on a runner --------------------------------------------------------------

    def _parallel_for(self, runner: Runner) -> int:
        return 1 if runner.model.one_at_a_time else self.settings.parallel

    def _gate(self, runner: Runner) -> asyncio.Semaphore | None:
        size = self._parallel_for(runner)
        if size <= 0:
            return None
        if runner.gate is None or runner.gate_size != size:
            runner.gate, runner.gate_size = asyncio.Semaphore(size), size
        return runner.gate

    async def _slot(self, runner: Runner) -> asyncio.Semaphore | None:
        """Wait for a parallel slot on the runner; returns the gate to release."""
        gate = self._gate(runner)
        name = runner.model.name
        if gate is not None:
            with self._lock:
                self.waiting += 1
                self.waiting_by_model[name] = self.waiting_by_model.get(name, 0) + 1
                received = self.waiting_by_model[name] + self.in_flight_by_model.get(name, 0)
                self.max_received_by_model[name] = max(self.max_received_by_model.get(name, 0), received)
            try:
                await gate.acquire()
            finally:
                with self._lock:  # (a reset meanwhile restarted the counts)
                    self.waiting -= 1
                    self.waiting_by_model[name] = max(self.waiting_by_model.get(name, 0) - 1, 0)
        with self._lock:
            now = self.in_flight_by_model.get(name, 0) + 1
            self.in_flight_by_model[name] = now
            self.max_in_flight_by_model[name] = max(self.max_in_flight_by_model.get(name, 0), now)
            received = now + self.waiting_by_model.get(name, 0)
            self.max_received_by_model[name] = max(self.max_received_by_model.get(name, 0), received)
        return gate

    def _free_slot(self, runner: Runner, gate: asyncio.Semaphore | None) -> None:
        with self._lock:
            name = runner.model.name
            self.in_flight_by_model[name] = max(self.in_flight_by_model.get(name, 0) - 1, 0)
        if gate is not None:
            gate.release()

    def runner_stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            name: {
                "options": dict(r.options),
                "parallel": self._parallel_for(r),
                "refcount": r.refcount,
                "keep_alive": r.session,
                "expires_in": None if r.expires == FOREVER else round(r.expires - now, 3),
            }
            for name, r in self.runners.items()
        }
