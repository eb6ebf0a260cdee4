# The few verbs people type. `make run` and `make test` work on a fresh clone: they create .venv first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST := $(PY) -m pytest
export WANDB_MODE ?= disabled

.PHONY: install run test test-fast test-slow bench bench-quick bench-gpu lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install madao_pl (editable, with dev extras); no-op when up to date

run: install  ## the embedded job: MADAO on scikit-learn's digits, CPU (experiment=quickstart)
	$(PY) -m madao_pl.run experiment=quickstart $(ARGS)

test: install  ## the whole suite, slow tests included
	$(PYTEST) -q

test-fast: install  ## everything but the tests marked slow
	$(PYTEST) -q -m "not slow"

test-slow: install  ## only the tests marked slow
	$(PYTEST) -q -m slow

bench: install  ## all benchmarks: writes benchmarks/results/*.json and benchmarks/README.md
	$(PY) -m benchmarks.run_all

bench-quick: install  ## the cost benchmark alone, its quick form (about a minute)
	$(PY) -m benchmarks.run_all --quick

bench-gpu: install  ## on a CUDA machine: the GPU cost and memory-scaling benchmarks, then the READMEs
	$(PY) -m benchmarks.run_all --only gpu scaling

lint: install
	$(PY) -m ruff check src tests benchmarks experiments
	$(PY) -m ruff format --check src tests benchmarks experiments

format: install
	$(PY) -m ruff format src tests benchmarks experiments
	$(PY) -m ruff check --fix src tests benchmarks experiments

clean:
	rm -rf outputs multirun .pytest_cache
