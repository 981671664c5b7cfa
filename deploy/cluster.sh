#!/usr/bin/env bash
# Starts the whole local Parley cluster as processes: the real infrastructure (infra.sh),
# the services from build/bin, and the nginx edge in front, with the same variables the
# containers use. `up` returns once every part is ready; `run` stays in the foreground and
# stops everything on Ctrl-C; `down` stops what `up` started.
#   deploy/cluster.sh up|down|run|status
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

BIN=${PARLEY_BIN:-$PARLEY_ROOT/build/bin}
EDGE_PORT=${PARLEY_EDGE_PORT:-8000}
export PARLEY_AUTH_PORT=${PARLEY_AUTH_PORT:-8081}
export PARLEY_REDIS_PORT=${PARLEY_REDIS_PORT:-6379}
export PARLEY_MONGO_PORT=${PARLEY_MONGO_PORT:-27017}
export PARLEY_MONGO_URI=${PARLEY_MONGO_URI:-mongodb://127.0.0.1:$PARLEY_MONGO_PORT}
export PARLEY_KEYS_DIR=${PARLEY_KEYS_DIR:-$PARLEY_VAR/keys}
export PARLEY_JWT_PRIVATE_KEY=${PARLEY_JWT_PRIVATE_KEY:-$PARLEY_KEYS_DIR/jwt-private.pem}
export PARLEY_JWT_PUBLIC_KEY=${PARLEY_JWT_PUBLIC_KEY:-$PARLEY_KEYS_DIR/jwt-public.pem}
# The services sit behind the edge, which sets X-Real-IP.
export PARLEY_TRUST_FORWARDED=${PARLEY_TRUST_FORWARDED:-1}

start_services() {
  [ -x "$BIN/parley-auth" ] || die "build/bin/parley-auth is missing: run 'make build'"
  "$here/keys.sh" "$PARLEY_KEYS_DIR"
  if ! running auth; then
    port_free "$PARLEY_AUTH_PORT" parley-auth
    spawn auth "$BIN/parley-auth"
  fi
  wait_http "http://127.0.0.1:$PARLEY_AUTH_PORT/readyz" 30 parley-auth
}

start_edge() {
  running nginx && return 0
  port_free "$EDGE_PORT" "the nginx edge"
  mkdir -p "$PARLEY_VAR/nginx"/{body,proxy,fastcgi,uwsgi,scgi}
  sed -e "s|@VAR@|$PARLEY_VAR|g" -e "s|@EDGE_PORT@|$EDGE_PORT|g" \
      -e "s|@AUTH_UPSTREAMS@|server 127.0.0.1:$PARLEY_AUTH_PORT;|g" \
      "$here/local/nginx.conf.in" > "$PARLEY_VAR/nginx/nginx.conf"
  spawn nginx nginx -p "$PARLEY_VAR/nginx" -c "$PARLEY_VAR/nginx/nginx.conf" -g 'daemon off;'
  wait_port 127.0.0.1 "$EDGE_PORT" 10 nginx
}

up() {
  "$here/infra.sh" start
  start_services
  start_edge
  say "Parley is up. Edge: http://127.0.0.1:$EDGE_PORT  (logs: $PARLEY_VAR/log)"
}

down() {
  stop nginx
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

Try it (the edge is http://127.0.0.1:$EDGE_PORT):
  curl -s -XPOST localhost:$EDGE_PORT/v1/auth/register -d '{"username":"alice","password":"correct horse"}'
  curl -s -XPOST localhost:$EDGE_PORT/v1/auth/login    -d '{"username":"alice","password":"correct horse"}'
  curl -s localhost:$EDGE_PORT/v1/users/me -H "Authorization: Bearer <access_token>"
Logs are under $PARLEY_VAR/log. Press Ctrl-C to stop everything.
MSG
    while true; do sleep 1 & wait $!; done
    ;;
  status)
    "$here/infra.sh" status
    for n in auth nginx; do
      if running "$n"; then echo "$n: running"; else echo "$n: stopped"; fi
    done
    ;;
  *) echo "usage: $0 up|down|run|status" >&2; exit 2 ;;
esac
