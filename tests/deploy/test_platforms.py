"""Managed app platforms: the manifests' structure, and every code-based platform's start
command run here, answering on $PORT."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.deploy.conftest import DEPLOY, ROOT, SERVERLESS_ENV


def load(path: str) -> Any:
    return yaml.safe_load((DEPLOY / path).read_text())


def env_names(env: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in env}


# --- Cloud Run ------------------------------------------------------------------------------
def test_cloud_run_service() -> None:
    service = load("cloud-run/service.yaml")
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    spec = template["spec"]
    assert 1 <= spec["containerConcurrency"] <= 1000 and spec["timeoutSeconds"] <= 3600
    (container,) = spec["containers"]
    port = container["ports"][0]["containerPort"]
    env = env_names(container["env"])
    assert "PORT" not in env  # Cloud Run reserves it and sets it to containerPort
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert startup["httpGet"] == {"path": "/health/ready", "port": port}
    assert liveness["httpGet"] == {"path": "/health/live", "port": port}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # room to load a model
    (mount,) = container["volumeMounts"]
    assert env["MODEL"]["value"].startswith(mount["mountPath"] + "/") and mount["readOnly"]
    (volume,) = spec["volumes"]
    assert volume["name"] == mount["name"]
    assert volume["csi"]["driver"] == "gcsfuse.run.googleapis.com"
    assert env["API_KEYS"]["valueFrom"]["secretKeyRef"]["name"]


# --- App Runner -----------------------------------------------------------------------------
def test_app_runner_config() -> None:
    config = load("app-runner/apprunner.yaml")
    assert config["version"] == 1.0 and config["runtime"].startswith("python3")
    run = config["run"]
    assert run["network"]["env"] == "PORT" and isinstance(run["network"]["port"], int)
    assert run["command"].startswith("genai-service serve")
    secrets = env_names(run["secrets"])
    assert secrets["OPENAI_API_TOKEN"]["value-from"].startswith("arn:aws:secretsmanager:")
    assert "OPENAI_API_TOKEN" not in env_names(run["env"])


# --- Azure Container Apps -------------------------------------------------------------------
def test_azure_container_app() -> None:
    app = load("azure-container-apps/containerapp.yaml")["properties"]
    ingress = app["configuration"]["ingress"]
    (container,) = app["template"]["containers"]
    env = env_names(container["env"])
    assert ingress["targetPort"] == int(env["PORT"]["value"])
    probes = {probe["type"]: probe["httpGet"] for probe in container["probes"]}
    assert probes["Startup"]["path"] == probes["Readiness"]["path"] == "/health/ready"
    assert probes["Liveness"]["path"] == "/health/live"
    assert {p["port"] for p in probes.values()} == {ingress["targetPort"]}
    secrets = {s["name"]: s for s in app["configuration"]["secrets"]}
    for name in ("OPENAI_API_TOKEN", "API_KEYS"):
        ref = env[name]["secretRef"]
        assert secrets[ref]["keyVaultUrl"].startswith("https://")
    assert app["template"]["scale"]["minReplicas"] >= 1
    volumes = {v["name"] for v in app["template"]["volumes"]}
    assert {m["volumeName"] for m in container["volumeMounts"]} <= volumes


# --- code-based platforms: their start commands, run here -----------------------------------
def procfile_web(path: str) -> str:
    for line in (DEPLOY / path).read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError(f"no web process in {path}")


START_COMMANDS = {
    "heroku-procfile": lambda: procfile_web("heroku/Procfile"),
    "elastic-beanstalk-procfile": lambda: procfile_web("elastic-beanstalk/Procfile"),
    "app-engine-entrypoint": lambda: load("app-engine/app.yaml")["entrypoint"],
    "app-runner-command": lambda: load("app-runner/apprunner.yaml")["run"]["command"],
    "azure-app-service-startup": lambda: str(DEPLOY / "azure-app-service/startup.sh"),
}


@pytest.mark.parametrize("platform", list(START_COMMANDS))
def test_start_command_serves_on_port(platform: str) -> None:
    command = START_COMMANDS[platform]()
    port = free_port()
    env = {
        **os.environ,
        **SERVERLESS_ENV,
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "PORT": str(port),
        "DATA_DIR": tempfile.mkdtemp(prefix="genai-deploy-data-"),
        "EMBEDDING_MODEL": "",
        "ENGINE_PROCESS": "false",
        "N_PARALLEL": "1",
    }
    process = subprocess.Popen(
        ["/bin/sh", "-c", command], env=env, start_new_session=True, cwd=tempfile.gettempdir()
    )
    try:
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            while True:
                assert process.poll() is None, f"{command!r} exited with {process.returncode}"
                assert time.monotonic() < deadline, f"{command!r} never became ready"
                try:
                    if client.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            reply = client.post("/generate/text", json={"prompt": "Hi", "max_tokens": 2})
            assert reply.status_code == 200, reply.text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
