"""llama.cpp's own log lines, in the service's logs at their own levels.

llama-cpp-python's log callback reads ggml's levels by an older enum (a warning counts as an
error there), so its quiet mode let every llama.cpp warning through, raw on stderr and outside
the JSON logs. This callback replaces it: debug and info lines show at LOG_LEVEL=debug, warnings
and errors always, each as one structlog event (`llama_cpp`, with the line as `message`).

One warning is dropped: "n_ctx_seq (...) > n_ctx_train (...) -- possible training context
overflow". In one unified KV buffer llama.cpp counts every cell as one sequence's context, but
the scheduler holds each request to N_CTX, and warns itself when N_CTX is beyond the model's
training context (`BatchScheduler`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import structlog

log = structlog.get_logger("llama_cpp")

# enum ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (goes on with the last).
_LEVELS = {0: "debug", 1: "debug", 2: "debug", 3: "warning", 4: "error"}
_CONT = 5
_DROPPED = ("possible training context overflow",)

_callback: Any = None  # the ctypes callback; kept here, llama.cpp holds only its address
_state = {"level": "debug", "text": ""}  # a line arrives in pieces (CONT), logged once whole


def route(level: int, text: str) -> tuple[str, str] | None:
    """The (log method, line) for a piece of llama.cpp's log, once its line is whole."""
    if level != _CONT:
        _state["level"] = _LEVELS.get(level, "debug")
    _state["text"] += text
    if not _state["text"].endswith("\n"):
        return None
    line, _state["text"] = _state["text"].strip(), ""
    if not line or any(dropped in line for dropped in _DROPPED):
        return None
    return _state["level"], line


def _on_log(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    routed = route(level, (text or b"").decode("utf-8", errors="replace"))
    if routed is not None:
        method, line = routed
        getattr(log, method)("llama_cpp", message=line)


def install() -> None:
    """Send llama.cpp's (and ggml's) log to `_on_log` from now on, in this process."""
    global _callback
    import llama_cpp

    if _callback is None:
        _callback = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
