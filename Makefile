# Set-up is idempotent: the venv is (re)built when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

# The core install (the dependencies of pyproject.toml) is all `make demo` needs; the test extra
# (pytest, hypothesis, Captum, SciPy, ruff, Ray) is added on top for the tests and benchmarks.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel, pinned: an unpinned torch may pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PY) -m pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.test

demo: $(VENV)/.core
	$(VENV)/bin/attrbound demo

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

bench: setup
	$(PY) -m pytest -q -m slow
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs build dist src/*.egg-info
