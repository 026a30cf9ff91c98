# Developer commands. `make run` and `make test` work on a fresh machine with Python 3.11+.
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test tools lint typecheck bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the API, a worker and beat (embedded PostgreSQL and Redis unless TALLY_*_URL are set)
run: $(STAMP)
	$(BIN)/tally run $(ARGS)

## test: the whole suite (TALLY_TEST_DATABASE_URL / TALLY_TEST_REDIS_URL, else embedded servers)
test: $(STAMP) tools
	$(BIN)/pytest $(ARGS)

# The compose file is validated with Debian's docker-compose; install it where we can.
tools:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null); } \
		|| echo "note: install docker-compose to validate docker-compose.yml"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .tally .pytest_cache .mypy_cache .ruff_cache
