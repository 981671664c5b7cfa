#!/usr/bin/env bash
# Creates a development ES256 key pair for access tokens when none exists:
#   deploy/keys.sh DIR   -> DIR/jwt-private.pem (mode 0600) and DIR/jwt-public.pem, and a
#                           self-signed certificate for the local edge's TLS port
#                           (DIR/edge-cert.pem, DIR/edge-key.pem: localhost and 127.0.0.1)
# Production keys are provided by the operator (a Kubernetes Secret, a compose volume).
set -euo pipefail
dir=${1:?usage: keys.sh DIR}
mkdir -p "$dir"
if [ ! -f "$dir/jwt-private.pem" ] || [ ! -f "$dir/jwt-public.pem" ]; then
  umask 077
  openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null |
    openssl pkcs8 -topk8 -nocrypt -out "$dir/jwt-private.pem"
  openssl ec -in "$dir/jwt-private.pem" -pubout -out "$dir/jwt-public.pem" 2>/dev/null
  chmod 600 "$dir/jwt-private.pem"
  chmod 644 "$dir/jwt-public.pem"
  echo "[parley] generated a development JWT key pair in $dir" >&2
fi
if [ ! -f "$dir/edge-cert.pem" ] || [ ! -f "$dir/edge-key.pem" ]; then
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$dir/edge-key.pem" -out "$dir/edge-cert.pem" 2>/dev/null
  chmod 644 "$dir/edge-cert.pem"
  echo "[parley] generated a development TLS certificate for the edge in $dir" >&2
fi
