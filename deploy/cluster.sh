#!/usr/bin/env bash
# Starts the whole local Parley cluster as processes: the real infrastructure (infra.sh),
# the services from build/bin, and the nginx edge in front, with the same variables the
# containers use. `up` returns once every part is ready; `run` stays in the foreground and
# stops everything on Ctrl-C; `down` stops what `up` started.
#   deploy/cluster.sh up|down|run|status|scale N
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

BIN=${PARLEY_BIN:-$PARLEY_ROOT/build/bin}
EDGE_PORT=${PARLEY_EDGE_PORT:-8000}
EDGE_TLS_PORT=${PARLEY_EDGE_TLS_PORT:-8443}
export PARLEY_AUTH_PORT=${PARLEY_AUTH_PORT:-8081}
export PARLEY_STORE_PORT=${PARLEY_STORE_PORT:-8082}
export PARLEY_ROUTER_PORT=${PARLEY_ROUTER_PORT:-8083}
GATEWAY_PORT=${PARLEY_GATEWAY_PORT:-8080}
GATEWAYS=${PARLEY_GATEWAYS:-2}
export PARLEY_KAFKA_PORT=${PARLEY_KAFKA_PORT:-9092}
export PARLEY_KAFKA_BROKERS=${PARLEY_KAFKA_BROKERS:-127.0.0.1:$PARLEY_KAFKA_PORT}
export PARLEY_GATEWAY_ORIGINS=${PARLEY_GATEWAY_ORIGINS:-http://localhost:$EDGE_PORT,http://127.0.0.1:$EDGE_PORT,https://localhost:$EDGE_TLS_PORT,https://127.0.0.1:$EDGE_TLS_PORT}
export PARLEY_REDIS_PORT=${PARLEY_REDIS_PORT:-6379}
export PARLEY_MONGO_PORT=${PARLEY_MONGO_PORT:-27017}
export PARLEY_MONGO_URI=${PARLEY_MONGO_URI:-mongodb://127.0.0.1:$PARLEY_MONGO_PORT}
export PARLEY_KEYS_DIR=${PARLEY_KEYS_DIR:-$PARLEY_VAR/keys}
export PARLEY_JWT_PRIVATE_KEY=${PARLEY_JWT_PRIVATE_KEY:-$PARLEY_KEYS_DIR/jwt-private.pem}
export PARLEY_JWT_PUBLIC_KEY=${PARLEY_JWT_PUBLIC_KEY:-$PARLEY_KEYS_DIR/jwt-public.pem}
# The services sit behind the edge, which sets X-Real-IP.
export PARLEY_TRUST_FORWARDED=${PARLEY_TRUST_FORWARDED:-1}

# gateway_port I: the first gateway listens on PARLEY_GATEWAY_PORT (8080); the others on the
# ports after the router's (8084, 8085, …), keeping 8081-8083 for auth, store and router.
gateway_port() {
  if [ "$1" -eq 0 ]; then echo "$GATEWAY_PORT"; else echo $((PARLEY_ROUTER_PORT + $1)); fi
}

# start_service NAME PORT BINARY [VAR=VALUE…]: starts one service unless it runs already.
start_service() {
  local name=$1 port=$2 bin=$3; shift 3
  [ -x "$BIN/$bin" ] || die "build/bin/$bin is missing: run 'make build'"
  if ! running "$name"; then
    port_free "$port" "$name"
    spawn "$name" env "$@" "$BIN/$bin"
  fi
}

start_services() {
  "$here/keys.sh" "$PARLEY_KEYS_DIR"
  start_service auth "$PARLEY_AUTH_PORT" parley-auth
  start_service store "$PARLEY_STORE_PORT" parley-store
  start_service router "$PARLEY_ROUTER_PORT" parley-router
  local i port
  for ((i = 0; i < GATEWAYS; i++)); do
    port=$(gateway_port "$i")
    start_service "gateway$i" "$port" parley-gateway PARLEY_GATEWAY_PORT="$port" PARLEY_GATEWAY_ID="gw$i"
  done
  wait_http "http://127.0.0.1:$PARLEY_AUTH_PORT/readyz" 30 parley-auth
  wait_http "http://127.0.0.1:$PARLEY_STORE_PORT/readyz" 30 parley-store
  wait_http "http://127.0.0.1:$PARLEY_ROUTER_PORT/readyz" 30 parley-router
  for ((i = 0; i < GATEWAYS; i++)); do
    wait_http "http://127.0.0.1:$(gateway_port "$i")/readyz" 30 "parley-gateway $i"
  done
}

edge_config() {
  mkdir -p "$PARLEY_VAR/nginx"/{body,proxy,fastcgi,uwsgi,scgi}
  local gws="" i
  for ((i = 0; i < GATEWAYS; i++)); do gws+="server 127.0.0.1:$(gateway_port "$i"); "; done
  "$here/keys.sh" "$PARLEY_KEYS_DIR"
  sed -e "s|@VAR@|$PARLEY_VAR|g" -e "s|@EDGE_PORT@|$EDGE_PORT|g" \
      -e "s|@EDGE_TLS_PORT@|$EDGE_TLS_PORT|g" -e "s|@KEYS@|$PARLEY_KEYS_DIR|g" \
      -e "s|@DOCS@|$(cd "$here/../docs" && pwd)|g" \
      -e "s|@WEB@|${PARLEY_WEB_DIR:-$(cd "$here/.." && pwd)/web/dist}|g" \
      -e "s|@CONN_PER_ADDR@|${PARLEY_EDGE_CONN_PER_ADDR:-1000}|g" \
      -e "s|@REST_RATE@|${PARLEY_EDGE_REST_RATE:-50}|g" \
      -e "s|@REST_BURST@|${PARLEY_EDGE_REST_BURST:-100}|g" \
      -e "s|@HEADER_TIMEOUT@|${PARLEY_EDGE_HEADER_TIMEOUT:-10}|g" \
      -e "s|@AUTH_UPSTREAMS@|server 127.0.0.1:$PARLEY_AUTH_PORT;|g" \
      -e "s|@STORE_UPSTREAMS@|server 127.0.0.1:$PARLEY_STORE_PORT;|g" \
      -e "s|@GATEWAY_UPSTREAMS@|$gws|g" \
      "$here/local/nginx.conf.in" > "$PARLEY_VAR/nginx/nginx.conf"
}

start_edge() {
  running nginx && return 0
  port_free "$EDGE_PORT" "the nginx edge"
  port_free "$EDGE_TLS_PORT" "the nginx edge (TLS)"
  edge_config
  spawn nginx nginx -p "$PARLEY_VAR/nginx" -c "$PARLEY_VAR/nginx/nginx.conf" -g 'daemon off;'
  wait_port 127.0.0.1 "$EDGE_PORT" 10 nginx
}

# scale N: runs gateways 0..N-1 (starting the missing ones, draining the extra ones with
# SIGTERM) and reloads the edge's upstream list, as `docker compose up --scale gateway=N` or
# the Kubernetes autoscaler would. Open sockets on the remaining gateways are not touched.
scale() {
  local n=$1 f i
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "scale: N must be a positive number"
  GATEWAYS=$n
  start_services
  edge_config
  if running nginx; then
    nginx -p "$PARLEY_VAR/nginx" -c "$PARLEY_VAR/nginx/nginx.conf" -s reload 2>&1 \
      | { grep -v 'signal process started' || true; } >&2
  fi
  for f in "$PARLEY_VAR"/run/gateway*.pid; do
    [ -e "$f" ] || continue
    i=$(basename "$f" .pid); i=${i#gateway}
    if [ "$i" -ge "$n" ]; then stop "gateway$i" 20; fi
  done
  say "$n gateways behind the edge"
}

up() {
  "$here/infra.sh" start
  start_services
  start_edge
  say "Parley is up. Web client: http://127.0.0.1:$EDGE_PORT/  (also https://localhost:$EDGE_TLS_PORT/; API on the same addresses; logs: $PARLEY_VAR/log)"
}

down() {
  stop nginx
  local f
  # Gateways first: they drain their clients; then the consumers commit and leave.
  for f in "$PARLEY_VAR"/run/gateway*.pid; do
    [ -e "$f" ] && stop "$(basename "$f" .pid)" 20
  done
  stop router
  stop store
  stop auth
  "$here/infra.sh" stop
  say "Parley is down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  run)
    trap 'echo; down; exit 0' INT TERM
    up
    cat <<MSG

Try it (the edge is http://127.0.0.1:$EDGE_PORT, with $GATEWAYS gateways behind /ws):
  curl -s -XPOST localhost:$EDGE_PORT/v1/auth/register -d '{"username":"alice","password":"correct horse"}'
  curl -s -XPOST localhost:$EDGE_PORT/v1/auth/login    -d '{"username":"alice","password":"correct horse"}'
  curl -s localhost:$EDGE_PORT/v1/users/me -H "Authorization: Bearer <access_token>"
  WebSocket: ws://127.0.0.1:$EDGE_PORT/ws with "Authorization: Bearer <access_token>", then
  {"type":"send","client_id":"c1","to":"bob","content":"hi"}
Logs are under $PARLEY_VAR/log. Press Ctrl-C to stop everything.
MSG
    while true; do sleep 1 & wait $!; done
    ;;
  status)
    "$here/infra.sh" status
    for n in auth store router $(cd "$PARLEY_VAR/run" 2>/dev/null && ls gateway*.pid 2>/dev/null | sed 's/.pid$//') nginx; do
      if running "$n"; then echo "$n: running"; else echo "$n: stopped"; fi
    done
    ;;
  scale) scale "${2:-}" ;;
  # Writes the edge's nginx.conf under $PARLEY_VAR/nginx without starting anything (tests
  # start an edge of their own with other limits).
  edge-config) edge_config ;;
  *) echo "usage: $0 up|down|run|status|scale N|edge-config" >&2; exit 2 ;;
esac
