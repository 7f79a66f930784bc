"""Continuous batching over llama.cpp's low-level API.

One scheduler thread owns the llama context. Each step is one `llama_decode` of one batch: the
next token of every running request (one row each) plus prompt chunks of requests still
prefilling, at most `prefill_chunk` tokens of them while others decode, so a long prompt is
prefilled in chunks and never stalls the running streams for long. Decoding is bound by memory
bandwidth, so one step over many sequences costs little more than a step over one.

- Each request owns a sequence id (its slot). By default every slot shares one unified KV
  buffer of `kv_cache_tokens` cells (llama.cpp's `kv_unified`, as llama-server's automatic
  slots): many slots cost no memory until they are used, and any one request may use up to
  `n_ctx_per_slot`. A request is admitted once its prompt plus `max_tokens` fits in the cells
  not promised to running requests, so the buffer never runs out mid-reply; it waits otherwise.
  With `batch_invariant` each slot gets its own region instead (`kv_unified=False`, what the
  invariance relies on). Finished or cancelled requests leave at once and their cells are freed
  with `llama_memory_seq_rm`. New requests join between steps.
- Prefix reuse (as llama-server's slot cache): a slot keeps the KV of its last prompt and reply
  after the request leaves. A new request takes the free slot whose cache shares most of its
  first tokens (a repeated question, the next turn of a chat, a common system prompt) and cuts
  the rest, or shares the prefix of a running request; it decodes only what is new. Otherwise
  it takes an empty slot, or the least recently used one. Cached slots give up their cells,
  least recently used first, when a request needs them.
- Idle slots go to RAM (as llama-server's `--cache-ram`): when a request starts, every other
  cached slot's KV is copied out (`llama_state_seq_get_data`) and its cells freed. In one unified
  buffer each step's attention spans every cell up to the highest one in use, so cached slots
  that stayed would slow every later step (one stream went from 104 to 87 tok/s after 16 had
  run). A prompt that starts like a saved one gets it back (`llama_state_seq_set_data`) and cuts
  the rest. When nothing runs, every cached slot goes to RAM and the buffer is emptied, so a
  request that comes to an idle engine lays out its cells the same way whatever came before
  (the same seed repeats its text). The saved states are bounded by `prompt_cache_bytes`, least
  recently used out first; 0 keeps idle slots' cells in the buffer instead.
- Each request has its own sampler chain (seeded). Plain greedy (temperature 0, no schema) is
  numpy's argmax over the logits row instead (the first highest, as llama.cpp's greedy sampler
  picks), without the sampler copying the whole vocabulary into candidates per token.
  llama.cpp's backend sampling (`llama_set_sampler`, the argmax inside the graph) was tried and
  measured slower: it saved ~50 µs of Python per token but added 0.2-0.3 ms to each
  `llama_decode` (the graph pads and copies out the logits rows it samples from).
- Metrics go through `record(kind, value)` (see `metrics.EngineRecorder`), so the scheduler can
  run in the engine process and the API process still exports them.
- Batch invariance (optional): llama.cpp's CPU kernels pick code paths by batch shape (a single
  output row takes the vec-dot path, 64+ query rows tiled attention), and the paths round
  differently. With `batch_invariant`, prompt chunks stay under 63 tokens and no step has a
  single output row (a throw-away token of an idle sequence, or the second-to-last prompt token,
  makes two), so a request's greedy output is the same batched or alone. The extra row costs a
  lone stream up to half its speed on a CPU, hence off by default.
"""

from __future__ import annotations

import ctypes
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from genai_service.engines.base import (
    Cancellation,
    GenerationChunk,
    SamplingParams,
    TokenLogprob,
)
from genai_service.engines.llama_cpp.grammar import grammar_for
from genai_service.engines.text import StopDetector, Utf8Stream
from genai_service.engines.threads import name_os_thread

log = structlog.get_logger(__name__)

