"""The production image under the rules of Cloud Run, OpenShift and the other image platforms:
read-only root filesystem, an arbitrary non-root UID with group 0, the port from $PORT."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.containers import dockerkit

PROD_TAG = "genai-test/genai-service:prod"  # the tag tests/containers builds: one build for both


@pytest.fixture(scope="module")
def production_image() -> str:
    dockerkit.require_engine()
    dockerkit.build(
        dockerkit.ROOT, PROD_TAG, target="production", build_args=dockerkit.local_build_args()
    )
    return PROD_TAG


@pytest.fixture
def container() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        dockerkit.docker("rm", "-f", "-v", name, check=False)


def test_image_runs_read_only_as_an_arbitrary_uid_on_port(
    production_image: str, container: list[str]
) -> None:
    models: Path = dockerkit.models_dir()
    model = next(models.glob("*.gguf")).name
    name = f"genai-test-platform-{uuid.uuid4().hex[:8]}"
    container.append(name)
    dockerkit.docker(
        "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--user", "12345:0",
        "--cap-drop", "ALL", "-p", "127.0.0.1::9090", "-e", "PORT=9090",
        "-e", "LOG_JSON=true", "-e", "N_CTX=512", "-e", "N_THREADS=1",
        "-v", f"{models}:/models:ro", "-e", f"MODEL=/models/{model}", production_image,
    )  # fmt: skip
    port = dockerkit.docker("port", name, "9090/tcp").stdout.split()[0]
    base = f"http://{port}"
    dockerkit.wait_http(f"{base}/health/ready", timeout=180)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    served = client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=served, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    assert dockerkit.docker("exec", name, "id", "-u").stdout.strip() == "12345"
    logs = dockerkit.docker("logs", name)
    lines = [line for line in (logs.stdout + logs.stderr).splitlines() if line.strip()]
    events = [json.loads(line) for line in lines if is_json_object(line)]
    assert any(e.get("event") == "request" and e.get("status") == 200 for e in events), lines
    # Known gap (README): the CLI's start-up banner and uvicorn's own lines are still plain text.
    not_json = [line for line in lines if not is_json_object(line)]
    assert all(
        "Uvicorn" in line or "uvicorn" in line or line.startswith(("INFO:", "genai-service "))
        for line in not_json
    ), not_json


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


LAMBDA_TAG = "genai-test/genai-service:lambda"

INVOKE = """
import json, sys
import awslambdaric  # the entry point the image runs
import handler  # init: the model loads here, once
for event in json.load(sys.stdin):
    result = handler.handler(event, None)
    print(json.dumps({"statusCode": result["statusCode"], "body": result["body"]}))
"""


def test_lambda_image_builds_and_its_handler_serves(
    production_image: str, container: list[str]
) -> None:
    from tests.deploy.test_aws_lambda import function_url_event, http_api_event

    dockerkit.build(
        dockerkit.ROOT,
        LAMBDA_TAG,
        dockerfile=dockerkit.ROOT / "deploy/aws-lambda/Dockerfile",
        build_args={
            "SERVICE_IMAGE": production_image,
            "PYTHON_IMAGE": dockerkit.local_build_args()["PYTHON_IMAGE"],
        },
    )
    config = json.loads(dockerkit.docker("image", "inspect", LAMBDA_TAG).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["python", "-m", "awslambdaric"]
    assert config["Cmd"] == ["handler.handler"]

    models: Path = dockerkit.models_dir()
    model = next(models.glob("*.gguf")).name
    body = json.dumps({"prompt": "Hi", "max_tokens": 2}).encode()
    events = [
        http_api_event("POST", "/generate/text", body),
        function_url_event("POST", "/v1/chat/completions", b"{not json"),
    ]
    # As Lambda runs it: read-only but /tmp, an arbitrary user, the model from a mount.
    result = dockerkit.docker(
        "run", "--rm", "-i", "--read-only", "--tmpfs", "/tmp", "--user", "993:0",
        "-v", f"{models}:/models:ro", "-e", f"MODEL=/models/{model}", "-e", "N_CTX=512",
        "-e", "N_THREADS=1", "--entrypoint", "python", LAMBDA_TAG, "-c", INVOKE,
        input=json.dumps(events).encode(), timeout=180,
    )  # fmt: skip
    replies = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["statusCode"] for r in replies] == [200, 400]
    assert json.loads(replies[0]["body"])["usage"]["completion_tokens"] >= 1
