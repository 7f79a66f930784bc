"""The `genai-service` command line."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from genai_service import __version__
from genai_service.cli_support import console, error, load_settings, note
from genai_service.db_cli import db_app
from genai_service.keys_cli import keys_app

if TYPE_CHECKING:
    from genai_service.settings import Settings

# Plain help (no Rich markup): option help says "[env HOST; default 127.0.0.1]", which Rich
# markup would swallow as a tag.
app = typer.Typer(
    name="genai-service",
    help="OpenAI-compatible generative-AI service.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
models_app = typer.Typer(
    help="Find and fetch model files.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"genai-service {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Serve an LLM behind an OpenAI-compatible API."""


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(metavar="HOST", help="Interface to bind [env HOST; default 127.0.0.1]."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(metavar="PORT", help="TCP port [env PORT; default 8000]."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            metavar="SPEC",
            help="'smollm2' (embedded), a .gguf path, or 'owner/repo/file.gguf[@revision]' "
            "from Hugging Face; for other engines an ONNX or checkpoint folder, or the "
            "upstream's model name [env MODEL; default smollm2].",
        ),
    ] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            metavar="ENGINE",
            help="Inference engine: llama.cpp, onnx, transformers, upstream "
            "[env ENGINE; default llama.cpp].",
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="CPU threads [env N_THREADS; default: the CPUs allowed by affinity and cgroup quota].",
        ),
    ] = None,
    ctx_size: Annotated[
        int | None,
        typer.Option(
            min=64,
            metavar="N",
            help="Context window per request (slot) [env N_CTX; default 4096].",
        ),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Generations at once [env MAX_CONCURRENT_GENERATIONS; default: N_PARALLEL, 16].",
        ),
    ] = None,
    max_queue: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Requests waiting for a slot before 429 [env MAX_QUEUE; default 16].",
        ),
    ] = None,
    reload: Annotated[
        bool, typer.Option("--reload", help="Restart on code changes (development).")
    ] = False,
    log_level: Annotated[
        str | None,
        typer.Option(
            metavar="LEVEL",
            help="critical, error, warning, info, debug or trace [env LOG_LEVEL; default info].",
        ),
    ] = None,
) -> None:
    """Run the HTTP server. Options override the environment and .env."""
    import uvicorn

    overrides = {
        "HOST": host,
        "PORT": port,
        "MODEL": model,
        "ENGINE": engine,
        "N_THREADS": threads,
        "N_CTX": ctx_size,
        "MAX_CONCURRENT_GENERATIONS": max_concurrent,
        "MAX_QUEUE": max_queue,
        "LOG_LEVEL": log_level,
    }
    # Through the environment, so a --reload worker process sees the same settings.
    os.environ.update({key: str(value) for key, value in overrides.items() if value is not None})
    from genai_service.log_config import configure_logging

    settings = load_settings()
    _check_listen(settings.host, settings.port)
    configure_logging(settings.log_level, settings.log_json)
    note(banner(settings))
    # uvicorn re-raises SIGTERM once its graceful shutdown is done, which would make the exit
    # status -15; a drained, orderly stop is a clean exit (0) for systemd and orchestrators.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    # Streams get SHUTDOWN_DRAIN_SECONDS to finish; uvicorn waits a little longer.
    grace = int(settings.shutdown_drain_seconds) + 5
    if reload:  # development: uvicorn's reloader needs an import string, and no drain
        uvicorn.run(
            "genai_service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            reload=True,
            reload_dirs=[str(Path(__file__).parent)],
            log_level=settings.log_level.lower(),
            access_log=False,
            timeout_graceful_shutdown=grace,
        )
        return
    from genai_service.app import create_app
    from genai_service.server import DrainingServer

    service = create_app(settings)
    config = uvicorn.Config(
        service,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=grace,
    )
    # SIGTERM: readiness 503 and new requests 503 at once, running ones finish, then the
    # server stops and the lifespan flushes the usage ledger (serving/shutdown.py).
    server = DrainingServer(config, service.state.service.generations.shutdown)
    server.run()
    if not server.started:  # as uvicorn.run: a failed start (bind, lifespan) is not a success
        raise typer.Exit(3)


def export_label(src: str, source: Path) -> str:
    """What the export's progress lines call the model: an embedded checkpoint's folder is
    named `model`, so it goes by its model name (`minilm` -> all-MiniLM-L6-v2)."""
    from genai_service.model_store import EMBEDDED_EMBEDDING_MODELS

    if src in EMBEDDED_EMBEDDING_MODELS:
        return EMBEDDED_EMBEDDING_MODELS[src][3]
    return source.name


def banner(settings: Settings) -> str:
    """The start-up line; MODEL="" serves no chat model (embeddings only, say)."""
    where = f"http://{settings.host}:{settings.port}"
    if not settings.model:
        return f"genai-service {__version__}: no chat model, on {where}"
    return (
        f"genai-service {__version__}: model {settings.model} on {where} (engine {settings.engine})"
    )