Emit = Callable[[GenerationChunk | BaseException], None]
# record(kind, value): engine-side metrics the serving layer cannot see ("prefix_reused" tokens);
# time to first token, inter-token latency, tokens and outcomes are the GenerationService's.
Record = Callable[[str, Any], None]

_INVARIANT_CHUNK = 62  # prompt tokens per step; llama.cpp tiles attention from 64 rows on
_KV_CELLS_CAP = 16384  # default unified KV cells beyond 4 x N_CTX (see default_kv_cells)
_COUNTERS_EVERY = 64  # steps between two records of the step counters
_ROW_VIEWS = 4096  # logits row views kept by address
_EOG = None  # an end-of-generation token's entry in the piece cache


@dataclass(eq=False)
class _Request:
    tokens: list[int]
    params: SamplingParams
    cancel: Cancellation
    emit: Emit
    seq: int = -1
    n_past: int = 0  # tokens of this sequence already in the KV cache
    next_token: int = -1  # sampled, not yet decoded
    sampler: Any = None
    argmax: bool = False  # plain greedy: the highest logit, no sampler chain
    generated: int = 0
    budget: int = 0
    reserved: int = 0  # KV cells promised to it (unified buffer)
    stops: StopDetector | None = None
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # not yet sent
    sampled: list[int] = field(default_factory=list)  # generated tokens (the last not decoded)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.tokens)


@dataclass(eq=False, slots=True)
class _Saved:
    """An idle slot's KV in RAM: the tokens it holds and llama.cpp's copy of their cells."""

    tokens: list[int]
    state: Any  # ctypes uint8 array


def default_kv_cells(n_ctx_per_slot: int, n_parallel: int) -> int:
    """Room for every slot's full context, but no more than max(4 x N_CTX, 16384) cells: the
    memory of the old 4-slot default, whatever N_PARALLEL is (16 slots of 4096 share 16384)."""
    return min(n_parallel * n_ctx_per_slot, max(4 * n_ctx_per_slot, _KV_CELLS_CAP))


