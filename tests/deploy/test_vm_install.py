"""deploy/vm/install.sh in a fresh Debian container: run twice, then the service it installed
answers chat (the host's network, for apt and pip; the service on a free loopback port).
systemd is not PID 1 in a container, so the script runs with NO_SYSTEMD=1 and the
test starts the installed service the way the unit does (as `genai`, with the unit's settings)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.containers import dockerkit
from tests.deploy.conftest import DEPLOY

SCRIPT = r"""
set -eu
export NO_SYSTEMD=1 GENAI_SOURCE=/srv/genai-service PIP_FIND_LINKS=/wheels PIP_DISABLE_PIP_VERSION_CHECK=1
if [ -f /etc/ssl/certs/host-ca.crt ]; then export PIP_CERT=/etc/ssl/certs/host-ca.crt; fi
/srv/genai-service/deploy/vm/install.sh
echo 'N_PARALLEL=1  # edited by the operator' >> /etc/genai-service/genai-service.env
/srv/genai-service/deploy/vm/install.sh   # again: converges, keeps the edited settings
grep -q 'edited by the operator' /etc/genai-service/genai-service.env
test "$(stat -c '%a %U' /etc/genai-service/credentials)" = "700 root"
test "$(stat -c '%U' /var/lib/genai-service/models)" = "genai"
test "$(getent passwd genai | cut -d: -f7)" = "/usr/sbin/nologin"
test "$(grep -c '^genai:' /etc/passwd)" = 1
test -f /etc/systemd/system/genai-service.service
# Start it as the unit does: its user, its environment, the settings file, its ExecStart.
unit_env=$(sed -n 's/^Environment=//p' /etc/systemd/system/genai-service.service | grep -v SECRETS_DIR)
exec_start=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/genai-service.service)
cd /var/lib/genai-service
runuser -u genai -- env $unit_env $(grep -v '^#' /etc/genai-service/genai-service.env | cut -d' ' -f1) \
    MODEL="/models/$MODEL_FILE" N_THREADS=1 N_CTX=512 PORT="$TEST_PORT" $exec_start >/tmp/service.log 2>&1 &
/opt/genai-service/venv/bin/python - <<'PY'
import json, os, time, urllib.request
base = "http://127.0.0.1:" + os.environ["TEST_PORT"]
deadline = time.monotonic() + 120
while True:
    try:
        if urllib.request.urlopen(base + "/health/ready", timeout=2).status == 200:
            break
    except OSError:
        if time.monotonic() > deadline:
            print(open("/tmp/service.log").read()); raise
        time.sleep(0.2)
models = json.load(urllib.request.urlopen(base + "/v1/models"))
body = json.dumps({"model": models["data"][0]["id"], "max_tokens": 4,
                   "messages": [{"role": "user", "content": "Hi"}]}).encode()
req = urllib.request.Request(base + "/v1/chat/completions", body,
                             {"Content-Type": "application/json"})
print("REPLY " + urllib.request.urlopen(req, timeout=60).read().decode())
PY
"""


@pytest.fixture(scope="module")
def debian_image() -> str:
    dockerkit.require_engine()
    return dockerkit.ensure_python_base()  # debootstrapped Debian bookworm: python3, venv


def test_install_script_twice_in_fresh_debian_then_chat(debian_image: str) -> None:
    wheels = dockerkit.host_llama_wheels()
    models: Path = dockerkit.models_dir()
    with tempfile.TemporaryDirectory(prefix="genai-vm-install-") as tmp:
        source = Path(tmp, "src")
        source.mkdir()
        dockerkit.copy_build_context(source)
        shutil.copytree(DEPLOY, source / "deploy")
        wheel_dir = Path(tmp, "wheels")
        wheel_dir.mkdir()
        for folder in wheels:  # the portable llama.cpp build, so nothing compiles here
            for wheel in folder.glob("llama_cpp_python-*.whl"):
                shutil.copy(wheel, wheel_dir)
        pip_cache = dockerkit.CACHE / "pip-vm-install"
        pip_cache.mkdir(parents=True, exist_ok=True)
        mounts = [
            *("-v", f"{source}:/srv/genai-service", "-v", f"{wheel_dir}:/wheels:ro"),
            *("-v", f"{models}:/models:ro", "-v", f"{pip_cache}:/root/.cache/pip"),
        ]
        if dockerkit.HOST_CA.is_file():
            mounts += ["-v", f"{dockerkit.HOST_CA}:/etc/ssl/certs/host-ca.crt:ro"]
        model = next(models.glob("*.gguf")).name
        result = dockerkit.docker(
            "run", "--rm", "--network=host", *mounts, "-e", f"MODEL_FILE={model}",
            "-e", f"TEST_PORT={free_port()}",
            "-e", "WITH_NGINX=0", debian_image, "bash", "-c", SCRIPT,
            check=False, timeout=900,
        )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    reply = json.loads(output.split("REPLY ", 1)[1].splitlines()[0])
    assert reply["choices"][0]["message"]["content"]
