# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?= -n 2 -m "not slow"
# The tutorials run top to bottom as part of the suite (nbmake), reading ../shared/data when present.
TEST_PATHS := tests --nbmake --nbmake-timeout=900 tutorials

.PHONY: install demo test test-all lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m histodecon demo --out demo_output

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS) $(TEST_PATHS)

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 $(TEST_PATHS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# -W fails on Sphinx's warnings; docutils messages that bypass them (e.g. from the reST parsing
# of sphinx-autodoc-typehints) and Python warnings only reach the log, so the log is checked too.
DOCS_LOG := docs/_build/build.log
docs: $(STAMP)
	mkdir -p docs/_build
	$(BIN)/sphinx-build -W --keep-going -b html docs docs/_build/html > $(DOCS_LOG) 2>&1; status=$$?; cat $(DOCS_LOG); exit $$status
	@! grep -nE '\((WARNING|ERROR|SEVERE)/[0-9]\)|Warning: ' $(DOCS_LOG) || (echo "docs: warnings in $(DOCS_LOG) (above)"; exit 1)

clean:
	rm -rf demo_output docs/_build docs/generated .pytest_cache
