#!/usr/bin/env bash
# Creates a development ES256 key pair for access tokens when none exists:
#   deploy/keys.sh DIR   -> DIR/jwt-private.pem (mode 0600) and DIR/jwt-public.pem
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
