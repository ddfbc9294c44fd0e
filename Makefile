# petlab: the two commands a newcomer needs are `make poc` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch by default; GPU users: `make venv TORCH_SPEC=` keeps the torch already in $(VENV)
TORCH_SPEC ?= torch==2.13.0
POC_ARGS ?=

.PHONY: help venv poc poc-cli test test-fast bench lab strip clean-runs

help:
	@echo "make poc      run the proof of concept (notebooks via papermill) into runs/"
	@echo "make poc-cli  the same pipeline without Jupyter (petlab poc)"
	@echo "make test     run the test suite (CI runs exactly this)"
	@echo "make bench    measure MPC vs plaintext and rewrite BENCHMARKS.md"
	@echo "make lab      open JupyterLab on notebooks/"
	@echo "Extra flags for poc / poc-cli: make poc POC_ARGS='--model mlp --provider TFP'"

$(BIN)/petlab: requirements.txt requirements-crypten.txt requirements-spu.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; fi
	$(BIN)/python -m pip install --quiet $$(grep -v '^torch==' requirements.txt | grep -v '^#' | grep .)
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-crypten.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-spu.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(BIN)/petlab

venv: $(BIN)/petlab

poc: venv
	$(BIN)/petlab notebooks $(POC_ARGS)

poc-cli: venv
	$(BIN)/petlab poc $(POC_ARGS)

test: venv
	$(BIN)/python -m pytest -q -ra --durations=15

test-fast: venv
	$(BIN)/python -m pytest -q -ra -m "not mpc and not notebooks"

bench: venv
	$(BIN)/petlab bench

lab: venv
	$(BIN)/python -m pip install --quiet jupyterlab==4.6.6
	$(BIN)/jupyter lab notebooks/

strip: venv
	$(BIN)/nbstripout notebooks/*.ipynb
