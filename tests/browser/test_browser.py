"""The chat page and the admin in a real browser, against daphne and the emulator."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from django.contrib.auth.models import User
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from queueing.models import Job, Status
from tests.browser.conftest import screenshot
from tests.fake_ollama import reply_tokens, thinking_count, thinking_tokens
from tests.helpers import messages, ollama_body, wait_for


def ask(browser, text: str) -> None:
    box = browser.find_element(By.ID, "prompt")
    box.send_keys(text)
    browser.find_element(By.ID, "send").click()


def last_answer(browser) -> str:
    answers = browser.find_elements(By.CSS_SELECTOR, ".assistant .content")
    return answers[-1].text if answers else ""


def test_page_streams_token_by_token_then_shows_cached(browser, server, ollama):
    ollama.configure(token_delay=0.15, token_count=20)
    browser.get(server.url + "/")
    ask(browser, "Tell me a story")
    lengths = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and browser.find_element(By.ID, "send").get_attribute("disabled"):
        lengths.append(len(last_answer(browser)))
        time.sleep(0.05)
    expected = "".join(reply_tokens(ollama_body("Tell me a story"), 20))
    WebDriverWait(browser, 10).until(lambda b: last_answer(b) == expected)
    growth = sorted(set(lengths))
    assert len(growth) >= 5, f"the answer grew in {len(growth)} steps: {growth}"  # not all at once

    browser.get(server.url + "/")  # a new page: a new conversation, same question
    ask(browser, "Tell me a story")
    WebDriverWait(browser, 10).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, ".assistant .badge.cached"))
    )
    assert last_answer(browser) == expected
    assert ollama.calls_for(ollama_body("Tell me a story")) == 1
    screenshot(browser, "chat-page")


def test_page_shows_thinking_collapsed_then_the_answer(browser, server, ollama):
    browser.get(server.url + "/")
    browser.find_element(By.TAG_NAME, "summary").click()  # open Settings
    browser.find_element(By.ID, "model").send_keys("deepseek-r1:8b")  # thinks by default
    ask(browser, "Think first")
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "status").text == "" and last_answer(b) != ""
    )
    block = browser.find_element(By.CSS_SELECTOR, ".assistant details.thinking")
    assert block.get_attribute("open") is None  # collapsed
    assert block.find_element(By.TAG_NAME, "summary").text == "Thought"
    sent = ollama.generations_received()[-1]
    assert block.get_attribute("textContent").endswith(
        "".join(thinking_tokens(sent.body, thinking_count(True, 6)))
    )
    assert last_answer(browser) == "".join(reply_tokens(sent.body, 8))
    screenshot(browser, "chat-page-thinking")


def test_stop_button_cancels_the_upstream_generation(browser, server, ollama):
    ollama.configure(token_delay=0.2, token_count=100)
    browser.get(server.url + "/")
    ask(browser, "A very long answer please")
    WebDriverWait(browser, 10).until(lambda b: last_answer(b) != "")
    browser.find_element(By.ID, "stop").click()
    stopped = time.monotonic()
    wait_for(lambda: ollama.stats()["in_flight"] == 0, timeout=1, interval=0.01, what="upstream to close")
    assert time.monotonic() - stopped < 1
    assert browser.find_element(By.ID, "status").text == "Stopped."


def test_queue_position_and_errors_in_words(browser, server, ollama):
    ollama.configure(first_token_delay=3, token_count=2)
    with server.client() as client:
        client.post("/api/chat-queue", json={"messages": messages("occupies the slot")})
    wait_for(lambda: ollama.stats()["in_flight"] == 1)
    browser.get(server.url + "/")
    ask(browser, "I will wait")
    WebDriverWait(browser, 10).until(
        lambda b: "Waiting in the queue: position 1" in b.find_element(By.ID, "status").text
    )
    WebDriverWait(browser, 20).until(lambda b: last_answer(b) != "")
    ollama.configure(fault="refuse")
    browser.get(server.url + "/")
    ask(browser, "Is anyone there?")
    WebDriverWait(browser, 10).until(lambda b: "Error:" in b.find_element(By.ID, "status").text)
    assert "unreachable" in browser.find_element(By.ID, "status").text


class _OtherOrigin:
    """A page on another origin (another port) that calls the API from the browser."""

    PAGE = """<!doctype html><p id="result">pending</p><script>
      fetch("%s/api/chat-queue").then(r => r.json())
        .then(d => document.getElementById("result").textContent = "allowed " + d.queue_length)
        .catch(e => document.getElementById("result").textContent = "refused");
    </script>"""

    def __init__(self) -> None:
        self.api = ""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (outer.PAGE % outer.api).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.mark.parametrize("allowed", [True, False])
def test_other_origin_needs_the_cors_allow_list(browser, start_server, allowed):
    other = _OtherOrigin()
    server = start_server(CORS_ALLOWED_ORIGINS=other.url if allowed else "https://somewhere.else")
    other.api = server.url
    try:
        browser.get(other.url + "/")
        WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "result").text != "pending")
        assert browser.find_element(By.ID, "result").text == ("allowed 0" if allowed else "refused")
    finally:
        other.httpd.shutdown()


def admin_login(browser, url: str, username: str, password: str) -> None:
    browser.get(url + "/admin/login/")
    browser.find_element(By.NAME, "username").send_keys(username)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def test_staff_cancels_a_queued_request_in_the_admin(browser, server, ollama, transactional_db):
    User.objects.create_superuser("ops", "ops@example.org", "pw-ops-123")
    User.objects.create_user("eve", password="pw-eve-123")
    ollama.configure(first_token_delay=30, token_count=1)
    with server.client() as client:
        client.post("/api/chat-queue", json={"messages": messages("occupies the slot")})
        wait_for(lambda: ollama.stats()["in_flight"] == 1)
        waiting = [
            client.post("/api/chat-queue", json={"messages": messages(f"waiting {i}")}).json()
            for i in range(2)
        ]
    browser.delete_all_cookies()
    admin_login(browser, server.url, "eve", "pw-eve-123")
    WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".errornote")))
    assert "staff account" in browser.find_element(By.CSS_SELECTOR, ".errornote").text  # not staff

    browser.delete_all_cookies()
    admin_login(browser, server.url, "ops", "pw-ops-123")
    WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.ID, "user-tools")))
    browser.get(server.url + "/admin/queueing/job/?status__exact=pending")
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    positions = sorted(r.find_element(By.CSS_SELECTOR, "td.field-position").text for r in rows)
    assert positions == ["1", "2"]
    screenshot(browser, "admin-queue")
    target = waiting[1]["request_id"]
    browser.find_element(By.CSS_SELECTOR, f"input.action-select[value='{target}']").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("cancel_selected")
    browser.find_element(By.CSS_SELECTOR, "button[name=index]").click()
    WebDriverWait(browser, 10).until(ec.presence_of_element_located((By.CSS_SELECTOR, "ul.messagelist")))
    assert browser.find_element(By.CSS_SELECTOR, "ul.messagelist").text == "Cancelled 1 request(s)."
    assert Job.objects.get(id=target).status == Status.CANCELLED
    assert Job.objects.get(id=waiting[0]["request_id"]).status == Status.PENDING
    ollama.configure(fault="refuse")  # let the long first generation go


def test_ui_can_be_turned_off(start_server):
    server = start_server(UI_ENABLED="false")
    with server.client() as client:
        assert client.get("/").status_code == 404
