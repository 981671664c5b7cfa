#!/bin/sh
# As the official image's: each /etc/nginx/templates/*.template is written to
# NGINX_ENVSUBST_OUTPUT_DIR without the suffix, with the defined environment variables
# substituted (nginx's own $variables stay as they are).
set -e
out=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}
defined=$(printf '${%s} ' $(env | cut -d= -f1))
for t in /etc/nginx/templates/*.template; do
  [ -f "$t" ] || continue
  envsubst "$defined" < "$t" > "$out/$(basename "$t" .template)"
done
