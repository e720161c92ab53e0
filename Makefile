# Quick start: `make example` (fit on the embedded cohort) and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
FLOWPHENO = $(PYTHON) -m flowpheno.cli
OUT ?= examples/out
THREADS ?=
THREADS_FLAG = $(if $(THREADS),--threads $(THREADS))

.PHONY: install install-core system-deps example lint test test-quick bench-overhead

# pip runs only when pyproject.toml changed since the last install into this Python
# environment: each install leaves a stamp under .make/ (ignored by git), named after the
# environment's prefix. `rm -r .make` forces a reinstall.
STAMPS := .make/$(shell $(PYTHON) -c "import hashlib, sys; print(hashlib.sha256(sys.prefix.encode()).hexdigest()[:12])")

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH = $(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"

# What `make example` needs: flowpheno and its core dependencies.
$(STAMPS)/core: pyproject.toml
	$(TORCH)
	$(PIP) install -e .
	@mkdir -p $(@D) && touch $@

# Everything the tests need (msprime, snakemake, scikit-learn, ...): also the core.
$(STAMPS)/test: pyproject.toml
	$(TORCH)
	$(PIP) install -e ".[test]"
	@mkdir -p $(@D) && touch $@ $(@D)/core

install-core: $(STAMPS)/core
install: $(STAMPS)/test

# GEMMA and PLINK 1.9, the real binaries the tests and the workflow run, and gemma-doc, whose
# real HS1940 mouse cohort the file-format tests read (Debian packages).
HS1940 = /usr/share/doc/gemma/example/mouse_hs1940.bed.gz
system-deps:
	@if ! command -v gemma >/dev/null || ! command -v plink1.9 >/dev/null || [ ! -e $(HS1940) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gemma gemma-doc plink1.9; \
	  else echo "install the Debian packages gemma, gemma-doc and plink1.9 (sudo apt-get install gemma gemma-doc plink1.9)"; fi; \
	fi

example: $(STAMPS)/core
	$(FLOWPHENO) grm --bfile examples/cohort --out $(OUT)/kinship.npz --overwrite $(THREADS_FLAG)
	$(FLOWPHENO) fit --pheno examples/pheno.tsv --covar examples/covar.tsv --grm $(OUT)/kinship.npz --out $(OUT)/run --seed 1 --overwrite $(THREADS_FLAG)
	@echo "Gaussianized traits: $(OUT)/run/gaussianized.tsv   diagnostics: $(OUT)/run/diagnostics.png"

# Everything (tests, and the docstring examples of flowpheno/): what CI runs.
# ruff (settings in pyproject.toml): the lint rules, and the formatting every file already has.
lint: install
	$(PYTHON) -m ruff check flowpheno benchmarks tests
	$(PYTHON) -m ruff format --check flowpheno benchmarks tests

test: install system-deps lint
	$(PYTHON) -m pytest -q

# The quick loop while changing code: every test not marked slow (pyproject.toml), doctests included.
test-quick: install system-deps
	$(PYTHON) -m pytest -q -m "not slow"

bench-overhead: install
	$(PYTHON) benchmarks/bench_overhead.py
