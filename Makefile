# `make run` and `make test` are all a newcomer needs; both install first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/gateway.yaml
RUFF   := $(VENV)/bin/ruff
LINT_PATHS := gateway tests scripts

.PHONY: install run test lint format demo bench schemas clean

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

# pytest exits 5 when it collected no tests: that is a failure of ours, never a pass
test: lint
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: install
	$(PY) scripts/demo.py

schemas: install
	$(PY) scripts/extract_schemas.py ../shared/spec/openai-openapi.json tests/schemas/openai.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
