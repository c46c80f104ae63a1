# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml testbed/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' -e ./testbed
	touch $@

.PHONY: install demo test unit build down
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/modelship demo

build: $(VENV)/.installed
	$(BIN)/modelship testbed build

test: build
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(VENV)/.installed
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

down: $(VENV)/.installed
	$(BIN)/modelship testbed down
