"""llama.cpp engine (llama-cpp-python): GGUF models on the CPU, continuous batching.

`LlamaCppEngine` is what the API process holds. It renders chat templates and tokenizes with a
weights-free copy of the vocabulary, and hands generations to a core (`core.py`) that owns the
weights and the batch scheduler:

- `ProcessCore` (default, ENGINE_PROCESS=true): the core runs in a child process, as vLLM's
  EngineCore and Ollama's runner do. A native fault there (SIGSEGV, SIGILL, OOM kill) ends every
  in-flight request with a clean error, readiness turns 503 with the reason, and a supervisor
  thread restarts the process with backoff; the API process never goes down with it. The event
  loop reads the process's pipe itself (`add_reader`): a step's tokens reach their streams
  without a thread wake-up and a GIL hand-over in between.
- `InProcessCore` (ENGINE_PROCESS=false): the same scheduler on a thread of this process.

Tokens travel back in one message per scheduler step; the event loop only awaits results.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import structlog

from genai_service import log_config, metrics
from genai_service.engines.base import (
    Cancellation,
    ChatMessage,
    DirectStream,
    EngineError,
    EngineUnavailable,
    GenerationChunk,
    ModelInfo,
    Prompt,
    SamplingParams,
    check_token_ids,
)
from genai_service.engines.llama_cpp import core
from genai_service.engines.llama_cpp.core import CoreConfig, InProcessCore
from genai_service.engines.llama_cpp.direct import DirectReport
from genai_service.engines.llama_cpp.grammar import grammar_for
from genai_service.engines.threads import default_threads
from genai_service.engines.worker import Emit, stream_from_worker
from genai_service.settings import ModelSpec, Settings

log = structlog.get_logger(__name__)

INLINE_TOKENIZE_CHARS = 4096  # texts up to this long are tokenized on the event loop

# ChatML, for GGUF files that carry no chat template of their own.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class FrameReader:
    """Messages of a `multiprocessing` pipe, read in one `os.read` per readable event.

    `Connection.recv` costs two reads per message (its length, then the body) and the loop a
    third call (`poll`) to learn whether another waits; here whatever has arrived is read at
    once and split on the same framing (a 4-byte big-endian length, or -1 and an 8-byte length
    for a body over 2 GiB), and a partial message waits for the next read.
    """

    CHUNK = 1 << 16

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self) -> list[Any]:
        """The messages complete so far; raises EOFError at the pipe's end."""
        data = os.read(self.fd, self.CHUNK)
        if not data:
            raise EOFError
        buffer = self._buffer
        buffer += data
        messages = []
        start, end = 0, len(buffer)
        with memoryview(buffer) as view:  # released before the buffer is trimmed
            while end - start >= 4:
                (size,) = struct.unpack_from("!i", view, start)
                head = 4
                if size == -1:
                    if end - start < 12:
                        break
                    (size,) = struct.unpack_from("!Q", view, start + 4)
                    head = 12
                if end - start < head + size:
                    break
                messages.append(pickle.loads(view[start + head : start + head + size]))
                start += head + size
        del buffer[:start]
        return messages


class Core(Protocol):
    unavailable: str | None  # why generations cannot run right now; None when they can
    n_ctx_per_slot: int

    @property
    def active(self) -> int: ...

    @property
    def pending(self) -> int: ...

    def start(self) -> None: ...

    def submit(
        self, tokens: list[int], params: SamplingParams, cancel: Cancellation, emit: Emit
    ) -> Any: ...

    def release(self, handle: Any) -> None:
        """The consumer is done with a submitted request (finished or gone)."""

    def close(self) -> None: ...


