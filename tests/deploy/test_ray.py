"""deploy/ray: a real two-node Ray cluster on this host runs deploy/ray/serve.yaml.

The cluster is `ray.cluster_utils.Cluster` (a head node plus a second node, each its own raylet,
on loopback, no dashboard, 100 MB object stores); the app is deployed as a user does, with
`serve run <config> --non-blocking`, from the shipped config with test-sized settings (one CPU
and one thread per replica, the embedded SmolLM2, a prompt autoscaler with a target of one
ongoing request per replica, one to two replicas).

- One replica answers chat and a stream; four clients sending back to back make the autoscaler
  add a second replica (on the other node), and both answer.
- One replica is killed (`ray.kill` on its actor) while the clients go on: the requests that
  were running on it fail with a 5xx and nothing else fails; Serve keeps routing to the survivor
  and starts a replacement, which answers too.
"""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import MODEL_ID, free_port, wait_for
from tests.deploy.conftest import DEPLOY

ray = pytest.importorskip("ray", reason="the ray extra (ray[serve]) is not installed")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from genai_service.ray_serve import REPLICA_HEADER  # noqa: E402

APP = "genai-service"
SERVE_CLI = str(Path(sys.executable).parent / "serve")  # the ray extra's, beside this Python
NODE = {
    "num_cpus": 1,  # one replica per node: the two replicas land on different nodes
    "object_store_memory": 100 * 1024 * 1024,
    "node_ip_address": "127.0.0.1",
}
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report leaves the machine
    "RAY_TQDM_PATCH_PRINT": "0",  # the driver must not replace builtins.print
    # Keep every Ray address on loopback: with this off, Ray does not swap 127.0.0.1 for the
    # host's outward address when it connects.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # One proxy serves both nodes here, so it must not prefer the replica on its own node
    # (right in production, where every node runs a proxy behind the load balancer).
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
    # Ongoing-request counts reach the autoscaler every 0.5 s instead of every 10 s.
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
}


@dataclass
class Deployed:
    url: str
    cluster: Any
    config: dict[str, Any]


def sized_config(port: int, data_dir: str) -> dict[str, Any]:
    """The shipped Serve config with test-sized resources; nothing else changes."""
    config = yaml.safe_load((DEPLOY / "ray/serve.yaml").read_text())
    config["http_options"].update(host="127.0.0.1", port=port)
    config["proxy_location"] = "HeadOnly"  # one proxy: both nodes share this host's ports
    (app,) = config["applications"]
    app["runtime_env"]["env_vars"].update(
        N_THREADS="1", N_CTX="512", N_PARALLEL="2", LOG_LEVEL="warning", DATA_DIR=data_dir
    )
    (deployment,) = app["deployments"]
    deployment["ray_actor_options"]["num_cpus"] = 1
    # Start with one replica; load scales it to two (the nodes hold no more), promptly.
    deployment["autoscaling_config"].update(
        min_replicas=1,
        max_replicas=2,
        target_ongoing_requests=1,
        upscale_delay_s=0,
        look_back_period_s=1,
        metrics_interval_s=0.5,
    )
    return config


def app_status() -> Any:
    return serve.status().applications.get(APP)


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.setenv(key, value)  # the Ray processes started below read them
        # ... and this process read it at import.
        mp.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
        yield from start_and_deploy()


def start_and_deploy() -> Iterator[Deployed]:
    print_before = builtins.print
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        ray.init(address=cluster.address, logging_level="warning")
        port = free_port()
        with tempfile.TemporaryDirectory(prefix="genai-ray-") as tmp:
            config_path = Path(tmp, "serve.yaml")
            config = sized_config(port, str(Path(tmp, "data")))
            config_path.write_text(yaml.safe_dump(config))
            cli = subprocess.run(
                [SERVE_CLI, "run", "--address", cluster.address, "--non-blocking", config_path],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-3000:]
            wait_for(
                lambda: (status := app_status()) is not None and status.status == "RUNNING",
                180,
                f"the Serve app is not running: {app_status()}",
            )
            yield Deployed(f"http://127.0.0.1:{port}", cluster, config)
            serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
        builtins.print = print_before  # what Ray patched, back for any later test


# Serve's per-request bound (its proxy answers 408 past it). A request caught at the instant a
# replica is killed is, rarely, never told by Serve's proxy (a race in Ray, not the service);
# this turns that into a prompt 408 instead of a hang (deploy/ray/README.md).
REQUEST_TIMEOUT = {"x-request-timeout-seconds": "20"}


def chat(client: httpx.Client, content: str, **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        headers=REQUEST_TIMEOUT,
        json={
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 8,
            "temperature": 0,
            **extra,
        },
    )


