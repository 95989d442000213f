# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv

.PHONY: demo test test-fast venv bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test,docs]'
	touch $@

demo: venv
	$(VENV)/bin/letta-environments-exporter --demo

test:
	./scripts/test

# The same checks without the tests marked slow (end to end, builds, benchmark smoke run).
test-fast:
	./scripts/test -m "not slow"

bench: venv
	$(VENV)/bin/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
