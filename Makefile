# Kizuna: `make setup` once, then `make up` / `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PEERS   ?= .venv-peers
export TZ = UTC

.PHONY: setup up down status demo test test-unit test-integration lint clean bench bench-peers bench-ingest bench-linger bench-source-topics bench-import bench-sessionizer bench-scorer bench-warehouse bench-framing bench-scale bench-warehouse-scale soak chaos chaos-kill order-check fuzz deploy-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

up: setup          ## start the local stack (Kafka, warehouse with embedded ClickHouse)
	$(BIN)/kizuna up

demo: setup        ## the whole pipeline on 2,000 generated customers over 30 days, with a report
	$(BIN)/kizuna demo

down:              ## stop everything the local stack runs
	@if [ -x $(BIN)/kizuna ]; then $(BIN)/kizuna down; else echo "nothing installed"; fi

status: setup
	$(BIN)/kizuna status

test: setup $(PEERS)/.installed  ## the whole suite; starts and stops its own stacks on free ports
	$(BIN)/pytest

test-unit: setup   ## pure tests, no broker
	$(BIN)/pytest tests/unit

test-integration: setup $(PEERS)/.installed
	$(BIN)/pytest tests/integration

lint: setup
	$(BIN)/ruff check services tests benchmarks

clean: down
	rm -rf .kizuna

bench: setup $(PEERS)/.installed  ## ceilings, each stage, end to end, scaling, state, then the peers: out/bench/ (about 20 min)
	$(BIN)/python -m benchmarks.suite
	$(BIN)/python -m benchmarks.peers.run --peers-python $(PEERS)/bin/python

bench-peers: setup $(PEERS)/.installed  ## Kizuna vs Quix Streams, Bytewax and ClickHouse SQL on the same 250k events (own stack)
	$(BIN)/python -m benchmarks.peers.run --peers-python $(PEERS)/bin/python

$(PEERS)/.installed: benchmarks/peers/requirements.txt  # the peers pin their own Kafka client
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet -r benchmarks/peers/requirements.txt
	touch $@

bench-ingest: setup  ## collector throughput and latency (starts its own stack)
	$(BIN)/python -m benchmarks.ingest

bench-linger: setup  ## single-event requests with and without the collector's linger: rate, latency, messages and stage CPU per event
	$(BIN)/python -m benchmarks.linger

bench-source-topics: setup  ## events produced to a source topic against kizuna import of the same, same run, to ClickHouse
	$(BIN)/python -m benchmarks.source_topics

bench-sessionizer: setup  ## the sessionizer alone: pure, then one worker on Kafka (own stack)
	$(BIN)/python -m benchmarks.stages sessionizer

bench-scorer: setup  ## the engagement scorer alone: pure, then one worker on Kafka (own stack)
	$(BIN)/python -m benchmarks.stages engagement_scorer

bench-import: setup  ## kizuna import of ~1M events ordered by customer vs in time order (own stack)
	$(BIN)/python -m benchmarks.importer

fuzz: setup  ## the whole pipeline fuzzed with hypothesis, long run (its own stack)
	KIZUNA_FUZZ_EXAMPLES=$${KIZUNA_FUZZ_EXAMPLES:-600} $(BIN)/pytest -q tests/integration/test_fuzz.py

ORDER_RUNS ?= 20
DELIVERY_EXAMPLES ?= 10000
order-check: setup  ## results independent of delivery, at length (hours): the property harness, a year imported 7 ways at full size, then the order tests ORDER_RUNS times with a busy machine
	KIZUNA_DELIVERY_EXAMPLES=$(DELIVERY_EXAMPLES) $(BIN)/pytest -q -p no:cacheprovider tests/unit/test_delivery.py
	KIZUNA_ORDER_ALL_WAYS=1 KIZUNA_ORDER_CUSTOMERS=1000 KIZUNA_ORDER_DAYS=365 $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_bounded_input.py
	$(BIN)/python -m tests.busy & busy=$$!; trap "kill $$busy; wait $$busy" EXIT; \
	for i in $$(seq $(ORDER_RUNS)); do \
	  echo "order-check: run $$i of $(ORDER_RUNS)"; \
	  $(BIN)/pytest -q -p no:cacheprovider tests/integration/test_late_data.py tests/integration/test_bounded_input.py || exit 1; \
	done

deploy-check: setup  ## the image built with podman from a local base and the pipeline run from it; the Kubernetes overlay rendered and validated
	$(BIN)/pytest -q -p no:cacheprovider -m deploy tests/deploy
	$(BIN)/python -m tests.deploy.kustomize

bench-framing: setup  ## Confluent wire format vs Avro single-object encoding: µs per value
	$(BIN)/python -m benchmarks.framing

bench-warehouse: setup  ## rows/s decoded and inserted into embedded ClickHouse, per table
	$(BIN)/python -m benchmarks.warehouse

bench-scale: setup  ## SCALE_CUSTOMERS (1,000,000) customers, SCALE_SHAPE thin or personas, in a stack as shipped: memory, restarts, a second worker (hours)
	$(BIN)/python -m benchmarks.scale --customers $(SCALE_CUSTOMERS) --shape $(SCALE_SHAPE)

bench-warehouse-scale: setup  ## every query of queries/ and kizuna profile at 20M touchpoints / 1M customers, embedded engine
	$(BIN)/python -m benchmarks.warehouse_scale

soak: setup  ## SOAK_MINUTES (30) of steady live traffic; fails if memory keeps growing or lag is unbounded (out/soak.svg)
	$(BIN)/python -m benchmarks.soak --minutes $(SOAK_MINUTES)

chaos: setup  ## the fault matrix on one broker and on a local 3-node cluster, over 100,000 events a row, each vs a clean run (out/chaos.md)
	$(BIN)/python -m tests.chaos.run

CHAOS_RUNS ?= 20
SCALE_CUSTOMERS ?= 1000000
SCALE_SHAPE ?= thin
SOAK_MINUTES ?= 30
chaos-kill: setup  ## the node leading the raw topic killed during an import and restarted, CHAOS_RUNS times on a 3-node cluster
	$(BIN)/python -m tests.chaos.run --matrix cluster --repeat kill-leader --times $(CHAOS_RUNS)
