"""The llama.cpp engine in its own process: a native crash there never takes the API down.

The real SmolLM2 model runs in the real child process; the tests kill it with SIGSEGV (what a
faulting llama.cpp kernel does) and SIGKILL (the OOM killer) while eight streams run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from genai_service.engines.llama_cpp import LlamaCppEngine
from genai_service.engines.llama_cpp.client import ProcessCore, describe_exit
from tests.conftest import MODEL_ID, RunningServer, run_server, wait_for

STREAMS = 8


@pytest.fixture(scope="module")
def crash_server() -> Iterator[RunningServer]:
    # Eight slots so all eight streams decode at once; one thread keeps the cores for the test.
    with run_server(n_parallel=STREAMS, n_ctx=256, n_threads=1, max_queue=8) as running:
        yield running


def engine_core(server: RunningServer) -> ProcessCore:
    engine = server.state.engines[MODEL_ID]
    assert isinstance(engine, LlamaCppEngine)
    assert isinstance(engine.core, ProcessCore)
    return engine.core


def test_engine_runs_in_a_child_process(crash_server: RunningServer) -> None:
    core = engine_core(crash_server)
    assert core.pid is not None and core.pid != os.getpid()
    # The portable build: AVX2 kernels, nothing the host may lack (AVX-512, AMX).
    if os.uname().machine == "x86_64":
        assert "AVX2 = 1" in core.system_info
        assert "AMX_INT8 = 1" not in core.system_info
        assert "AVX512 = 1" not in core.system_info


def test_describe_exit() -> None:
    assert describe_exit(-11) == "SIGSEGV" and describe_exit(-9) == "SIGKILL"
    assert describe_exit(70) == "exit code 70"


class Stream(threading.Thread):
    """One streamed chat on its own connection; records every SSE data line."""

    def __init__(self, base_url: str, url: str, body: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.base_url, self.url, self.body = base_url, url, body
        self.events: list[str] = []
        self.started = threading.Event()
        self.status = 0

    def run(self) -> None:
        with (
            httpx.Client(base_url=self.base_url, timeout=60) as http,
            http.stream("POST", self.url, json=self.body) as response,
        ):
            self.status = response.status_code
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    if '"delta"' in line or '"choices"' in line:
                        self.started.set()
        self.started.set()


def stored_messages(http: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    listed = http.get(f"/v1/conversations/{conversation_id}/messages")
    assert listed.status_code == 200, listed.text
    return list(listed.json()["data"])


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
def test_crash_mid_stream_is_contained(crash_server: RunningServer, sig: signal.Signals) -> None:
    core = engine_core(crash_server)
    crashes = core.crashes
    with crash_server.http() as http:
        conversation = http.post("/v1/conversations", json={}).json()["id"]
    chat = {
        "model": MODEL_ID,
        "stream": True,
        "max_tokens": 200,
        "temperature": 0.8,
        "messages": [{"role": "user", "content": "Tell me a very long story about a fox."}],
    }
    streams = [
        Stream(crash_server.base_url, "/v1/chat/completions", chat) for _ in range(STREAMS - 1)
    ]
    # The eighth: a conversation turn, which must not be stored half-written.
    turn = {"content": "Tell me a very long story about a fox.", "max_tokens": 200, "stream": True}
    streams.append(
        Stream(crash_server.base_url, f"/v1/conversations/{conversation}/messages", turn)
    )
    for stream in streams:
        stream.start()
    for stream in streams:
        assert stream.started.wait(60)
    old_pid = core.pid
    assert old_pid is not None
    os.kill(old_pid, sig)

    for stream in streams:
        stream.join(30)
        assert not stream.is_alive(), "a stream hung after the engine died"
        assert stream.status == 200
        last = json.loads(stream.events[-1])
        assert last["error"]["code"] == "engine_unavailable", stream.events[-3:]
        assert sig.name in last["error"]["message"]
        assert "[DONE]" not in stream.events

    with crash_server.http() as http:
        # At once: out of the load balancer, with the reason; the process itself stays alive.
        ready = http.get("/health/ready")
        assert ready.status_code == 503 and sig.name in ready.json()["reason"]
        assert http.get("/health/live").status_code == 200
        refused = http.post("/v1/chat/completions", json={**chat, "stream": False})
        assert refused.status_code in (200, 503)  # 503 unless the restart already finished
        if refused.status_code == 503:
            assert refused.json()["error"]["code"] == "engine_unavailable"

        wait_for(lambda: http.get("/health/ready").status_code == 200, 60, "ready again")
        assert core.pid != old_pid and core.crashes == crashes + 1
        answer = http.post("/v1/chat/completions", json={**chat, "stream": False})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
        metrics = http.get("/metrics").text
        assert f'genai_engine_crashes_total{{cause="{sig.name}",model="{MODEL_ID}"}}' in metrics
        assert f'genai_engine_up{{model="{MODEL_ID}"}} 1.0' in metrics

        # The interrupted turn left nothing behind; the conversation still works.
        assert stored_messages(http, conversation) == []
        assert http.get(f"/v1/conversations/{conversation}").json()["message_count"] == 0
        again = http.post(
            f"/v1/conversations/{conversation}/messages",
            json={"content": "Hi", "max_tokens": 4},
        )
        assert again.status_code == 200, again.text
        assert len(stored_messages(http, conversation)) == 2


SCRIPT = """
import asyncio
from genai_service.engines.base import SamplingParams, collect
from genai_service.engines.llama_cpp import LlamaCppEngine
from genai_service.model_store import embedded_model_path

async def go():
    engine = LlamaCppEngine(embedded_model_path(), n_ctx=256, n_threads=1)
    await engine.load()
    prompt = await engine.text_prompt("Hello")
    result = await collect(engine.stream(prompt, SamplingParams(max_tokens=2, temperature=0)))
    print("generated", result.completion_tokens)
    await engine.close()

asyncio.run(go())
"""


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    # The engine process is a fresh `python -m`, not multiprocessing's spawn, which would
    # re-run the user's own unguarded script in the child.
    script = tmp_path / "myserver.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("generated 2") == 1
