# Two commands: `make demo` and `make test`. Both install what they need on Debian (system packages
# with apt when missing: run as root, or with sudo available), then a virtualenv in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# espeak-ng: say: TTS; ffmpeg: ffprobe in tests; sip-tester (sipp) and baresip: SIP interop peers;
# kamailio (its dispatcher module included) in front of two nodes in tests/deploy/ (docs/deploy.md);
# postgresql: the shared index (--index postgresql://) its tests start; chromium and firefox-esr: the console's
# browser tests (tests/browser/: Chromium through Playwright from PyPI, Firefox over its own Marionette port).
# nftables: a one-to-one NAT in front of the service for a browser's call (tests/webrtc/nat.py).
# The S3 server is moto, from PyPI.
SYSTEM_PACKAGES := espeak-ng ffmpeg sip-tester baresip kamailio postgresql chromium firefox-esr nftables
DEMO_OUT := demo-out

.PHONY: demo test system lint unit bench clean

system:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(BIN)/swml: pyproject.toml | system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

# The record-and-play-back example on a simulated call: the caller speaks a message, presses # to end it.
demo: system $(BIN)/swml
	@mkdir -p $(DEMO_OUT)
	espeak-ng -w $(DEMO_OUT)/caller.wav "Hi, this is Sam. Please call me back about the order. Thanks."
	$(BIN)/swml run examples/record-and-play-back.yaml --caller-audio $(DEMO_OUT)/caller.wav \
	  --dtmf 8:# --out $(DEMO_OUT)
	@echo "Listen: $(DEMO_OUT)/heard.wav (what the caller heard); recordings in $(DEMO_OUT)/recordings/"

lint: $(BIN)/swml
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# The suite runs on JOBS processes (pytest-xdist; a test file stays on one of them): on CI's 2 cores it
# takes about half the time of one process. `make test JOBS=1` runs it in one.
JOBS ?= 2

test: system $(BIN)/swml lint
	$(BIN)/pytest -n $(JOBS) --dist loadfile --durations=15

bench: $(BIN)/swml
	$(BIN)/python bench/run_speed.py
	$(BIN)/python bench/record_speed.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .mypy_cache .ruff_cache
