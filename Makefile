# streamimg: everything sets itself up (virtualenv, packages, embedded broker).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test lint docs browser postgres kcat java rtsp demo bench bench-peers chaos soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,detect,track,serve,test,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check streamimg tests benchmarks topologies

# The API reference, from the docstrings, warnings as errors; a fresh build each time (-E:
# Sphinx does not notice a changed docstring otherwise).
docs: $(STAMP)
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

# The browser test drives Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The results store's tests also run on a real PostgreSQL: Debian's server, started by the
# tests in a temporary directory (skipped, with the reason, where it cannot be installed).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    postgresql >/dev/null; } || echo "postgresql not installable: its tests will skip"

# The interop test reads and writes frame messages with kcat (C, librdkafka; no Python).
kcat:
	@command -v kcat >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat >/dev/null; } || \
	  echo "kcat not installable: its test will skip"

# tests/test_spark_images.py compares read_images with pyspark's image source on Debian's JRE
# (skipped, with the reason, without one).
java:
	@command -v java >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq openjdk-17-jre-headless >/dev/null; } || \
	  echo "openjdk-17-jre-headless not installable: tests/test_spark_images.py will skip"

# tests/test_live_sources.py pulls from a real RTSP server: Debian's rtsp-server-perl, a
# relay PyAV pushes a clip to (skipped, with the reason, without it).
rtsp:
	@command -v rtsp-server-perl >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rtsp-server-perl >/dev/null; } || \
	  echo "rtsp-server-perl not installable: the RTSP test will skip"

test: lint docs browser postgres kcat java rtsp
	$(BIN)/pytest -q --durations=15

chaos: $(STAMP)
	STREAMIMG_CHAOS=1 $(BIN)/pytest -q tests/test_faults.py tests/test_restart.py tests/test_state.py \
	  tests/test_broker_restart.py tests/test_backpressure.py tests/test_fairness.py \
	  tests/test_hostile.py tests/test_dashboard.py

demo: $(STAMP)
	$(BIN)/streamimg demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# Minutes at a fixed input rate with daemons and Dask workers killed on a seeded schedule
# (issue 8): lost/duplicated frames, latency, peak memory -> benchmarks/results/soak.json.
SOAK_MINUTES ?= 5
soak: $(STAMP)
	$(BIN)/python benchmarks/soak.py --minutes $(SOAK_MINUTES)

# streamimg against Quix Streams, streamz and hand-written loops (issue 7). The peers come
# from the optional `bench` extra, in a virtualenv of their own: quixstreams 3.x pins
# confluent-kafka<2.13, which must not downgrade the one the tests run with.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed-stamp: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e '.[embedded,detect,track,serve,test,bench]'
	touch $@

bench-peers: $(BENCH_VENV)/.installed-stamp
	$(BENCH_VENV)/bin/python benchmarks/bench_peers.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) demo-output quickstart docs/_build test-artefacts .pytest_cache .ruff_cache .hypothesis
