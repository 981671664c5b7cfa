# Parley's commands. The two that matter:
#   make run    install what is missing, build, start everything; Ctrl-C stops it
#   make test   everything CI checks
# See the README for the rest.
SHELL := /bin/bash
BUILD ?= build
ASAN_BUILD ?= build-asan
# In CI (CI=true) warnings are errors.
WERROR := $(if $(filter true 1,$(CI)),ON,OFF)
C_SOURCES = $(shell find include libs services tests clients -name '*.[ch]' 2>/dev/null)

.PHONY: all deps web build asan run up down status test format format-check lint unit unit-asan \
        integration faults faults-groups chaos deploy-check compose-test fuzz fuzz-smoke bench bench-presence bench-groups bench-receipts bench-longpoll bench-history clean

all: build

deps:
	@deploy/deps.sh

build: deps web
	@cmake -S . -B $(BUILD) -G Ninja -DPARLEY_WERROR=$(WERROR) >/dev/null
	@cmake --build $(BUILD)

asan: deps web
	@cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DPARLEY_SANITIZE=ON \
	  -DPARLEY_WERROR=$(WERROR) >/dev/null
	@cmake --build $(ASAN_BUILD)

# The web client: web/src and Preact+htm from npm into web/dist, which the edge serves at /.
web: deps
	@web/build.sh

run: build
	@deploy/cluster.sh run

up: build
	@deploy/cluster.sh up

down:
	@deploy/cluster.sh down

status:
	@deploy/cluster.sh status

format:
	@clang-format -i $(C_SOURCES)

format-check:
	@clang-format --dry-run -Werror $(C_SOURCES) && echo "format: ok"

# Wire names only in parley/wire.h, no banned functions, no function over 80 lines outside
# main(), no include cycle between a service's modules (tests/lint/check_source.py).
lint:
	@python3 tests/lint/check_source.py

unit: build
	@ctest --test-dir $(BUILD) --output-on-failure

unit-asan: asan
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --test-dir $(ASAN_BUILD) --output-on-failure

# The Dockerfile, docker-compose.yml and the Kubernetes manifests, validated offline.
deploy-check: build
	@deploy/check.sh

# The integration suite runs the sanitizer build of the services, so address and undefined
# behaviour errors anywhere on the real request paths fail the run.
# In two halves, each on a cluster of its own: FerretDB on SQLite scans whole collections for
# most queries (README, "About the database"), so tests late in one long run paid for the
# data of every test before them (a long-poll ledger run took 156 s there, 21 s on a fresh
# cluster).
INTEGRATION_B = test_longpoll.py test_openapi.py test_presence.py test_receipts.py \
  test_restart.py test_social.py test_web.py test_ws_conformance.py
integration: asan
	@PARLEY_BIN=$(CURDIR)/$(ASAN_BUILD)/bin tests/integration/run.sh --ignore=test_faults.py \
	  $(addprefix --ignore=,$(INTEGRATION_B))
	@PARLEY_BIN=$(CURDIR)/$(ASAN_BUILD)/bin tests/integration/run.sh $(INTEGRATION_B)

# The fault scenarios of DESIGN section 5, each printing its ledger line, on a cluster of their
# own: a fresh database keeps FerretDB's scans short (see README, "About the database").
# The scale-out-and-drain scenario (300 sockets, each syncing) runs on a cluster of its own
# too: after the twelve before it, FerretDB/SQLite's scans made it take 500 s instead of ~60.
FAULTS_ALONE = test_faults.py::test_12_scale_out_then_drain_a_gateway
faults: asan
	@PARLEY_BIN=$(CURDIR)/$(ASAN_BUILD)/bin tests/integration/run.sh -s test_faults.py \
	  --deselect $(FAULTS_ALONE)
	@PARLEY_BIN=$(CURDIR)/$(ASAN_BUILD)/bin tests/integration/run.sh -s $(FAULTS_ALONE)

# The group ledger at the issue's size: 500 members over three gateways, steady and with kill -9
# of a gateway, the store and the router (make test runs the steady one with 100 members).
faults-groups: asan
	@PARLEY_GROUP_MEMBERS=$${PARLEY_GROUP_MEMBERS:-500} PARLEY_GROUP_FAULTS=1 \
	  PARLEY_BIN=$(CURDIR)/$(ASAN_BUILD)/bin tests/integration/run.sh -s -k group test_faults.py

# The fault soak of DESIGN section 5: ten minutes of traffic while a random service is killed,
# stopped or restarted every 15 to 45 s; then the ledger is checked. Prints ledger lines.
chaos: build
	@PARLEY_CHAOS_SECONDS=$${PARLEY_CHAOS_SECONDS:-600} PARLEY_BIN=$(CURDIR)/$(BUILD)/bin \
	  tests/integration/run.sh -s -k chaos test_faults.py

# The committed Dockerfile and docker-compose.yml run for real: Podman behind its Docker API,
# Docker Compose v5, local stand-ins for the images that cannot be pulled here, then chat,
# scale to 3 gateways and kill one (deploy/compose-test/run.sh). About a minute once the
# images are built, a few the first time. Not yet in make test: see docs/operations.md.
compose-test:
	@deploy/compose-test/run.sh

# libFuzzer drivers (tests/fuzz) with address and undefined sanitizers: five minutes each by
# default (PARLEY_FUZZ_SECONDS); make test replays every corpus and past crasher and fuzzes
# each driver briefly.
fuzz: deps
	@tests/fuzz/run.sh

fuzz-smoke: deps
	@tests/fuzz/run.sh smoke

# Parley against the seed design (Node.js + Socket.IO + mongoose) on this machine: idle
# memory per connection, stepped 1:1 rates until p99 > 50 ms, handshakes per second. Results
# and a plot under var/bench/; see docs/performance.md.
bench: build
	@python3 bench/run.py
	@python3 bench/presence.py
	@python3 bench/groups.py
	@python3 bench/receipts.py
	@python3 bench/longpoll.py

# A login storm of users with many contacts over 3 gateways: presence frames per second, ready
# to the contacts' online frame (p50/p99), Redis commands per change (bench/presence.py).
bench-presence: build
	@python3 bench/presence.py

# Group messages against the peer with rooms: 1,000 and 10,000 members over 3 gateways, stepped
# rates until p99 > 100 ms; deliveries per gateway CPU-second, Redis commands per message
# (bench/groups.py).
bench-groups: build
	@python3 bench/groups.py

# Read receipts at 1,000 messages/s, every recipient reading every message, against the same
# steps without: send->deliver p99, cursor writes to MongoDB per second (bench/receipts.py).
bench-receipts: build
	@python3 bench/receipts.py

# HTTP long-polling against WebSockets: send -> deliver p50/p99 at 100 msg/s for a pair of each
# in the same run, and the gateway's memory per idle long-poll session (bench/longpoll.py).
bench-longpoll: build
	@python3 bench/longpoll.py

# History reads (range, latest, recent) at 1,000,000 stored messages in 10,000 conversations,
# on FerretDB/PARLEY_DB_BACKEND (bench/history.py).
bench-history: build
	@python3 bench/history.py

test: deps format-check lint deploy-check unit unit-asan fuzz-smoke integration faults
	@echo "make test: all checks passed"

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
