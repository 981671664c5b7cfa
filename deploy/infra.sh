#!/usr/bin/env bash
# Starts, stops or reports the real infrastructure of one local cluster: Redis (append-only),
# Apache Kafka in KRaft mode (single node, topics created) and FerretDB on SQLite as the
# MongoDB-wire-compatible server. Everything lives under $PARLEY_VAR; ports come from the
# PARLEY_* variables below, so a test cluster can run beside the `make run` one.
#   deploy/infra.sh start|stop|status [redis|ferretdb|kafka]...   (default: all three)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

REDIS_PORT=${PARLEY_REDIS_PORT:-6379}
KAFKA_PORT=${PARLEY_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${PARLEY_KAFKA_CONTROLLER_PORT:-9093}
MONGO_PORT=${PARLEY_MONGO_PORT:-27017}
# SQLite's synchronous setting under FerretDB (WAL mode). "normal": a committed write is in the
# WAL when FerretDB answers, so it survives a crash of FerretDB or of anything else; only a
# power loss can take the last moments, as it can from Kafka (no fsync per record) and from
# Redis (appendfsync everysec) here. "full" fsyncs each commit. See README.
FERRETDB_SYNC=${PARLEY_FERRETDB_SYNCHRONOUS:-normal}
case "$FERRETDB_SYNC" in
  normal | full | extra) ;;
  *) echo "PARLEY_FERRETDB_SYNCHRONOUS must be normal, full or extra" >&2; exit 2 ;;
esac
# FerretDB's storage: SQLite files under $PARLEY_VAR (sqlite), or a PostgreSQL cluster of this
# cluster's own under $PARLEY_VAR/postgres, run from Debian's postgresql package (postgresql).
DB_BACKEND=${PARLEY_DB_BACKEND:-sqlite}
case "$DB_BACKEND" in
  sqlite | postgresql) ;;
  *) echo "PARLEY_DB_BACKEND must be sqlite or postgresql" >&2; exit 2 ;;
esac
PG_PORT=${PARLEY_PG_PORT:-$((MONGO_PORT + 100))}
# SQLite reads its file through a memory map of up to this many MiB (0: read() calls): a
# conversation's messages lie on as many pages as it has messages, and mapping them spares
# a system call and a copy per page (history at 1,000,000 messages, docs/performance.md).
FERRETDB_MMAP_MB=${PARLEY_FERRETDB_MMAP_MB:-1024}
case "$FERRETDB_MMAP_MB" in
  '' | *[!0-9]*) echo "PARLEY_FERRETDB_MMAP_MB must be a number of MiB" >&2; exit 2 ;;
esac
# FerretDB's debug listener (/debug/metrics: its own request counters, read by the benches).
# 0: a free port the system picks.
FERRETDB_DEBUG_PORT=${PARLEY_FERRETDB_DEBUG_PORT:-0}
PARTITIONS=${PARLEY_KAFKA_PARTITIONS:-6}
KAFKA_HEAP=${PARLEY_KAFKA_HEAP:-512m}
TOPICS=(parley.messages parley.committed parley.cursors)

kafka_java() {
  java -Xms128m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -cp "$PARLEY_TOOLS/kafka/libs/*" "$@"
}

start_redis() {
  running redis && return 0
  port_free "$REDIS_PORT" Redis
  mkdir -p "$PARLEY_VAR/redis"
  spawn redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$PARLEY_VAR/redis" \
    --appendonly yes --appendfsync everysec --save "" --daemonize no --protected-mode yes
  wait_port 127.0.0.1 "$REDIS_PORT" 20 Redis
}

# PostgreSQL refuses to run as root: as root, it runs as the package's postgres user, which
# then needs to reach its folder ($PARLEY_VAR is made 0700 by mktemp: traversable is enough).
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
PG_AS=()
[ "$(id -u)" = 0 ] && PG_AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)

start_postgres() {
  running postgres && return 0
  port_free "$PG_PORT" PostgreSQL
  local bin dir=$PARLEY_VAR/postgres
  bin=$(pg_bin)
  [ -n "$bin" ] || die "PARLEY_DB_BACKEND=postgresql needs Debian's postgresql package"
  mkdir -p "$dir/run"
  if [ "$(id -u)" = 0 ]; then
    chmod o+x "$PARLEY_VAR"
    chown postgres: "$dir" "$dir/run"
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${PG_AS[@]}" "$bin/initdb" -D "$dir/data" -U parley --auth=trust -E UTF8 --no-locale \
      >>"$PARLEY_VAR/log/postgres-init.log" 2>&1 || die "initdb failed: $PARLEY_VAR/log/postgres-init.log"
  fi
  # PostgreSQL's defaults: a commit is answered once its WAL is fsynced. (Its
  # synchronous_commit=off would not match SQLite's "normal": a commit still in the WAL buffers
  # is lost with the server process, not only with the power.)
  local sync=${PARLEY_PG_SYNCHRONOUS_COMMIT:-on}
  spawn postgres "${PG_AS[@]}" "$bin/postgres" \
    -D "$dir/data" -p "$PG_PORT" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$dir/run" \
    -c synchronous_commit="$sync" -c shared_buffers=256MB -c max_connections=200
  wait_port 127.0.0.1 "$PG_PORT" 30 PostgreSQL
  "${PG_AS[@]}" "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U parley -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'" | grep -q 1 ||
    "${PG_AS[@]}" "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U parley ferretdb
}

