# Every target sets itself up: a fresh clone needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# Pinned versions keep installs fast (no resolver backtracking) and reproducible.
STAMP  := $(VENV)/.installed

# The repo root holds a folder named `operator`: never let it onto sys.path.
export PYTHONSAFEPATH := 1

.PHONY: demo test bench lint e2e clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[cpu,test]'
	@touch $@

demo: $(STAMP)
	$(BIN)/python bench/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

e2e: $(STAMP)
	$(BIN)/python -m pytest -q e2e

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache build *.egg-info