def test_serve_config_and_rayservice_pass_serves_schema() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        yaml.safe_load((DEPLOY / "ray/serve.yaml").read_text())
    )
    (app,) = config.applications
    assert app.import_path == "genai_service.ray_serve:app"
    (deployment,) = app.deployments
    autoscaling = deployment.autoscaling_config
    assert autoscaling["min_replicas"] >= 2 and autoscaling["target_ongoing_requests"] > 0
    # Serve must not give a replica more than its slots plus the service's own queue.
    env = app.runtime_env["env_vars"]
    assert deployment.max_ongoing_requests == int(env["N_PARALLEL"]) + int(env["MAX_QUEUE"])

    # KubeRay's RayService carries the same application and deployment settings.
    service = yaml.safe_load((DEPLOY / "ray/rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    (kube_app,) = ServeDeploySchema.model_validate(
        yaml.safe_load(service["spec"]["serveConfigV2"])
    ).applications
    assert kube_app.import_path == app.import_path
    (kube_deployment,) = kube_app.deployments
    for key in ("max_ongoing_requests", "autoscaling_config", "ray_actor_options"):
        assert getattr(kube_deployment, key) == getattr(deployment, key), key
    cluster = service["spec"]["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["maxReplicas"] >= autoscaling["max_replicas"]


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None
    replica: str | None
    error: str = ""


@dataclass
class Load:
    """Clients that send chat requests back to back until stopped (bounded in count)."""

    url: str
    clients: int = 4
    limit: int = 1200  # a bound, not a target: the test stops them once it has seen enough
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run_client(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for n in range(self.limit // self.clients):
                if self.stop.is_set():
                    return
                started = time.monotonic()
                try:
                    response = chat(client, f"Say a word ({index}/{n}).")
                    outcome = Outcome(
                        started,
                        time.monotonic(),
                        response.status_code,
                        response.headers.get(REPLICA_HEADER),
                        "" if response.status_code == 200 else response.text[:300],
                    )
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, time.monotonic(), None, None, repr(exc))
                self.outcomes.append(outcome)

    def replicas(self) -> set[str]:
        return {o.replica for o in list(self.outcomes) if o.replica}


def test_one_replica_answers_then_load_scales_it_to_two(deployed: Deployed) -> None:
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2
    assert app_status().deployments[APP].replica_states.get("RUNNING") == 1

    with httpx.Client(base_url=deployed.url, timeout=60) as client:
        response = chat(client, "Name a colour.")
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "Count to five."}],
                "max_tokens": 16,
                "stream": True,
            },
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"

    # Four clients back to back: four requests in flight against a target of one per replica.
    load = Load(deployed.url)
    with ThreadPoolExecutor(load.clients) as pool:
        futures = [pool.submit(load.run_client, i) for i in range(load.clients)]
        try:
            wait_for(lambda: len(load.replicas()) == 2, 120, "Serve did not scale to two")
        finally:
            load.stop.set()
            for future in futures:
                future.result()
    # Every request succeeded while the new replica started: Serve sent it none before its
    # health check (which waits for the model) passed.
    assert all(o.status == 200 for o in load.outcomes), [o.error for o in load.outcomes]
    assert app_status().deployments[APP].replica_states.get("RUNNING") == 2


def test_killing_a_replica_mid_load_fails_only_its_running_requests(deployed: Deployed) -> None:
    load = Load(deployed.url)
    with ThreadPoolExecutor(load.clients) as pool:
        futures = [pool.submit(load.run_client, i) for i in range(load.clients)]
        try:
            before = wait_for(lambda: len(load.replicas()) == 2 and load.replicas(), 120, "load")
            victim = sorted(before)[0]
            actor = ray.get_actor(f"SERVE_REPLICA::{APP}#{APP}#{victim}", namespace="serve")
            killed_at = time.monotonic()
            ray.kill(actor, no_restart=True)
            # Serve notices, keeps routing to the survivor and starts a replacement.
            wait_for(lambda: load.replicas() - before, 120, "no replacement replica answered")
        finally:
            load.stop.set()
            for future in futures:
                future.result()

    after_kill = [o for o in load.outcomes if o.started >= killed_at]
    failed = [o for o in load.outcomes if o.status != 200]
    print(
        f"\n{len(load.outcomes)} requests, {len(after_kill)} sent after the kill, "
        f"{len(failed)} failed: {[(o.status, o.error[:120]) for o in failed]}"
    )
    # Only requests already running on the killed replica may fail: with a server error, or
    # (Serve's race above) its 408 at the request's bound, never a hang; every request sent
    # after the kill is answered.
    for outcome in failed:
        assert outcome.started < killed_at, outcome
        assert outcome.status is not None and (outcome.status >= 500 or outcome.status == 408), (
            outcome
        )
    assert len(failed) <= load.clients
    assert after_kill and all(o.status == 200 for o in after_kill)
    survivor = (before - {victim}).pop()
    assert any(o.replica == survivor for o in after_kill)

    wait_for(
        lambda: app_status().deployments[APP].replica_states.get("RUNNING") == 2,
        60,
        "Serve did not get back to two running replicas",
    )
