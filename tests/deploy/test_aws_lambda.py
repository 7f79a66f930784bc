"""deploy/aws-lambda: handler.py's `handler(event, context)` driven with real event payloads.

The events are API Gateway HTTP API (payload format 2.0) and Lambda Function URL events, as
AWS documents them; the handler runs in this process, as the Lambda Python runtime runs it:
the module is imported once (the init phase), then `handler` is called per invocation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import MODEL_ID
from tests.deploy.conftest import DEPLOY, CfnLoader, close_loop, engines, load_entry_point, tool

FOLDER = DEPLOY / "aws-lambda"


@dataclass
class LambdaContext:
    function_name: str = "genai-service"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:genai-service"
    memory_limit_in_mb: int = 3008
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    log_group_name: str = "/aws/lambda/genai-service"
    log_stream_name: str = "2026/11/25/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def http_api_event(method: str, path: str, body: bytes = b"", query: str = "") -> dict[str, Any]:
    """An API Gateway HTTP API event, payload format version 2.0 (route `ANY /{proxy+}`)."""
    return {
        "version": "2.0",
        "routeKey": "ANY /{proxy+}",
        "rawPath": path,
        "rawQueryString": query,
        "cookies": [],
        "headers": {
            "accept": "*/*",
            "content-length": str(len(body)),
            "content-type": "application/json",
            "host": "r3pmxmplak.execute-api.eu-west-1.amazonaws.com",
            "user-agent": "curl/8.5.0",
            "x-amzn-trace-id": "Root=1-5e6722a7-cc56xmpl46db7ae02d4da47e",
            "x-forwarded-for": "203.0.113.10",
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        },
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "r3pmxmplak",
            "domainName": "r3pmxmplak.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "r3pmxmplak",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "JKJaXmPLvHcESHA=",
            "routeKey": "ANY /{proxy+}",
            "stage": "$default",
            "time": "25/Nov/2026:14:50:00 +0000",
            "timeEpoch": 1795618200000,
        },
        "pathParameters": {"proxy": path.lstrip("/")},
        "body": body.decode(),
        "isBase64Encoded": False,
    }


def function_url_event(method: str, path: str, body: bytes = b"") -> dict[str, Any]:
    """A Lambda Function URL event: payload 2.0, route `$default`, a base64-encoded body."""
    host = "abcdefg6hijklmno4pqrstu2vwx.lambda-url.eu-west-1.on.aws"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": host,
            "x-amzn-tls-version": "TLSv1.3",
            "x-forwarded-for": "203.0.113.10",
            "x-forwarded-proto": "https",
            "x-forwarded-port": "443",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefg6hijklmno4pqrstu2vwx",
            "domainName": host,
            "domainPrefix": "abcdefg6hijklmno4pqrstu2vwx",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.10",
                "userAgent": "python-httpx",
            },
            "requestId": "b1c2d3e4-0000-4000-8000-000000000000",
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:14:50:00 +0000",
            "timeEpoch": 1795618200000,
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


@dataclass
class Runtime:
    module: ModuleType
    init_s: float

    def invoke(self, event: dict[str, Any]) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        result = self.module.handler(event, LambdaContext())
        return result, time.perf_counter() - started


def body_of(result: dict[str, Any]) -> Any:
    raw = result["body"]
    if result.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


@pytest.fixture(scope="module")
def runtime() -> Iterator[Runtime]:
    # The handler makes its loop this thread's current one; later tests get theirs back.
    previous = getattr(getattr(asyncio.get_event_loop_policy(), "_local", None), "_loop", None)
    started = time.perf_counter()
    module = load_entry_point(FOLDER / "handler.py", "deploy_aws_lambda_handler", {})
    init_s = time.perf_counter() - started
    try:
        yield Runtime(module, init_s)
    finally:
        module.lifespan.shutdown()
        close_loop(module.loop)
        asyncio.set_event_loop(previous)


def test_init_loads_the_model_once_and_the_first_invocation_is_served(runtime: Runtime) -> None:
    assert runtime.module.fastapi_app.state.service.ready  # the init phase waited for it
    loaded = engines(runtime.module)
    payload = json.dumps({"prompt": "Name a fruit.", "max_tokens": 4, "temperature": 0})
    first, first_s = runtime.invoke(http_api_event("POST", "/generate/text", payload.encode()))
    assert first["statusCode"] == 200, first
    assert body_of(first)["usage"]["completion_tokens"] >= 1

    chat = json.dumps(
        {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    ).encode()
    warm_times = []
    for _ in range(2):
        warm, warm_s = runtime.invoke(function_url_event("POST", "/v1/chat/completions", chat))
        assert warm["statusCode"] == 200, warm
        assert body_of(warm)["choices"][0]["message"]["content"]
        warm_times.append(warm_s)
    assert engines(runtime.module) == loaded  # the same engine objects: no reload
    assert max(warm_times) < runtime.init_s
    print(
        f"aws lambda: init {runtime.init_s:.2f}s, first {first_s:.3f}s, "
        f"warm {', '.join(f'{t:.3f}s' for t in warm_times)}"
    )


@pytest.mark.parametrize("make_event", [http_api_event, function_url_event])
def test_bad_json_is_an_openai_400(runtime: Runtime, make_event: Any) -> None:
    result, _ = runtime.invoke(make_event("POST", "/v1/chat/completions", b'{"messages": ['))
    assert result["statusCode"] == 400
    assert body_of(result)["error"]["code"] == "invalid_json"


def test_query_string_and_get_routes(runtime: Runtime) -> None:
    result, _ = runtime.invoke(http_api_event("POST", "/generate/text", query="prompt=Hi"))
    assert result["statusCode"] == 200, result
    models, _ = runtime.invoke(http_api_event("GET", "/v1/models"))
    assert [m["id"] for m in body_of(models)["data"]] == [MODEL_ID]
    assert result["headers"]["x-request-id"]


def test_stream_true_is_buffered_into_one_response(runtime: Runtime) -> None:
    chat = json.dumps(
        {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Count."}],
            "max_tokens": 6,
            "stream": True,
        }
    ).encode()
    result, _ = runtime.invoke(function_url_event("POST", "/v1/chat/completions", chat))
    assert result["statusCode"] == 200
    assert result["headers"]["content-type"].startswith("text/event-stream")
    text = result["body"]
    if result.get("isBase64Encoded"):
        text = base64.b64decode(text).decode()
    assert text.rstrip().endswith("data: [DONE]")


def test_sam_template_passes_cfn_lint(tmp_path: Path) -> None:
    # `sam validate --lint` is cfn-lint with the SAM transform; cfn-lint runs it offline.
    template = FOLDER / "template.yaml"
    result = subprocess.run(
        [tool("cfn-lint"), str(template)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # ... and it does find mistakes: a reference to a resource that does not exist.
    broken = tmp_path / "template.yaml"
    broken.write_text(template.read_text().replace("GenAIFunctionUrl.FunctionUrl", "Nope.Url"))
    result = subprocess.run([tool("cfn-lint"), str(broken)], capture_output=True, text=True)
    assert result.returncode != 0 and "Nope" in result.stdout


def test_sam_template_shape() -> None:
    template = yaml.load((FOLDER / "template.yaml").read_text(), Loader=CfnLoader)
    function = template["Resources"]["GenAIFunction"]["Properties"]
    limits = template["Globals"]["Function"]
    assert limits["Timeout"] <= 900 and limits["MemorySize"] >= 1024
    assert function["PackageType"] == "Image"
    assert function["FunctionUrlConfig"]["AuthType"] in {"NONE", "AWS_IAM"}
    env = function["Environment"]["Variables"]
    assert env["OPENAI_API_TOKEN"].startswith("{{resolve:secretsmanager:")  # never in the template
    assert env["DATA_DIR"].startswith("/tmp/")
    assert function["Events"]["HttpApi"]["Type"] == "HttpApi"


def test_lambda_image_dockerfile_lints_and_runs_awslambdaric() -> None:
    dockerfile = FOLDER / "Dockerfile"
    result = subprocess.run(
        [tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert 'ENTRYPOINT ["python", "-m", "awslambdaric"]' in text
    assert 'CMD ["handler.handler"]' in text
