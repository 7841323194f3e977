# Two entry points: `make demo` and `make test`. Both create .venv in the repo root.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
CONSTRAINTS := constraints.txt

.PHONY: demo test test-latest lock install install-dev system-deps bench peer-sae peer-zipnn clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[report]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[dev,report,hf,speech,peers]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Debian packages the speech corpus needs (espeak-ng speaks the generated sentences); installed
# with apt-get when missing and run as root, as on CI; otherwise one line says what to install.
system-deps:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q espeak-ng >/dev/null 2>&1 || \
	      { apt-get update -q >/dev/null && apt-get install -y -q espeak-ng >/dev/null; }; \
	  else echo "espeak-ng is missing: install it (Debian/Ubuntu: sudo apt-get install espeak-ng)" >&2; fi; }

demo: $(VENV)/.installed
	$(BIN)/archlab demo

test: $(VENV)/.installed-dev system-deps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 tests

# The same suite on the newest releases the package's ranges admit (no lock; torch stays at the
# CPU build named in the lock, since an unpinned torch pulls a multi-GB CUDA build): shows an
# upstream break before users meet it. Its own venv, so the locked one is untouched.
LATEST := .venv-latest
test-latest:
	test -x $(LATEST)/bin/python || $(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip --disable-pip-version-check install -q --upgrade --upgrade-strategy eager \
		"$$(grep -E '^torch==' $(CONSTRAINTS) | sed 's/+.*//')" -e '.[dev,report,hf,speech,peers]'
	$(LATEST)/bin/pip --disable-pip-version-check list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|numpy|safetensors) '
	OMP_NUM_THREADS=1 $(LATEST)/bin/python -m pytest -n 2 tests

# Rewrite constraints.txt from a fresh resolution of the package's ranges (see scripts/lock).
lock:
	scripts/lock

bench: $(VENV)/.installed-dev
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[peers]'
	$(BIN)/archlab bench all --out runs/bench/throughput.json
	$(BIN)/archlab bench scaling --out runs/bench/scaling

# sae-lens, the sparse-autoencoder peer (tests/test_sae.py's formula check, archlab bench sae):
# not in the lock (it pulls ~1.5 GB: transformer-lens, datasets, wandb, ...); the lock's pins
# still hold for everything they name.
peer-sae: $(VENV)/.installed-dev
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[sae-peer]'

# zipnn, the weight-compression peer (archlab compress --codec zipnn, archlab bench compress):
# published as source only, so it builds with the C compiler; archlab's own codec needs nothing.
peer-zipnn: $(VENV)/.installed-dev
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[zipnn]'

clean:
	rm -rf $(VENV) $(LATEST) runs build *.egg-info src/*.egg-info
