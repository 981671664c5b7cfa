#!/usr/bin/env bash
# make compose-test: runs the committed Dockerfile and docker-compose.yml for real, with
# Podman (Debian's) behind its Docker-compatible API socket and Docker Compose (v5, built from
# the Go module proxy: Debian's docker-compose 1.29 refuses the file's top-level `name`).
#
#   1. installs what is missing: podman, runc, debootstrap, iptables (Debian), Compose (Go), the Kafka
#      jars and FerretDB (deploy/deps.sh);
#   2. base images that cannot be pulled here are bootstrapped locally under the names the
#      Dockerfile uses (debian:bookworm, debian:bookworm-slim: `debootstrap --variant=minbase`);
#   3. builds the project image from the committed Dockerfile, and local stand-ins under the
#      names docker-compose.yml uses: redis:7.4-bookworm and nginx:1.27 from Debian packages,
#      apache/kafka:4.1.1 from the Maven jars, and FerretDB in place of mongo:7.0 through the
#      test-only override docker-compose.test.yml;
#   4. brings the committed file up and waits for every health check, then runs
#      tests/integration/test_compose.py (register, log in and chat through the edge on 8000
#      and 8443; scale the gateways to 3; kill one; its clients go on, nothing lost);
#   5. tears everything down, volumes too, whatever happened.
#
# Podman specifics live here and in deploy/compose-test/containers.conf (runc, cgroupfs), the
# ulimits this sandbox needs in the test-only override, never in the committed compose file. Ports: the edge's 8000 and 8443 (PARLEY_EDGE_PORT, PARLEY_EDGE_TLS_PORT
# move them), and 127.0.0.1:37018 for the test's view of the database (override file only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
. "$root/deploy/lib.sh"
cd "$root"

COMPOSE_VERSION=v5.6.0
work=$root/var/compose-test
mkdir -p "$work" "$PARLEY_TOOLS/bin"
export CONTAINERS_CONF=$here/containers.conf
export PARLEY_EDGE_PORT=${PARLEY_EDGE_PORT:-8000}
export PARLEY_EDGE_TLS_PORT=${PARLEY_EDGE_TLS_PORT:-8443}
# Every test client comes from one address: the edge's per-address limits are raised for the
# test through their variables, as tests/integration/run.sh does for the local edge.
export PARLEY_EDGE_REST_RATE=${PARLEY_EDGE_REST_RATE:-100000}
export PARLEY_EDGE_REST_BURST=${PARLEY_EDGE_REST_BURST:-100000}
export PARLEY_EDGE_CONN_PER_ADDR=${PARLEY_EDGE_CONN_PER_ADDR:-60000}
project=parleytest
t0=$(date +%s)
step() { say "compose-test [$(($(date +%s) - t0)) s] $*"; }

# ---- 1. tools ----
need=()
# netavark sets up the bridge network's firewall rules with iptables, which a minimal Debian
# does not have ("netavark: No such file or directory" at the first RUN of a build).
for p in podman runc debootstrap netavark aardvark-dns iptables; do
  command -v "$p" >/dev/null 2>&1 || [ -x "/usr/lib/podman/$p" ] || [ -x "/usr/sbin/$p" ] ||
    need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]} (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap netavark \
    aardvark-dns iptables >/dev/null
fi
"$root/deploy/deps.sh"
"$root/web/build.sh"  # web/dist, which docker-compose.yml mounts into the edge
compose=$PARLEY_TOOLS/bin/docker-compose
if ! "$compose" version 2>/dev/null | grep -q "${COMPOSE_VERSION#v}"; then
  step "building Docker Compose $COMPOSE_VERSION from the Go module proxy (first time only)"
  mkdir -p "$work/compose-build"
  (
    cd "$work/compose-build"
    [ -f go.mod ] || go mod init parley.local/compose-build >/dev/null 2>&1
    GOFLAGS=-mod=mod go get "github.com/docker/compose/v5@$COMPOSE_VERSION" >/dev/null 2>&1
    GOFLAGS=-mod=mod go build -trimpath -o "$compose" \
      -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
      github.com/docker/compose/v5/cmd
  )
fi

# ---- the Docker-compatible API ----
sock=$work/podman.sock
export DOCKER_HOST=unix://$sock
service_pid=
ticker_pid=
dc() {
  "$compose" -p "$project" -f "$root/docker-compose.yml" -f "$here/docker-compose.test.yml" "$@"
}
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ -S "$sock" ]; then
    step "failed; the services' last lines, and the gateways' counters:"
    dc logs --no-color --tail 30 2>&1 | tail -150 >&2 || true
    for c in $(podman ps -q --filter "label=com.docker.compose.service=gateway" 2>/dev/null); do
      podman exec "$c" curl -fsS http://127.0.0.1:8080/metrics 2>/dev/null |
        grep -E '^parley_gateway_(errors|acks|frames_in|pushes|authenticated)' | sed "s/^/$c /" >&2
    done
  fi
  [ -S "$sock" ] && { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
  [ -n "$ticker_pid" ] && kill "$ticker_pid" 2>/dev/null
  if [ -n "$service_pid" ]; then
    kill "$service_pid" 2>/dev/null
    wait "$service_pid" 2>/dev/null
  fi
  rm -f "$sock"
  step "down (volumes removed); exit $rc"
  exit $rc
}
trap cleanup EXIT
rm -f "$sock"
podman system service --time=0 "unix://$sock" >"$work/podman-service.log" 2>&1 &
service_pid=$!
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || die "podman's API socket did not come up (see $work/podman-service.log)"
# Podman runs health checks from systemd timers, and there is no systemd in this sandbox: the
# checks would stay "starting" for ever, and so would `depends_on: service_healthy` and
# `up --wait`. The driver runs them itself, every 2 s, for every container of the project.
health_ticker() {
  while kill -0 $$ 2>/dev/null && sleep 2; do # ends with the script, whatever happens
    for c in $(podman ps -q --filter "label=com.docker.compose.project=$project" 2>/dev/null); do
      podman healthcheck run "$c" >/dev/null 2>&1 || true
    done
  done
}
health_ticker &
ticker_pid=$!

