# Shared shell helpers for the deploy scripts: locations, logging, readiness waits and
# process control by pid file. Sourced, never run.
PARLEY_ROOT=${PARLEY_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# Tools (Kafka jars, FerretDB) are shared by every cluster; data lives per cluster.
PARLEY_TOOLS=${PARLEY_TOOLS:-$PARLEY_ROOT/var/tools}
PARLEY_VAR=${PARLEY_VAR:-$PARLEY_ROOT/var/local}

say() { printf '[parley] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# wait_port HOST PORT SECONDS NAME: waits until a TCP connect succeeds.
wait_port() {
  local host=$1 port=$2 secs=$3 name=$4 i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$name did not open $host:$port within ${secs}s (logs: $PARLEY_VAR/log)"
}

# wait_http URL SECONDS NAME: waits until the URL answers 200.
wait_http() {
  local url=$1 secs=$2 name=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$name is not ready at $url within ${secs}s (logs: $PARLEY_VAR/log)"
}

# port_free PORT NAME: stops with a clear message when something already listens on PORT
# (another cluster, a system service), instead of mistaking it for the process we start.
port_free() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    die "port $1 for $2 is already in use (another Parley cluster? see 'make status', or set the PARLEY_*_PORT variables)"
  fi
}

pidfile() { echo "$PARLEY_VAR/run/$1.pid"; }

# running NAME: true when NAME's recorded process is alive.
running() {
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

# spawn NAME CMD...: starts CMD in the background with its log under var, records the pid.
spawn() {
  local name=$1; shift
  mkdir -p "$PARLEY_VAR/run" "$PARLEY_VAR/log"
  setsid "$@" >>"$PARLEY_VAR/log/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$name")"
}

# stop NAME [SECONDS]: SIGTERM, then SIGKILL after SECONDS (default 15).
stop() {
  local name=$1 secs=${2:-15} f pid i
  f=$(pidfile "$name")
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