start_ferretdb() {
  running ferretdb && return 0
  port_free "$MONGO_PORT" FerretDB
  mkdir -p "$PARLEY_VAR/ferretdb/data" "$PARLEY_VAR/ferretdb/state"
  local storage=(--handler=sqlite
    --sqlite-url="file:$PARLEY_VAR/ferretdb/data/?_pragma=synchronous($FERRETDB_SYNC)&_pragma=mmap_size($((FERRETDB_MMAP_MB * 1048576)))")
  if [ "$DB_BACKEND" = postgresql ]; then
    start_postgres
    storage=(--handler=postgresql --postgresql-url="postgres://parley@127.0.0.1:$PG_PORT/ferretdb")
  fi
  # Our build's SQLite pushdown (deploy/deps.sh): fields that hold a string (or, with :number
  # and :date, a number or a date) wherever present in their collection, never an array, so
  # that SQLite can search an index for an equality on one and, for a find with a limit,
  # filter, sort and limit exactly.
  export FERRETDB_SQLITE_PUSHDOWN_FIELDS=${PARLEY_FERRETDB_PUSHDOWN_FIELDS-messages.conv,messages.sender,messages.receiver,messages.kind,messages.seq:number,messages.timestamp:date,members.conv,members.user}
  spawn ferretdb "$PARLEY_TOOLS/bin/ferretdb" "${storage[@]}" --state-dir="$PARLEY_VAR/ferretdb/state" \
    --listen-addr="127.0.0.1:$MONGO_PORT" --debug-addr="127.0.0.1:$FERRETDB_DEBUG_PORT" \
    --telemetry=disable --log-level=warn
  wait_port 127.0.0.1 "$MONGO_PORT" 30 FerretDB
}

kafka_config() {
  local cfg=$PARLEY_VAR/kafka/server.properties
  mkdir -p "$PARLEY_VAR/kafka/data"
  cat > "$cfg" <<CFG
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$PARLEY_VAR/kafka/data
num.partitions=$PARTITIONS
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.ms=1000
CFG
  echo "$cfg"
}

start_kafka() {
  running kafka && return 0
  port_free "$KAFKA_PORT" Kafka
  port_free "$KAFKA_CONTROLLER_PORT" "the Kafka controller"
  local cfg; cfg=$(kafka_config)
  if [ ! -f "$PARLEY_VAR/kafka/data/meta.properties" ]; then
    say "formatting Kafka storage (KRaft)"
    local id; id=$(kafka_java kafka.tools.StorageTool random-uuid)
    kafka_java kafka.tools.StorageTool format -t "$id" -c "$cfg" >>"$PARLEY_VAR/log/kafka-format.log" 2>&1 \
      || die "Kafka storage format failed (see $PARLEY_VAR/log/kafka-format.log)"
  fi
  spawn kafka java -Xms128m -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -cp "$PARLEY_TOOLS/kafka/libs/*" kafka.Kafka "$cfg"
  wait_port 127.0.0.1 "$KAFKA_PORT" 90 Kafka
  create_topics
}

create_topics() {
  local t
  for t in "${TOPICS[@]}"; do
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --if-not-exists --topic "$t" --partitions "$PARTITIONS" --replication-factor 1 \
      >>"$PARLEY_VAR/log/kafka-topics.log" 2>&1 || die "cannot create topic $t"
  done
}

ALL=(redis ferretdb kafka)
cmd=${1:-}
[ $# -gt 0 ] && shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")

case "$cmd" in
  start)
    mkdir -p "$PARLEY_VAR/log"
    for n in "${names[@]}"; do
      case "$n" in
        redis) start_redis ;; ferretdb) start_ferretdb ;; kafka) start_kafka ;;
        *) die "unknown component $n" ;;
      esac
    done
    say "infrastructure ready: ${names[*]} (redis :$REDIS_PORT, kafka :$KAFKA_PORT, mongodb/FerretDB :$MONGO_PORT)"
    ;;
  stop)
    # Kafka first: it takes longest to drain, and nothing else depends on it here.
    for n in kafka ferretdb redis; do
      case " ${names[*]} " in *" $n "*) stop "$n" 30 ;; esac
    done
    # PostgreSQL goes with FerretDB, after it (a smart shutdown waits for its clients).
    case " ${names[*]} " in *" ferretdb "*) stop postgres 30 ;; esac
    ;;
  status)
    for n in "${names[@]}"; do
      if running "$n"; then echo "$n: running"; else echo "$n: stopped"; fi
    done
    ;;
  *) echo "usage: $0 start|stop|status [redis|ferretdb|kafka]..." >&2; exit 2 ;;
esac
