# Two commands on a fresh machine: `make demo` and `make test`. Both create/use .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Which torch build: cpu (default) or cuda. On Linux PyPI's torch wheel is the CUDA build (several
# GB of nvidia packages, x86_64 and aarch64 alike); the CPU build is on PyTorch's own index, used for
# torch alone when it answers. macOS wheels on PyPI are CPU builds already. TORCH_INDEX=URL takes
# torch from that index instead (a mirror of the CPU index, or another CUDA build: .../whl/cuXYZ).
TORCH ?= cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)

.PHONY: demo test install clean bench lint lock chaos fleet

# constraints.txt pins every package to the versions the suite last passed with, from PyPI.
# torch first, alone, so that only torch can come from TORCH_INDEX / TORCH_CPU_INDEX (--no-deps:
# its dependencies come from pip's own indexes in the second step, pinned like the rest).
$(STAMP): pyproject.toml constraints.txt
	@case "$(TORCH)" in cpu|cuda) ;; *) echo "TORCH=$(TORCH) is not a choice: make install TORCH=cpu (the default) or TORCH=cuda" >&2; exit 2;; esac
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@index="$(TORCH_INDEX)"; \
	if [ -z "$$index" ] && [ "$(TORCH)" = cpu ] && [ "$$(uname -s)" = Linux ]; then \
	  if $(BIN)/python -c "import urllib.request; urllib.request.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=10).close()" 2>/dev/null; then \
	    index="$(TORCH_CPU_INDEX)"; \
	  else \
	    echo "note: $(TORCH_CPU_INDEX) does not answer: torch comes from pip's own indexes. On Linux PyPI's"; \
	    echo "      wheel is the CUDA build (several GB more; it runs on the CPU too). For the CPU build from"; \
	    echo "      a mirror of that index: make clean install TORCH_INDEX=<its URL>"; \
	  fi; \
	fi; \
	if [ -n "$$index" ]; then \
	  echo "$(BIN)/pip install -q --no-deps --index-url $$index torch==$(TORCH_VERSION)"; \
	  $(BIN)/pip install -q --no-deps --index-url "$$index" "torch==$(TORCH_VERSION)"; \
	else \
	  echo "$(BIN)/pip install -q -c constraints.txt torch"; \
	  $(BIN)/pip install -q -c constraints.txt torch; \
	fi
	$(BIN)/pip install -q -c constraints.txt -e '.[worker,api,monitor,test]'
	@$(BIN)/python -c "import importlib.metadata as m; n = sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith(('nvidia-', 'cuda-'))); print('installed torch', m.version('torch'), '(with %d CUDA packages)' % len(n) if n else '(no CUDA packages)')"
	touch $(STAMP)
	@echo "installed into $(VENV): 'source $(BIN)/activate' puts batchrender on your PATH (or run $(BIN)/batchrender)"

# After a deliberate upgrade has passed `make test`: record the tested set.
lock: $(STAMP)
	{ echo "# Exact versions the suite was last run with (make lock regenerates it from .venv). make install"; \
	  echo "# and CI install through it, so a fresh clone gets the tested set, not whatever is newest."; \
	  echo "# Versions as PyPI names them: a local label (torch's +cpu) is dropped; torch==X matches X+cpu too."; \
	  $(BIN)/pip list --format=freeze --exclude-editable | grep -v -E '^(pip|setuptools|wheel)==' | sed -E 's/^([^=]+==[^+]+)[+].*$$/\1/'; } > constraints.txt

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/batchrender demo
	@echo; echo "Next: batchrender is in $(BIN), not on your PATH. In this directory:"; \
	echo "  source $(BIN)/activate        # or prefix each command with $(BIN)/"; \
	echo "  batchrender worker &               # renders the tiny model (starts the embedded redis-server if it is down)"; \
	echo "  batchrender submit \"a ceramic mug on a walnut table\" --wait"; \
	echo "  kill %1; batchrender embedded stop # when done"

# Real Redis: each pytest process starts a private in-memory redis-server on a free port and stops
# it at the end (tests/conftest.py); BR_TEST_REDIS_URL=redis://host:port/db uses that database
# instead (flushed; then TEST_JOBS=0, since parallel workers would flush it under each other).
# TEST_JOBS pytest-xdist workers (4; 0 runs in this process): most tests wait on worker
# processes, queues and timeouts, so four at once overlap their waits on a 2-core machine.
TEST_JOBS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist worksteal) $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

# Kill workers, Redis, S3 and the webhook receiver while jobs flow, then count what was lost
# (about 25 minutes: the main scenario, then a 10-minute S3 outage). Not part of `make test`.
chaos: $(STAMP)
	$(BIN)/python benchmarks/chaos.py --scenario all --out benchmarks/results/chaos.json

# Hosts that share only Redis (behind Sentinel) and S3, in network/UTS/PID namespaces of their own:
# a host SIGKILLed mid-call, a link down 60 s, the Redis primary SIGKILLed (about 6 minutes; root).
fleet: $(STAMP)
	$(BIN)/python benchmarks/fleet.py --out benchmarks/results/fleet.json

clean:
	rm -rf $(VENV) .batchrender output .pytest_cache
