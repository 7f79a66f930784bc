"""The playground page: its routes and headers, and a real headless Chromium using it.

The browser test drives Debian's `chromium` through `chromium-driver` (Selenium) against a real
server with the real model: it loads the page, lists the models with an API key typed into the
page, streams a reply, stops it, and checks that the server freed the slot at once.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from genai_service import metrics
from genai_service.api.routes.playground import CONTENT_SECURITY_POLICY
from genai_service.app import create_app
from tests.conftest import MODEL_ID, RunningServer, make_settings, run_server
from tests.conftest import wait_for as _wait

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "playground.png"
KEY = "playground-test-key"


def _client(**overrides: object) -> TestClient:
    # No `with`: the lifespan (the model load) never runs; these routes need no model.
    return TestClient(create_app(make_settings(**overrides)), follow_redirects=False)


def test_page_and_assets_are_served_with_a_strict_policy() -> None:
    client = _client(api_keys=[KEY])
    root = client.get("/")
    assert root.status_code == 307 and root.headers["location"] == "playground"
    page = client.get("/playground")  # no API key needed for the page itself
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    html = page.text
    # Offline: nothing is loaded from another origin (no CDN, no web font).
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for asset, kind in (("playground.css", "text/css"), ("playground.js", "text/javascript")):
        assert f"playground/{asset}" in html
        response = client.get(f"/playground/{asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        assert "http://" not in response.text and "https://" not in response.text
        assert "@import" not in response.text and "url(" not in response.text
    script = client.get("/playground/playground.js").text
    assert "localStorage" not in script.replace("never in localStorage", "")
    assert "sessionStorage" not in script.replace("sessionStorage or a cookie", "")
    assert client.get("/playground/../app.py").status_code == 404


@pytest.mark.parametrize(
    ("overrides", "served"),
    [
        ({}, True),
        ({"playground": False}, False),
        ({"build_env": "PROD"}, False),
        ({"build_env": "PROD", "playground": True}, True),
    ],
)
def test_playground_setting(overrides: dict[str, object], served: bool) -> None:
    client = _client(**overrides)
    assert (client.get("/playground").status_code == 200) is served
    assert (client.get("/").status_code == 307) is served
    assert client.get("/health/live").status_code == 200


def test_package_data_ships_the_page() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"web/*"' in text
    web = ROOT / "src" / "genai_service" / "web"
    assert {p.name for p in web.iterdir()} >= {"index.html", "playground.css", "playground.js"}


# --- the real browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_server() -> Iterator[RunningServer]:
    with run_server(api_keys=[KEY], n_threads=1, n_ctx=512) as running:
        yield running


def _cancelled() -> float:
    return metrics.REQUESTS.labels(MODEL_ID, "cancelled")._value.get()


def test_chat_stream_and_stop_in_chromium(browser: Any, page_server: RunningServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = browser
    find = driver.find_element
    js = driver.execute_script
    engine = page_server.state.find(MODEL_ID)
    assert engine is not None

    driver.get(f"{page_server.base_url}/")
    assert driver.current_url == f"{page_server.base_url}/playground"
    assert driver.title == "genai-service playground"

    # API keys are on: the page loads, the model list asks for a key.
    status = find(By.ID, "status")
    _wait(lambda: "API key" in status.text, 10, "the 401 hint")

    # Every control has an accessible name (a <label>, or text for buttons).
    unlabelled = js(
        "return [...document.querySelectorAll('input, select, textarea, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.textContent.trim()"
        " && !e.getAttribute('aria-label')).map(e => e.id)"
    )
    assert unlabelled == []

    # The key, typed in, lists the models; it is kept nowhere but the page.
    find(By.ID, "api-key").send_keys(KEY, Keys.TAB)
    _wait(lambda: js("return document.getElementById('model').value") == MODEL_ID, 10, "models")
    assert js("return localStorage.length + sessionStorage.length + document.cookie.length") == 0

    # Keyboard only: fill the settings and send with Enter.
    temperature = find(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    max_tokens = find(By.ID, "max-tokens")
    max_tokens.clear()
    max_tokens.send_keys("300")
    find(By.ID, "system").send_keys("You are a storyteller who writes long stories.")
    cancelled = _cancelled()
    message = find(By.ID, "message")
    message.send_keys("Tell me a long story about a dragon and a knight.", Keys.ENTER)

    reply = _wait(
        lambda: driver.find_elements(By.CSS_SELECTOR, ".msg.assistant"),
        5,
        "the reply",
    )[0]
    content = reply.find_element(By.CLASS_NAME, "content")
    first = _wait(lambda: content.text, 20, "the first tokens")
    # Tokens keep arriving while the reply is still streaming: output is incremental.
    _wait(lambda: len(content.text) > len(str(first)) + 10, 20, "more tokens")
    assert reply.get_attribute("data-state") == "streaming"
    assert page_server.state.limiter.active == 1
    assert find(By.ID, "log").get_attribute("aria-busy") == "true"

    message.send_keys(Keys.ESCAPE)  # stop from the keyboard (the Stop button does the same)
    _wait(lambda: reply.get_attribute("data-state") == "stopped", 5, "the stopped state")
    # The server saw the disconnect and freed the slot and the engine's sequence at once.
    _wait(lambda: page_server.state.limiter.active == 0, 5, "the slot to be freed")
    _wait(lambda: engine.active == 0, 5, "the engine sequence to end")
    _wait(lambda: _cancelled() == cancelled + 1, 5, "the cancelled outcome")
    assert "stopped" in reply.find_element(By.CLASS_NAME, "stats").text

    # A new chat: a full reply shows token counts, TTFT and speed.
    find(By.ID, "clear").click()
    max_tokens.clear()
    max_tokens.send_keys("48")
    find(By.ID, "system").clear()
    message.send_keys("Write a haiku about the sea.", Keys.ENTER)
    reply = _wait(lambda: driver.find_elements(By.CSS_SELECTOR, ".msg.assistant"), 5, "reply")[0]
    _wait(lambda: reply.get_attribute("data-state") == "done", 30, "a complete reply")
    stats = reply.find_element(By.CLASS_NAME, "stats").text
    counts = re.search(r"(\d+) prompt \+ (\d+) completion tokens", stats)
    assert counts and int(counts[1]) > 5 and 0 < int(counts[2]) <= 48, stats
    assert re.search(r"TTFT \d+ ms", stats) and re.search(r"[\d.]+ tok/s", stats), stats
    assert reply.find_element(By.CLASS_NAME, "content").text.strip()

    # JSON mode, on the next turn of the same chat: the reply is a JSON object.
    find(By.ID, "json-mode").send_keys(Keys.SPACE)  # a checkbox toggles from the keyboard
    assert find(By.ID, "json-mode").is_selected()
    message.send_keys("Describe Paris as JSON with a name and a country.", Keys.ENTER)
    reply = _wait(
        lambda: (
            (r := driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")) and len(r) == 2 and r[1]
        ),
        5,
        "the JSON reply",
    )
    _wait(lambda: reply.get_attribute("data-state") == "done", 30, "the JSON reply to end")
    assert reply.find_element(By.CLASS_NAME, "content").text.lstrip().startswith("{")
    assert page_server.state.limiter.active == 0

    # The screenshot the README shows: refreshed when missing or on request.
    shot = Path(tempfile.gettempdir()) / "genai-playground.png"
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not SCREENSHOT.exists() or os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
