# The lab's commands. `make lab` and `make test` are the two a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lab test lint tournament benchmark clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab,ray,dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the lab (CPU torch pinned by constraints.txt)

lab: setup  ## the lab's main job on embedded defaults
	$(BIN)/python -m experiments.tournament

test: setup  ## lint, type-check and run the default (fast) test suite
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2

tournament: setup
	$(BIN)/python -m experiments.tournament

benchmark: setup  ## env speed against Gymnasium's CartPole, printed side by side
	$(BIN)/python -m experiments.benchmark_env

clean:
	rm -rf $(VENV) outputs multirun
