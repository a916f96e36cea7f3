"""One declaration per body: the document's schemas are the models the server validates with.

In process (no server): the views' declared models, the OpenAPI document generated from them, and
the four drifts a review found between the old hand-written validation and the hand-written document.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from core.errors import BadRequest
from gateway.openapi import declared_endpoints, document
from gateway.schemas import ChatOptimizedBody, EmbedBody, OllamaChatBody, ShowBody, validate

REF = "#/components/schemas/{model}"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def accepts(doc: dict[str, Any], component: str, value: Any) -> bool:
    schema = {**doc["components"]["schemas"][component], "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def server_accepts(model: Any, value: Any) -> bool:
    try:
        validate(model, json.dumps(value))
    except BadRequest:
        return False
    return True


def test_every_documented_body_is_the_schema_of_the_model_the_view_validates_with(doc):
    checked = 0
    for route, endpoint in declared_endpoints():
        for method, model in endpoint.body.items():
            operation = doc["paths"][route][method.lower()]
            assert operation["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": REF.format(model=model.__name__)
            }, f"{method} {route}"
            generated = model.model_json_schema(ref_template=REF)
            generated.pop("$defs", None)
            assert doc["components"]["schemas"][model.__name__] == generated, f"{method} {route}"
            checked += 1
    assert checked >= 7  # chat-optimized, queue, chat, generate, embed, show, completions, cache-stats


def test_every_query_parameter_comes_from_the_declared_model(doc):
    for route, endpoint in declared_endpoints():
        for method, query in endpoint.query.items():
            if method == "HEAD":
                continue  # documented as its GET
            documented = {p["name"]: p["schema"] for p in doc["paths"][route][method.lower()]["parameters"]}
            assert documented == query.model_json_schema()["properties"], f"{method} {route}"


def test_keep_alive_in_microseconds_is_accepted_by_both(doc):
    body = {"model": "llama3.2:1b", "messages": [], "keep_alive": "5µs"}
    assert accepts(doc, "OllamaChatBody", body)
    assert server_accepts(OllamaChatBody, body)


def test_a_model_name_with_two_dots_is_refused_by_both(doc):
    body = {"model": "a..b", "messages": []}
    assert not accepts(doc, "OllamaChatBody", body)
    assert not server_accepts(OllamaChatBody, body)
    fine = {"model": "a.b:1.5", "messages": []}
    assert accepts(doc, "OllamaChatBody", fine) and server_accepts(OllamaChatBody, fine)


def test_embed_input_limits_are_the_servers(doc):
    schema = doc["components"]["schemas"]["EmbedBody"]["properties"]["input"]
    as_list = next(s for s in schema["anyOf"] if s.get("type") == "array")
    too_many = {"model": "m", "input": ["x"] * (as_list["maxItems"] + 1)}
    assert not accepts(doc, "EmbedBody", too_many) and not server_accepts(EmbedBody, too_many)
    most = {"model": "m", "input": ["x"] * as_list["maxItems"]}
    assert accepts(doc, "EmbedBody", most) and server_accepts(EmbedBody, most)


def test_show_by_name_is_documented_and_accepted(doc):
    assert "name" in doc["components"]["schemas"]["ShowBody"]["properties"]
    assert accepts(doc, "ShowBody", {"name": "llama3.2:1b"})
    assert validate(ShowBody, b'{"name": "llama3.2:1b"}').model_name == "llama3.2:1b"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"model": "m", "messages": [{"role": "user", "content": "x\\u0000"}]}', "invalid_text"),
        (b'{"model": "m", "format": {"a": NaN}}', "invalid_json"),
        (b'{"model": "m", "options": {"temperature": Infinity}}', "invalid_json"),
        (b'{"model": "m", "messages": [{"role": "robot"}]}', "invalid_role"),
        (b'{"model": "m", "think": "hard"}', "invalid_think"),
        (b'{"model": "m", "options": {"num_ctx": "big"}}', "invalid_options"),
        (b"[]", "invalid_json"),
    ],
)
def test_checks_live_in_the_models(raw, code):
    with pytest.raises(BadRequest) as refused:
        validate(OllamaChatBody, raw)
    assert refused.value.code == code


def test_our_surface_refuses_unknown_fields_where_ollamas_ignores_them():
    for field in ("surprise", "x-unknown-property"):
        with pytest.raises(BadRequest) as refused:
            validate(
                ChatOptimizedBody, json.dumps({"messages": [{"role": "user", "content": "x"}], field: 1})
            )
        assert refused.value.code == "unknown_field"
        # Ollama's JSON decoding ignores fields it does not know; so does its surface here.
        assert "surprise" not in validate(OllamaChatBody, json.dumps({"model": "m", field: 1})).model_dump()


def test_options_as_ollama_reads_them():
    raw = {
        "model": "m",
        "options": {"temperature": None, "num_ctx": 4096.0, "num_thread": 2, "use_mlock": True, "tfs_z": 1},
    }
    body = validate(OllamaChatBody, json.dumps(raw))
    assert body.options is not None
    # A null is absent, an option Ollama dropped (use_mlock, tfs_z) is ignored, a float int is kept.
    assert body.options.native() == {"num_ctx": 4096.0, "num_thread": 2}


def test_free_form_values_are_bounded_in_depth():
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(40):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(BadRequest) as refused:
        validate(OllamaChatBody, json.dumps({"model": "m", "format": nested}))
    assert refused.value.code == "invalid_json"
