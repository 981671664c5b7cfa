#!/usr/bin/env python3
"""make bench-presence (also run by make bench): a login storm and the presence it makes.

A cluster of its own (plain build, 3 gateways, ports 38xxx, var/bench/presence-cluster), N users
(PARLEY_BENCH_PRESENCE_USERS, 1000) each with C accepted contacts (PARLEY_BENCH_CONTACTS, 200),
written straight into MongoDB. Then every user logs in (a WebSocket with a token signed by the
cluster's key) at R logins/s (PARLEY_BENCH_LOGIN_RATE, 200), round robin over the gateways.
Measured:
  - presence frames delivered, and per second during the storm;
  - latency from a user's `ready` to each online contact's `online` frame about it (p50, p99);
  - Redis commands per presence change, from Redis's own INFO commandstats (all commands, and
    those of the change itself: EVAL and PUBLISH), with the gateways' periodic renewal;
  - CPU seconds of each Parley process over the storm.
Prints a summary and writes var/bench/<time>/presence.json. Stops by itself.
"""
import asyncio
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time

import benchlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "var", "bench", time.strftime("%Y%m%d-%H%M%S"))
VAR = os.path.join(ROOT, "var", "bench", "presence-cluster")
BIN = os.path.join(ROOT, "build", "bin")
USERS = int(os.environ.get("PARLEY_BENCH_PRESENCE_USERS", "1000"))
CONTACTS = int(os.environ.get("PARLEY_BENCH_CONTACTS", "200"))
RATE = float(os.environ.get("PARLEY_BENCH_LOGIN_RATE", "200"))
GATEWAYS = 3
PORTS = dict(PARLEY_EDGE_PORT=38000, PARLEY_EDGE_TLS_PORT=38443, PARLEY_AUTH_PORT=38081,
             PARLEY_STORE_PORT=38082, PARLEY_ROUTER_PORT=38083, PARLEY_GATEWAY_PORT=38080,
             PARLEY_REDIS_PORT=36379, PARLEY_MONGO_PORT=48017, PARLEY_KAFKA_PORT=39092,
             PARLEY_KAFKA_CONTROLLER_PORT=39093)
ENV = dict(os.environ, PARLEY_VAR=VAR, PARLEY_BIN=BIN, PARLEY_GATEWAYS=str(GATEWAYS),
           PARLEY_MONGO_DB="parley_presence", PARLEY_KAFKA_PARTITIONS="3",
           PARLEY_LOG_LEVEL="warn", PARLEY_EDGE_CONN_PER_ADDR="60000",
           **{k: str(v) for k, v in PORTS.items()})


def say(msg):
    print(f"[bench-presence] {msg}", file=sys.stderr, flush=True)


def gateway_ports():
    base, router = PORTS["PARLEY_GATEWAY_PORT"], PORTS["PARLEY_ROUTER_PORT"]
    return [base] + [router + i for i in range(1, GATEWAYS)]


def sign(user):
    return benchlib.sign(os.path.join(VAR, "keys", "jwt-private.pem"), user)


def name(i):
    return f"pres{i:05d}"


