"""``GET /api/schema``: the OpenAPI document is valid, covers every route, and live answers match it.

Then schemathesis fuzzes the live server with it: no server errors, no schema violations.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from typing import Any

import httpx
import jsonschema
import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from tests.helpers import messages, wait_status
from tests.live import ROOT

METHODS = ("get", "post", "delete", "put", "patch")


def errors_405() -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


class Checker:
    """Validates live responses against the document and records which operations were seen."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: set[tuple[str, str, str]] = set()

    def operation(self, method: str, url_path: str) -> tuple[str, dict[str, Any]]:
        """The documented operation; an undocumented method on a documented path must be a 405."""
        for template, item in self.document["paths"].items():
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, url_path):
                if method in item:
                    return template, item[method]
                return template, {"responses": {"405": errors_405()}}
        raise AssertionError(f"{method.upper()} {url_path} is not in the document")

    def check(self, response: httpx.Response) -> httpx.Response:
        method, url_path = response.request.method.lower(), response.request.url.path
        template, operation = self.operation(method, url_path)
        status = str(response.status_code)
        assert status in operation["responses"], (
            f"{method.upper()} {url_path} answered {status}, not documented: {sorted(operation['responses'])}"
        )
        documented = operation["responses"][status]
        self.seen.add((template, method, status))
        content = documented.get("content")
        if not content:
            assert not response.content, (
                f"{method.upper()} {url_path} {status}: a body where none is documented"
            )
            return response
        media = response.headers["content-type"].split(";")[0].strip()
        assert media in content, f"{method.upper()} {url_path} {status}: {media} not in {sorted(content)}"
        if media == "application/json":
            schema = {**content[media]["schema"], "components": self.document["components"]}
            errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(response.json())]
            assert not errors, f"{method.upper()} {url_path} {status} violates the document: {errors[:3]}"
        return response


@pytest.fixture
def checked(server) -> tuple[httpx.Client, Checker]:
    with server.client() as client:
        document = client.get("/api/schema").json()
        yield client, Checker(document)


