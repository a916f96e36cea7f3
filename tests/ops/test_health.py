"""/health through daphne: the design document's shape, the deep checks, JSON for every framework error."""

from __future__ import annotations

import httpx


def test_health_is_the_documented_shape(server):
    r = httpx.get(f"{server.url}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "healthy"}
    assert r.headers["X-Request-ID"]


def test_deep_health_checks_every_part(server, ollama):
    r = httpx.get(f"{server.url}/health", params={"deep": "1"}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "healthy", body
    assert set(body["checks"]) == {
        "database",
        "response_cache",
        "conversation_cache",
        "channel_layer",
        "ollama",
    }
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["ollama"]["version"] == "0.12.6"


def test_deep_health_reports_ollama_unreachable_but_stays_up(server, ollama):
    ollama.configure(fault="refuse")
    r = httpx.get(f"{server.url}/health", params={"deep": "1"}, timeout=10)
    assert r.status_code == 200
    check = r.json()["checks"]["ollama"]
    assert check["ok"] is False and "unreachable" in check["error"]


def test_framework_errors_are_json(server):
    r = httpx.get(f"{server.url}/no/such/endpoint")
    assert r.status_code == 404
    assert r.json() == {"error": "No endpoint at /no/such/endpoint.", "code": "not_found"}
    r = httpx.post(f"{server.url}/health")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    assert r.headers["Allow"] == "GET, HEAD"


def test_request_id_is_propagated_to_logs(server):
    httpx.get(f"{server.url}/no/such/thing", headers={"X-Request-ID": "trace-abc-123"})
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert "[trace-abc-123] Not Found: /no/such/thing" in server.log


def test_public_deep_health_names_what_failed_but_not_where(server, ollama):
    ollama.configure(fault="refuse")
    r = httpx.get(f"{server.url}/health", params={"deep": "1"}, timeout=10)
    check = r.json()["checks"]["ollama"]
    assert check["ok"] is False and "unreachable" in check["error"]
    assert ollama.url not in r.text and f":{ollama.port}" not in r.text and "http://" not in r.text, r.text
    assert [s["name"] for s in check["servers"]] == ["server 1"], r.text
