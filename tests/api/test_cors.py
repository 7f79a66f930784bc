"""CORS: only origins on the allowlist get CORS headers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import RunningServer, run_server

ALLOWED = "https://app.example.com"


@pytest.fixture(scope="module")
def cors_server() -> Iterator[RunningServer]:
    with run_server(allowed_cors_origins=f"{ALLOWED},https://admin.example.com") as running:
        yield running


def test_allowed_origin_gets_headers(cors_server: RunningServer) -> None:
    with cors_server.http() as http:
        response = http.get("/v1/models", headers={"Origin": ALLOWED})
        preflight = http.options(
            "/v1/chat/completions",
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED


def test_other_origin_gets_none(cors_server: RunningServer) -> None:
    with cors_server.http() as http:
        response = http.get("/v1/models", headers={"Origin": "https://evil.example.net"})
        preflight = http.options(
            "/v1/chat/completions",
            headers={"Origin": "https://evil.example.net", "Access-Control-Request-Method": "POST"},
        )
    assert "access-control-allow-origin" not in response.headers
    assert preflight.status_code == 400


def test_no_cors_without_allowlist(server: RunningServer) -> None:
    with server.http() as http:
        response = http.get("/v1/models", headers={"Origin": ALLOWED})
    assert "access-control-allow-origin" not in response.headers


def test_a_preflight_with_the_openai_js_sdk_headers_passes(cors_server: RunningServer) -> None:
    # What openai-node (with dangerouslyAllowBrowser) asks for before each POST.
    sdk_headers = [
        "authorization",
        "content-type",
        "openai-organization",
        "openai-project",
        "x-api-key",
        *(
            f"x-stainless-{name}"
            for name in (
                "lang",
                "package-version",
                "os",
                "arch",
                "runtime",
                "runtime-version",
                "retry-count",
                "timeout",
                "helper-method",
            )
        ),
    ]
    with cors_server.http() as http:
        preflight = http.options(
            "/v1/chat/completions",
            headers={
                "Origin": ALLOWED,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": ",".join(sdk_headers),
            },
        )
    assert preflight.status_code == 200, preflight.text
    allowed = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert set(sdk_headers) <= allowed
