# Quick start on a fresh Debian/Ubuntu machine: `make run` (start the service) and `make test` (run every test).
# Both install what is missing: Debian packages when run as root, and a virtualenv in .venv.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
RUN_PACKAGES  = nftables iproute2 conntrack python3-venv
TEST_PACKAGES = $(RUN_PACKAGES) curl iputils-ping postgresql rsyslog rsyslog-gnutls openssl bind9 bind9-utils bind9-dnsutils systemd libseccomp2
BENCH_PACKAGES = $(RUN_PACKAGES) iptables iperf3 socat iputils-ping
APT_PACKAGES ?= $(RUN_PACKAGES)
CONFIG ?=
# Where `make run` / `make test` put the `labgate` command so the README's commands work as written (root only).
BIN_LINK ?= /usr/local/bin/labgate

.PHONY: run test bench deps test-deps bench-deps system-deps clean demo link

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { $(MAKE) --no-print-directory system-deps && $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,postgres]'
	@touch $@

deps: system-deps $(VENV)/.installed link

# Put `labgate` on PATH: a symlink to this clone's venv in /usr/local/bin (as root, and never over a file that is
# not such a link); otherwise say how to reach it.
link: | $(VENV)/.installed
	@target="$(abspath $(BIN))/labgate"; \
	if [ "$$(readlink $(BIN_LINK) 2>/dev/null)" = "$$target" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && { [ -L $(BIN_LINK) ] || [ ! -e $(BIN_LINK) ]; }; then \
	  ln -sfn "$$target" $(BIN_LINK) && echo "labgate is on PATH: $(BIN_LINK) -> $$target"; \
	else echo "note: to run the labgate command from anywhere: export PATH=\"$(abspath $(BIN)):\$$PATH\""; fi

test-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES='$(TEST_PACKAGES)'

bench-deps:
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES='$(BENCH_PACKAGES)'

# Debian packages the dataplane needs; skipped quietly when they are all present.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (run as root, or: sudo apt-get install$$missing)"; fi; \
	fi

run: deps
	$(BIN)/labgate serve $(if $(CONFIG),--config $(CONFIG))

# Every test on SQLite, then again on PostgreSQL (a throwaway server the tests start; PG_PASS=0 skips that pass).
PG_TESTS ?= tests/unit tests/api tests/cli tests/kernel tests/openstack
PG_PASS  ?= 1
test: test-deps deps
	LG_TEST_VIA_MAKE=1 $(BIN)/python -m pytest -ra $(PYTEST_ARGS)
	@if [ "$(PG_PASS)" != 0 ]; then echo "--- the same on PostgreSQL (LG_TEST_DATABASE=postgresql)"; \
	  LG_TEST_VIA_MAKE=1 LG_TEST_DATABASE=postgresql $(BIN)/python -m pytest -ra $(PG_TESTS) $(PYTEST_ARGS); fi

# As root: `make bench` (full, ~40 min) or `make bench BENCH_ARGS=--quick` (smoke run); results in bench/results/.
bench: bench-deps deps
	@test -x $(BIN)/py-spy || $(BIN)/pip install -q py-spy \
	  || echo "note: py-spy could not be installed; the bench runs without its profile"
	$(BIN)/python bench/run.py $(BENCH_ARGS)

demo: deps
	$(BIN)/labgate demo

clean:
	@if [ "$$(readlink $(BIN_LINK) 2>/dev/null)" = "$(abspath $(BIN))/labgate" ]; then rm -f $(BIN_LINK); fi
	rm -rf $(VENV) var .pytest_cache
