# fedveil: one entry point for set-up, the demo and the tests.
#   make demo   installs (if needed) and runs a small federated fine-tuning (3 owners x 3 rounds)
#   make test   installs (if needed), runs ruff (lint, line length 120), then the whole test suite,
#               slow end-to-end tests included
#   make deploy-demo [BACKEND=tenseal|crypten|plain] [NET=hosts]   the deployment (TLS, node auth) on
#               127.0.0.1; NET=hosts: each role on its own host (network namespaces; root)
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedveil-installed
DEMO_DIR ?= outputs/demo
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast deploy-demo clean

install: $(STAMP)

# Idempotent: re-runs only when the dependency pins change. torch comes first and alone, so the
# CPU wheel is used and no resolver pulls a CUDA build; crypten 0.4.1 pins dead packages
# (torchvision, `sklearn`), so it goes in with --no-deps and its real needs come from the lock.
$(STAMP): pyproject.toml requirements/lock.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements/lock.txt -e ".[dev]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps crypten==0.4.1
	touch $(STAMP)

demo: install
	$(PY) -m fedveil.experiments.run hydra.run.dir=$(DEMO_DIR) overwrite=true

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -ra --durations=25 -n auto --maxprocesses 4 --dist loadgroup

test-fast: install
	$(PY) -m ruff check .
	$(PY) -m pytest -ra -m "not slow" -n auto --maxprocesses 4 --dist loadgroup

# The deployment on 127.0.0.1 (TLS, SuperNode auth, 3 SuperNodes, tenseal; BACKEND=crypten for MPC);
# NET=hosts: the same with each role in its own network namespace (deploy/hosts.sh).
deploy-demo: install
	BACKEND=$(or $(BACKEND),tenseal) NET=$(or $(NET),loopback) bash deploy/demo.sh

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
