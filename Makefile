# Quick start: `make example` (fit on the embedded cohort) and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
OUT ?= examples/out

.PHONY: install system-deps example test bench-overhead

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[test]"

# GEMMA and PLINK 1.9, the real binaries the tests and the workflow run, and gemma-doc, whose
# real HS1940 mouse cohort the file-format tests read (Debian packages).
HS1940 = /usr/share/doc/gemma/example/mouse_hs1940.bed.gz
system-deps:
	@if ! command -v gemma >/dev/null || ! command -v plink1.9 >/dev/null || [ ! -e $(HS1940) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gemma gemma-doc plink1.9; \
	  else echo "install the Debian packages gemma, gemma-doc and plink1.9 (sudo apt-get install gemma gemma-doc plink1.9)"; fi; \
	fi

example: install
	flowpheno grm --bfile examples/cohort --out $(OUT)/kinship.npz --overwrite
	flowpheno fit --pheno examples/pheno.tsv --covar examples/covar.tsv --grm $(OUT)/kinship.npz --out $(OUT)/run --seed 1 --overwrite
	@echo "Gaussianized traits: $(OUT)/run/gaussianized.tsv   diagnostics: $(OUT)/run/diagnostics.png"

test: install system-deps
	$(PYTHON) -m pytest -q

bench-overhead: install
	$(PYTHON) benchmarks/bench_overhead.py
