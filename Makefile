# Developer commands. `make run` and `make test` work on a fresh machine with Python 3.11+.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock run test test-ha test-pgbouncer tools-ha soak contract chaos-webhooks tools lint typecheck bench bench-scaling bench-reads clean

# Exactly the locked versions (requirements/dev.txt, with hashes), then tally itself.
$(STAMP): pyproject.toml requirements/dev.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## lock: pin what pyproject.toml added (ARGS=--upgrade: newest of all); runtime.txt feeds the image
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes
lock: $(STAMP)
	$(LOCK) --quiet $(ARGS) -o requirements/runtime.txt
	$(LOCK) --quiet $(ARGS) --extra dev -o requirements/dev.txt

## run: the API, a worker and beat (embedded PostgreSQL and Redis unless TALLY_*_URL are set)
run: $(STAMP)
	$(BIN)/tally run $(ARGS)

## test: the whole suite (TALLY_TEST_DATABASE_URL / TALLY_TEST_REDIS_URL, else embedded servers)
## but the several-machine faults of tests/ha (make test-ha), in TEST_PROCESSES processes
## (pytest-xdist; a file's tests in one process)
TEST_PROCESSES ?= 2
XDIST = -n $(TEST_PROCESSES) --dist loadfile
test: $(STAMP) tools
	$(BIN)/pytest -m "not ha" $(XDIST) $(ARGS)

## test-ha: the several-machine faults (tests/ha: network namespaces, Patroni, etcd, Sentinel;
## root); CI runs those not marked ha_long: ARGS='-m "not ha_long"'
test-ha: $(STAMP) tools tools-ha
	$(BIN)/pytest tests/ha -s $(ARGS)

## test-pgbouncer: the API and event suites through PgBouncer in transaction pooling mode
## (tests/pgbouncer.py)
test-pgbouncer: $(STAMP) tools
	TALLY_TEST_PGBOUNCER=1 $(BIN)/pytest tests/api tests/events $(XDIST) $(ARGS)

## soak: the model tests at length (points, periods and caps), shrinking what they find
soak: $(STAMP)
	TALLY_MODEL_EXAMPLES=$${TALLY_MODEL_EXAMPLES:-2000} TALLY_MODEL_SHRINK=1 \
		$(BIN)/pytest --timeout=0 tests/shared/test_points_model.py tests/shared/test_periods.py $(ARGS)

## contract: schemathesis against a real stack with 100 examples a route (CI: 8)
contract: $(STAMP)
	TALLY_CONTRACT_EXAMPLES=$${TALLY_CONTRACT_EXAMPLES:-100} \
		$(BIN)/pytest --timeout=0 tests/processes/test_schemathesis.py $(ARGS)

## chaos-webhooks: the webhook chaos test with the receiver down a full minute (CI: 20 s)
chaos-webhooks: $(STAMP)
	TALLY_CHAOS_WEBHOOK_DOWN=60 $(BIN)/pytest tests/chaos/test_webhooks_chaos.py -s $(ARGS)

## bench: single adjustments against a running stack (TALLY_DATABASE_URL, TALLY_BENCH_URL)
bench: $(STAMP) tools
	$(BIN)/python bench/adjustments.py $(ARGS)

## bench-scaling: 1 and 2 API and worker processes, and the bulk lane busy; the measured part
## of PERFORMANCE.md's capacity model (TALLY_DATABASE_URL, a migrated database; TALLY_REDIS_URL)
bench-scaling: $(STAMP) tools
	$(BIN)/python bench/scaling.py $(ARGS)

## bench-reads: history reads at 10M entries while adjustments flow (TALLY_DATABASE_URL, a migrated database)
bench-reads: $(STAMP)
	$(BIN)/python bench/reads.py $(ARGS)

# Debian packages, as command:package: docker-compose validates the compose files, wrk
# drives `make bench`, promtool (package prometheus) checks monitoring/, pgbouncer runs
# `make test-pgbouncer`, curl downloads the export in `make bench-reads`. Without their
# recommendations: neither a Docker engine nor a node exporter is needed for that.
TOOLS := docker-compose:docker-compose wrk:wrk promtool:prometheus nats-server:nats-server \
	pgbouncer:pgbouncer curl:curl
# tests/ha runs PostgreSQL under Patroni with etcd, Redis under Sentinel, and partitions
# hosts with nftables.
HA_TOOLS := pg_ctlcluster:postgresql patroni:patroni etcd:etcd-server \
	redis-sentinel:redis-sentinel nft:nftables ip:iproute2
tools-ha:
	@$(MAKE) --no-print-directory tools TOOLS="$(HA_TOOLS)"
tools:
	@missing="$$(for tool in $(TOOLS); do command -v $${tool%%:*} >/dev/null || echo $${tool#*:}; done)"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing >/dev/null; } \
		|| echo "note: install the Debian packages $$missing (what each is for: TOOLS and HA_TOOLS in the Makefile)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .tally .pytest_cache .mypy_cache .ruff_cache
