"""From validated bodies to what goes to Ollama, the cache key that identifies the answer, and the
job spec every surface hands the queue.

The key is computed from the native request itself (what Ollama will see, minus ``stream`` and
``keep_alive``), with ``think`` as Ollama applies it (omitted means on for a thinking model), so
every surface that asks Ollama the same thing shares one entry and one generation.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from chat.caches import response_key
from core.catalogue import UNKNOWN, ModelFacts, model_cap, model_facts
from core.ollama import keep_alive_param
from core.servers import affinity_key
from gateway.http import owner_of
from gateway.schemas import ChatCompletionsBody, OllamaChatBody, OllamaGenerateBody, QueueBody
from queueing import fleet
from queueing.models import Kind
from queueing.spec import JobSpec


def keep_alive(value: Any) -> str | int | float:
    """The request's keep_alive, else ``[ollama] keep_alive``, as Ollama takes it."""
    return keep_alive_param(settings.OLLAMA_KEEP_ALIVE if value is None else value)


def chat_model(body: QueueBody) -> str:
    return body.model or settings.OLLAMA_MODEL


def messages_of(body: QueueBody | OllamaChatBody) -> list[dict[str, Any]]:
    """The messages as Ollama takes them (empty fields left out)."""
    return [message.native() for message in body.messages]


def chat_payload(body: QueueBody, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Ollama's /api/chat payload for a chat-optimized or queued request (``stream`` is added by
    the client)."""
    return {
        "model": chat_model(body),
        "messages": messages,
        "keep_alive": keep_alive(body.keep_alive),
        **body.ollama_fields(),
    }


def ollama_chat(body: OllamaChatBody) -> dict[str, Any]:
    """``/api/chat``'s payload."""
    return {
        "model": body.model,
        "messages": messages_of(body),
        "keep_alive": keep_alive(body.keep_alive),
        **body.ollama_fields(),
        **body.native_extra(),
    }


def ollama_generate(body: OllamaGenerateBody) -> dict[str, Any]:
    """``/api/generate``'s payload."""
    fields = body.ollama_fields()
    fields.pop("tools", None)  # not a generate field
    return {
        "model": body.model,
        **body.native_prompt(),
        "keep_alive": keep_alive(body.keep_alive),
        **fields,
        **body.native_extra(),
    }


def openai_chat(body: ChatCompletionsBody) -> dict[str, Any]:
    """``/v1/chat/completions`` as the native /api/chat request Ollama's OpenAI layer builds."""
    return {**body.native(body.model or settings.OLLAMA_MODEL), "keep_alive": keep_alive(None)}


async def facts_of(model: str) -> ModelFacts:
    """The model's capabilities and architecture, from a server that has it."""
    server = await fleet.server_for(model)
    return UNKNOWN if server is None else await model_facts(model, server)


async def cache_key(
    endpoint: str, payload: dict[str, Any], owner: str, facts: ModelFacts | None = None
) -> str:
    """The key of the answer; ``think`` as Ollama will apply it (omitted = on for a thinker)."""
    think = payload.get("think")
    if think is None and endpoint in ("chat", "generate"):
        facts = facts or await facts_of(str(payload["model"]))
        think = True if facts.thinks else None
    request = {**payload, "think": think} if think is not None else payload
    return response_key(endpoint=endpoint, request=request, owner=owner)


def cache_directives(request: HttpRequest) -> tuple[bool, bool]:
    """``Cache-Control`` as a client means it: ``no-cache`` wants a fresh answer (it is still stored),
    ``no-store`` wants it not stored. Returns (read the cache, store the answer)."""
    directives = {d.strip().lower() for d in request.headers.get("Cache-Control", "").split(",")}
    return "no-cache" not in directives, "no-store" not in directives


async def spec_for(
    request: HttpRequest,
    *,
    endpoint: str,
    payload: dict[str, Any],
    samples: bool,
    kind: str = Kind.INTERACTIVE,
    priority: int = 0,
    use_cache: bool = True,
    idempotency_key: str | None = None,
    streaming: bool = False,
    conversation: str | None = None,
    history: int = 0,
) -> JobSpec:
    """The job spec of a generation request: the model's rules applied to its options, its cache
    key, the client's cache directives, and the model's cap."""
    owner = owner_of(request)
    read, store = cache_directives(request)
    model = str(payload["model"])
    facts = await facts_of(model)
    adjusted = apply_model_rules(payload)
    if adjusted:
        request.gateway_adjusted = adjusted  # type: ignore[attr-defined]  # shown as X-Gateway-Adjusted
    return JobSpec(
        kind=kind,
        endpoint=endpoint,
        model=model,
        payload=payload,
        cache_key=await cache_key(endpoint, payload, owner, facts),
        priority=priority,
        owner=owner,
        use_cache=use_cache and store,
        read_cache=use_cache and read,
        samples=samples,
        idempotency_key=idempotency_key,
        streaming=streaming,
        model_cap=model_cap(model, facts),
        affinity=affinity_key(endpoint, payload, conversation),
        history=history,
    )


# Runner options a model's configuration may pin (Ollama reloads a model whose runner options
# differ from the loaded runner's: pinning them keeps users who send different values from
# reloading it for each other).
PINNED = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "use_mmap")


def apply_model_rules(payload: dict[str, Any]) -> list[str]:
    """Pin or cap the runner options as ``[models."<name>"]`` says; returns what changed."""
    rules = settings.MODELS.get(str(payload["model"]))
    if rules is None or payload.get("_debug_render_only"):
        return []
    options = dict(payload.get("options") or {})
    changed = []
    for name in PINNED:
        pinned = getattr(rules, name)
        if pinned is not None and options.get(name) != pinned:
            changed.append(f"{name}={pinned} (asked {options.get(name, 'default')})")
            options[name] = pinned
    cap = rules.max_num_ctx
    if cap is not None and rules.num_ctx is None and isinstance(options.get("num_ctx"), (int, float)):
        if options["num_ctx"] > cap:
            changed.append(f"num_ctx={cap} (asked {options['num_ctx']})")
            options["num_ctx"] = cap
    if changed:
        payload["options"] = options
    return changed
