#!/usr/bin/env bash
# Runs the integration suite against a cluster of its own: real Redis, Kafka and FerretDB and
# the real service binaries, on ports and in a folder apart from `make run`'s, so a running
# local cluster is not disturbed. The cluster is started with the same deploy/cluster.sh that
# users run, and removed afterwards (kept on failure, for its logs).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$root/var"
export PARLEY_VAR
PARLEY_VAR=$(mktemp -d "$root/var/test.XXXXXX")
export PARLEY_BIN=${PARLEY_BIN:-$root/build/bin}
export PARLEY_EDGE_PORT=18000
export PARLEY_EDGE_TLS_PORT=18443
# Every client here is 127.0.0.1: the edge's per-address limits are tested on an edge of
# their own (test_limits.py).
export PARLEY_EDGE_CONN_PER_ADDR=60000
export PARLEY_EDGE_REST_RATE=100000
export PARLEY_EDGE_REST_BURST=100000
export PARLEY_AUTH_PORT=18081
export PARLEY_STORE_PORT=18082
export PARLEY_ROUTER_PORT=18083
export PARLEY_GATEWAY_PORT=18080
export PARLEY_GATEWAYS=2
export PARLEY_REDIS_PORT=16379
export PARLEY_MONGO_PORT=37017
export PARLEY_KAFKA_PORT=19092
export PARLEY_KAFKA_CONTROLLER_PORT=19093
export PARLEY_KAFKA_PARTITIONS=3
export PARLEY_MONGO_DB=parley_test
export PARLEY_LOGIN_LIMIT_USER=10
# Every client of the edge is 127.0.0.1 here; the per-address limit has a test of its own.
export PARLEY_LOGIN_LIMIT_ADDR=100000
export PARLEY_REGISTER_LIMIT_ADDR=5000
# Short heartbeats so the dead-peer test runs in seconds (clients answer pings by themselves).
export PARLEY_GATEWAY_PING_MS=1500
export PARLEY_GATEWAY_DEAD_MS=1500
# Tests send as fast as they can from one user; the per-user limit has a test with a gateway
# of its own (test_limits.py).
export PARLEY_GATEWAY_USER_RATE=1000000
export PARLEY_GATEWAY_USER_BURST=1000000
# Group slow mode (per-group send rate) has a test with a store of its own (test_groups.py).
export PARLEY_GROUP_RATE=100000
# Edit and recall windows short enough for test_edits.py to wait one out.
export PARLEY_EDIT_WINDOW_S=6
export PARLEY_RECALL_WINDOW_S=6
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

cleanup() {
  local rc=$?
  "$root/deploy/cluster.sh" down >/dev/null 2>&1 || true
  # Any sanitizer report in a service log fails the run, even when every test passed.
  if grep -l -E "ERROR: (Address|Leak)Sanitizer|runtime error:" "$PARLEY_VAR"/log/*.log 2>/dev/null; then
    echo "[parley] sanitizer reports found in the logs above" >&2
    rc=1
  fi
  # Log hygiene over the whole suite: no access token (every JWT starts with eyJ), no test
  # password and no refresh token in any line any service or the edge wrote.
  if grep -n -E 'eyJ[A-Za-z0-9_-]{8,}\.|correct horse battery|[0-9a-f]{32}\.[A-Za-z0-9_-]{43}' \
       "$PARLEY_VAR"/log/*.log 2>/dev/null | head -5 | grep .; then
    echo "[parley] log hygiene: a token or password appears in the logs above" >&2
    rc=1
  fi
  if [ $rc -eq 0 ]; then rm -rf "$PARLEY_VAR"; else echo "[parley] logs kept in $PARLEY_VAR/log" >&2; fi
  exit $rc
}
trap cleanup EXIT

"$root/deploy/cluster.sh" up
cd "$root/tests/integration"
python3 -m pytest -q -rA -p no:cacheprovider --durations=12 "$@" | tee "$PARLEY_VAR/pytest.log"
exit "${PIPESTATUS[0]}"