def _check_listen(host: str, port: int) -> None:
    """Fail in one line before loading anything when HOST:PORT cannot be listened on.

    uvicorn would load the model and migrate the database first, then log the bind error.
    """
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        error(f"cannot listen on {host}:{port} (HOST, PORT): {reason}")
        raise typer.Exit(1) from None


@models_app.command("download")
def download(
    spec: Annotated[
        str,
        typer.Argument(metavar="SPEC", help="'owner/repo/file.gguf[@revision]' on Hugging Face."),
    ],
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Model cache [env MODEL_CACHE_DIR; default ~/.cache/genai-service/models].",
        ),
    ] = None,
) -> None:
    """Download a model file into the cache (shows a progress bar).

    Offline it fails within seconds; HF_ENDPOINT points at a mirror, HF_HUB_OFFLINE=1 uses
    only the cache.
    """
    from genai_service.model_store import (
        EMBEDDED_MODELS,
        ModelNotFoundError,
        download_from_hub,
        embedded_model_path,
        parse_hub_spec,
    )

    if spec in EMBEDDED_MODELS:
        try:
            where = embedded_model_path(spec)
        except ModelNotFoundError as exc:
            error(str(exc))
            raise typer.Exit(1) from None
        note(
            f"'{spec}' is embedded (in the {EMBEDDED_MODELS[spec][0]} package): nothing to download"
        )
        typer.echo(str(where))
        return
    if Path(spec).expanduser().is_file():
        note(f"{spec} is a local file: nothing to download")
        typer.echo(str(Path(spec).expanduser()))
        return
    hub = parse_hub_spec(spec)
    if hub is None:
        error(
            f"'{spec}' is not a Hugging Face 'owner/repo/file.gguf[@revision]' spec "
            f"(nor an embedded model: {', '.join(EMBEDDED_MODELS)}; nor an existing file)"
        )
        raise typer.Exit(2)
    settings = load_settings()
    try:
        path = download_from_hub(hub, cache_dir or settings.model_cache_dir, settings.hf_endpoint)
    except ModelNotFoundError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    note(f"saved to {path}")
    typer.echo(str(path))


@models_app.command("path")
def model_path(
    spec: Annotated[
        str, typer.Argument(metavar="SPEC", help="Model spec, as for serve --model.")
    ] = "smollm2",
) -> None:
    """Print the local file a model spec resolves to (never downloads; see `models download`)."""
    from genai_service.model_store import ModelNotFoundError, resolve_model

    settings = load_settings()
    try:
        resolved = resolve_model(spec, settings.model_cache_dir, download=False)
    except ModelNotFoundError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    typer.echo(str(resolved.path))


@models_app.command("export-onnx")
def export_onnx_command(
    src: Annotated[
        str,
        typer.Argument(
            metavar="SRC",
            help="Hugging Face checkpoint folder (encoder or causal LM), or 'minilm' for the "
            "embedded all-MiniLM-L6-v2.",
        ),
    ],
    out: Annotated[
        Path, typer.Argument(metavar="OUT", help="Folder to write the ONNX model into.")
    ],
    quantize: Annotated[
        str | None,
        typer.Option(
            metavar="int8", help="Also write INT8 weights (dynamic quantization): 'int8'."
        ),
    ] = None,
) -> None:
    """Export a checkpoint to ONNX (and INT8); tokenizer and config are copied beside it."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from genai_service.engines.onnx_export import ExportError, export_onnx
    from genai_service.log_config import configure_logging
    from genai_service.model_store import (
        EMBEDDED_EMBEDDING_MODELS,
        ModelNotFoundError,
        embedded_checkpoint_dir,
    )

    # As in serve: torch's TracerWarning and onnxruntime's pre-processing advice are for their
    # developers, shown only with LOG_LEVEL=debug.
    configure_logging(os.environ.get("LOG_LEVEL", "info"))
    if quantize not in (None, "int8"):
        error(f"--quantize takes 'int8', not '{quantize}'")
        raise typer.Exit(2)
    try:
        source = embedded_checkpoint_dir(src) if src in EMBEDDED_EMBEDDING_MODELS else Path(src)
        label = export_label(src, source)
    except ModelNotFoundError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    steps = ["export", "quantize", "save"] if quantize else ["export", "save"]
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"exporting {label}", total=len(steps))

        def step(name: str) -> None:
            progress.update(task, completed=steps.index(name), description=f"{name}: {label}")

        try:
            result = export_onnx(source, out, quantize="int8" if quantize else None, step=step)
        except ExportError as exc:
            progress.stop()
            error(str(exc))
            raise typer.Exit(1) from None
        progress.update(task, completed=len(steps), description=f"done: {label}")

    # The folder is the last line (stdout); a long path in the title would wrap mid-word.
    table = Table(title=f"{result.kind}: {result.out_dir.name}")
    table.add_column("file")
    table.add_column("size", justify="right")
    table.add_row("model.onnx (fp32)", f"{result.fp32_bytes / 1e6:.1f} MB")
    if result.int8_bytes is not None:
        table.add_row("model.int8.onnx (int8)", f"{result.int8_bytes / 1e6:.1f} MB")
        table.add_row("smaller by", f"{result.ratio:.2f}x")
    console.print(table)
    typer.echo(str(result.out_dir))
