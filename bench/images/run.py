"""Container images: the production and development targets against a naive single-stage build.

For each image, built in this same run from the same sources:
- cold build: BuildKit's cache (layers and cache mounts) pruned first;
- code-change rebuild: one source file edited, then built again;
- size: the image as `docker images` reports it (no model inside: it lives on a volume);
- start to ready: `docker run` until /health/ready answers 200, model on a volume (median;
  the images take turns, so a load change on the machine hits them alike).

    .venv/bin/python bench/images/run.py                 # all three images
    .venv/bin/python bench/images/run.py --starts 5 --json results.json

Targets (production): <= 350 MB, code-only rebuild <= 5 s, start to ready <= 3 s. The naive
Dockerfile (bench/images/Dockerfile.naive) is the reference the ratios are printed against.
All three builds get the same prebuilt llama-cpp-python wheel where the host has one, so no cold
build spends its time compiling llama.cpp. Pruning the build cache makes the next test run
rebuild its images once.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from containers import dockerkit  # noqa: E402

console = Console()
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = {"size_mb": 350.0, "rebuild_s": 5.0, "ready_s": 3.0}


@dataclass
class Variant:
    name: str
    dockerfile: str
    target: str | None
    command: tuple[str, ...]


VARIANTS = [
    Variant("production", "Dockerfile", "production", ("serve",)),
    Variant("development", "Dockerfile", "development", ("serve", "--reload")),
    Variant(
        "naive (single stage)", "bench/images/Dockerfile.naive", None, ("genai-service", "serve")
    ),
]


@dataclass
class Result:
    image: str
    cold_build_s: float
    rebuild_s: float
    size_mb: float
    ready_s: float
    ready_all_s: list[float]


def start_to_ready(tag: str, command: tuple[str, ...], models: Path, env: dict[str, str]) -> float:
    name = f"genai-bench-{uuid.uuid4().hex[:8]}"
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    start = time.monotonic()
    try:
        dockerkit.docker(
            "run", "-d", "--name", name, "-p", "127.0.0.1::8000",
            "-v", f"{models}:/models:ro", *env_args, tag,
            *command, "--model", f"/models/{MODEL_FILE}",
        )  # fmt: skip
        port = dockerkit.docker("port", name, "8000/tcp").stdout.split()[0]
        dockerkit.wait_http(f"http://{port}/health/ready", timeout=300, interval=0.02)
        return time.monotonic() - start
    finally:
        dockerkit.docker("rm", "-f", "-v", name, check=False)


def build_variant(variant: Variant, build_args: dict[str, str]) -> tuple[str, float, float, float]:
    """Cold build, then a code-only change and a rebuild: (tag, cold s, rebuild s, size MB)."""
    tag = f"genai-bench/{variant.name.split()[0]}:latest"
    with tempfile.TemporaryDirectory(prefix="genai-bench-") as tmp:
        context = dockerkit.copy_build_context(Path(tmp))
        dockerfile = ROOT / variant.dockerfile
        dockerkit.docker("builder", "prune", "--all", "--force")
        dockerkit.docker("image", "rm", "-f", tag, check=False)
        console.print(f"[bold]{variant.name}[/]: cold build ...")
        cold = dockerkit.build(context, tag, target=variant.target, dockerfile=dockerfile,
                               build_args=build_args, no_cache=True)  # fmt: skip
        module = context / "src/genai_service/healthcheck.py"
        module.write_text(module.read_text() + f"\n# code change {uuid.uuid4().hex}\n")
        console.print(f"[bold]{variant.name}[/]: code-change rebuild ...")
        rebuild = dockerkit.build(context, tag, target=variant.target, dockerfile=dockerfile,
                                  build_args=build_args)  # fmt: skip
    return tag, cold.seconds, rebuild.seconds, dockerkit.image_size_mb(tag)


def markdown(results: list[Result]) -> str:
    lines = [
        "| image | cold build s | code-change rebuild s | size MB | start-to-ready s |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.image} | {r.cold_build_s:.1f} | {r.rebuild_s:.1f} | {r.size_mb:.0f} | "
            f"{r.ready_s:.2f} |"
        )
    return "\n".join(lines)


def main(
    starts: Annotated[int, typer.Option(min=1, help="Container starts per image (median).")] = 3,
    only: Annotated[list[str] | None, typer.Option(help="Measure only these images.")] = None,
    threads: Annotated[
        int | None, typer.Option(help="N_THREADS inside the containers (default: all cores).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write results.")] = None,
) -> None:
    dockerkit.ensure_engine()
    build_args = dockerkit.local_build_args()
    models = dockerkit.models_dir()
    env = {"N_CTX": "2048"} | ({"N_THREADS": str(threads)} if threads else {})
    console.print(f"build args: {build_args}; container env: {env}")
    variants = [v for v in VARIANTS if not only or v.name.split()[0] in only]
    builds = [build_variant(v, build_args) for v in variants]
    console.print(f"start to ready x{starts}, images taking turns ...")
    readies: list[list[float]] = [[] for _ in variants]
    for _ in range(starts):
        for i, (variant, (tag, *_rest)) in enumerate(zip(variants, builds, strict=True)):
            readies[i].append(start_to_ready(tag, variant.command, models, env))
    results = [
        Result(v.name, cold, rebuild, size, statistics.median(r), r)
        for v, (_tag, cold, rebuild, size), r in zip(variants, builds, readies, strict=True)
    ]

    table = Table(title="Container images (same sources, same run)")
    for column in ("image", "cold build s", "code-change rebuild s", "size MB", "start-to-ready s"):
        table.add_column(column, justify="left" if column == "image" else "right")
    for r in results:
        table.add_row(r.image, f"{r.cold_build_s:.1f}", f"{r.rebuild_s:.1f}", f"{r.size_mb:.0f}",
                      f"{r.ready_s:.2f}")  # fmt: skip
    console.print(table)
    print(markdown(results))

    prod = next((r for r in results if r.image == "production"), None)
    naive = next((r for r in results if r.image.startswith("naive")), None)
    if prod:
        console.print(
            f"targets (production): size {prod.size_mb:.0f}/{TARGETS['size_mb']:.0f} MB, "
            f"rebuild {prod.rebuild_s:.1f}/{TARGETS['rebuild_s']:.0f} s, "
            f"ready {prod.ready_s:.2f}/{TARGETS['ready_s']:.0f} s"
        )
    if prod and naive:
        console.print(
            f"production vs naive: size x{prod.size_mb / naive.size_mb:.2f}, "
            f"code-change rebuild x{prod.rebuild_s / naive.rebuild_s:.2f}, "
            f"cold build x{prod.cold_build_s / naive.cold_build_s:.2f}, "
            f"start to ready x{prod.ready_s / naive.ready_s:.2f}"
        )
    if json_out:
        json_out.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    try:
        typer.run(main)
    except dockerkit.DockerUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise SystemExit(2) from None
    except subprocess.CalledProcessError as exc:
        console.print(f"[red]{exc}: {exc.stderr}[/]")
        raise SystemExit(1) from None
