#!/usr/bin/env bash
# Builds the web client into web/dist, the folder the edge serves at /: our own files from
# web/src as they are (plain ES modules, no bundler), and the one third-party module, htm's
# "standalone" build of Preact with hooks and htm (htm/preact/standalone.module.js: one file
# with no bare imports, so the browser loads it without an import map, which a strict CSP
# would have to allow inline), installed from npm at the version pinned in package-lock.json.
# Nothing is fetched at run time. Safe to run again; a later run only copies.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/dist}
vendor=$here/node_modules/htm/preact/standalone.module.js
if [ ! -f "$vendor" ] || ! grep -q '"version": "3.1.1"' "$here/node_modules/htm/package.json"; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
rm -rf "$out.tmp"
mkdir -p "$out.tmp/vendor"
cp "$here"/src/* "$out.tmp/"
cp "$vendor" "$out.tmp/vendor/preact-htm.js"
rm -rf "$out"
mv "$out.tmp" "$out"
