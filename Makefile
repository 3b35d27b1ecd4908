# One venv, made on demand; every target below uses it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-test

.PHONY: demo test test-real test-istio real-binaries tools lint typecheck unit bench bench-quick soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall when the project's metadata changes.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,speedups]'
	touch $@

demo: $(STAMP)
	$(BIN)/apiproxy demo

lint: $(STAMP)
	$(BIN)/ruff check apiproxy tests benchmarks
	$(BIN)/ruff format --check apiproxy tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q

# Debian tools some tests drive (promtool, nginx, wrk); installed when missing and running as root.
tools:
	.ci/ensure-tools

test: tools lint typecheck unit

# The end-to-end suite against a real kube-apiserver and etcd, built from the Go module proxy at the
# versions tests/real/go.mod pins and cached under ~/.cache/apiproxy/ (minutes the first time, seconds after).
real-binaries: $(STAMP)
	$(BIN)/python -m tests.real.gobuild

test-real: tools real-binaries
	$(BIN)/pytest -q -m real tests/real --ignore=tests/real/test_istiod.py

# The real user: istiod (pilot-discovery, built from the Go module proxy at the Istio commit
# tests/real/istiod/go.mod pins, cached like the apiserver) on a real primary discovers the real
# remote through the proxy. Its first build takes many minutes; later runs reuse the cached binary.
test-istio: tools real-binaries
	$(BIN)/python -m tests.real.gobuild pilot-discovery
	$(BIN)/pytest -q -m real tests/real/test_istiod.py

bench: $(STAMP) tools
	$(BIN)/pip install --quiet -e '.[test,speedups,bench]'
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP) tools
	$(BIN)/python -m benchmarks --quick

soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
