"""deploy/azure-functions: the real `azure.functions` objects drive function_app.py's `app`.

The test does what the Python worker does: it finds the function AsgiFunctionApp registered,
and calls it with `azure.functions.HttpRequest` objects on one long-lived event loop (the
worker's), with the real embedded SmolLM2 behind it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import azure.functions as func
import pytest

from tests.conftest import MODEL_ID
from tests.deploy.conftest import DEPLOY, close_loop, engines, load_entry_point

FOLDER = DEPLOY / "azure-functions"


@dataclass
class Context:
    """The attributes of azure.functions.Context that the ASGI bridge reads."""

    invocation_id: str = "00000000-0000-0000-0000-000000000001"
    function_name: str = "http_app_func"
    function_directory: str = str(FOLDER)
    thread_local_storage: Any = None
    trace_context: Any = None
    retry_context: Any = None


@dataclass
class Worker:
    module: ModuleType
    registered: Any  # the azure.functions Function the worker indexes
    function: Any  # its user function, the one the worker calls
    loop: asyncio.AbstractEventLoop

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        req = func.HttpRequest(
            method=method,
            url=f"https://genai.azurewebsites.net{path}",
            headers={"content-type": "application/json", "x-request-id": "az-test"},
            params={},
            route_params={"route": path.lstrip("/")},
            body=data,
        )
        started = time.perf_counter()
        response = self.loop.run_until_complete(self.function(req, Context()))
        return response, time.perf_counter() - started


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    module = load_entry_point(FOLDER / "function_app.py", "deploy_azure_function_app", {})
    app = module.app
    (function,) = app.get_functions()
    loop = asyncio.new_event_loop()
    try:
        yield Worker(module, function, function.get_user_function(), loop)
    finally:
        if app.startup_task_done:
            loop.run_until_complete(app.middleware.notify_shutdown())
            app.startup_task_done = False  # its __del__ would run the shutdown again
        close_loop(loop)


def test_function_app_is_an_asgi_function_app_on_every_route(worker: Worker) -> None:
    app = worker.module.app
    assert isinstance(app, func.AsgiFunctionApp)
    binding = json.loads(worker.registered.get_function_json())["bindings"][0]
    assert binding["type"] == "httpTrigger"
    assert binding["route"] == "/{*route}"
    assert binding["authLevel"].lower() == "anonymous"
    assert {"GET", "POST", "DELETE"} <= {m.upper() for m in binding["methods"]}


def test_cold_first_request_waits_for_the_model_then_warm_requests_reuse_it(
    worker: Worker,
) -> None:
    assert not worker.module.fastapi_app.state.service.ready  # nothing loads before a request
    cold, cold_s = worker.request(
        "POST", "/generate/text", {"prompt": "Name a fruit.", "max_tokens": 4, "temperature": 0}
    )
    assert cold.status_code == 200, cold.get_body()
    assert json.loads(cold.get_body())["usage"]["completion_tokens"] >= 1
    loaded = engines(worker.module)
    assert loaded

    warm_times = []
    for _ in range(2):
        warm, warm_s = worker.request(
            "POST",
            "/v1/chat/completions",
            {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        )
        assert warm.status_code == 200, warm.get_body()
        assert json.loads(warm.get_body())["choices"][0]["message"]["content"]
        warm_times.append(warm_s)
    assert engines(worker.module) == loaded  # the same engine objects: no reload
    assert max(warm_times) < cold_s
    print(f"azure functions: cold {cold_s:.2f}s, warm {', '.join(f'{t:.3f}s' for t in warm_times)}")


def test_bad_json_is_an_openai_400(worker: Worker) -> None:
    response, _ = worker.request("POST", "/v1/chat/completions", raw=b'{"messages": [')
    assert response.status_code == 400
    error = json.loads(response.get_body())["error"]
    assert error["code"] == "invalid_json" and error["type"]


def test_stream_true_comes_back_as_one_buffered_sse_body(worker: Worker) -> None:
    response, _ = worker.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 6,
            "stream": True,
        },
    )
    assert response.status_code == 200
    assert response.mimetype.startswith("text/event-stream")
    events = [e for e in response.get_body().decode().split("\n\n") if e.strip()]
    assert events[-1].strip() == "data: [DONE]"
    assert len(events) >= 3  # every chunk is there, delivered together at the end


def test_health_routes_answer(worker: Worker) -> None:
    live, _ = worker.request("GET", "/health/live")
    ready, _ = worker.request("GET", "/health/ready")
    assert live.status_code == 200 and ready.status_code == 200


def test_host_json_and_package_files() -> None:
    host = json.loads((FOLDER / "host.json").read_text())
    assert host["version"] == "2.0"
    assert host["extensions"]["http"]["routePrefix"] == ""
    local = json.loads((FOLDER / "local.settings.json.example").read_text())
    assert local["Values"]["FUNCTIONS_WORKER_RUNTIME"] == "python"
    requirements = (FOLDER / "requirements.txt").read_text()
    assert "azure-functions" in requirements and "genai-service" in requirements
    ignored = (FOLDER / ".funcignore").read_text().split()
    assert "local.settings.json" in ignored and ".venv" in ignored
