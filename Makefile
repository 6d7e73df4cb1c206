# Two commands do all the set-up on a fresh machine:
#   make demo   the whole system on an embedded PostgreSQL
#   make test   the whole test suite against real PostgreSQL servers
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo install docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(VENV)/.installed

# pytest's exit code 5 ("no tests collected") must never pass as green.
test: $(VENV)/.installed
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: $(VENV)/.installed
	$(VENV)/bin/pgbv demo

docs: $(VENV)/.installed
	$(PY) -m exporter.config_docs > docs/configuration.md

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
