# Two commands on a fresh machine: `make demo` and `make test`. Both create/use .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_REDIS_PORT ?= 6391

.PHONY: demo test install clean bench lint

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel pinned: any other torch spec pulls several GB of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[worker,api,test]'
	touch $(STAMP)

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

clean:
	rm -rf $(VENV) .batchrender output .pytest_cache
