# Two commands do all set-up: `make demo` and `make test` create .venv when missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/toss-ingest demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check ingestor consumers cli tests bench
	$(BIN)/ruff format --check ingestor consumers cli tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

soak: $(STAMP)
	$(BIN)/python bench/soak.py outage
	$(BIN)/python bench/soak.py drops
	$(BIN)/python bench/soak.py fuzz

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
