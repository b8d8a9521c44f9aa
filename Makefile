# Two commands on a fresh machine: `make run` (install + the main job on the embedded data) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export MTLBENCH_CACHE ?= $(CURDIR)/.cache/mtlbench
# Keep freed large blocks in the process instead of returning them to the OS: gradient weightings allocate
# per-task gradient vectors of 10^7-10^8 floats every step, and fresh pages cost more than the arithmetic on a CPU.
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296

.PHONY: install run test bench bench-weightings clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

run: install
	$(BIN)/mtlbench sweep demo --out results/demo --executor local --workers 2
	$(BIN)/mtlbench report results/demo

test: install
	$(BIN)/python -m pytest -q -rfE --durations=15

bench: install
	$(BIN)/python benchmarks/speed.py

bench-weightings: install
	$(BIN)/python benchmarks/weightings.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis results/* build *.egg-info
	touch results/.gitkeep