# ---- 2. base images ----
if ! podman image exists docker.io/library/debian:bookworm; then
  step "bootstrapping debian:bookworm (debootstrap --variant=minbase)"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian \
    >"$work/debootstrap.log" 2>&1 || die "debootstrap failed (see $work/debootstrap.log)"
  tar -C "$work/rootfs" -c . | podman import - docker.io/library/debian:bookworm >/dev/null
  rm -rf "$work/rootfs"
fi
# Minbase is what the slim image is, near enough: the same Debian with fewer documents.
podman tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim

# ---- 3. images ----
# Docker's image format: Podman's default (OCI) has no HEALTHCHECK, and the compose file's
# `condition: service_healthy` relies on the one the Dockerfile declares.
build() { # NAME CONTEXT [FILE]
  podman build --format docker -q -t "$1" -f "${3:-$2/Containerfile}" "$2" >"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log" >&2; die "building $1 failed"; }
}
step "building the stand-ins: redis:7.4-bookworm, nginx:1.27, apache/kafka:4.1.1, FerretDB"
build docker.io/library/redis:7.4-bookworm "$here/redis"
build docker.io/library/nginx:1.27 "$here/nginx"
ctx=$work/kafka-context
rm -rf "$ctx" && mkdir -p "$ctx"
cp -r "$here/kafka/bin" "$here/kafka/Containerfile" "$root/deploy/kafka/log4j2.properties" "$ctx/"
cp -al "$PARLEY_TOOLS/kafka/libs" "$ctx/libs" 2>/dev/null || cp -r "$PARLEY_TOOLS/kafka/libs" "$ctx/libs"
build docker.io/apache/kafka:4.1.1 "$ctx"
ctx=$work/ferretdb-context
rm -rf "$ctx" && mkdir -p "$ctx"
cp "$here/ferretdb/Containerfile" "$PARLEY_TOOLS/bin/ferretdb" "$ctx/"
build localhost/parley-test/ferretdb:local "$ctx"
step "building parley:local from the committed Dockerfile"
build localhost/parley:local "$root" "$root/Dockerfile"
size=$(podman image inspect localhost/parley:local --format '{{.Size}}')
step "parley:local is $((size / 1000000)) MB"

# ---- 4. up, and the test ----
step "docker compose up (waiting for every health check)"
dc down -v --remove-orphans >/dev/null 2>&1 || true
dc up -d --no-build --wait --wait-timeout 300
step "up; running tests/integration/test_compose.py"
(
  cd "$root/tests/integration"
  PARLEY_VAR=$work PARLEY_MONGO_PORT=37018 PARLEY_MONGO_DB=parley \
    PARLEY_COMPOSE="$compose -p $project -f $root/docker-compose.yml -f $here/docker-compose.test.yml" \
    python3 -m pytest -q -rA -p no:cacheprovider test_compose.py
)
step "passed"
