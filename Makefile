# Thin aliases over the commands CI runs (.ci/run calls `make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The host step: packages and a running Docker Engine (installs as root on Debian/Ubuntu, else
# checks and says what is missing). HOST_SETUP=true skips it, e.g. to lint on a bare laptop.
HOST_SETUP ?= bash scripts/setup-host.sh

.PHONY: setup host run test lint typecheck unit integration golden bench clean

## the machine: build tools and a Docker Engine (scripts/setup-host.sh)
host:
	$(HOST_SETUP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $@

## set-up: the host, then a virtual environment with hepml-images and its development tools
setup: host $(STAMP)

# Builds trust the host's CA bundle (needed behind TLS-intercepting proxies); override or empty it.
HEPML_CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
export HEPML_CA_BUNDLE

## the main job: build and smoke-test the default environment (Debian ladder, TensorFlow CPU)
run: setup
	$(BIN)/hepml-images build

## everything CI checks: lint, types, unit tests (no engine), integration tests (the real engine)
test: lint typecheck unit integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## unit and golden tests: no Docker Engine is reached (a fixture fails any test that tries)
unit: setup
	$(BIN)/python -m pytest -m "not integration"

## integration tests: real Docker Engine, loopback registry, siftool, squashfs tools (the
## slowest are listed at the end, to see where CI time goes)
integration: setup
	$(BIN)/python -m pytest -m integration --durations=15

## refresh the golden files after a deliberate rendering change (then review the diff)
golden: $(STAMP)
	$(BIN)/python -m pytest tests/test_golden.py --update-golden -q

## refresh ci/gitlab-ci.yml and ci/github-workflow.yml after a spec change (a unit test fails
## while they are stale)
.PHONY: ci-files
ci-files: $(STAMP)
	$(BIN)/hepml-images ci generate --provider gitlab -o ci/gitlab-ci.yml
	$(BIN)/hepml-images ci generate --provider github -o ci/github-workflow.yml

bench: setup
	$(BIN)/python -m bench.render_all
	$(BIN)/python -m bench.noop_rebuild
	$(BIN)/python -m bench.matrix_cold
	$(BIN)/python -m bench.image_size
	$(BIN)/python -m bench.sif_create
	$(BIN)/python -m bench.ci_pull

clean:
	rm -rf $(VENV) out build dist
