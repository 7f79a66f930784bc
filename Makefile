# The two commands of the README: `make serve` (run the service) and `make test` (run the tests).
# Both install what they need into .venv first. llama.cpp is compiled once by
# scripts/llama-cpp-wheel.sh with portable flags (any x86-64 host, no -march=native) and kept
# in ~/.cache/genai-service/wheels under a key of its flags; CMAKE_ARGS overrides the flags.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The stamp changes with the dependencies, the llama.cpp build script and CMAKE_ARGS.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml scripts/llama-cpp-wheel.sh; echo "$$CMAKE_ARGS") | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: install serve test lint format clean audit bench-onnx bench-throughput bench-images

$(STAMP): pyproject.toml scripts/llama-cpp-wheel.sh
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	wheel="$$(PYTHON=$(BIN)/python scripts/llama-cpp-wheel.sh)" \
		&& $(BIN)/python -m pip install --quiet --force-reinstall --no-deps "$$wheel"
	$(BIN)/python -m pip install --quiet -e '.[embedded,onnx,export,transformers,otel,ray,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

serve: install
	$(BIN)/genai-service serve

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Known vulnerabilities in the installed packages (needs PyPI's per-version JSON API or OSV;
# --strict fails when a package could not be checked, instead of reporting "none found").
audit: install
	$(BIN)/pip-audit --strict --skip-editable

# genai-service against llama-server (built once from the vendored llama.cpp), JSON + PNG in bench/results/.
bench-throughput: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/throughput/bench.py $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check src tests bench

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# FP32 against INT8 ONNX embeddings: size, latency, throughput, quality (bench/onnx).
bench-onnx: install
	$(BIN)/python bench/onnx/run.py --json bench/onnx/results.json

# Container images: cold build, code-change rebuild, size, start to ready (see bench/images).
bench-images: install
	$(BIN)/python bench/images/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