def routes() -> set[str]:
    """The API's URL templates from Django's resolver, in OpenAPI's spelling."""
    found = set()
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLResolver) or not isinstance(entry, URLPattern):
            continue  # admin
        route = str(entry.pattern)
        if route.startswith(("api/", "v1/")) or route in ("health", "metrics"):
            found.add("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    return found


def test_the_document_is_valid_openapi_and_covers_every_route(checked) -> None:
    document = checked[1].document
    assert document["openapi"].startswith("3.1")
    for schema in document["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    missing = routes() - set(document["paths"])
    assert not missing, f"routes missing from /api/schema: {sorted(missing)}"
    for template, item in document["paths"].items():
        for method in set(item) & set(METHODS):
            assert item[method]["responses"], f"{method} {template} documents no response"


def test_live_answers_match_the_document(checked, ollama) -> None:
    client, checker = checked
    ask = {"messages": messages("schema check")}
    c = checker.check
    c(client.get("/health"))
    c(client.get("/health", params={"deep": "1"}))
    c(client.get("/api/schema"))
    answer = c(client.post("/api/chat-optimized", json={**ask, "conversation_id": "new"})).json()
    c(client.post("/api/chat-optimized", json=ask))  # a cache hit
    with client.stream("POST", "/api/chat-optimized", json={**ask, "stream": True}) as streamed:
        c(streamed)
    c(client.post("/api/chat-optimized", json={"messages": []}))
    c(
        client.post(
            "/api/chat-optimized", content=b"x" * 2_000_000, headers={"content-type": "application/json"}
        )
    )
    c(client.post("/api/chat-optimized", json={**ask, "model": "no-such-model"}))
    c(client.put("/api/chat-optimized", json=ask))
    conversation = answer["conversation_id"]
    c(client.get(f"/api/conversations/{conversation}"))
    c(client.delete(f"/api/conversations/{conversation}"))
    c(client.get(f"/api/conversations/{conversation}"))
    c(client.get("/api/conversations/not-a-uuid"))

    accepted = c(client.post("/api/chat-queue", json={"messages": messages("queued schema check")})).json()
    request_id = accepted["request_id"]
    wait_status(client, request_id, "completed")
    c(client.get("/api/chat-queue", params={"requestId": request_id}))
    c(client.get("/api/chat-queue"))
    c(client.get("/api/chat-queue", params={"requestId": "nope"}))
    c(client.get("/api/chat-queue", params={"requestId": str(uuid.uuid4())}))
    c(client.delete("/api/chat-queue", params={"requestId": request_id}))
    with client.stream("GET", "/api/chat-queue/stream", params={"requestId": request_id}) as streamed:
        c(streamed)
    ollama.configure(token_delay=0.5, token_count=50)
    slow = c(client.post("/api/chat-queue", json={"messages": messages("to cancel")})).json()["request_id"]
    c(client.delete("/api/chat-queue", params={"requestId": slow}))
    ollama.configure(token_delay=0, token_count=8)

    c(client.get("/api/cache-stats"))
    c(client.get("/api/usage"))
    c(client.get("/api/usage", params={"window": "fortnight"}))
    c(client.post("/api/cache-stats", json={"action": "clear"}))
    c(client.get("/metrics"))

    c(client.post("/api/chat", json={"model": "llama3.2:1b", **ask, "stream": False}))
    with client.stream("POST", "/api/chat", json={"model": "llama3.2:1b", **ask}) as streamed:
        c(streamed)
    c(client.post("/api/chat", json={"model": "missing:latest", **ask, "stream": False}))
    c(client.post("/api/generate", json={"model": "llama3.2:1b", "prompt": "hi", "stream": False}))
    c(client.post("/api/embed", json={"model": "llama3.2:1b", "input": "hi"}))
    c(client.post("/api/show", json={"model": "llama3.2:1b"}))
    for name in ("tags", "ps", "version"):
        c(client.get(f"/api/{name}"))
    for refused in ("pull", "push", "create", "copy", "delete", "blobs/sha256:abc"):
        c(client.post(f"/api/{refused}", json={"model": "llama3.2:1b"}))
        c(client.delete(f"/api/{refused}"))

    c(client.post("/v1/chat/completions", json={"model": "llama3.2:1b", **ask}))
    with client.stream(
        "POST", "/v1/chat/completions", json={"model": "llama3.2:1b", **ask, "stream": True}
    ) as s:
        c(s)
    c(client.post("/v1/chat/completions", json={"model": "llama3.2:1b", **ask, "n": 2}))
    c(client.get("/v1/models"))
    c(client.get("/v1/models/llama3.2:1b"))
    c(client.get("/v1/models/nosuch:1b"))
    c(client.post("/v1/completions", json={"model": "llama3.2:1b", "prompt": "hi"}))
    with client.stream(
        "POST", "/v1/completions", json={"model": "llama3.2:1b", "prompt": "hi", "stream": True}
    ) as s:
        c(s)
    c(client.post("/v1/responses", json={"model": "llama3.2:1b", "input": "hi"}))
    c(client.post("/v1/embeddings", json={"model": "llama3.2:1b", "input": "hi"}))
    c(client.post("/api/embeddings", json={"model": "llama3.2:1b", "prompt": "hi"}))
    message = {"model": "llama3.2:1b", "max_tokens": 16, "messages": messages("hi")}
    c(client.post("/v1/messages", json=message))
    with client.stream("POST", "/v1/messages", json={**message, "stream": True}) as s:
        c(s)
    c(client.post("/v1/messages", json={**message, "max_tokens": 0}))

    operations = {(t, m) for t, item in checker.document["paths"].items() for m in set(item) & set(METHODS)}
    exercised = {(t, m) for t, m, _ in checker.seen}
    assert operations <= exercised, f"documented but never exercised: {sorted(operations - exercised)}"


@pytest.mark.timeout(900)  # about 2,800 cases: minutes on a loaded 2-core machine (its own bound below)
def test_schemathesis_finds_no_server_errors_or_schema_violations(start_server, tmp_path) -> None:
    """Fuzz every documented operation of a live server: examples, coverage, fuzzing and stateful
    phases, valid and invalid input. Every answer is checked: no 5xx, status, content type and body
    as documented, and input the document calls invalid is rejected."""
    server = start_server(ADMIN_TOKEN="fuzz-operator-token", QUEUE_MAX_QUEUE_SIZE=10000)
    examples = os.environ.get("FUZZ_EXAMPLES", "40")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            "tests/schemathesis.toml",
            "run",
            f"{server.url}/api/schema",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,negative_data_rejection",
            "--max-examples",
            examples,
            "--seed",
            "20261130",
            "--request-timeout",
            "30",
            "--header",
            "X-Admin-Token: fuzz-operator-token",
            "--generation-database",
            "none",
            "--report",
            "junit",
            "--report-junit-path",
            str(tmp_path / "junit.xml"),
            "--no-color",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout
    assert result.returncode == 0, f"schemathesis found problems:\n{output[-8000:]}\n{result.stderr[-2000:]}"
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    assert cases and cases.group(1) == cases.group(2) and int(cases.group(1)) > 500, output[-3000:]
