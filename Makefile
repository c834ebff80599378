# Starling — every target does its own set-up on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORKDIR ?= work
DATASET ?= ml-latest-small

.PHONY: setup demo test test-fast docs-figures lint format clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(BIN)/starling demo --workdir $(WORKDIR) --dataset $(DATASET)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

docs-figures: setup  ## re-run the tests that draw the README's figures and screenshots, writing them to docs/
	STARLING_UPDATE_DOCS=1 $(BIN)/python -m pytest tests/test_experiments_simulated.py tests/test_web.py

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(WORKDIR) .pytest_cache .ruff_cache

PROTOS := $(wildcard protos/starling/v1/*.proto)

.PHONY: protos
protos: setup  ## regenerate starling/v1/*_pb2*.py from protos/
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

.PHONY: helm
helm: setup  ## lint and render charts/starling with the pinned Helm (installed into .tools/bin by the script)
	HELM=$$(scripts/install-helm.sh) && $$HELM lint charts/starling && \
	$$HELM lint charts/starling -f charts/starling/ci/production-values.yaml && \
	$$HELM template starling charts/starling -f charts/starling/ci/production-values.yaml >/dev/null
