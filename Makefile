# tailwatch: `make demo` and `make test` do all the set-up on a fresh Debian machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian's chromium renders the HTML report in the tests (tests/chromium.py).
APT_PACKAGES := prometheus chromium
# The prober accuracy and cost benchmarks compare against Debian's blackbox exporter.
BENCH_APT_PACKAGES := prometheus prometheus-blackbox-exporter

.PHONY: install demo test test-only lint bench bench-deps generate system-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "tailwatch needs Python 3.11 or newer (found $$($(PYTHON) --version))" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory _apt PKGS=python3-venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tailwatch demo

# Debian's prometheus package gives promtool and a real Prometheus server to the tests;
# chromium draws the HTML report headless.
system-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && \
	  command -v chromium >/dev/null 2>&1 || \
	  $(MAKE) --no-print-directory _apt PKGS="$(APT_PACKAGES)"

_apt:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(PKGS) >/dev/null; \
	else \
	  echo "missing Debian packages: $(PKGS). Install them with 'sudo apt-get install $(PKGS)' and run make again." >&2; \
	  exit 1; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check exporter tests dashboards helm
	$(BIN)/ruff format --check exporter tests dashboards helm
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(STAMP) system-deps lint test-only

test-only: $(STAMP)
	$(BIN)/python -m pytest

bench-deps:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus-blackbox-exporter >/dev/null 2>&1 || \
	  $(MAKE) --no-print-directory _apt PKGS="$(BENCH_APT_PACKAGES)"

# The benchmarks also profile the agent with py-spy (the `bench` extra).
bench: $(STAMP) bench-deps
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m pytest tests/bench -m bench -s

# Dashboards and rule files from exporter/mixin, with their copies for the chart; `make test`
# fails when the committed ones are stale (tests/mixin/test_generate.py).
generate: $(STAMP)
	$(BIN)/tailwatch generate all --out .

# The agent's container image (Dockerfile; docs/install.md). Not run by CI, which has no
# container engine. `make image IMAGE=registry.example/tailwatch CONTAINER_ENGINE=podman`.
IMAGE ?= tailwatch
CONTAINER_ENGINE ?= docker
IMAGE_VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' exporter/__init__.py)

.PHONY: image
image:
	$(CONTAINER_ENGINE) build \
	  --build-arg VERSION=$(IMAGE_VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
	  --build-arg CREATED=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
	  -t $(IMAGE):$(IMAGE_VERSION) .

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build dist *.egg-info
