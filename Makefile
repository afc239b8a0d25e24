# seqserve — the commands a user and CI run. `make help` lists them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA_DIR ?= ../shared/data
SEQSERVE_HOST ?= 127.0.0.1
SEQSERVE_PORT ?= 8000
export SEQSERVE_HOST SEQSERVE_PORT
MODEL_DIRS := $(patsubst %/model.json,%,$(wildcard models/*/*/model.json))

.PHONY: help serve test lint int8 train-sentiment train-translation evaluate evaluate-api loadtest reliability bench clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(VENV)/.runtime: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[cpu]"
	touch $@

# evaluation reads the committed ONNX graphs: ONNX Runtime and sacrebleu, no torch
$(VENV)/.eval: $(VENV)/.runtime
	$(PY) -m pip install --quiet -e ".[cpu,eval]"
	touch $@

# dev + train extras: tests exercise the export path, which needs torch (a CPU wheel, pinned).
$(VENV)/.dev: $(VENV)/.runtime
	$(PY) -m pip install --quiet -e ".[cpu,dev,train]"
	touch $@

# the quantizer needs onnx, which the runtime does not
$(VENV)/.quantize: $(VENV)/.runtime
	$(PY) -m pip install --quiet -e ".[cpu,quantize]"
	touch $@

int8: $(VENV)/.quantize  ## derive the INT8 graphs beside the fp32 ones (git-ignored), checked by parity; no-op when current
	$(PY) -m export.quantize --data-dir $(DATA_DIR) --model-dir $(MODEL_DIRS)

serve: $(VENV)/.runtime int8  ## start the API on $SEQSERVE_HOST:$SEQSERVE_PORT (default 127.0.0.1:8000) with models/
	$(PY) -m service

# Triton's perf_analyzer, which a test drives (tritonclient 2.41's wheel; needs Debian's libb64-0d)
$(VENV)/perf_analyzer/bin/perf_analyzer: $(VENV)/.dev
	$(PY) -m loadtests.perf_analyzer --install $(VENV)/perf_analyzer

test: $(VENV)/.dev lint int8 $(VENV)/perf_analyzer/bin/perf_analyzer  ## lint, type-check and run the test suite
	$(PY) -m pytest -q

lint: $(VENV)/.dev  ## ruff + mypy
	$(VENV)/bin/ruff check service export loadtests tests
	$(VENV)/bin/mypy service export loadtests

train-sentiment: $(VENV)/.dev  ## train, export, evaluate (fp32 and INT8) the SST-2 sentiment model (~45 min on 2 cores)
	$(PY) -m export.train_sentiment --data-dir $(DATA_DIR) --run-dir runs/sentiment --threads 1
	$(PY) -m export.onnx_export sentiment --data-dir $(DATA_DIR) --run-dir runs/sentiment --out-dir models/sentiment/1
	$(PY) -m export.evaluate sentiment --data-dir $(DATA_DIR) --model-dir models/sentiment/1 --write
	$(PY) -m export.quantize --data-dir $(DATA_DIR) --model-dir models/sentiment/1 --write

train-translation: $(VENV)/.dev  ## train, export, evaluate (fp32 and INT8) the en→de translator (~60 min on 2 cores)
	$(PY) -m export.train_translation --data-dir $(DATA_DIR) --run-dir runs/translate-en-de --threads 1 --epochs 9 --max-minutes 600
	$(PY) -m export.onnx_export translation --data-dir $(DATA_DIR) --run-dir runs/translate-en-de --out-dir models/translate-en-de/1
	$(PY) -m export.evaluate translation --data-dir $(DATA_DIR) --model-dir models/translate-en-de/1 --robustness --write
	$(PY) -m export.quantize --data-dir $(DATA_DIR) --model-dir models/translate-en-de/1 --write

evaluate: $(VENV)/.eval int8  ## print the committed models' quality (accuracy, BLEU) from ONNX Runtime, fp32 and INT8
	$(PY) -m export.evaluate sentiment --data-dir $(DATA_DIR) --model-dir models/sentiment/1
	$(PY) -m export.evaluate translation --data-dir $(DATA_DIR) --model-dir models/translate-en-de/1
	$(PY) -m export.evaluate sentiment --data-dir $(DATA_DIR) --model-dir models/sentiment/1 --precision int8
	$(PY) -m export.evaluate translation --data-dir $(DATA_DIR) --model-dir models/translate-en-de/1 --precision int8

evaluate-api: $(VENV)/.dev int8  ## the translator's robustness table (UPPER/lower/Title/...) over HTTP on a real server
	$(PY) -m export.evaluate translation --data-dir $(DATA_DIR) --model-dir models/translate-en-de/1 --through-api

# the load test's own extras, once (it reinstalled them on every run, and failed offline)
$(VENV)/.loadtest: $(VENV)/.dev
	$(PY) -m pip install --quiet -e ".[cpu,dev,train,loadtest]"
	touch $@

# int8: the server it starts serves the default precision, whatever ran before
loadtest: $(VENV)/.loadtest int8  ## Locust sweep + open loop, batching on vs off, vs the raw limit (reports/loadtest/)
	$(PY) -m loadtests

reliability: $(VENV)/.dev  ## overload and graceful-shutdown scenarios (reports/reliability.md)
	$(PY) -m loadtests.reliability

# make's own option parser takes `make bench --duration 9` for itself: options go in BENCH_ARGS
bench: $(VENV)/.dev int8  ## serving benchmark: fp32/INT8 limits, CPU per request (BENCH_ARGS="--duration 9"; BASELINE=<checkout>)
	$(PY) -m loadtests.bench_service $(if $(BASELINE),--baseline $(BASELINE)) $(BENCH_ARGS)

clean:  ## remove caches (keeps .venv and runs/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
