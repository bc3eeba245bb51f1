# Everything runs inside .venv at the repository root, created on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.trl_nb-installed
OUT    ?= runs/default
SEED   ?= 0
BENCH_OUT ?= bench/results/spec_cpu.json

.PHONY: run test test-all docs nbs export clean-nbs bench

$(STAMP): settings.ini setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip wheel "setuptools<82"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

## Main job: the whole TRL pipeline on the embedded default data set.
run: $(STAMP)
	$(BIN)/trl_run --out $(OUT) --seed $(SEED)

## Whole test suite: every notebook (nbdev_test, wrapped in pytest) plus packaging checks.
test: $(STAMP)
	$(BIN)/python -m pytest tests

## Also run cells flagged slow.
test-all: $(STAMP)
	TRL_TEST_FLAGS=slow $(BIN)/python -m pytest tests

## Export notebooks to the library and clean them.
export: $(STAMP)
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean

## Execute notebooks in place so their saved outputs (figures, tables) are current.
nbs: $(STAMP)
	$(BIN)/python tools/run_nbs.py $(NB)

## Documentation site in _docs/ (quarto when present, smalldocs otherwise).
docs: $(STAMP)
	$(BIN)/python tools/build_docs.py

## Benchmarks at the sizes of the paper (about 20 minutes on a CPU), by the harness beside the package; results in bench/results/.
bench: $(STAMP)
	mkdir -p $(dir $(BENCH_OUT)) && $(BIN)/python bench/trl_bench.py --json $(BENCH_OUT)
