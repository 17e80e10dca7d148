# One-command setup: both targets create .venv when missing and install what medti needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.medti-installed
DEMO_DIR ?= demo-out

.PHONY: demo test lint setup clean

setup: $(STAMP)

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# In two steps, so that `make demo` can start building the embedded base while the rest installs:
# 1. torch (the CPU build when no CUDA is present: a local wheel on the dev/CI machines, so that pip never pulls a
#    multi-GB CUDA build), the few packages the base build imports (their requirements as pyproject.toml states
#    them) and medti itself without its dependencies;
# 2. everything else ('.[dev]').
BASE_STAMP := $(VENV)/.medti-base-deps
BASE_BUILD_PACKAGES := numpy pillow scipy diffusers transformers accelerate tokenizers safetensors tqdm platformdirs

$(BASE_STAMP): pyproject.toml | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install -q torch; \
	else \
	  $(PIP) install -q torch==2.13.0; \
	fi
	$(PIP) install -q $$($(PY) -c "import re, tomllib; \
	  want = set('$(BASE_BUILD_PACKAGES)'.split()); \
	  deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
	  print(' '.join(d for d in deps if re.split(r'[<>=!~ ;\[]', d)[0].lower() in want))")
	$(PIP) install -q --no-deps -e .
	@touch $(BASE_STAMP)

$(STAMP): pyproject.toml $(BASE_STAMP)
	$(PIP) install -q -e '.[dev]'
	@touch $(STAMP)

# the embedded base is built in the background (once per machine: it is cached) while '.[dev]' installs; the
# demo waits for it where it needs it
demo: $(BASE_STAMP)
	@$(PY) -c "from medti.diffusion.base import build_in_background; log = build_in_background('tiny'); \
	  log and print(f'building the embedded tiny base in the background while the rest installs (progress: {log})')"
	@$(MAKE) --no-print-directory $(STAMP)
	$(VENV)/bin/medti demo --out $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
