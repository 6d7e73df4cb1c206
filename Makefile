# Two commands do all the set-up on a fresh machine:
#   make demo   the whole system on an embedded PostgreSQL
#   make test   the whole test suite against real PostgreSQL servers
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: test demo install docs clean bench

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

# Benchmarks against the issue's targets (not part of `make test` nor CI): about 15 minutes
# on 2 cores; writes bench/RESULTS.md. Needs wrk, nginx and prometheus-postgres-exporter:
# installed here when run as root (as .ci/run does), named otherwise. BENCH_ARGS=--quick tries it out.
BENCH_APT := wrk nginx-light prometheus-postgres-exporter
BENCH_ARGS ?=
bench: $(VENV)/.installed
	@missing=""; for tool in wrk nginx prometheus-postgres-exporter; do \
		command -v $$tool >/dev/null 2>&1 || [ -x /usr/sbin/$$tool ] || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -eq 0 ]; then \
			echo "make bench: installing$$missing"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_APT) >/dev/null || exit 2; \
		else \
			echo "make bench: missing$$missing; install with: apt-get install -y --no-install-recommends $(BENCH_APT)" >&2; \
			exit 2; \
		fi; \
	fi
	$(PY) -m bench.run_all $(BENCH_ARGS)

docs: $(VENV)/.installed
	$(PY) -m exporter.config_docs > docs/configuration.md

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
