#!/usr/bin/env bash
# Validates the container and Kubernetes files offline (no Docker engine or cluster needed):
#   1. hadolint on the Dockerfile (.hadolint.yaml);
#   2. the runtime stage's packages against the libraries the built binaries link;
#   3. nginx's syntax check of the compose edge's configuration;
#   4. deploy/check (Go): docker-compose.yml against the Compose specification, and every
#      object of the kustomize base and overlays decoded strictly into the k8s.io/api types.
# Run by `make test` after the build.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/deploy/lib.sh"
cd "$root"

# hadolint comes from PyPI (deploy/deps.sh): in the interpreter's scripts folder, or the
# user's when pip installed there.
hadolint=$(command -v hadolint || true)
for d in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
         "$(python3 -m site --user-base)/bin"; do
  [ -n "$hadolint" ] || { [ -x "$d/hadolint" ] && hadolint="$d/hadolint"; } || true
done
[ -n "$hadolint" ] || die "hadolint is missing: run deploy/deps.sh"
"$hadolint" Dockerfile && echo "hadolint: Dockerfile clean"
deploy/docker/check-packages.sh "${PARLEY_BIN:-$root/build/bin}"

# The edge's config names Docker service hosts and uses `resolve` (nginx >= 1.27.3); for the
# syntax check here they become loopback addresses and plain servers, and the certificate
# the compose `keys` job generates is a throwaway one.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=check" -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
# The template's variables are filled in as the nginx image's entrypoint would.
sed -E 's/ resolve;/;/; s/(auth|store|gateway):(80[0-9]+)/127.0.0.1:\2/; s/listen 8000;/listen 127.0.0.1:8000;/' \
  deploy/docker/nginx.conf.template |
  sed "s|/etc/nginx/tls/|$tmp/|; s|listen 8443 ssl;|listen 127.0.0.1:8443 ssl;|; s|\${NGINX_LOCAL_RESOLVERS}|127.0.0.1|; s|\${PARLEY_EDGE_REST_RATE}|50|; s|\${PARLEY_EDGE_REST_BURST}|100|; s|\${PARLEY_EDGE_CONN_PER_ADDR}|1000|" \
  > "$tmp/nginx.conf"
nginx -q -t -c "$tmp/nginx.conf" -g "pid $tmp/nginx.pid; error_log $tmp/error.log;" \
  && echo "nginx: deploy/docker/nginx.conf.template syntax ok"

mkdir -p "$root/var/tools/bin"
(cd deploy/check && go build -o "$root/var/tools/bin/deploycheck" .)
"$root/var/tools/bin/deploycheck" "$root"
