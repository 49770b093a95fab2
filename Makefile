# Two commands on a fresh machine: `make run` and `make test`. Both build the
# virtualenv themselves (once; again only when the dependencies change).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.ready
# Client libraries some tests drive (the browser EventSource's rules, in Node).
JS_READY := tests/js/node_modules/.ready
# Python client libraries whose pins clash with ours (tests/clients/requirements.txt).
CLIENTS_VENV  := .venv-clients
CLIENTS_READY := $(CLIENTS_VENV)/.ready

.PHONY: run test lint bench soak clean

$(READY): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "chatstream needs Python 3.11 or newer")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

run: $(READY)
	$(BIN)/chatstream migrate
	$(BIN)/chatstream serve

$(JS_READY): tests/js/package.json tests/js/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix tests/js --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the tests that need Node clients will be skipped"; fi

$(CLIENTS_READY): tests/clients/requirements.txt
	@test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r tests/clients/requirements.txt
	@touch $@

test: $(READY) $(JS_READY) $(CLIENTS_READY)
	$(BIN)/python -m pytest

lint: $(READY)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(READY)
	$(BIN)/python bench/run.py

# An hour at 100 streams; fails if RSS, descriptors or tasks keep growing (not in `make test`).
soak: $(READY)
	$(BIN)/python bench/soak.py --minutes 60 --streams 100

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) .pytest_cache .mypy_cache .ruff_cache
