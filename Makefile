# `make demo` and `make test` set up .venv on first use (torch pinned to the CPU build on this disk), then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-portable lint typecheck pytest browser bench clean

# constraints.txt pins every package (and version) to what the tests were run with, for CPython 3.11 (see the
# README); on another Python the ranges of pyproject.toml apply.
LOCK = $(shell $(PYTHON) -c 'import sys; print("-c constraints.txt" if sys.version_info[:2] == (3, 11) else "")')

$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(LOCK) "torch==2.13.0"
	$(BIN)/python -m pip install --quiet $(LOCK) -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lossfit demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) browser
	$(BIN)/python -m pytest

# The suite again with the portable kernels and one thread (results must not hang on the CPU's instruction set or the
# thread count); CI runs it after `make test`.
test-portable: $(STAMP) browser
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -p no:cacheprovider

# The report's browser test needs headless Chromium (Debian's package; installed when missing and apt is usable).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
		echo "note: chromium is not installed and could not be; the browser test will fail (apt-get install chromium)"

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet $(LOCK) -e ".[bench]"
	$(BIN)/python benchmarks/matrix_inverse.py
	$(BIN)/python benchmarks/curve_batch.py
	$(BIN)/python benchmarks/single_call.py
	$(BIN)/python benchmarks/curve_ragged.py
	$(BIN)/python benchmarks/curves.py
	$(BIN)/python benchmarks/points.py
	$(BIN)/python benchmarks/registration.py --check --repeats 3 --warmup 1
	$(BIN)/python benchmarks/registration_corpus.py

clean:
	rm -rf $(VENV) lossfit-demo .pytest_cache .mypy_cache .ruff_cache
