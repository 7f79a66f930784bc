"""/docs and /redoc work offline: Swagger UI and ReDoc come from the package, not a CDN.

Loaded in the same headless Chromium as the playground test; the browser's own network log
shows that every request went to the service.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import RunningServer, run_server
from tests.conftest import wait_for as wait
from tests.web.conftest import requested_urls


@pytest.fixture(scope="module")
def docs_server() -> Iterator[RunningServer]:
    # The pages need no model: the fake engine keeps this server cheap.
    from tests.fakes import FakeEngine

    with run_server(engine_factory=lambda _: FakeEngine()) as running:
        yield running


def _origins(urls: list[str]) -> set[str]:
    # data: and blob: URLs (inlined images, ReDoc's worker) never leave the page.
    return {
        f"{parts.scheme}://{parts.netloc}"
        for parts in map(urlsplit, urls)
        if parts.scheme not in ("data", "blob")
    }


def _console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_swagger_ui_renders_with_no_request_leaving_the_service(
    browser: Any, docs_server: RunningServer
) -> None:
    from selenium.webdriver.common.by import By

    requested_urls(browser)  # drop what earlier tests left in the logs
    _console_errors(browser)
    browser.get(f"{docs_server.base_url}/docs")
    operations = wait(
        lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"), 20, "operations"
    )
    paths = {op.get_attribute("data-path") or op.text for op in operations}
    assert {"/v1/chat/completions", "/v1/embeddings", "/generate/text"} <= paths
    urls = requested_urls(browser)
    assert f"{docs_server.base_url}/openapi.json" in urls
    assert _origins(urls) == {docs_server.base_url}, urls
    assert _console_errors(browser) == []


def test_redoc_renders_with_no_request_leaving_the_service(
    browser: Any, docs_server: RunningServer
) -> None:
    from selenium.webdriver.common.by import By

    requested_urls(browser)
    _console_errors(browser)
    browser.get(f"{docs_server.base_url}/redoc")
    wait(
        lambda: browser.find_elements(By.XPATH, "//*[contains(text(), 'Chat Completions')]"),
        20,
        "the ReDoc operations",
    )
    assert _origins(requested_urls(browser)) == {docs_server.base_url}
    # The one thing the page's policy stops: the "API docs by Redocly" logo from their CDN.
    errors = _console_errors(browser)
    assert all("cdn.redoc.ly/redoc/logo-mini.svg" in e for e in errors), errors
