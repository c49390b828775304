# The two commands in README.md: `make demo` and `make test`. Both are idempotent: they build the
# virtual environment, install system tools when missing, and resolve the Kafka jars (cached).
#
# Two supported stacks, chosen by the Python found (docs/stacks.md): 3.11 or 3.12 -> TensorFlow
# 2.16.2 + tensorflow-io in .venv; 3.13 -> current TensorFlow, no tensorflow-io, in .venv-3.13.
# `make test PYTHON=python3.13` picks the second; pyproject.toml's markers pick the packages.
PYTHON   ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
PYVER    := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
VENV     ?= $(if $(filter 3.13,$(PYVER)),.venv-3.13,.venv)
PY       := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-stack test-faults soak soak-chaos bench broker deps system-deps lint clean diagram

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 14), "Python 3.11, 3.12 or 3.13 is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# What the tests run comes from the OS; install it when missing and we are allowed to: java and
# mvn (the local broker), prometheus and promtool (one package; tests/test_observability.py), npm
# (it fetches the Compose schema once for the same tests). The Debian prometheus package starts a
# service on :9090; the tests run their own, so stop it.
SYSTEM_PKGS = $(if $(shell command -v java),,openjdk-17-jre-headless) \
              $(if $(shell command -v mvn),,maven) \
              $(if $(and $(shell command -v promtool),$(shell command -v prometheus)),,prometheus) \
              $(if $(shell command -v npm),,npm)
system-deps:
	@if [ -n "$(strip $(SYSTEM_PKGS))" ]; then \
	  if [ "$$(id -u)" -ne 0 ]; then \
	    echo "missing system packages: $(strip $(SYSTEM_PKGS)); install them, e.g. sudo apt-get install $(strip $(SYSTEM_PKGS))" >&2; exit 1; \
	  fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SYSTEM_PKGS) && \
	  (systemctl stop prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true); \
	fi

deps: system-deps $(VENV)/.installed
	$(PY) -m stream_trainer.cli broker --resolve-only

# ruff (style, imports, error messages) and mypy --strict on the packages: run by .ci/run before the tests.
lint: $(VENV)/.installed
	$(PY) -m ruff check stream_trainer producer tests
	$(PY) -m mypy

test: deps
	$(PY) -m pytest $(PYTEST_ARGS)

# What a second stack must prove (.ci/run runs it on Python 3.13): the reader contract, the decode
# pipeline, the trainer (step, precision, checkpoint, export, whole processes) and several workers.
STACK_TESTS = tests/test_kafka_io.py tests/test_consumer_reader.py tests/test_reader_choice.py tests/test_decoder.py tests/test_input_path.py tests/test_units.py \
              tests/test_step.py tests/test_precision.py tests/test_tfenv.py tests/test_trainer.py \
              tests/test_trainer_process.py tests/test_export.py tests/test_evaluate.py tests/test_collectives.py \
              tests/faults/test_multiworker.py
test-stack: deps
	$(PY) -m pytest $(STACK_TESTS) $(PYTEST_ARGS)

test-faults: deps
	$(PY) -m pytest -m faults --run-faults $(PYTEST_ARGS)

demo: deps
	$(PY) -m stream_trainer.cli demo

bench: deps
	$(PY) -m stream_trainer.cli bench --config configs/bench.yaml

soak: deps
	$(PY) -m stream_trainer.cli soak --minutes $${SOAK_MINUTES:-30}

# An hour of faults every 30-60 s: one worker, then a two-worker job (half the time each).
soak-chaos: deps
	$(PY) -m stream_trainer.cli soak --chaos --minutes $${SOAK_MINUTES:-60} --workers $${SOAK_WORKERS:-1,2} \
	  $${SOAK_SEED:+--seed $$SOAK_SEED} --out runs/soak-chaos

broker: deps
	$(PY) -m stream_trainer.cli broker

# docs/architecture.svg from its text source (Graphviz's dot: apt-get install graphviz).
diagram:
	dot -Tsvg docs/architecture.dot -o docs/architecture.svg

clean:
	rm -rf $(VENV) runs .pytest_cache
