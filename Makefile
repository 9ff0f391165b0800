# Fragua — the two commands in README.md: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FRAGUA := $(BIN)/fragua
EXAMPLES := src/fragua/resources/examples
DEMO_DIR ?= demo-work

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_LOGGING_LEVEL ?= WARNING
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test clean deploy worker

# torch first, pinned, so a fresh install here takes the CPU wheel on disk instead of
# downloading a CUDA build; pyproject keeps an open range for users who bring their own.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Build the tiny base model, run the pipeline on batch 1 (-> v1), then on batch 1 + 2
# (-> v2), roll production back once, and list what the registry holds. Both runs guard
# against forgetting with the shipped general-knowledge benchmark (lm-eval, offline).
DEMO_BENCHMARKS := --set 'validate.benchmarks=[{"task": "fragua_general_knowledge"}]'
demo: install
	rm -rf $(DEMO_DIR)
	$(FRAGUA) --work-dir $(DEMO_DIR) init-base
	$(FRAGUA) --work-dir $(DEMO_DIR) $(DEMO_BENCHMARKS) run --source $(EXAMPLES)/batch1
	$(FRAGUA) --work-dir $(DEMO_DIR) $(DEMO_BENCHMARKS) run --source $(EXAMPLES)/batch1 --source $(EXAMPLES)/batch2
	$(FRAGUA) --work-dir $(DEMO_DIR) rollback
	$(FRAGUA) --work-dir $(DEMO_DIR) versions

# Three pytest-xdist workers on two cores: much of the suite waits on subprocesses and servers.
# Tests are handed out one at a time (--maxschedchunk 1) in the order tests/conftest.py gives
# them, long ones first, so the workers end together; one Prefect server serves them all.
test: install
	$(BIN)/python -m pytest -n 3 --dist load --maxschedchunk 1

# Register the block types, create the process work pool (once) and every deployment in
# deployments/prefect.yaml on the Prefect server named by PREFECT_API_URL.
POOL ?= fragua-process
deploy: install
	$(FRAGUA) blocks register
	$(BIN)/prefect work-pool inspect $(POOL) >/dev/null 2>&1 || $(BIN)/prefect work-pool create $(POOL) --type process
	$(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

# A worker that runs the deployments' flow runs (scheduled, from the UI, or `prefect deployment run`).
worker: install
	$(BIN)/prefect worker start --pool $(POOL)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .fragua .pytest_cache
