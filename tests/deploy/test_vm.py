"""deploy/vm: the systemd unit, the nginx site (a real nginx in front of the real service),
cloud-init user-data and the install script."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import MODEL_ID, RunningServer, free_port, run_server
from tests.deploy.conftest import DEPLOY, ROOT, tool

VM = DEPLOY / "vm"
UNIT = VM / "genai-service.service"
SITE = VM / "nginx" / "genai-service.conf"
EXPOSURE_LIMIT = 2.0


# --- systemd --------------------------------------------------------------------------------
def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's genai-service.
    unit = tmp_path / "genai-service.service"
    unit.write_text(
        UNIT.read_text().replace(
            "/opt/genai-service/venv/bin/genai-service", str(ROOT / ".venv/bin/genai-service")
        )
    )
    result = subprocess.run(
        [tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_systemd_unit_exposure_is_low() -> None:
    result = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
    )
    found = re.search(r"Overall exposure level for genai-service.service: ([0-9.]+)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    print(f"systemd-analyze security: exposure {exposure}")
    assert exposure <= EXPOSURE_LIMIT


def test_systemd_unit_has_what_the_service_needs() -> None:
    s = unit_settings()
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "User": "genai",
    }.items():
        assert s[key] == [value], key
    assert s["ReadWritePaths"] == ["/var/lib/genai-service"]
    assert "MemoryMax" in s and int(s["TimeoutStopSec"][0]) >= 30  # room to drain
    assert {c.split(":")[0] for c in s["LoadCredential"]} == {"openai_api_token", "api_keys"}
    # The service reads the credentials directory.
    assert "SECRETS_DIR=/run/credentials/genai-service.service" in s["Environment"]


# --- nginx ----------------------------------------------------------------------------------
@dataclass
class Proxy:
    https: str
    http: str
    cert: Path
    server: RunningServer


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "nginx exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def site_for_test(service_port: int, http_port: int, https_port: int, tls: Path) -> str:
    """The shipped site, moved to loopback test ports and a throwaway certificate."""
    text = SITE.read_text()
    for old, new in {
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{service_port};",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;": "",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "/etc/ssl/genai-service/fullchain.pem": str(tls / "cert.pem"),
        "/etc/ssl/genai-service/privkey.pem": str(tls / "key.pem"),
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def nginx_conf(prefix: Path, site: Path) -> str:
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    include {site};
}}
"""


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    prefix = tmp_path_factory.mktemp("nginx")
    key, cert = prefix / "key.pem", prefix / "cert.pem"
    subprocess.run(
        [
            *(tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    with run_server(n_threads=1, n_ctx=512) as server:
        service_port = int(server.base_url.rsplit(":", 1)[1])
        http_port, https_port = free_port(), free_port()
        site = prefix / "genai-service.conf"
        site.write_text(site_for_test(service_port, http_port, https_port, prefix))
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, site))
        nginx = tool("nginx")
        check = subprocess.run(
            [nginx, "-t", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr  # nginx -t
        process = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf)])
        try:
            wait_for_port(https_port, process)
            yield Proxy(
                f"https://127.0.0.1:{https_port}",
                f"http://127.0.0.1:{http_port}",
                prefix / "cert.pem",
                server,
            )
        finally:
            process.send_signal(signal.SIGQUIT)  # graceful stop
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_sse_chunks_pass_nginx_as_they_are_generated(proxy: Proxy) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me a long story about a ship at sea."}],
        "max_tokens": 64,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    arrivals: list[float] = []
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(proxy.cert)), timeout=60
    ) as client:
        started = time.perf_counter()
        with client.stream("POST", f"{proxy.https}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.perf_counter() - started)
                    lines.append(line[6:])
        total = time.perf_counter() - started
    assert lines[-1] == "[DONE]"
    usage = json.loads(lines[-2])["usage"]
    assert usage["completion_tokens"] >= 16
    first = arrivals[0]
    print(
        f"nginx SSE: first chunk {first * 1000:.0f} ms, last {arrivals[-1] * 1000:.0f} ms, "
        f"{len(arrivals)} events, {usage['completion_tokens']} tokens"
    )
    # The first chunk is delivered long before the stream ends, and chunks keep arriving
    # spread over the generation (a buffering proxy delivers them all at the end).
    assert first < 0.5 * total
    spread = [
        t for t in arrivals if first + 0.1 * (total - first) < t < total - 0.1 * (total - first)
    ]
    assert len(spread) >= 5


def test_nginx_redirects_http_and_limits_bodies(proxy: Proxy) -> None:
    with httpx.Client(
        verify=ssl.create_default_context(cafile=str(proxy.cert)), timeout=30
    ) as client:
        redirect = client.get(f"{proxy.http}/health/live")
        assert redirect.status_code == 301
        assert redirect.headers["location"].startswith("https://")
        live = client.get(f"{proxy.https}/health/live")
        assert live.status_code == 200
        too_big = client.post(
            f"{proxy.https}/v1/chat/completions",
            # Over nginx's 5m: larger bodies stop at nginx; up to it the service's own
            # MAX_REQUEST_BYTES (4 MiB) answers 413 in the OpenAI format.
            content=b"x" * (6 * 1024 * 1024),
            headers={"content-type": "application/json"},
        )
        assert too_big.status_code == 413


# --- cloud-init -----------------------------------------------------------------------------
def test_cloud_init_user_data() -> None:
    text = (VM / "cloud-init.yaml").read_text()
    assert text.splitlines()[0] == "#cloud-config"
    data = yaml.safe_load(text)
    assert {"python3-venv", "nginx"} <= set(data["packages"])
    paths = {f["path"] for f in data["write_files"]}
    assert "/etc/genai-service/genai-service.env" in paths
    commands = "\n".join(c if isinstance(c, str) else " ".join(c) for c in data["runcmd"])
    assert "install.sh" in commands
    assert data["package_update"] is True


# --- install script -------------------------------------------------------------------------
def test_install_script_parses_and_is_idempotent_by_construction() -> None:
    script = VM / "install.sh"
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = script.read_text()
    assert "set -euo pipefail" in text
