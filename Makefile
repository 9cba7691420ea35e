# Thin aliases over the commands CI runs (.ci/run calls `make test`).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint typecheck unit golden bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $@

## set-up: a virtual environment with hepml-images and its development tools
setup: $(STAMP)

## the main job: render the default environment (Debian ladder, TensorFlow CPU) into out/
run: setup
	$(BIN)/hepml-images validate debian-tensorflow
	$(BIN)/hepml-images render debian-tensorflow --variant accelerator=cpu -o out/debian-tensorflow-cpu

## everything CI checks: lint, types, tests
test: lint typecheck unit

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest

## refresh the golden files after a deliberate rendering change (then review the diff)
golden: setup
	$(BIN)/python -m pytest tests/test_golden.py --update-golden -q

bench: setup
	$(BIN)/python bench/render_all.py

clean:
	rm -rf $(VENV) out build dist
