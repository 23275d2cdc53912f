# Gator: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gator.demo $(if $(DATA),--data $(DATA),) $(if $(MINUTES),--minutes $(MINUTES),)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/generate.py
	$(PY) bench/moe.py
	$(PY) bench/mla.py
	$(PY) bench/tokenizer.py
	$(PY) bench/train_throughput.py
	$(PY) bench/train_shakespeare.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
