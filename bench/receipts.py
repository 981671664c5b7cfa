#!/usr/bin/env python3
"""make bench-receipts (also run by make bench): what read receipts cost.

A cluster of its own (plain build, one gateway, ports 44xxx, var/bench/receipts-cluster). 1:1
chat on the open-loop schedule of parley-bench at PARLEY_BENCH_RECEIPT_RATE messages/s (1000)
between PARLEY_BENCH_CONNS users (1000, in pairs), steps of 10 s, alternating: without
receipts, then with every recipient answering each message with a `read` frame (parley-bench
--receipts), PARLEY_BENCH_RECEIPT_ROUNDS times (3), after an unrecorded warm-up step of each
(the first reads create the members documents and the readers' policy tokens). Measured per
step:
  - send -> deliver p50 / p99 (the same as make bench's chat steps);
  - cursor records the store consumed, and its cursor writes to MongoDB (the `members`
    documents), per second, against the member-conversations that read in the step (every user
    reads its one conversation: PARLEY_BENCH_CONNS);
  - receipts pushed, and CPU seconds of every process.
Prints a summary and writes var/bench/<time>/receipts.json. Stops by itself.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import benchlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "var", "bench", time.strftime("%Y%m%d-%H%M%S"))
VAR = os.path.join(ROOT, "var", "bench", "receipts-cluster")
BIN = os.path.join(ROOT, "build", "bin")
RATE = int(os.environ.get("PARLEY_BENCH_RECEIPT_RATE", "1000"))
CONNS = int(os.environ.get("PARLEY_BENCH_CONNS", "1000"))
ROUNDS = int(os.environ.get("PARLEY_BENCH_RECEIPT_ROUNDS", "3"))
STEP_S = float(os.environ.get("PARLEY_BENCH_STEP_SECONDS", "10"))
PORTS = dict(PARLEY_EDGE_PORT=44000, PARLEY_EDGE_TLS_PORT=44443, PARLEY_AUTH_PORT=44081,
             PARLEY_STORE_PORT=44082, PARLEY_ROUTER_PORT=44083, PARLEY_GATEWAY_PORT=44080,
             PARLEY_REDIS_PORT=46379, PARLEY_MONGO_PORT=47117, PARLEY_KAFKA_PORT=49092,
             PARLEY_KAFKA_CONTROLLER_PORT=49093)
ENV = dict(os.environ, PARLEY_VAR=VAR, PARLEY_BIN=BIN, PARLEY_GATEWAYS="1",
           PARLEY_MONGO_DB="parley_receipts", PARLEY_KAFKA_PARTITIONS="6",
           PARLEY_LOG_LEVEL="warn", PARLEY_GATEWAY_USER_RATE="1000000",
           PARLEY_GATEWAY_USER_BURST="1000000", PARLEY_GATEWAY_INFLIGHT_MAX="100000",
           PARLEY_EDGE_CONN_PER_ADDR="60000",
           # the steady state: no start-up window of lookups by _id (docs/guarantees.md)
           PARLEY_STORE_COLD_CHECK_S="0",
           **{k: str(v) for k, v in PORTS.items()})
COUNTERS = ("parley_store_cursors_total", "parley_store_cursor_writes_total",
            "parley_store_receipts_total", "parley_store_messages_total")


def say(msg):
    print(f"[bench-receipts] {msg}", file=sys.stderr, flush=True)


def counters():
    with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['PARLEY_STORE_PORT']}/metrics",
                                timeout=10) as r:
        text = r.read().decode()
    out = {k: 0.0 for k in COUNTERS}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def pids():
    names = ("gateway0", "auth", "store", "router", "kafka", "redis", "ferretdb")
    return {n: benchlib.pid_of(VAR, n) for n in names}


def create_users(n):
    import datetime
    import pymongo
    db = pymongo.MongoClient(f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}")["parley_receipts"]
    now = datetime.datetime.now(datetime.timezone.utc)
    db.users.insert_many([{"_id": f"bench{j:07d}", "password_hash": "!", "display_name": f"b{j}",
                           "locale": "en", "time_zone": "UTC", "created_at": now}
                          for j in range(n)], ordered=False)


def step(receipts):
    cmd = [os.path.join(BIN, "parley-bench"), "--mode=chat", "--host=127.0.0.1",
           f"--port={PORTS['PARLEY_GATEWAY_PORT']}", f"--conns={CONNS}", "--procs=2",
           f"--rate={RATE}", f"--seconds={STEP_S}", "--drain=3", "--prefix=bench",
           f"--key={os.path.join(VAR, 'keys', 'jwt-private.pem')}"] + (["--receipts"] if receipts else [])
    ps = pids()
    cpu0 = {n: benchlib.proc_cpu(p) for n, p in ps.items() if p}
    c0, t0 = counters(), time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=STEP_S + 180)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    time.sleep(2.5)  # the store's last cursor flush of the step
    c1, t1 = counters(), time.time()
    cpu1 = {n: benchlib.proc_cpu(p) for n, p in ps.items() if p}
    d = {k: c1[k] - c0[k] for k in COUNTERS}
    secs = t1 - t0
    return {
        "receipts": receipts, "rate": RATE, "sent": out["sent"], "delivered": out["delivered"],
        "deliver_ms": out["deliver_ms"], "reads_sent": out.get("reads", 0),
        "read_acks": out.get("read_acks", 0), "receipts_pushed_seen": out.get("receipts", 0),
        "window_s": round(secs, 1),
        "cursors": int(d["parley_store_cursors_total"]),
        "cursor_writes": int(d["parley_store_cursor_writes_total"]),
        "cursor_writes_per_s": round(d["parley_store_cursor_writes_total"] / secs, 1),
        "active_member_conversations": CONNS if receipts else 0,
        "writes_per_member_conversation_per_s": round(
            d["parley_store_cursor_writes_total"] / secs / CONNS, 3) if receipts else 0,
        "receipts_produced": int(d["parley_store_receipts_total"]),
        "cpu_s": {n: round(cpu1[n] - cpu0.get(n, 0), 2) for n in cpu1},
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    # a run cut short leaves its processes behind: stop them before their pid files go
    for cmd in (("cluster.sh", "down"), ("infra.sh", "stop")):
        subprocess.run([os.path.join(ROOT, "deploy", cmd[0]), cmd[1]], env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(VAR, ignore_errors=True)
    subprocess.run(["make", "-C", ROOT, "build"], check=True, stdout=subprocess.DEVNULL)
    say("starting a cluster with one gateway")
    subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "up"], env=ENV, check=True)
    steps = []
    try:
        create_users(CONNS)
        say(f"warm-up steps at {RATE}/s, without and with receipts (the first reads create the "
            "members documents and the readers' policy tokens; not counted)")
        step(False)
        step(True)
        for i in range(ROUNDS):
            for receipts in (False, True):
                s = step(receipts)
                steps.append(s)
                say(f"{'with' if receipts else 'without'} receipts @ {RATE}/s: delivered "
                    f"{s['delivered']}/{s['sent']} p50 {s['deliver_ms']['p50']:.2f} p99 "
                    f"{s['deliver_ms']['p99']:.2f} ms; cursors {s['cursors']}, writes "
                    f"{s['cursor_writes_per_s']}/s, receipts {s['receipts_produced']}")
                time.sleep(3)
    finally:
        for cmd in (("cluster.sh", "down"), ("infra.sh", "stop")):
            subprocess.run([os.path.join(ROOT, "deploy", cmd[0]), cmd[1]], env=ENV,
                           stdout=subprocess.DEVNULL)
    plain = [s["deliver_ms"]["p99"] for s in steps if not s["receipts"]]
    withr = [s["deliver_ms"]["p99"] for s in steps if s["receipts"]]
    res = {"rate": RATE, "conns": CONNS, "steps": steps,
           "p99_without_ms": plain, "p99_with_ms": withr,
           "p99_ratio_of_means": round((sum(withr) / len(withr)) / (sum(plain) / len(plain)), 3)
           if plain and withr else None}
    with open(os.path.join(OUT, "receipts.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps({k: v for k, v in res.items() if k != "steps"}, indent=2))
    say(f"results in {OUT}")


if __name__ == "__main__":
    main()
