# One-command entry points. `make demo` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install install-bench demo test test-unit test-integration check bench bench-smoke clean lint lock

install: $(STAMP)

# Every dependency from the lock file, each checked against its hash; then the project itself.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

## lock: the lock files (requirements/*.txt, hashes, every platform) from pyproject.toml; a pin
## changes only when pyproject.toml no longer admits it (`make lock UPGRADE=1` takes the newest)
LOCKS := runtime:aws image-dev:aws,emulator dev:dev,emulator,aws
LOCK_DIR ?= requirements
lock: install
	@for spec in $(LOCKS); do name=$${spec%%:*}; extras=$${spec#*:}; \
	  $(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes --no-header -q \
	    $(if $(UPGRADE),--upgrade) $$(for e in $$(echo $$extras | tr , ' '); do printf -- '--extra %s ' $$e; done) \
	    -o $(LOCK_DIR)/$$name.txt || exit 1; done

BENCH_STAMP := $(VENV)/.installed-bench

install-bench: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

## bench: the full benchmark (ours and the Quix Streams peer side by side; ~15 min); docs/benchmarks.md
bench: install-bench
	$(PY) bench/run.py --mode all --json bench-results.json

## bench-smoke: a 20k-event run of ours only (what CI runs); fails only if events are lost
bench-smoke: install
	.ci/bench-smoke

## demo: embedded broker + emulator + sample events + the connector, then a summary
demo: install
	$(PY) -m connector demo

## lint: ruff over the tree and mypy (strict) over the core stages, as CI runs them
MYPY_CORE := connector/processing connector/pipeline connector/runtime connector/delivery/lanes.py \
             connector/delivery/batch.py connector/errors.py
lint: install
	$(VENV)/bin/ruff check connector tests bench scripts
	$(VENV)/bin/mypy $(MYPY_CORE)

## test: the whole suite (unit + integration against a real broker, emulator and processes)
test: install
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q -m "not integration"

test-integration: install
	$(PY) -m pytest -q -m integration

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis build *.egg-info
