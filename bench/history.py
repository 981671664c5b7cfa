#!/usr/bin/env python3
"""make bench-history: history reads as history grows (issue 19's "history at scale").

A cluster of its own (plain build, ports 63xxx, var/bench/history-cluster, FerretDB on the
backend PARLEY_DB_BACKEND names: sqlite or postgresql). Its messages collection is filled
directly, with documents of the store's own shape (st_mongo.c msg_doc), to
PARLEY_BENCH_HISTORY_MESSAGES (1,000,000) messages in PARLEY_BENCH_HISTORY_CONVS (10,000) 1:1
conversations between PARLEY_BENCH_HISTORY_USERS (2,000) users, through the store's own
indexes (it creates them at start). Then, through parley-store's REST API with real tokens,
PARLEY_BENCH_HISTORY_SAMPLES (200) requests each, one at a time, of:
  - range: GET /v1/conversations/<conv>/messages?after_seq=<random>&limit=50
  - latest: GET /v1/conversations/<conv>/messages?limit=50 (opening a conversation)
  - recent: GET /v1/messages/recent?limit=50 (the seed's getRecentMessages)
and prints p50, p99 and max in ms for each, with the size reached; the figures go to
var/bench/<time>/history.json. Filling is resumable: a run finds what the last one stored
(PARLEY_BENCH_HISTORY_KEEP=1 keeps the cluster's folder for the next run).
"""
import datetime
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request

import benchlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "var", "bench", time.strftime("%Y%m%d-%H%M%S"))
VAR = os.path.join(ROOT, "var", "bench", "history-cluster")
BIN = os.path.join(ROOT, "build", "bin")
MESSAGES = int(os.environ.get("PARLEY_BENCH_HISTORY_MESSAGES", "1000000"))
CONVS = int(os.environ.get("PARLEY_BENCH_HISTORY_CONVS", "10000"))
USERS = int(os.environ.get("PARLEY_BENCH_HISTORY_USERS", "2000"))
SAMPLES = int(os.environ.get("PARLEY_BENCH_HISTORY_SAMPLES", "200"))
# A query kind stops after this long (at least 10 samples): a scan of 1,000,000 documents
# per request would otherwise take the bench an hour.
BUDGET_S = float(os.environ.get("PARLEY_BENCH_HISTORY_BUDGET_S", "120"))
KEEP = os.environ.get("PARLEY_BENCH_HISTORY_KEEP") == "1"
BACKEND = os.environ.get("PARLEY_DB_BACKEND", "sqlite")
PORTS = dict(PARLEY_EDGE_PORT=63000, PARLEY_EDGE_TLS_PORT=63443, PARLEY_AUTH_PORT=63081,
             PARLEY_STORE_PORT=63082, PARLEY_ROUTER_PORT=63083, PARLEY_GATEWAY_PORT=63080,
             PARLEY_REDIS_PORT=63379, PARLEY_MONGO_PORT=63017, PARLEY_KAFKA_PORT=63092,
             PARLEY_KAFKA_CONTROLLER_PORT=63093, PARLEY_PG_PORT=63432)
ENV = dict(os.environ, PARLEY_VAR=VAR, PARLEY_BIN=BIN, PARLEY_GATEWAYS="1",
           PARLEY_MONGO_DB="parley_history", PARLEY_LOG_LEVEL="warn",
           **{k: str(v) for k, v in PORTS.items()})
KEY = os.path.join(VAR, "keys", "jwt-private.pem")
BATCH = 2000
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def say(msg):
    print(f"[bench-history] {msg}", flush=True)


def user(i):
    return f"h{i:05d}"


def conv_users(c):
    """The two users of conversation c, a pair no other conversation has (user a and the user
    k places after it, k <= USERS / 2): each user is in 2 * CONVS / USERS conversations."""
    a = c % USERS
    k = 1 + c // USERS
    assert k <= (USERS - 1) // 2, "PARLEY_BENCH_HISTORY_CONVS too large for the users"
    return user(a), user((a + k) % USERS)


