"""structlog set-up: key-value lines for people in development, JSON for log shippers.

Libraries that log through the standard library (onnxruntime, transformers, torch) or warn
through `warnings` get the same rendering. Their info lines and their first-start
chatter (deprecations, ONNX tracer and quantization advice) are for developers: they show at
LOG_LEVEL=debug only; other library warnings and all errors always show.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

# Top-level loggers of libraries whose warnings are advice to their own developers.
NOISY_LIBRARIES = frozenset(
    {"py.warnings", "transformers", "torch", "optimum", "onnxruntime", "onnx", "huggingface_hub"}
)


class _LibraryNoise(logging.Filter):
    """Drops library records below ERROR, unless the service logs at debug."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if self.debug or record.levelno >= logging.ERROR:
            return True
        name = record.name
        # onnxruntime.quantization logs to the root logger itself.
        from_library = any(
            name == lib or name.startswith(f"{lib}.") for lib in NOISY_LIBRARIES
        ) or (record.name == "root" and "onnxruntime" in record.pathname)
        return not from_library


# What configure_logging was last given: the engine process logs the same way (see `current`).
_current: tuple[str, bool] = ("info", False)


def current() -> tuple[str, bool]:
    """The level and JSON flag this process logs with, for a child process to log alike."""
    return _current


def configure_logging(level: str = "info", json: bool = False) -> None:
    global _current
    _current = (level, json)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info
            if json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configure_stdlib(numeric, renderer)


def _configure_stdlib(numeric: int, renderer: structlog.typing.Processor) -> None:
    debug = numeric <= logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("genai-service")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso"),
            ],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.addFilter(_LibraryNoise(debug))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "genai-service"]:
        root.removeHandler(old)
    root.addHandler(handler)
    # Libraries' info lines (alembic's plugin set-up, onnxruntime's graph fusions) are theirs:
    # warnings and errors only, everything at debug.
    root.setLevel(numeric if debug else max(numeric, logging.WARNING))
    # warnings.warn(...) from libraries (torch's TracerWarning ...) become log records.
    logging.captureWarnings(True)
    # transformers logs through its own handler, not the root's: its verbosity setting.
    if not debug:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
