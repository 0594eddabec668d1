# The two commands that matter: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv, install torch first (a CPU build here; pip picks a CUDA build on GPU hosts),
# then the project with its dev extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
export HF_HUB_OFFLINE ?= 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_TO_API_ENABLED ?= false
export FTLAB_LOG_FORMAT ?= text

.PHONY: demo test install proto bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	PREFECT_HOME=$(CURDIR)/.ftlab/prefect $(BIN)/ftlab demo --shared $(SHARED)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -ra --durations=15

proto: $(BIN)/.installed
	$(BIN)/python scripts/gen_proto.py

bench: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run_all $(BENCH)

clean:
	-$(BIN)/ftlab down
	rm -rf .ftlab
