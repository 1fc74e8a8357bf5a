# `make run` and `make test` are all a newcomer needs; both install first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/gateway.yaml
RUFF   := $(VENV)/bin/ruff
LINT_PATHS := gateway tests scripts

.PHONY: install node-deps run test lint format demo bench soak schemas clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(PY) -m gateway serve --config $(CONFIG)

lint: install
	$(RUFF) check $(LINT_PATHS)
	$(RUFF) format --check $(LINT_PATHS)

format: install
	$(RUFF) format $(LINT_PATHS)
	$(RUFF) check --fix $(LINT_PATHS)

# the official Node SDK is the suite's second real client; without npm its test is skipped, saying why
node-deps:
	@if command -v npm >/dev/null 2>&1; then npm install --prefix tests/node --no-audit --no-fund --silent; \
	else echo "npm not found: tests/test_node_sdk.py will be skipped"; fi

# pytest exits 5 when it collected no tests: that is a failure of ours, never a pass
test: lint node-deps
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: install
	$(PY) scripts/demo.py

bench: install
	$(PY) scripts/bench/run.py

soak: install
	$(PY) scripts/soak.py --requests 20000 --concurrency 32

schemas: install
	$(PY) scripts/extract_schemas.py ../shared/spec/openai-openapi.json tests/schemas/openai.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache tests/node/node_modules