class BatchScheduler:
    """Runs every active generation of one model in shared llama.cpp batches."""

    def __init__(
        self,
        model: Any,
        *,
        model_id: str,
        n_ctx_per_slot: int,
        n_parallel: int,
        n_threads: int,
        n_batch: int,
        prefill_chunk: int,
        prefix_cache: bool,
        batch_invariant: bool = False,
        kv_cache_tokens: int | None = None,
        prompt_cache_bytes: int = 0,
        record: Record | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        import llama_cpp

        self._lc = llama_cpp
        self.model = model  # llama_cpp._internals.LlamaModel, kept alive while we run
        self.vocab = model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
        self.model_id = model_id
        self.n_parallel = n_parallel
        self.prefix_cache = prefix_cache
        self.batch_invariant = batch_invariant
        self._record: Record = record or (lambda kind, value: None)
        # Called after every scheduler iteration: the engine process sends a step's chunks as one
        # message instead of one per token.
        self._flush = flush or (lambda: None)
        chunk = min(prefill_chunk, n_batch)
        self.prefill_chunk = max(2, min(chunk, _INVARIANT_CHUNK) if batch_invariant else chunk)
        # Most tokens in one step: decode rows plus prompt chunks (one chunk when invariant).
        self.step_tokens = (
            max(self.prefill_chunk, n_parallel) if batch_invariant else max(n_batch, n_parallel)
        )
        # Sequences: the slots, then the scratch sequence.
        self._scratch_seq = n_parallel
        n_seq = n_parallel + 1

        self.unified = not batch_invariant
        params = llama_cpp.llama_context_default_params()
        if self.unified:
            params.n_ctx = max(
                kv_cache_tokens or default_kv_cells(n_ctx_per_slot, n_parallel), n_ctx_per_slot
            )
        else:
            params.n_ctx = n_ctx_per_slot * n_seq
        params.n_batch = self.step_tokens + 1  # + the scratch row
        params.n_ubatch = params.n_batch if batch_invariant else min(512, params.n_batch)
        params.n_seq_max = n_seq
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.kv_unified = self.unified
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model.model, params)
        if ctx is None:
            raise RuntimeError("llama.cpp could not create a context")
        self._ctx = ctx
        self.n_ctx_per_slot = min(n_ctx_per_slot, llama_cpp.llama_n_ctx_seq(ctx))
        # llama.cpp's own warning counts the whole unified buffer as one sequence's context
        # (dropped in llama_log); what a request may reach is n_ctx_per_slot.
        n_ctx_train = llama_cpp.llama_model_n_ctx_train(model.model)
        if 0 < n_ctx_train < self.n_ctx_per_slot:
            log.warning(
                "context_beyond_training", n_ctx=self.n_ctx_per_slot, n_ctx_train=n_ctx_train
            )
        self.kv_cells = llama_cpp.llama_n_ctx(ctx)
        self._reserved = 0  # KV cells promised to running requests (unified buffer)
        self._held: _Request | None = None  # admitted next, once its KV cells are free
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        # numpy views of the batch's arrays: a row is a few array stores, not ctypes pointer
        # objects made and indexed per field. One sequence per row, always.
        batch, rows = self._batch, params.n_batch
        self._tokens = np.ctypeslib.as_array(batch.token, (rows,))
        self._positions = np.ctypeslib.as_array(batch.pos, (rows,))
        self._outputs = np.ctypeslib.as_array(batch.logits, (rows,))
        self._seq_ids = [np.ctypeslib.as_array(batch.seq_id[i], (1,)) for i in range(rows)]
        np.ctypeslib.as_array(batch.n_seq_id, (rows,))[:] = 1
        self._n = 0
        self._piece = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes | None] = {}  # token -> its bytes, _EOG for end tokens
        # A logits row as a numpy view, per token: llama-cpp-python's wrapper returns a float
        # pointer, and numpy's as_array over it parses a buffer format in Python each time
        # (50 µs with caches cold after a decode). An address and a fixed row type cost ~1 µs.
        lib = llama_cpp.llama_cpp._lib
        self._logits_at = type(lib.llama_get_logits_ith)(("llama_get_logits_ith", lib))
        self._logits_at.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        self._logits_at.restype = ctypes.c_void_p
        self._row = ctypes.c_float * self.n_vocab
        # Views by address: llama.cpp's output buffer stays put between decodes, so a row's view
        # is made once, not per token (np.frombuffer costs ~20 µs with the caches cold). Any
        # address llama.cpp returns holds a whole row then, so a view by address is never stale.
        self._rows: dict[int, np.ndarray] = {}
        self._eog_ids: np.ndarray | None = None  # found on the first ignore_eos request
        self._prefill_turn = False
        # The engine's own counters, recorded every few steps: steps, step s, decode s, tokens,
        # and this thread's CPU s outside llama_decode (its Python, sampling, pipe writes).
        self._counters = [0, 0.0, 0.0, 0, 0.0]

        self._incoming: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        # Free slots, least recently used first; `_cached`: the tokens whose KV a free slot kept.
        self._free_seqs = list(range(n_parallel))
        self._cached: dict[int, list[int]] = {}
        self._cached_cells = 0
        # Idle slots' KV in RAM (unified buffer only), least recently used first.
        self._saved: list[_Saved] = []
        self._saved_bytes = 0
        self._saved_limit = prompt_cache_bytes if self.unified and prefix_cache else 0
        self._running: list[_Request] = []
        self.pending = 0  # submitted, not yet given a slot
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="llama.cpp-batch", daemon=True)
        self._thread.start()

    # --- public, any thread ---------------------------------------------------------------
    @property
    def active(self) -> int:
        return len(self._running) + self.pending

    def submit(
        self, tokens: list[int], params: SamplingParams, cancel: Cancellation, emit: Emit
    ) -> None:
        if self._closed:
            raise RuntimeError("engine is closed")
        with self._lock:
            self.pending += 1
        self._incoming.put(_Request(list(tokens), params, cancel, emit))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._incoming.put(None)
        self._thread.join()
        lc = self._lc
        for req in list(self._running):
            self._release(req)
        lc.llama_batch_free(self._batch)
        lc.llama_free(self._ctx)

    # --- scheduler thread -----------------------------------------------------------------
    def _loop(self) -> None:
        name_os_thread("llama-batch")
        try:
            while True:
                if not self._admit():
                    return
                self._drop_cancelled()
                if self._running:
                    started, cpu = time.perf_counter(), time.thread_time()
                    self._step()
                    self._flush()
                    counters = self._counters
                    counters[0] += 1
                    counters[1] += time.perf_counter() - started
                    counters[4] += time.thread_time() - cpu
                    if counters[0] >= _COUNTERS_EVERY:
                        self._record_counters()
                else:
                    self._flush()
        except BaseException as exc:  # a bug here must not hang every waiting client
            log.exception("batch_scheduler_failed")
            self._closed = True
            for req in self._running:
                req.emit(exc)
            self._running.clear()
            if self._held is not None:
                self._held.emit(exc)
                self._held = None
            while True:
                try:
                    item = self._incoming.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item.emit(exc)
            self._flush()

    def _admit(self) -> bool:
        """Take new requests while slots are free; block only when nothing runs."""
        if self._running and self._held is None and self._incoming.empty():
            return True  # the usual step: no exception raised and caught (cold, ~10 µs)
        while self._free_seqs:
            if not self._running:
                self._record_counters()
                self._park_idle()
                self._flush()  # about to block: what was just emitted must go out first
            if self._held is not None:
                item, self._held = self._held, None
            else:
                try:
                    item = self._incoming.get(block=not self._running)
                except queue.Empty:
                    return True
                if item is None:
                    return False
            if not item.cancel.cancelled and not self._fits(item):
                self._held = item  # waits (first in line) until running requests free cells
                return True
            with self._lock:
                self.pending -= 1
            if item.cancel.cancelled:
                continue
            try:
                self._start(item)
            except Exception as exc:
                item.emit(exc)
        return True

    def _fits(self, req: _Request) -> bool:
        """Whether its prompt and whole reply fit in the unified buffer's cells not promised to
        running requests (cached slots give theirs up)."""
        if not self.unified or not self._running:
            return True
        need = len(req.tokens) + min(req.params.max_tokens, self.n_ctx_per_slot)
        return self._reserved + need <= self.kv_cells

    def _record_counters(self) -> None:
        if self._counters[0]:
            self._record("steps", tuple(self._counters))
            self._counters = [0, 0.0, 0.0, 0, 0.0]

    def _start(self, req: _Request) -> None:
        params = req.params
        req.budget = min(params.max_tokens, self.n_ctx_per_slot - len(req.tokens))
        req.stops = StopDetector(params.stop)
        if req.budget <= 0 or not req.tokens:
            self._finish(req, "length")
            return
        req.argmax = params.temperature <= 0 and params.json_schema is None
        if params.ignore_eos:
            self._eog()  # the end tokens known to the piece cache (the argmax path checks it)
        if not req.argmax:
            req.sampler = self._make_sampler(params)  # may raise (a bad grammar): before the slot
        req.seq, n = self._take_slot(req.tokens)
        req.n_past = n
        if n:
            self._record("prefix_reused", n)
        req.reserved = len(req.tokens) + req.budget
        self._reserved += req.reserved
        self._running.append(req)
        if self._saved_limit:
            for seq in list(self._cached):
                self._save(seq)
        if self.unified:
            while self._cached and self._reserved + self._cached_cells > self.kv_cells:
                self._evict(self._oldest_cached())

    def _take_slot(self, tokens: list[int]) -> tuple[int, int]:
        """A free slot for this prompt and how many of its first tokens the slot already holds.

        At least the last prompt token is left to decode: its logits give the first token."""
        lc = self._lc
        limit = len(tokens) - 1
        best, source = 0, -1
        if self.prefix_cache and limit > 0:
            for seq, cached in self._cached.items():
                n = _common_prefix(cached, tokens, limit)
                if n > best:
                    best, source = n, seq
            for other in self._running:
                n = _common_prefix(other.tokens, tokens, min(limit, other.n_past))
                if n > best:
                    best, source = n, other.seq
            saved = None
            for entry in self._saved:
                n = _common_prefix(entry.tokens, tokens, limit)
                if n > best:
                    best, saved = n, entry
            if saved is not None:
                return self._restore(saved, best)
        if source in self._cached:
            # Keep that slot's cells in place and cut the rest (as llama-server picks the most
            # similar slot). The cut frees the cells right after the kept ones, and llama.cpp
            # puts this prompt's new cells there: attention visits cells in buffer order, and
            # the same order as a fresh prompt keeps a greedy reply the same. (A prefix shared
            # into another slot would be followed by cells anywhere in the buffer.)
            self._free_seqs.remove(source)
            if 2 * best < len(self._cached[source]):
                self._copy_to_ram(source)  # most of it is cut (llama-server's rule too)
            self._uncache(source)
            lc.llama_memory_seq_rm(self._mem, source, best, -1)
            return source, best
        seq = self._empty_slot()
        if best:
            # The prefix of a running request. Unified: the copy shares its cells. Separate
            # regions: llama.cpp copies only a whole region, so copy it all and cut the tail.
            lc.llama_memory_seq_cp(self._mem, source, seq, -1, -1)
            lc.llama_memory_seq_rm(self._mem, seq, best, -1)
        return seq, best

    def _empty_slot(self) -> int:
        """An empty slot if there is one, else the least recently used cached one, emptied."""
        empty = [s for s in self._free_seqs if s not in self._cached]
        seq = empty[0] if empty else self._free_seqs[0]
        self._free_seqs.remove(seq)
        if seq in self._cached:
            self._save(seq)
        return seq

    def _restore(self, saved: _Saved, keep: int) -> tuple[int, int]:
        """A slot with a saved state put back and cut after its first `keep` tokens (fewer
        if llama.cpp found no room for it: then the prompt starts fresh)."""
        lc = self._lc
        if 2 * keep >= len(saved.tokens):  # saved again, with what follows, when this slot idles
            self._saved.remove(saved)
            self._saved_bytes -= len(saved.state)
        seq = self._empty_slot()
        if lc.llama_state_seq_set_data(self._ctx, saved.state, len(saved.state), seq) == 0:
            lc.llama_memory_seq_rm(self._mem, seq, -1, -1)
            return seq, 0
        lc.llama_memory_seq_rm(self._mem, seq, keep, -1)
        return seq, keep

    def _save(self, seq: int) -> None:
        """Free a cached slot's cells, its KV kept in RAM if there is room."""
        self._copy_to_ram(seq)
        self._evict(seq)

    def _park_idle(self) -> None:
        """Nothing runs: every cached slot goes to RAM and the buffer is emptied. The next
        request's cells then start at the buffer's head, in order, whatever ran before: cells
        put in holes below its others (llama.cpp searches from cell 0 once the buffer is mostly
        free) would change the order attention visits them in, and with it the rounding (the
        same seed would not repeat its text)."""
        if not self._saved_limit or not self._cached:
            return
        for seq in list(self._cached):
            self._copy_to_ram(seq)
            self._uncache(seq)
        self._lc.llama_memory_clear(self._mem, False)

    def _copy_to_ram(self, seq: int) -> None:
        lc = self._lc
        tokens = self._cached[seq]
        size = lc.llama_state_seq_get_size(self._ctx, seq) if self._saved_limit else 0
        if not 0 < size <= self._saved_limit:
            return
        state = (ctypes.c_uint8 * size)()
        if lc.llama_state_seq_get_data(self._ctx, state, size, seq) != size:
            return
        # A saved prompt this one extends is only a shorter copy of it.
        for old in [e for e in self._saved if tokens[: len(e.tokens)] == e.tokens]:
            self._saved.remove(old)
            self._saved_bytes -= len(old.state)
        self._saved.append(_Saved(tokens, state))
        self._saved_bytes += size
        while self._saved_bytes > self._saved_limit:
            self._saved_bytes -= len(self._saved.pop(0).state)

    def _oldest_cached(self) -> int:
        return next(s for s in self._free_seqs if s in self._cached)

    def _uncache(self, seq: int) -> None:
        self._cached_cells -= len(self._cached.pop(seq))

    def _evict(self, seq: int) -> None:
        """Drop a free slot's cached KV."""
        self._uncache(seq)
        self._lc.llama_memory_seq_rm(self._mem, seq, -1, -1)

    def _make_sampler(self, params: SamplingParams) -> Any:
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if params.json_schema is not None:
            # First in the chain: only tokens that keep the reply valid JSON for the schema.
            grammar = lc.llama_sampler_init_grammar(
                self.vocab, grammar_for(params.json_schema).encode(), b"root"
            )
            if not grammar:
                lc.llama_sampler_free(chain)
                raise ValueError("llama.cpp could not parse the grammar for this schema")
            lc.llama_sampler_chain_add(chain, grammar)
        if params.ignore_eos:
            eog = self._eog()
            biases = (lc.llama_logit_bias * len(eog))(
                *(lc.llama_logit_bias(int(t), -math.inf) for t in eog)
            )
            lc.llama_sampler_chain_add(
                chain, lc.llama_sampler_init_logit_bias(self.n_vocab, len(eog), biases)
            )
        if params.temperature <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(40))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params.top_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(0.05, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params.temperature))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._running if r.cancel.cancelled]:
            self._release(req)

    def _release(self, req: _Request, *, keep: bool = True) -> None:
        """Leave the batch: free its sampler and its slot; the slot keeps the KV of the prompt
        and reply for the next request that starts the same way (unless `keep` is off)."""
        if req in self._running:
            self._running.remove(req)
        if req.seq >= 0:
            held = (req.tokens + req.sampled)[: req.n_past]
            if keep and self.prefix_cache and held:
                self._cached[req.seq] = held
                self._cached_cells += len(held)
            else:
                self._lc.llama_memory_seq_rm(self._mem, req.seq, -1, -1)
            self._free_seqs.append(req.seq)
            req.seq = -1
        if req.sampler is not None:
            self._lc.llama_sampler_free(req.sampler)
            req.sampler = None
        self._reserved -= req.reserved
        req.reserved = 0

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        n = self._n
        self._tokens[n] = token
        self._positions[n] = pos
        self._seq_ids[n][0] = seq
        self._outputs[n] = logits
        self._n = n + 1
        return n

    def _step(self) -> None:
        decoding = [r for r in self._running if not r.prefilling]
        prefilling = [r for r in self._running if r.prefilling]
        if not self.batch_invariant:
            self._mixed_step(decoding, prefilling)
            return
        # Invariant: decode steps and single prompt chunks alternate while both are waiting.
        self._prefill_turn = not self._prefill_turn
        if prefilling and (self._prefill_turn or not decoding):
            self._prefill_step(prefilling[0])
        else:
            self._decode_step(decoding)

    def _mixed_step(self, decoding: list[_Request], prefilling: list[_Request]) -> None:
        """One batch: every decode row, then prompt chunks in arrival order (as llama-server);
        while streams decode, prompts get at most `prefill_chunk` tokens of it."""
        self._n = 0
        outputs = []
        for req in decoding:
            outputs.append((req, self._add(req.next_token, req.n_past, req.seq, True)))
            req.n_past += 1
        room = self.step_tokens - self._n
        if decoding:
            room = min(room, self.prefill_chunk)
        done = []
        for req in prefilling:
            if room <= 0:
                break
            end = min(req.n_past + room, len(req.tokens))
            last = len(req.tokens) - 1
            for pos in range(req.n_past, end):
                idx = self._add(req.tokens[pos], pos, req.seq, pos == last)
                if pos == last:
                    outputs.append((req, idx))
            room -= end - req.n_past
            req.n_past = end
            if not req.prefilling:
                done.append(req)
        self._run(outputs, prefilled=done)

    def _decode_step(self, decoding: list[_Request]) -> None:
        self._n = 0
        outputs = []
        for req in decoding:
            outputs.append((req, self._add(req.next_token, req.n_past, req.seq, True)))
            req.n_past += 1
        lone = self.batch_invariant and len(outputs) == 1
        self._run(outputs, scratch=decoding[0].seq if lone else None)

    def _prefill_step(self, req: _Request) -> None:
        self._n = 0
        end = min(req.n_past + self.prefill_chunk, len(req.tokens))
        last = len(req.tokens) - 1
        outputs = []
        for pos in range(req.n_past, end):
            # Two output rows keep the logits on the multi-row path (batch invariance).
            wanted = pos == last or (self.batch_invariant and pos == last - 1)
            idx = self._add(req.tokens[pos], pos, req.seq, wanted)
            if pos == last:
                outputs.append((req, idx))
        lone = self.batch_invariant and (end - req.n_past == 1 and end - 1 == last)
        req.n_past = end
        self._run(outputs, scratch=req.seq if lone else None, prefilled=[req])

    def _run(
        self,
        outputs: list[tuple[_Request, int]],
        *,
        scratch: int | None = None,
        prefilled: list[_Request] | None = None,
    ) -> None:
        """Decode the batch built so far and sample; `scratch`: add a throw-away row next to
        the lone output row of this sequence."""
        lc = self._lc
        spare = -1
        if scratch is not None:
            # An idle sequence next to it: llama.cpp's graph spans every KV region between
            # the lowest and highest sequence of a step, so a distant one costs time.
            empty = [s for s in self._free_seqs if s not in self._cached]
            spare = min([*empty, self._scratch_seq], key=lambda s: abs(s - scratch))
            self._add(0, 0, spare, True)
        self._batch.n_tokens = self._n
        started, cpu = time.perf_counter(), time.thread_time()
        rc = lc.llama_decode(self._ctx, self._batch)
        counters = self._counters
        counters[2] += time.perf_counter() - started
        counters[3] += len(outputs)
        counters[4] -= time.thread_time() - cpu
        if spare >= 0:
            lc.llama_memory_seq_rm(self._mem, spare, -1, -1)
        if rc != 0:
            # No room in the KV cache (or a backend error): fail this step's requests only.
            error = RuntimeError(f"llama_decode failed ({rc})")
            failed = {r for r, _ in outputs} | set(prefilled or ())
            for req in failed:
                req.emit(error)
                self._release(req, keep=False)
            return
        for req, idx in outputs:
            if req.argmax:
                row = self._logits(idx)
                token = int(row.argmax())
                if req.params.ignore_eos and self._pieces.get(token, 0) is _EOG:
                    # Only when an end token is on top (the argmax of the rest is the same
                    # otherwise): masked in place and put back, as logprobs read the model's
                    # own row, with no copy of the whole row.
                    eog = self._eog()
                    kept = row[eog]
                    row[eog] = -np.inf
                    token = int(row.argmax())
                    row[eog] = kept
            else:
                token = lc.llama_sampler_sample(req.sampler, self._ctx, idx)
            self._on_token(req, token, idx)

    def _logits(self, idx: int) -> np.ndarray:
        """The logits row of batch entry `idx`, as a view (no copy)."""
        address = self._logits_at(self._ctx, idx)
        if not address:
            raise RuntimeError(f"llama.cpp has no logits for batch entry {idx}")
        row = self._rows.get(address)
        if row is None:
            if len(self._rows) >= _ROW_VIEWS:
                self._rows.clear()
            row = self._rows[address] = np.frombuffer(self._row.from_address(address), np.float32)
        return row

    def _on_token(self, req: _Request, token: int, idx: int) -> None:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._learn(token)
        if piece is _EOG:
            self._finish(req, "stop")
            return
        req.generated += 1
        assert req.stops is not None
        if req.params.logprobs is not None:
            req.logprobs.append(self._logprob(idx, token, piece, req.params.logprobs))
        text, hit = req.stops.feed(req.utf8.decode(piece))
        if text:
            req.emit(GenerationChunk(text=text, logprobs=_take(req)))
        if hit:
            self._finish(req, "stop", stopped_by_sequence=True)
        elif req.generated >= req.budget:
            self._finish(req, "length")
        else:
            req.next_token = token
            req.sampled.append(token)

    def _eog(self) -> np.ndarray:
        """The vocabulary's end-of-generation tokens (EOS, EOT, <|im_end|>...), for ignore_eos."""
        if self._eog_ids is None:
            is_eog = self._lc.llama_vocab_is_eog
            self._eog_ids = np.array(
                [t for t in range(self.n_vocab) if is_eog(self.vocab, t)], dtype=np.int64
            )
            for token in self._eog_ids.tolist():
                self._pieces[token] = _EOG
        return self._eog_ids

    def _learn(self, token: int) -> bytes | None:
        """A token's bytes (None: end of generation), remembered: one dict lookup per token
        afterwards instead of two llama.cpp calls, each ~10 µs with caches cold after a decode."""
        eog = self._lc.llama_vocab_is_eog(self.vocab, token)
        piece = _EOG if eog else self._token_bytes(token)
        self._pieces[token] = piece
        return piece

    def _token_bytes(self, token: int) -> bytes:
        n = self._lc.llama_token_to_piece(
            self.vocab, token, self._piece, len(self._piece), 0, False
        )
        return self._piece.raw[: max(n, 0)]

    def _logprob(self, idx: int, token: int, piece: bytes, top: int) -> TokenLogprob:
        """The model's own distribution at this row (before sampling or a grammar changed it)."""
        logits = self._logits(idx)
        peak = float(logits.max())
        log_total = peak + float(np.log(np.exp(logits - peak).sum()))
        alternatives: tuple[tuple[bytes, float], ...] = ()
        if top:
            ids = np.argpartition(-logits, top)[:top]
            ids = ids[np.argsort(-logits[ids], kind="stable")]
            alternatives = tuple(
                (self._token_bytes(int(i)), float(logits[i]) - log_total) for i in ids
            )
        return TokenLogprob(piece, float(logits[token]) - log_total, alternatives)

    def _finish(self, req: _Request, reason: str, *, stopped_by_sequence: bool = False) -> None:
        assert req.stops is not None
        tail = ""
        if not stopped_by_sequence:
            # Text held back as a possible stop-sequence start turned out not to be one.
            tail, hit = req.stops.feed(req.utf8.flush())
            if not hit:
                tail += req.stops.flush()
        self._release(req)
        req.emit(
            GenerationChunk(
                text=tail,
                finish_reason=reason,  # type: ignore[arg-type]
                prompt_tokens=len(req.tokens),
                completion_tokens=req.generated,
                logprobs=_take(req) if req.params.logprobs is not None else None,
            )
        )


def _take(req: _Request) -> list[TokenLogprob] | None:
    """The logprobs gathered since the last chunk (tokens held back by a stop check wait)."""
    if not req.logprobs:
        return None
    taken, req.logprobs = req.logprobs, []
    return taken


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """How many first tokens a and b share (at most `limit`), by bisection over slice
    comparisons: each is one C loop, where a Python loop over long prompts is not."""
    n = min(len(a), len(b), limit)
    if n <= 0 or a[:n] == b[:n]:
        return max(n, 0)
    same, differs = 0, n  # a[:same] == b[:same]; the first mismatch is before `differs`
    while differs - same > 1:
        mid = (same + differs) // 2
        if a[same:mid] == b[same:mid]:
            same = mid
        else:
            differs = mid
    return same
