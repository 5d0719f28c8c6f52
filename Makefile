# One command each: `make demo` (set up + run the main job on the bundled example data)
# and `make test` (set up + run the test suite). Both create/reuse .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of torch from the local wheel cache; an unpinned torch pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	@echo "make demo: starting afresh in experiments/rna_saluki (removing an earlier demo run there)"
	rm -rf experiments/rna_saluki
	$(BIN)/biolm saluki tokenize --configfile exampleconfigs/saluki/tokenize_fine-tune.yaml
	$(BIN)/biolm saluki fine-tune --task regression --configfile exampleconfigs/saluki/tokenize_fine-tune.yaml
	$(BIN)/biolm saluki predict --task regression --configfile exampleconfigs/saluki/predict_interpret.yaml
	$(BIN)/biolm saluki interpret --task regression --configfile exampleconfigs/saluki/predict_interpret.yaml

# the suite without the long accuracy runs (budget: 8 min on a quiet 2-core machine)
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# the long accuracy and packaging runs, each named as it runs (CI runs them as their own step)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -v -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/tokenize_store.py --quick
	$(BIN)/python benchmarks/saluki_speed.py --quick
	$(BIN)/python benchmarks/geneformer_cpu.py --quick
	$(BIN)/python benchmarks/expression_store.py --quick

clean:
	rm -rf experiments build dist *.egg-info .pytest_cache
