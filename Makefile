# edge-agent: the two quick-start commands are `make demo` and `make test`.
# Everything runs in a virtual environment (.venv): Debian and Raspberry Pi OS mark the
# system Python as externally managed (PEP 668), so nothing is installed system-wide.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEBIAN_PACKAGES := python3 python3-venv python3-dev build-essential

.PHONY: demo test test-deps bench hil soak lint clean distclean check-build-deps flash \
	install-service uninstall-service

demo: $(INSTALLED)
	$(PY) -m hil demo $(DEMO_ARGS)

test: test-deps $(INSTALLED)
	$(PY) -m pytest $(PYTEST_ARGS)

# The MQTT tests start a real Mosquitto broker (tests/mosquitto.py); the deploy scripts are
# held to shellcheck; LinuxCNC runs G-code in tests/test_linuxcnc.py (without the recommended
# GUI toolkits and RT kernel; where Debian has no package its tests skip, the README says so). Debian puts mosquitto in /usr/sbin, which is not on a normal user's
# PATH. `apt-get update` only when the install fails: a stale package list is the usual
# reason, and a fresh one costs a download.
TEST_PACKAGES := mosquitto shellcheck
test-deps:
	@{ command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } && \
	command -v shellcheck >/dev/null 2>&1 || { \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $(TEST_PACKAGES)"; \
		echo "edge-agent: installing $(TEST_PACKAGES) for the tests"; \
		$$install || { $$sudo apt-get update && $$install; }; \
	}
	@command -v linuxcnc >/dev/null 2>&1 || { \
		sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linuxcnc-uspace"; \
		echo "edge-agent: installing linuxcnc-uspace (LinuxCNC in the loop, docs/linuxcnc.md)"; \
		$$install >/dev/null || { $$sudo apt-get update -q >/dev/null && $$install >/dev/null; } || \
		echo "edge-agent: linuxcnc-uspace could not be installed: its tests skip (fail under CI=true)"; \
	}

bench: test-deps $(INSTALLED)
	$(PY) benchmarks/run.py

# Hundreds of SIGKILLs of a publishing agent (and of the collector now and then): every
# sequence number must reach the collector exactly once (tests/soak.py; SOAK_KILLS=300).
# Then ten thousand generated agent configurations (and 2000 collector ones), each refused in
# one line or run for a few simulated seconds, never a traceback (tests/config_soak.py).
SOAK_KILLS ?= 300
SOAK_CONFIGS ?= 10000
soak: test-deps $(INSTALLED)
	$(PY) -m tests.soak --kills $(SOAK_KILLS)
	$(PY) -m tests.config_soak --agent $(SOAK_CONFIGS) --collector $$(( $(SOAK_CONFIGS) / 5 ))

hil: $(INSTALLED)
	$(PY) -m hil bench --out reports/hil $(HIL_ARGS)
	$(PY) -m hil bridge --seconds 60

# The randomized scenario family (docs/hil-scenarios.md): 1,000 cases on simulated time in
# worker processes, judged against the adaptive-control criteria; fails if one is not met.
.PHONY: hil-family
hil-family: $(INSTALLED)
	$(PY) -m hil family --cases 1000 --seed 1 --out reports/hil-family $(HIL_FAMILY_ARGS)

# The randomized series family (docs/hil-scenarios.md): 300 series of 5-7 repeat parts on
# simulated time, the learned preview against feedback alone, judged against issue 19's
# criteria (seed 2: held out from the tuning, which used seed 1); fails if one is not met.
.PHONY: hil-series
hil-series: $(INSTALLED)
	$(PY) -m hil series --series 300 --seed 2 --out reports/hil-series $(HIL_SERIES_ARGS)

# The sensor bridge's firmware onto an RP2040 board running MicroPython (README, "Flashing
# the bridge"): the four files flat in the board's root; main.py starts at the next reset.
BRIDGE_PORT ?= /dev/ttyACM0
BRIDGE_FILES := firmware_bridge/protocol.py firmware_bridge/hal.py firmware_bridge/sampler.py firmware_bridge/main.py
MPREMOTE ?= $(if $(wildcard $(VENV)/bin/mpremote),$(VENV)/bin/mpremote,mpremote)
flash:
	$(MPREMOTE) connect $(BRIDGE_PORT) fs cp $(BRIDGE_FILES) : + reset

# The agent as a systemd service on this machine (docs/deploy.md): a release in /opt/edge-agent,
# the configuration in /etc/edge-agent, the unit enabled. Again after a `git pull` to upgrade
# (configuration, spool and teach-in kept); INSTALL_ARGS="--rollback" goes back one release.
# uninstall-service keeps the configuration and the state unless INSTALL_ARGS="--purge".
install-service:
	@sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); $$sudo deploy/install.sh $(INSTALL_ARGS)

uninstall-service:
	@sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); $$sudo deploy/uninstall.sh $(INSTALL_ARGS)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# A missing compiler, header or venv module stops here with the Debian packages to install,
# not with a page of compiler output.
check-build-deps:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "edge-agent: $(PYTHON) not found; install: sudo apt-get install $(DEBIAN_PACKAGES)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "edge-agent: needs Python 3.11 or newer, $(PYTHON) is $$($(PYTHON) -V 2>&1)"; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || { echo "edge-agent: Python's venv module is missing; install: sudo apt-get install python3-venv"; exit 1; }
	@command -v cc >/dev/null 2>&1 || { echo "edge-agent: no C compiler for the Cython kernels; install: sudo apt-get install build-essential python3-dev"; exit 1; }
	@$(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || { echo "edge-agent: Python headers (Python.h) missing; install: sudo apt-get install python3-dev"; exit 1; }

$(PY): | check-build-deps
	$(PYTHON) -m venv $(VENV)

# Reinstalled when the build inputs change, so edited kernels are recompiled.
$(INSTALLED): setup.py pyproject.toml $(wildcard edge_agent/kernels/*.pyx edge_agent/kernels/*.pxd) | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,lint,hil]'
	@touch $@

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	rm -f edge_agent/kernels/*.c edge_agent/kernels/*.so
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# LinuxCNC in the loop (docs/linuxcnc.md): the bench's programs on a real LinuxCNC (Debian's
# linuxcnc-uspace, simulated machine), each at a fixed 100 % and with the agent adapting the
# feed, and a tool breakage; then one program made 5 times in a row by one agent with the learned
# preview (a row and a plot per part); the tables and plots go to reports/hil-linuxcnc/.
.PHONY: hil-linuxcnc
hil-linuxcnc: $(INSTALLED)
	$(PY) -m hil.linuxcnc bench $(HIL_LINUXCNC_ARGS)
	$(PY) -m hil.linuxcnc series