def describe_exit(code: int | None) -> str:
    """A child's exit code in words: "SIGSEGV", "exit code 70", ..."""
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class EngineProcess:
    """The engine process: a fresh interpreter, `python -m genai_service.engines.llama_cpp`.

    Not multiprocessing's spawn, which re-imports the parent's `__main__` in the child, so a
    user's own `python myserver.py` without an `if __name__ == "__main__"` guard would run
    twice; nor fork, which copies a threaded server. Two pipes are passed by fd; the commands
    one is a Unix socket pair, which can carry a direct stream's client socket (SCM_RIGHTS).
    """

    def __init__(self, config: CoreConfig) -> None:
        commands_r, self.commands = multiprocessing.Pipe(duplex=True)
        self.events, events_w = multiprocessing.Pipe(duplex=False)
        fds = (commands_r.fileno(), events_w.fileno())
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "genai_service.engines.llama_cpp", *map(str, fds)],
            pass_fds=fds,
        )
        # Only the child holds these ends now, so its death reads as EOF here.
        commands_r.close()
        events_w.close()
        self.commands.send(config)
        self.pid = self._popen.pid

    @property
    def exitcode(self) -> int | None:
        """None while it runs; negative: the signal that ended it."""
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        self._popen.kill()


class ProcessCore:
    """The core in a supervised child process, reached over two pipes."""

    BACKOFF_START = 0.25  # seconds before the first restart after a crash
    BACKOFF_MAX = 30.0
    STABLE_AFTER = 60.0  # a process that lived this long resets the backoff

    def __init__(
        self,
        config: CoreConfig,
        record: metrics.EngineRecorder,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._config = config
        self._record = record
        self._loop = loop  # reads the events pipe: the loop that submitted last
        self._reading = threading.Lock()  # one reader at a time while the pipe changes loops
        self._lock = threading.Lock()
        self._inflight: dict[int, Emit] = {}
        self._directs: dict[int, DirectStream] = {}  # handed-over sockets, until their report
        self._command_socket: socket.socket | None = None  # the commands pipe, for send_fds
        self._ids = itertools.count()
        self._process: Any = None
        self._commands: Connection | None = None
        self._events: Connection | None = None
        self._frames: FrameReader | None = None  # the events pipe, read by the loop
        self._started_at = 0.0
        self._backoff = self.BACKOFF_START
        self._closing = threading.Event()
        self._eof = threading.Event()  # the events pipe ended: the process died (or stopped)
        self._supervisor: threading.Thread | None = None
        self.unavailable: str | None = "starting"
        self.n_ctx_per_slot = config.n_ctx
        self.pending = 0
        self.crashes = 0
        self.system_info = ""

    # --- API side -----------------------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._inflight)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the process and wait for its self-test; raises if it cannot serve."""
        self._spawn()
        self.unavailable = None
        self._supervisor = threading.Thread(
            target=self._supervise, name="llama.cpp-supervisor", daemon=True
        )
        self._supervisor.start()

    def submit(
        self,
        tokens: list[int],
        params: SamplingParams,
        cancel: Cancellation,
        emit: Emit,
        direct: DirectStream | None = None,
    ) -> int:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._follow(loop)
        with self._lock:
            if self.unavailable is not None or self._commands is None:
                raise EngineUnavailable(self._unavailable_message())
            req_id = next(self._ids)
            self._inflight[req_id] = emit
            spec = None if direct is None else (direct.head, direct.tail, direct.chunked)
            try:
                self._commands.send(("submit", req_id, tokens, params, spec))
                if direct is not None:
                    assert self._command_socket is not None
                    # Under the lock, so nothing comes between the message and its socket.
                    socket.send_fds(self._command_socket, [b"S"], [direct.fd])
                    self._directs[req_id] = direct
            except OSError:
                del self._inflight[req_id]
                raise EngineUnavailable(self._unavailable_message()) from None
        return req_id

    def interrupt(self, req_id: int) -> None:
        """Stop a running request; unlike `release`, its end (a direct stream's report and a
        "cancelled" error) still reaches its consumer."""
        with self._lock:
            if req_id not in self._inflight or self._commands is None:
                return
            with contextlib.suppress(OSError):
                self._commands.send(("cancel", req_id))

    def release(self, req_id: int) -> None:
        """The consumer is done with a request: cancel it in the core if it still runs."""
        with self._lock:
            # A direct stream stays in _directs: its report still comes (usage of a client
            # that hung up).
            if self._inflight.pop(req_id, None) is None or self._commands is None:
                return
            # OSError: the process is gone; the supervisor deals with it.
            with contextlib.suppress(OSError):
                self._commands.send(("cancel", req_id))

    def close(self) -> None:
        self._closing.set()
        self._eof.set()  # wakes the supervisor
        with self._lock:
            commands, process = self._commands, self._process
            inflight, self._inflight = self._inflight, {}
            self.unavailable = "shutting down"
            if self._command_socket is not None:
                self._command_socket.close()
                self._command_socket = None
        if commands is not None:
            with contextlib.suppress(OSError):
                commands.send(("stop",))
        if process is not None:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for emit in inflight.values():
            emit(EngineUnavailable("The server is shutting down."))
        if self._supervisor is not None:
            self._supervisor.join(timeout=10)

    def _unavailable_message(self) -> str:
        return f"The model engine is unavailable: {self.unavailable or 'not started'}."

    # --- process management -----------------------------------------------------------------
    def _spawn(self) -> None:
        process = EngineProcess(self._config)
        events_r, commands_w = process.events, process.commands
        while True:
            try:
                message = events_r.recv()
            except (EOFError, OSError):
                process.join(timeout=5)
                events_r.close()
                commands_w.close()
                raise RuntimeError(
                    "the engine process died while loading the model and running its "
                    f"self-test ({describe_exit(process.exitcode)}); if this is a llama.cpp "
                    "built for another CPU, reinstall it with `make install` (portable flags)"
                ) from None
            if message[0] == "ready":
                break
            if message[0] == "failed":
                process.join(timeout=5)
                events_r.close()
                commands_w.close()
                raise RuntimeError(message[1])
            # ("step", ...) before "ready": the self-test's metric records, not user traffic.
        _, self.system_info, self.n_ctx_per_slot = message
        with self._lock:
            self._process, self._commands, self._events = process, commands_w, events_r
            self._command_socket = socket.socket(fileno=os.dup(commands_w.fileno()))
            self._frames = FrameReader(events_r.fileno())
        self._eof.clear()
        # A closed loop: the next submit's loop takes the pipe (_follow).
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.add_reader, events_r.fileno(), self._read)
        self._started_at = time.monotonic()
        log.info("engine_process_ready", model=self._config.model_id, pid=process.pid)

    def _follow(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the events pipe on `loop` from now on (an engine used from another event loop
        than the one it was loaded on, as tests and scripts do); the old loop lets go."""
        self._loop = loop
        events = self._events
        if events is not None:
            # The old loop's reader removes itself when it next fires (see _read).
            loop.add_reader(events.fileno(), self._read)

    def _read(self) -> None:
        """On the event loop, when the events pipe is readable: dispatch what has arrived."""
        events = self._events
        if events is None:
            return
        running = asyncio.get_running_loop()
        if running is not self._loop:
            running.remove_reader(events.fileno())  # the pipe moved to another loop (_follow)
            return
        frames = self._frames
        if frames is None or not self._reading.acquire(blocking=False):
            return
        try:
            # What has arrived (up to 64 KiB); the loop calls again while more waits.
            for message in frames.read():
                self._dispatch(message)
        except (EOFError, OSError):
            self._loop.remove_reader(events.fileno())
            self._eof.set()
        finally:
            self._reading.release()

    def _supervise(self) -> None:
        while not self._closing.is_set():
            self._eof.wait()
            if self._closing.is_set():
                return
            self._on_death()
            while not self._closing.wait(self._backoff):
                lived = time.monotonic() - self._started_at
                try:
                    self._spawn()
                except Exception as exc:
                    self._backoff = min(self._backoff * 2, self.BACKOFF_MAX)
                    self.unavailable = (
                        f"engine process failed to restart ({exc}); "
                        f"retrying in {self._backoff:.0f} s"
                    )
                    log.error("engine_restart_failed", model=self._config.model_id, error=str(exc))
                    continue
                # A process that crashes again soon after a restart waits longer next time.
                if lived > self.STABLE_AFTER:
                    self._backoff = self.BACKOFF_START
                else:
                    self._backoff = min(self._backoff * 2, self.BACKOFF_MAX)
                self.unavailable = None
                log.info("engine_process_restarted", model=self._config.model_id)
                break

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        _, events, records, self.pending = message
        for kind, value in records:
            self._record(kind, value)
        for req_id, item in events:
            if item.__class__ is tuple:  # a plain text chunk (see core.py's wire protocol)
                emit = self._inflight.get(req_id)
                if emit is not None:
                    emit(GenerationChunk(item[0]))
                continue
            if item.__class__ is DirectReport:  # a direct stream ended; its last item follows
                direct = self._directs.pop(req_id, None)
                if direct is not None:
                    _end_direct(direct, item.unsent, item.text, item.first_at, item.gaps)
                continue
            final = isinstance(item, str) or item.finish_reason is not None
            if final:
                with self._lock:
                    emit = self._inflight.pop(req_id, None)
            else:
                emit = self._inflight.get(req_id)
            if emit is None:
                continue  # released by its consumer (cancelled)
            emit(EngineError(item) if isinstance(item, str) else item)

    def _on_death(self) -> None:
        process = self._process
        process.join(timeout=5)
        cause = describe_exit(process.exitcode)
        with self._lock:
            self.unavailable = f"engine process died ({cause}); restarting"
            inflight, self._inflight = self._inflight, {}
            directs, self._directs = self._directs, {}
            for conn in (self._commands, self._events, self._command_socket):
                if conn is not None:
                    conn.close()
            self._commands = self._events = self._frames = self._command_socket = None
            self.pending = 0
        self.crashes += 1
        model = self._config.model_id
        metrics.ENGINE_CRASHES.labels(model, cause).inc()
        for _ in inflight:
            self._record("outcome", "error")
        log.error(
            "engine_process_died",
            model=model,
            cause=cause,
            exit_code=process.exitcode,
            pid=process.pid,
            in_flight=len(inflight),
        )
        error = EngineUnavailable(
            f"The model engine stopped unexpectedly ({cause}) and is restarting; retry the request."
        )
        for direct in directs.values():
            # Their sockets closed with the process: nothing is unsent; what it wrote is unknown.
            self._loop.call_soon_threadsafe(_end_direct, direct, b"", "", None, [])
        for emit in inflight.values():
            emit(error)


def _end_direct(
    direct: DirectStream, unsent: bytes, text: str, first_at: float | None, gaps: list[float]
) -> None:
    try:
        direct.end(unsent, text, first_at, gaps)
    except Exception:  # its consumer's bookkeeping must not stop the pipe's dispatch
        log.exception("direct_stream_end_failed")


class LlamaCppEngine:
    engine_name = "llama.cpp"
    warmup = False  # the core's self-test (a real prompt, several tokens) runs at every start
    FEATURES = frozenset({"json_schema", "logprobs", "ignore_eos"})

    def __init__(
        self,
        model_path: Path,
        *,
        model_id: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        n_parallel: int = 16,
        prefill_chunk: int = 256,
        prefix_cache: bool = True,
        batch_invariant: bool = False,
        engine_process: bool = True,
        kv_cache_tokens: int | None = None,
        prompt_cache_mb: int = 1024,
        stream_interval_ms: float = 0.0,
        direct_stream: bool = True,
    ) -> None:
        self.model_path = Path(model_path)
        # The engine process writes plain text events to the client socket itself.
        self.features = self.FEATURES | (
            {"direct_stream"} if engine_process and direct_stream else set()
        )
        self.n_ctx = n_ctx  # per request (per slot); the KV cache holds n_parallel times it
        self.n_threads = n_threads or default_threads()  # the CPUs we may use, not the host's
        self.n_parallel = n_parallel
        self.engine_process = engine_process
        self.info = ModelInfo(
            id=model_id or self.model_path.stem,
            engine=self.engine_name,
            context_length=n_ctx,
            created=int(self.model_path.stat().st_mtime) if self.model_path.exists() else 0,
            path=str(self.model_path),
        )
        log_level, log_json = log_config.current()  # the engine process logs alike
        self.config = CoreConfig(
            model_path=str(self.model_path),
            model_id=self.info.id,
            n_ctx=n_ctx,
            n_threads=self.n_threads,
            n_batch=n_batch,
            n_gpu_layers=n_gpu_layers,  # > 0 or -1 (all) needs a CUDA/Metal build of llama.cpp
            n_parallel=n_parallel,
            prefill_chunk=prefill_chunk,
            prefix_cache=prefix_cache,
            batch_invariant=batch_invariant,
            kv_cache_tokens=kv_cache_tokens,
            prompt_cache_mb=prompt_cache_mb,
            stream_interval=stream_interval_ms / 1000,
            log_level=log_level,
            log_json=log_json,
        )
        self._vocab: Any = None
        self._formatter: Any = None
        self.core: Core | None = None

    @property
    def active(self) -> int:
        """Requests running in (or handed to) the batch scheduler right now."""
        return self.core.active if self.core is not None else 0

    @property
    def pending(self) -> int:
        """Requests handed to the scheduler that wait for a free slot."""
        return self.core.pending if self.core is not None else 0

    @property
    def unavailable(self) -> str | None:
        """Why this loaded engine cannot generate right now (its process is restarting)."""
        return self.core.unavailable if self.core is not None else None

    # --- lifecycle -----------------------------------------------------------------------
    async def load(self) -> None:
        await asyncio.to_thread(self._load_vocab)
        record = metrics.EngineRecorder(self.info.id)
        engine_core: Core = (
            ProcessCore(self.config, record, asyncio.get_running_loop())
            if self.engine_process
            else InProcessCore(self.config, record)
        )
        await asyncio.to_thread(engine_core.start)
        self.core = engine_core
        if engine_core.n_ctx_per_slot < self.info.context_length:
            # What the scheduler enforces is what the API checks requests against.
            self.info = dataclasses.replace(self.info, context_length=engine_core.n_ctx_per_slot)

    def _load_vocab(self) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        vocab = core.load_model(self.model_path, vocab_only=True)
        template = vocab.metadata().get("tokenizer.chat_template") or FALLBACK_TEMPLATE
        eos, bos = vocab.token_eos(), vocab.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab.token_get_text(eos) if eos != -1 else "",
            bos_token=vocab.token_get_text(bos) if bos != -1 else "",
            add_generation_prompt=True,
        )
        self._vocab = vocab

    async def close(self) -> None:
        engine_core, self.core = self.core, None
        if engine_core is not None:
            await asyncio.to_thread(engine_core.close)
        vocab, self._vocab = self._vocab, None
        if vocab is not None:
            vocab.close()

    # --- prompts ---------------------------------------------------------------------------
    def _tokenize(self, text: str, add_bos: bool) -> list[int]:
        import llama_cpp

        vocab = self._vocab
        if vocab is None:
            raise RuntimeError("engine is not loaded")
        data = text.encode("utf-8")
        # One llama_tokenize call into a buffer that surely fits (no more tokens than bytes,
        # plus BOS): LlamaModel.tokenize sizes it by n_ctx_train, 0 for a vocabulary-only load,
        # so it always tokenized twice (0.2 ms each for a short chat).
        room = len(data) + 2
        buffer = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(vocab.vocab, data, len(data), buffer, room, add_bos, True)
        if n < 0:
            return list(vocab.tokenize(data, add_bos=add_bos, special=True))
        return buffer[:n]

    async def _tokenize_async(self, text: str, add_bos: bool) -> list[int]:
        # The vocabulary is read-only, so tokenizing need not wait for the scheduler. A short
        # text takes microseconds: inline, cheaper than the hop to a worker thread and back
        # (time to first token); a long one goes to a thread so the event loop keeps serving.
        if len(text) <= INLINE_TOKENIZE_CHARS:
            return self._tokenize(text, add_bos)
        return await asyncio.to_thread(self._tokenize, text, add_bos)

    async def tokenize(self, text: str) -> list[int]:
        return await self._tokenize_async(text, True)

    async def detokenize(self, token_ids: Sequence[int]) -> str:
        if self._vocab is None:
            raise RuntimeError("engine is not loaded")
        # Checked first: llama.cpp reads out of bounds for an id past the vocabulary.
        check_token_ids(token_ids, self._vocab.n_vocab())
        return bytes(self._vocab.detokenize(list(token_ids), special=True)).decode(errors="replace")

    async def text_prompt(self, text: str) -> Prompt:
        return Prompt(text=text, token_ids=await self.tokenize(text))

    async def chat_prompt(self, messages: Sequence[ChatMessage]) -> Prompt:
        rendered = self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]
        ).prompt
        # The template writes the BOS token itself where the model wants one.
        ids = await self._tokenize_async(rendered, False)
        return Prompt(text=rendered, token_ids=ids)

    # --- generation ------------------------------------------------------------------------
    def validate(self, params: SamplingParams) -> None:
        """Before admission: a schema the grammar converter cannot take is the client's 400."""
        if params.json_schema is not None:
            grammar_for(params.json_schema)

    def stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: Cancellation | None = None,
        direct: DirectStream | None = None,
    ) -> AsyncIterator[GenerationChunk]:
        """With `direct` (feature "direct_stream"), the text goes to its socket and this
        yields only the last chunk, with no text, once `direct` holds the report."""
        # The bridge's generator itself, not one wrapped in another: one layer less per token.
        engine_core = self.core
        if engine_core is None:
            raise RuntimeError("engine is not loaded")
        cancel = cancel or Cancellation()
        handle: Any = None

        def start(emit: Emit) -> None:
            nonlocal handle
            # Raises EngineUnavailable while a crashed engine process restarts.
            if direct is None:
                handle = engine_core.submit(prompt.token_ids, params, cancel, emit)
                return
            assert isinstance(engine_core, ProcessCore)
            handle = engine_core.submit(prompt.token_ids, params, cancel, emit, direct)
            direct.interrupt = functools.partial(engine_core.interrupt, handle)

        def release() -> None:
            if handle is not None:
                engine_core.release(handle)

        return stream_from_worker(start, cancel, release)


def from_spec(spec: ModelSpec, settings: Settings) -> LlamaCppEngine:
    """The registry's factory (engines/registry.py); may download the GGUF."""
    from genai_service.model_store import resolve_model

    resolved = resolve_model(
        spec.model, settings.model_cache_dir, spec.served_model_name, settings.hf_endpoint
    )
    return LlamaCppEngine(
        resolved.path,
        model_id=resolved.model_id,
        n_ctx=settings.n_ctx,
        n_threads=settings.n_threads,
        n_batch=settings.n_batch,
        n_gpu_layers=settings.n_gpu_layers,
        n_parallel=settings.n_parallel,
        prefill_chunk=settings.prefill_chunk,
        prefix_cache=settings.prefix_cache,
        batch_invariant=settings.batch_invariant,
        engine_process=settings.engine_process,
        kv_cache_tokens=settings.kv_cache_tokens,
        prompt_cache_mb=settings.prompt_cache_mb,
        stream_interval_ms=settings.stream_interval_ms,
        direct_stream=settings.direct_stream,
    )
