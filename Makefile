# Two commands on a fresh machine: `make demo` and `make test`. Both create/use .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_REDIS_PORT ?= 6391

.PHONY: demo test install clean bench lint lock chaos

# constraints.txt pins every package to the versions the suite last passed with.
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel pinned: any other torch spec pulls several GB of CUDA packages.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[worker,api,monitor,test]'
	touch $(STAMP)

# After a deliberate upgrade has passed `make test`: record the tested set.
lock: $(STAMP)
	{ echo "# Exact versions the suite was last run with (make lock regenerates it from .venv). make install"; \
	  echo "# and CI install through it, so a fresh clone gets the tested set, not whatever is newest."; \
	  $(BIN)/pip list --format=freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)=='; } > constraints.txt

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/batchrender demo

# Real Redis: 6379 when reachable, else a private redis-server on $(TEST_REDIS_PORT).
test: $(STAMP)
	@if [ -z "$$BR_TEST_REDIS_URL" ] && ! $(BIN)/python -c "import redis; redis.Redis(port=6379, socket_connect_timeout=1).ping()" 2>/dev/null; then \
	  echo "no Redis on 6379: starting a private redis-server on $(TEST_REDIS_PORT)"; \
	  redis-server --port $(TEST_REDIS_PORT) --save '' --daemonize yes --pidfile /tmp/batchrender-test-redis.pid >/dev/null; \
	  export BR_TEST_REDIS_URL=redis://127.0.0.1:$(TEST_REDIS_PORT)/15; \
	fi; \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

# Kill workers, Redis, S3 and the webhook receiver while jobs flow, then count what was lost
# (about 25 minutes: the main scenario, then a 10-minute S3 outage). Not part of `make test`.
chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos.py --scenario all --out benchmarks/results/chaos.json

clean:
	rm -rf $(VENV) .batchrender output .pytest_cache