def seed(db):
    """N users and their pairs (user i with i±1..C/2, so everyone has C contacts), as
    parley-auth would have written them."""
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    db.users.delete_many({})
    db.contacts.delete_many({})
    db.users.insert_many([{"_id": name(i), "password_hash": "!", "display_name": name(i),
                           "locale": "en", "time_zone": "UTC", "created_at": now}
                          for i in range(USERS)])
    docs = {}
    for i in range(USERS):
        for k in range(1, CONTACTS // 2 + 1):
            a, b = sorted((name(i), name((i + k) % USERS)))
            docs[f"d:{a}:{b}"] = {"_id": f"d:{a}:{b}", "users": [a, b], "state": "accepted",
                                  "asked_by": "", "blocks": [], "version": 1, "updated_at": now}
    vals = list(docs.values())
    for i in range(0, len(vals), 5000):
        db.contacts.insert_many(vals[i:i + 5000], ordered=False)
    # What parley-auth keeps with every change of a pair (auth_social.c, sync_lists).
    lists = {name(i): [] for i in range(USERS)}
    for d in vals:
        a, b = d["users"]
        lists[a].append(b)
        lists[b].append(a)
    db.contact_lists.delete_many({})
    db.contact_lists.insert_many([{"_id": u, "open": v} for u, v in lists.items()])
    return len(vals)


def service_pids():
    out = {}
    for n in ["auth", "store", "router"] + [f"gateway{i}" for i in range(GATEWAYS)]:
        try:
            with open(os.path.join(VAR, "run", f"{n}.pid")) as f:
                out[n] = int(f.read())
        except OSError:
            pass
    return out


async def storm(tokens):
    import websockets
    ready = {}
    lat = []
    frames = [0]
    socks = []

    seen = set()
    dups = [0]

    async def reader(ws, me):
        try:
            async for raw in ws:
                f = json.loads(raw)
                if f.get("type") == "presence" and f.get("status") == "online":
                    t = ready.get(f["user"])
                    frames[0] += 1
                    dups[0] += (me, f["user"]) in seen
                    seen.add((me, f["user"]))
                    if t is not None:
                        lat.append(time.perf_counter() - t)
        except websockets.ConnectionClosed:
            pass

    async def login(i):
        url = f"ws://127.0.0.1:{gateway_ports()[i % GATEWAYS]}/ws"
        ws = await websockets.connect(url, additional_headers={
            "Authorization": "Bearer " + tokens[i]}, open_timeout=30, max_size=2 ** 22)
        hello = json.loads(await ws.recv())
        assert hello["type"] == "ready", hello
        ready[name(i)] = time.perf_counter()
        socks.append(ws)
        asyncio.get_event_loop().create_task(reader(ws, i))

    t0 = time.perf_counter()
    tasks = []
    for i in range(USERS):
        due = t0 + i / RATE
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.get_event_loop().create_task(login(i)))
    await asyncio.gather(*tasks)
    storm_s = time.perf_counter() - t0
    # The frames still on their way: until none has come for 3 s.
    last = -1
    while last != frames[0]:
        last = frames[0]
        await asyncio.sleep(3.0)
    total_s = time.perf_counter() - t0
    for ws in socks:
        await ws.close()
    say(f"{dups[0]} online frames were repeats of one already received")
    return lat, frames[0], storm_s, total_s


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))] if xs else float("nan")


def main():
    import pymongo
    import redis
    os.makedirs(OUT, exist_ok=True)
    shutil.rmtree(VAR, ignore_errors=True)
    subprocess.run(["make", "-C", ROOT, "build"], check=True, stdout=subprocess.DEVNULL)
    say(f"starting a cluster with {GATEWAYS} gateways")
    subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "up"], env=ENV, check=True)
    try:
        db = pymongo.MongoClient(f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}")[
            "parley_presence"]
        pairs = seed(db)
        say(f"{USERS} users, {pairs} contact pairs ({CONTACTS} contacts each)")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(sign, [name(i) for i in range(USERS)]))
        r = redis.Redis(port=PORTS["PARLEY_REDIS_PORT"])
        before, cpu0 = benchlib.commandstats(r), {n: benchlib.proc_cpu(p) for n, p in service_pids().items()}
        say(f"login storm: {USERS} users at {RATE:.0f}/s over {GATEWAYS} gateways")
        lat, nframes, storm_s, total_s = asyncio.run(storm(tokens))
        after, cpu1 = benchlib.commandstats(r), {n: benchlib.proc_cpu(p) for n, p in service_pids().items()}
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta = {k: v for k, v in delta.items() if v > 0}
        changes = USERS
        res = {
            "users": USERS, "contacts": CONTACTS, "gateways": GATEWAYS, "login_rate": RATE,
            "storm_seconds": round(storm_s, 2), "until_quiet_seconds": round(total_s, 2),
            "presence_frames": nframes,
            "frames_per_second": round(nframes / total_s, 1),
            "ready_to_online_ms": {"p50": round(pct(lat, 50) * 1000, 1),
                                   "p99": round(pct(lat, 99) * 1000, 1),
                                   "max": round(max(lat) * 1000, 1) if lat else None},
            "redis_calls_per_change": round(sum(delta.values()) / changes, 2),
            "redis_change_calls_per_change": round(
                (delta.get("eval", 0) + delta.get("publish", 0)) / changes, 2),
            "redis_calls": delta,
            "cpu_seconds": {n: round(cpu1[n] - cpu0.get(n, 0), 2) for n in cpu1},
        }
        with open(os.path.join(OUT, "presence.json"), "w") as f:
            json.dump(res, f, indent=2)
        print(json.dumps(res, indent=2))
    finally:
        subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "down"], env=ENV,
                       stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
