# `make run` and `make test` are all a newcomer needs; both install first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/gateway.yaml
PORT   ?=
RUFF   := $(VENV)/bin/ruff
LINT_PATHS := gateway tests scripts
# `make run PORT=8090` / `make demo PORT=8090`: another port than the configuration's (8080)
PORT_ARG = $(if $(PORT),--port $(PORT))

.PHONY: install install-dev node-deps run test lint format demo bench soak soak-shared schemas dist clean

# The venv that serves traffic gets the runtime dependencies only (setup.cfg's
# install_requires); the tools (pytest, ruff, hypothesis, the SDKs, shiv) come with
# install-dev, which the targets that need them ask for.  One stamp file each.
install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: setup.cfg
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed setup.cfg
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(PY) -m gateway serve --config $(CONFIG) $(PORT_ARG)

lint: install-dev
	$(RUFF) check $(LINT_PATHS)
	$(RUFF) format --check $(LINT_PATHS)

format: install-dev
	$(RUFF) format $(LINT_PATHS)
	$(RUFF) check --fix $(LINT_PATHS)

# the official Node SDK is the suite's second real client; without npm its test is skipped, saying why
node-deps:
	@if command -v npm >/dev/null 2>&1; then npm install --prefix tests/node --no-audit --no-fund --silent; \
	else echo "npm not found: tests/test_node_sdk.py will be skipped"; fi

# pytest exits 5 when it collected no tests: that is a failure of ours, never a pass
test: lint node-deps
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# the demo drives the gateway with the official openai SDK, a dev dependency
demo: install-dev
	$(PY) scripts/demo.py $(PORT_ARG)

# one executable file, dist/gateway: the gateway and its runtime dependencies (shiv zipapp)
dist: install-dev
	$(PY) scripts/build_dist.py dist/gateway

bench: install-dev
	$(PY) scripts/bench/run.py

soak: install-dev
	$(PY) scripts/soak.py --requests 20000 --concurrency 32

# two gateways sharing PostgreSQL and Redis: one row per request, no slot left held
soak-shared: install-dev
	$(PY) scripts/soak.py --requests 20000 --concurrency 32 --instances 2 --database $${POSTGRES_URL:-postgresql://postgres@127.0.0.1:5432/test} --redis $${REDIS_URL:-redis://127.0.0.1:6379/0}

# OpenAI's published API description is not part of this repository (tests/schemas/openai.json,
# which the suite uses, is); point SPEC at a copy of it: make schemas SPEC=path/to/openai-openapi.json
SPEC ?= ../shared/spec/openai-openapi.json
schemas: install-dev
	@test -f "$(SPEC)" || { echo "make schemas needs OpenAI's OpenAPI file: $(SPEC) is missing; run make schemas SPEC=<path to openai-openapi.json> (tests/schemas/openai.json, already extracted, is all the tests need)" >&2; exit 2; }
	$(PY) scripts/extract_schemas.py $(SPEC) tests/schemas/openai.json

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache tests/node/node_modules