def conv_id(c):
    a, b = sorted(conv_users(c))
    return f"d:{a}:{b}"


def fill(db):
    """Messages round-robin over the conversations, one second apart per conversation, each
    sent by either member; seq gapless per conversation."""
    have = db.messages.estimated_document_count()
    if have >= MESSAGES:
        return have
    say(f"filling {MESSAGES - have:,} messages (have {have:,})")
    t = time.monotonic()
    docs = []
    for k in range(have, MESSAGES):
        c = k % CONVS
        seq = k // CONVS + 1
        a, b = conv_users(c)
        sender, receiver = (a, b) if seq % 2 else (b, a)
        ts = T0 + datetime.timedelta(seconds=k)
        docs.append({"_id": f"hb{k:09d}", "sender": sender, "receiver": receiver,
                     "content": f"message {seq} of {conv_id(c)}", "timestamp": ts,
                     "conv": conv_id(c), "seq": seq, "client_id": f"hb{k:09d}", "kind": "text"})
        if len(docs) == BATCH:
            db.messages.insert_many(docs, ordered=False)
            docs = []
            if (k + 1) % 100000 == 0:
                say(f"  {k + 1:,} ({(k + 1 - have) / (time.monotonic() - t):,.0f}/s)")
    if docs:
        db.messages.insert_many(docs, ordered=False)
    return db.messages.estimated_document_count()


def get(path, token):
    url = f"http://127.0.0.1:{PORTS['PARLEY_STORE_PORT']}{path}"
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = json.loads(r.read())
    return (time.perf_counter() - t) * 1000, body


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def measure(name, make_path, tokens):
    rnd = random.Random(name)
    times = []
    deadline = time.monotonic() + BUDGET_S
    while len(times) < SAMPLES and (len(times) < 10 or time.monotonic() < deadline):
        c = rnd.randrange(CONVS)
        a, _ = conv_users(c)
        ms, body = get(make_path(c, rnd), tokens.setdefault(a, benchlib.sign(KEY, a)))
        assert body["messages"], (name, c, body)
        times.append(ms)
    r = {"p50": round(pct(times, 50), 2), "p99": round(pct(times, 99), 2),
         "max": round(max(times), 2), "samples": len(times)}
    say(f"{name:6s} n {len(times):4d}  p50 {r['p50']:8.2f} ms  p99 {r['p99']:8.2f} ms  max {r['max']:8.2f} ms")
    return r


def main():
    import pymongo
    os.makedirs(OUT, exist_ok=True)
    if not KEEP:
        shutil.rmtree(VAR, ignore_errors=True)
    subprocess.run(["make", "-C", ROOT, "build"], check=True, stdout=subprocess.DEVNULL)
    say(f"starting a cluster on FerretDB/{BACKEND}")
    subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "up"], env=ENV, check=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "backend": BACKEND, "convs": CONVS,
           "users": USERS, "samples": SAMPLES}
    try:
        db = pymongo.MongoClient(f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}")[
            "parley_history"]
        t = time.monotonic()
        res["messages"] = fill(db)
        res["fill_seconds"] = round(time.monotonic() - t, 1)
        say(f"{res['messages']:,} messages in {CONVS:,} conversations")
        per_conv = MESSAGES // CONVS
        tokens = {}
        res["range"] = measure(
            "range", lambda c, rnd: f"/v1/conversations/{conv_id(c)}/messages?after_seq="
            f"{rnd.randrange(max(1, per_conv - 50))}&limit=50", tokens)
        res["latest"] = measure(
            "latest", lambda c, rnd: f"/v1/conversations/{conv_id(c)}/messages?limit=50", tokens)
        res["recent"] = measure("recent", lambda c, rnd: "/v1/messages/recent?limit=50", tokens)
    finally:
        subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "down"], env=ENV)
        if not KEEP:
            shutil.rmtree(VAR, ignore_errors=True)
    with open(os.path.join(OUT, "history.json"), "w") as f:
        json.dump(res, f, indent=1)
    say(f"written {os.path.join(OUT, 'history.json')}")


if __name__ == "__main__":
    sys.exit(main())
