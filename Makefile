# Two entry points: `make demo` and `make test`. Both create .venv in the repo root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
CONSTRAINTS := constraints.txt

.PHONY: demo test install install-dev bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[report]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev,report]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/archlab demo

test: $(VENV)/.installed-dev
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests

bench: $(VENV)/.installed-dev
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[peers]'
	$(BIN)/archlab bench all --out runs/bench/throughput.json
	$(BIN)/archlab bench scaling --out runs/bench/scaling

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
