"""deploy/kubernetes: every overlay renders with `kubectl kustomize`, passes the Kubernetes
schemas strictly (kubernetes-validate, offline) and checkov, and says on the rendered output
what the service needs: the probes, a grace period longer than preStop plus the drain, the
locked-down securityContext, and autoscaling on queue depth and running generations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from genai_service import metrics
from genai_service.settings import Settings
from tests.deploy.conftest import DEPLOY

KUBE = DEPLOY / "kubernetes"
OVERLAYS = ("cpu", "gpu", "dev", "cpu-keda")
# The newest Kubernetes release kubernetes-validate ships the schemas of.
KUBERNETES_VERSION = "1.37.0"
# checkov pins its own dependencies, some of which clash with the service's: it lives in a venv
# of its own, made once per checkov version and kept between runs.
CHECKOV_VERSION = "3.3.30"
CHECKOV_VENV = Path.home() / ".cache" / "genai-service" / f"checkov-{CHECKOV_VERSION}"
# The engine process's stop after the drain (cli.py gives uvicorn drain + 5 s).
ENGINE_STOP_SECONDS = 5


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/kubernetes (kubectl kustomize)"
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in docs if doc["kind"] == kind]
    return found


def kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {doc["kind"] for doc in docs}


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_the_schemas_strictly(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: no schema offline; its fields are checked in test_keda_*
        # Raises on an unknown field (strict), a wrong type or a missing required field.
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    expected = {"Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim"}
    expected |= {"Deployment", "Service", "NetworkPolicy", "Ingress"}
    assert expected <= kinds(docs)
    assert all(
        doc["metadata"].get("namespace") == "genai" for doc in docs if doc["kind"] != "Namespace"
    )


def checkov_bin() -> Path:
    binary = CHECKOV_VENV / "bin" / "checkov"
    if not binary.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(CHECKOV_VENV)
        pip = [str(CHECKOV_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"checkov=={CHECKOV_VERSION}"], check=True)
    return binary


def test_checkov_finds_no_failed_check(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    binary = checkov_bin()
    for overlay, docs in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(docs))
    # Offline: no platform mapping, no policy download.
    env = os.environ | {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_NO_UPDATE_CHECK": "1"}
    args = ["-d", str(tmp_path), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    run = subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.stdout.startswith("{"), run.stderr[-2000:]
    report = json.loads(run.stdout)
    summary, results = report["summary"], report["results"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["parsing_errors"] == 0
    deployments = [c for c in results["passed_checks"] if c["resource"].startswith("Deployment.")]
    assert len({c["file_path"] for c in deployments}) == len(OVERLAYS)
    # The checks that matter here ran and passed on every Deployment.
    for check in ("CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_28"):
        assert sum(c["check_id"] == check for c in deployments) >= len(OVERLAYS), check
    # Every skip is explained in the manifest (checkov.io/skipN: CKV_K8S_xx=why).
    for skipped in results["skipped_checks"]:
        assert len(skipped["check_result"]["suppress_comment"]) > 20, skipped["check_id"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_shutdown_arithmetic(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    docs = rendered[overlay]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port = container["ports"][0]
    assert port["name"] == "http" and port["containerPort"] == int(config(docs)["PORT"])

    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health/ready"
    # The model load: at least 5 minutes before the kubelet gives up on the pod.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    # Liveness never restarts a pod that only waits for a slow readiness.
    assert "initialDelaySeconds" not in container["livenessProbe"]

    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    drain = float(config(docs)["SHUTDOWN_DRAIN_SECONDS"])
    assert drain == Settings.model_fields["shutdown_drain_seconds"].default
    grace = pod["terminationGracePeriodSeconds"]
    assert pre_stop >= 5, "endpoints need a few seconds to drop the pod"
    assert grace > pre_stop + drain + ENGINE_STOP_SECONDS, (grace, pre_stop, drain)

    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert {"cpu", "memory"} <= requests.keys() and {"cpu", "memory"} <= limits.keys()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_security_context(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    pod = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
    # A read-only root: what the service writes goes to volumes.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (server,) = pod["containers"]
    mounts = {mount["mountPath"]: mount for mount in server["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts["/data"]["name"]]
    # The model: a PVC, written by the init container only.
    models = volumes[mounts["/models"]["name"]]
    assert models["persistentVolumeClaim"]["claimName"] == "genai-models"
    assert mounts["/models"]["readOnly"] is True
    (init,) = pod["initContainers"]
    assert init["args"][:2] == ["models", "download"] and init["image"] == server["image"]
    # Secrets are files in SECRETS_DIR (settings.py), never environment variables.
    secrets = volumes[mounts["/run/secrets"]["name"]]
    assert secrets["secret"]["secretName"].startswith("genai-service-secrets")
    assert not any("secretKeyRef" in str(env) for env in server.get("env", []))


def test_autoscaling_on_queue_depth_and_running_generations(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    exported = {metrics.QUEUE_DEPTH._name, metrics.ACTIVE_SEQUENCES._name}
    for overlay in ("cpu", "gpu"):
        hpa = one(rendered[overlay], "HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "genai-service",
        }
        names = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}
        assert names == exported, "scale on the service's own gauges, not CPU"
        assert all(m["type"] != "Resource" for m in hpa["metrics"])
    # prometheus-adapter serves exactly these names, per pod.
    adapter = yaml.safe_load((KUBE / "prometheus-adapter" / "values.yaml").read_text())
    rules = adapter["rules"]["custom"]
    assert {rule["name"]["as"] for rule in rules} == exported
    for rule in rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    # 8 slots on a GPU pod: its target follows N_PARALLEL.
    gpu = one(rendered["gpu"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    running = next(m for m in gpu if m["pods"]["metric"]["name"] == "genai_active_sequences")
    assert float(running["pods"]["target"]["averageValue"]) < int(
        config(rendered["gpu"])["N_PARALLEL"]
    )


def test_keda_scales_on_the_same_signal(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["cpu-keda"]
    assert "HorizontalPodAutoscaler" not in kinds(docs), "KEDA owns the HPA"
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert "genai_queue_depth" in query and "genai_active_sequences" in query
    assert float(trigger["metadata"]["threshold"]) > 0


def test_gpu_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = one(rendered["gpu"], "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("-cuda")  # Dockerfile.cuda
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert config(rendered["gpu"])["N_GPU_LAYERS"] == "-1"
    cpu = one(rendered["cpu"], "Deployment")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]


def test_dev_overlay_is_one_replica(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["dev"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    assert not kinds(docs) & {"HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Its generated Secret is the one the pod mounts (kustomize's hashed name).
    secret = one(docs, "Secret")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    names = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert names == [secret["metadata"]["name"]]


def test_traffic_rules(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["cpu"]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = one(docs, "Service")["spec"]["selector"]
    assert selector and selector.items() <= labels.items()
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    # Only the ingress controller and Prometheus get in.
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policy["ingress"]
        for peer in rule["from"]
    }
    assert sources == {"ingress-nginx", "monitoring"}
    # SSE passes through ingress-nginx unbuffered, and long generations are not cut at 60 s.
    annotations = one(docs, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    template = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert template["prometheus.io/path"] == "/metrics"
