# livemigrate: the two commands are `make demo` and `make test`; everything else is a helper.
PY ?= python3
VENV := .venv
SECANTUS := .secantus
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
export UV_COMPILE_BYTECODE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test test-slow lint format lock bench bench-smoke soak ui browser-check clean

setup: $(VENV)/.installed $(SECANTUS)/.installed

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

$(UV): | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

# Locked dependencies, bytecode compiled (the machine sets PYTHONDONTWRITEBYTECODE=1).
$(VENV)/.installed: requirements.lock pyproject.toml | $(UV)
	$(UV) pip sync -q -p $(VENV)/bin/python --compile-bytecode requirements.lock
	$(UV) pip install -q -p $(VENV)/bin/python --compile-bytecode --no-deps -e .
	touch $@

# SecantusDB (GPL) lives in its own virtualenv and only ever runs as a separate process.
$(SECANTUS)/.installed: secantus.lock | $(UV)
	$(UV) venv -q -p $(PY) $(SECANTUS)
	$(UV) pip sync -q -p $(SECANTUS)/bin/python --compile-bytecode secantus.lock
	touch $@

demo: setup
	$(VENV)/bin/python -m flows.demo

test: setup
	$(VENV)/bin/python -m pytest

# The tests marked slow (over 30 s each), kept out of `make test`'s 10 minutes; run by .ci/run.
test-slow: setup
	$(VENV)/bin/python -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check tasks checks flows deployments tests bench scripts
	$(VENV)/bin/ruff format --check tasks checks flows deployments tests bench scripts
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format tasks checks flows deployments tests
	$(VENV)/bin/ruff check --fix tasks checks flows deployments tests

lock: | $(UV)
	$(UV) pip compile -q --extra dev pyproject.toml -o requirements.lock
	echo "SecantusDB==0.7.0b3" | $(UV) pip compile -q - -o secantus.lock

bench: setup
	$(VENV)/bin/python -m bench.run

# The benchmark harness end to end at its smoke size (about 70 s): kept out of `make test`'s 10 minutes,
# run by .ci/run so the bench code cannot rot.
bench-smoke: setup
	$(VENV)/bin/python -m pytest -m bench -p no:cacheprovider tests/bench

soak: setup
	$(VENV)/bin/python -m pytest -m soak -p no:cacheprovider tests/reliability/test_soak.py

ui: setup
	scripts/ui.sh

# The on-call path in a real browser: `make ui`, the migrate deployment, the cutover form in headless
# Chromium (Debian's `chromium`, installed here when missing; Playwright drives it, no browser download).
# Screenshots and the run log go to browser-check/.
browser-check: setup
	scripts/ensure_chromium.sh
	$(VENV)/bin/python scripts/browser_check.py --out browser-check

clean:
	rm -rf $(VENV) $(SECANTUS) .pytest_cache .mypy_cache .ruff_cache
