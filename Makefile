# One venv beside the code; `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the tests talk to for real (started by the tests on free loopback ports).
# chromium + chromium-driver: the browser tests (tests/test_browser.py) drive a real headless one.
TEST_PACKAGES := memcached nginx chromium chromium-driver

.PHONY: run test venv system-deps bench bench-peers soak dist clean

$(BIN)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  [ "$$(id -u)" = 0 ] && apt-get install -y -q python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); } || { \
	  echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	@touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/python gateway.py $(ARGS)

# Installs the servers the tests need when they are missing and we are root.
system-deps:
	@missing=""; for p in $(TEST_PACKAGES); do \
	  case $$p in chromium-driver) b=chromedriver;; *) b=$$p;; esac; \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || [ -x /usr/bin/$$b ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing:$$missing"; \
	    apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null; \
	  else echo "missing:$$missing (run make test as root, or apt-get install them)"; exit 1; fi; fi

test: system-deps venv
	$(BIN)/python -m pytest tests -q $(PYTEST_ARGS)

# The benchmark drives the proxies with wrk and uses nginx as mock upstream and reference.
bench: venv
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="wrk nginx memcached"
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python bench/run.py $(ARGS)

# The gateway against openai-forward in the same run; the peer gets its own venv.
bench-peers: venv
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="wrk nginx"
	$(BIN)/pip install -q -r bench/requirements.txt
	test -x bench/.peers/bin/python || $(PYTHON) -m venv bench/.peers
	bench/.peers/bin/pip install -q -r bench/requirements-peers.txt
	$(BIN)/python bench/peers.py $(ARGS)

# Ten minutes of mixed traffic against one gateway, RSS and fds sampled (not part of CI).
soak: venv
	@$(MAKE) --no-print-directory system-deps TEST_PACKAGES="nginx"
	$(BIN)/pip install -q -r bench/requirements.txt
	$(BIN)/python bench/soak.py $(ARGS)

dist:
	rm -rf dist && mkdir -p dist/build
	cp -r openai_gateway dist/build/ && cp gateway.py dist/build/__main__.py
	$(PYTHON) -m zipapp dist/build -o dist/gateway.pyz -p "/usr/bin/env python3"
	rm -rf dist/build

clean:
	rm -rf $(VENV) dist
