# One venv beside the code; `make run` and `make test` are the README's two commands.
# `make run` installs the runtime packages only (requirements.txt); `make test`, `make lint` and
# `make dist` add the test and build tools (requirements-dev.txt) to the same venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DIST   ?= dist
# Debian packages the tests talk to for real (started by the tests on free loopback ports).
# chromium + chromium-driver: the browser tests (tests/process/test_browser.py) drive a real
# headless one; curl is a client of the end-to-end tests, openssl makes the TLS site's test
# certificate, systemd's systemd-analyze checks the unit file.
TEST_PACKAGES := memcached nginx redis-server chromium chromium-driver curl openssl systemd
# Of those, the ones Debian starts as system services on install: the tests start their own
# instances, so a fresh install is kept from starting them (policy-rc.d) and left disabled.
SERVICES := memcached nginx redis-server
PIP := $(BIN)/pip install --disable-pip-version-check --progress-bar off

.PHONY: run test lint venv venv-dev system-deps bench bench-shared bench-peers bench-attacks soak dist reference clean

# Under `sudo make ...` files created in the checkout go back to the invoking user, so a later
# `make` without sudo can still use (and delete) the venv; as plain root nothing changes.
GIVE_BACK = if [ "$$(id -u)" = 0 ] && [ -n "$$SUDO_USER" ] && \
  [ "$$(stat -c %U .)" = "$$SUDO_USER" ]; then find . -xdev -user 0 -exec chown -h "$$SUDO_USER": {} +; fi

$(BIN)/python:
	@echo "creating the virtualenv $(VENV) with $(PYTHON)"
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  [ "$$(id -u)" = 0 ] && echo "installing python3-venv with apt-get" && \
	  apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); } || { \
	  echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }

$(BIN)/.installed-run: requirements.txt | $(BIN)/python
	@echo "installing the runtime packages (requirements.txt) into $(VENV)"
	$(PIP) -r requirements.txt
	@touch $@
	@$(GIVE_BACK)

$(BIN)/.installed-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	@echo "installing the runtime, test and build packages (requirements-dev.txt) into $(VENV)"
	$(PIP) -r requirements-dev.txt
	@touch $@ $(BIN)/.installed-run
	@$(GIVE_BACK)

venv: $(BIN)/.installed-run
venv-dev: $(BIN)/.installed-dev

run: venv
	$(BIN)/python gateway.py $(ARGS)

# Installs the servers the tests need when they are missing and we are root. A service that
# was already installed is left exactly as it was (it may be this host's real nginx).
system-deps:
	@missing=""; for p in $(TEST_PACKAGES); do \
	  case $$p in chromium-driver) b=chromedriver;; systemd) b=systemd-analyze;; *) b=$$p;; esac; \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "missing:$$missing (run make test as root or with sudo, or apt-get install them)"; exit 1; fi; \
	echo "installing with apt-get:$$missing"; \
	policy=/usr/sbin/policy-rc.d; own_policy=""; \
	if [ ! -e $$policy ]; then own_policy=1; printf '#!/bin/sh\nexit 101\n' > $$policy; chmod 755 $$policy; \
	  trap 'rm -f '$$policy EXIT; fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || exit 1; \
	for s in $(SERVICES); do case " $$missing " in *" $$s "*) \
	  echo "leaving the $$s service stopped and disabled (the tests start their own $$s)"; \
	  if [ -d /run/systemd/system ]; then systemctl disable --now $$s.service; \
	  else [ -n "$$own_policy" ] || service $$s stop >/dev/null 2>&1; \
	    if command -v systemctl >/dev/null; then systemctl disable $$s.service; \
	    else update-rc.d $$s disable; fi; fi;; esac; done; true

# The lint runs first: code that fails it fails the tests without starting them.
test: system-deps lint
	@status=0; $(BIN)/python -m pytest tests -q $(PYTEST_ARGS) || status=$$?; \
	$(GIVE_BACK); exit $$status

# Each configured in pyproject.toml: ruff over the package, the tests and the benchmarks; mypy
# (check_untyped_defs), import-linter (the layers the parts never cross) and vulture (dead code)
# over the package. Every tool runs and reports even after one fails. Their caches (.ruff_cache,
# .mypy_cache, .import_linter_cache) go back to the invoking user under sudo, pass or fail.
lint: venv-dev
	@status=0; \
	$(BIN)/ruff check openai_gateway tests bench || status=1; \
	$(BIN)/mypy || status=1; \
	$(BIN)/lint-imports --no-logo || status=1; \
	$(BIN)/vulture && echo "vulture: no dead code" || status=1; \
	$(GIVE_BACK); [ $$status = 0 ]

# The benchmark drives the proxies with wrk and uses nginx as mock upstream and reference.
bench: venv-dev
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="wrk nginx memcached"
	$(PIP) -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(ARGS)

# Two gateways on three memcached servers under wrk, one server killed and restarted mid-run.
bench-shared: venv-dev
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="wrk memcached"
	$(PIP) -q -r bench/requirements.txt
	$(BIN)/python bench/shared.py $(ARGS)

# The gateway against openai-forward in the same run; the peer gets its own venv.
bench-peers: venv-dev
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="wrk nginx"
	$(PIP) -q -r bench/requirements.txt
	test -x bench/.peers/bin/python || $(PYTHON) -m venv bench/.peers
	bench/.peers/bin/pip install -q -r bench/requirements-peers.txt
	$(BIN)/python bench/peers.py $(ARGS)

# The audit's attacks on money and identity, re-measured through real gateway processes against
# the tests' fake upstream (it needs the test packages: the fake, the openai SDK); about 20 s.
bench-attacks: venv-dev
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="memcached redis-server"
	$(BIN)/python bench/attacks.py $(ARGS)

# Ten minutes of mixed traffic against one gateway, RSS and fds sampled (not part of CI).
soak: venv-dev
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="nginx"
	$(PIP) -q -r bench/requirements.txt
	$(BIN)/python bench/soak.py $(ARGS)

# One executable file: the package and the pinned runtime wheels (requirements.txt) in a shiv
# zipapp. It runs on a python3 of the same minor version and platform as the one building it
# (uvloop, orjson, aiohttp ... are binary wheels); build it there for another.
dist: venv-dev
	@mkdir -p $(DIST)
	rm -f $(DIST)/gateway.pyz
	@echo "building $(DIST)/gateway.pyz: the package and the wheels pinned in requirements.txt"
	$(BIN)/shiv --reproducible --compressed --python "/usr/bin/env python3" \
	  --entry-point openai_gateway.cli:main --output-file $(DIST)/gateway.pyz \
	  --disable-pip-version-check --quiet -r requirements.txt .
	rm -rf build openai_gateway.egg-info
	@echo "built $(DIST)/gateway.pyz for $$($(BIN)/python -c 'import sys, sysconfig; print("Python %d.%d on %s" % (*sys.version_info[:2], sysconfig.get_platform()))')"
	@$(GIVE_BACK)

# config.toml and docs/configuration.md are rendered from the settings model (the dataclasses
# of openai_gateway/config/ and their `#:` comments): after adding or changing a key, this
# rewrites both (tests/config/test_reference.py fails until they match).
reference: venv
	$(BIN)/python -m openai_gateway.config.reference

clean:
	rm -rf $(VENV) $(DIST) build openai_gateway.egg-info
