"""FP32 against INT8 ONNX for the embedding model, on a fixed text set.

Reports file size, latency (one text per call, as /v1/embeddings runs INT8), throughput
(texts per second over the whole set), and quality: cosine of INT8 against FP32 embeddings
and of both against sentence-transformers (the reference implementation, on torch).

    make bench-onnx                       # or: .venv/bin/python bench/onnx/run.py
    .venv/bin/python bench/onnx/run.py --threads 2 --repeats 5 --json results.json

Targets: INT8 >= 3.5x smaller, >= 1.5x faster, mean cosine to FP32 >= 0.99. Timings come from
the machine it runs on and are printed side by side with the FP32 reference run, never
asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from genai_service.engines import resolve_onnx_model
from genai_service.engines.onnx import OnnxEmbeddingEngine
from genai_service.engines.onnx_export import FP32_FILE, INT8_FILE, onnx_size
from genai_service.model_store import embedded_checkpoint_dir
from genai_service.settings import Settings

HERE = Path(__file__).parent
TARGETS = {"smaller": 3.5, "faster": 1.5, "cosine": 0.99}


def measure(engine: OnnxEmbeddingEngine, texts: list[str], repeats: int) -> dict[str, Any]:
    engine.embed_sync(texts[:4])  # warm-up: first runs allocate and pick kernels
    latencies: list[float] = []
    totals: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for text in texts:
            t0 = time.perf_counter()
            engine.embed_sync([text])
            latencies.append(time.perf_counter() - t0)
        totals.append(time.perf_counter() - start)
    vectors, _ = engine.embed_sync(texts)
    latencies.sort()
    return {
        "latency_ms_p50": 1000 * statistics.median(latencies),
        "latency_ms_p95": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "throughput_per_s": len(texts) / min(totals),
        "vectors": np.asarray(vectors, dtype=np.float32),
    }


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=Path, default=HERE / "texts.txt")
    parser.add_argument("--cache", type=Path, help="model cache (default: MODEL_CACHE_DIR)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    texts = [line.strip() for line in args.texts.read_text().splitlines() if line.strip()]
    cache = args.cache or Settings().model_cache_dir  # type: ignore[call-arg]
    folder, model_id = resolve_onnx_model(
        "minilm",
        Settings(_env_file=None, model_cache_dir=cache, onnx_precision="int8"),  # type: ignore[call-arg]
    )
    if not (folder / FP32_FILE).is_file():
        print(f"{folder} has no {FP32_FILE}; export it with --quantize int8", file=sys.stderr)
        return 1

    results: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "int8"):
        engine = OnnxEmbeddingEngine(folder, precision=precision, threads=args.threads)  # type: ignore[arg-type]
        engine._load_sync()
        results[precision] = measure(engine, texts, args.repeats)
    results["fp32"]["size_mb"] = onnx_size(folder / FP32_FILE) / 1e6
    results["int8"]["size_mb"] = onnx_size(folder / INT8_FILE) / 1e6

    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedded_checkpoint_dir("minilm")), device="cpu")
    st_vectors = np.asarray(reference.encode(texts), dtype=np.float32)
    fp32, int8 = results["fp32"]["vectors"], results["int8"]["vectors"]
    quality = {
        "int8_vs_fp32": cosine(int8, fp32),
        "int8_vs_sentence_transformers": cosine(int8, st_vectors),
        "fp32_vs_sentence_transformers": cosine(fp32, st_vectors),
    }

    smaller = results["fp32"]["size_mb"] / results["int8"]["size_mb"]
    faster = results["fp32"]["latency_ms_p50"] / results["int8"]["latency_ms_p50"]
    throughput = results["int8"]["throughput_per_s"] / results["fp32"]["throughput_per_s"]
    mean_cos = float(quality["int8_vs_fp32"].mean())

    def mark(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    print(f"\n{model_id}: {len(texts)} texts, {args.threads} thread(s), {args.repeats} repeats\n")
    print("| metric | FP32 (reference) | INT8 | INT8 vs FP32 | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    f, i = results["fp32"], results["int8"]
    print(
        f"| file size (MB) | {f['size_mb']:.1f} | {i['size_mb']:.1f} | {smaller:.2f}x smaller "
        f"| >= {TARGETS['smaller']}x {mark(smaller >= TARGETS['smaller'])} |"
    )
    print(
        f"| latency p50 (ms/text) | {f['latency_ms_p50']:.2f} | {i['latency_ms_p50']:.2f} "
        f"| {faster:.2f}x faster | >= {TARGETS['faster']}x {mark(faster >= TARGETS['faster'])} |"
    )
    print(
        f"| latency p95 (ms/text) | {f['latency_ms_p95']:.2f} | {i['latency_ms_p95']:.2f} "
        f"| {f['latency_ms_p95'] / i['latency_ms_p95']:.2f}x | |"
    )
    print(
        f"| throughput (texts/s) | {f['throughput_per_s']:.0f} | {i['throughput_per_s']:.0f} "
        f"| {throughput:.2f}x | |"
    )
    print(
        f"| cosine to FP32 (mean / min) | 1 | {mean_cos:.4f} / "
        f"{quality['int8_vs_fp32'].min():.4f} | | >= {TARGETS['cosine']} "
        f"{mark(mean_cos >= TARGETS['cosine'])} |"
    )
    st8, st32 = quality["int8_vs_sentence_transformers"], quality["fp32_vs_sentence_transformers"]
    print(
        f"| cosine to sentence-transformers (mean / min) | {st32.mean():.4f} / {st32.min():.4f} "
        f"| {st8.mean():.4f} / {st8.min():.4f} | | |"
    )
    if args.json:
        summary = {
            "model": model_id,
            "texts": len(texts),
            "threads": args.threads,
            **{
                f"{p}_{k}": v
                for p in ("fp32", "int8")
                for k, v in results[p].items()
                if k != "vectors"
            },
            "smaller": smaller,
            "faster_p50": faster,
            "throughput_ratio": throughput,
            **{f"cosine_{k}_mean": float(v.mean()) for k, v in quality.items()},
            **{f"cosine_{k}_min": float(v.min()) for k, v in quality.items()},
        }
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
