# The lab's commands. `make lab` and `make test` are the two a fresh machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lab test serve-only lint tournament benchmark quality clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[lab,rag,serve,text,openai,ray,dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the lab (CPU torch pinned by constraints.txt)

lab: setup  ## train a boss, compare it with the scripted ones, print where to look
	$(BIN)/python -m experiments.lab

test: setup  ## lint, type-check, run the default (fast) test suite and the serve-only install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2
	.ci/serve-only

serve-only:  ## prove the server installs and starts with only `pip install '.[serve]'` (no torch)
	.ci/serve-only

tournament: setup
	$(BIN)/python -m experiments.tournament

benchmark: setup  ## speed side by side: env vs CartPole, PPO training vs DummyVecEnv
	$(BIN)/python -m experiments.benchmark_env
	$(BIN)/python -m experiments.benchmark_training

quality: setup  ## the quality bar: trained bosses vs scripted ones (about 20 minutes)
	$(BIN)/python -m experiments.benchmark_quality

clean:
	rm -rf $(VENV) outputs multirun
