#!/usr/bin/env python3
"""make bench-longpoll (also run by make bench): HTTP long-polling against WebSockets.

A cluster of its own (plain build, one gateway, ports 52xxx, var/bench/longpoll-cluster).
  1. Latency, both transports in the same run: one pair of long-poll clients and one pair of
     WebSocket clients, each pair sending PARLEY_BENCH_LP_RATE messages/s (100) one way for
     PARLEY_BENCH_LP_SECONDS (30), through the edge, after 5 s not measured (the first messages
     create the conversations); send -> deliver p50 / p99 per transport (the receiver's clock
     minus the time the sender wrote into the message).
  2. Memory: the gateway's resident memory before and after PARLEY_BENCH_LP_IDLE (2,000) idle
     WebSockets, then after as many idle long-poll sessions on top, each with its poll held,
     opened straight at the gateway. Per session = the difference / the count.
Prints a summary and writes var/bench/<time>/longpoll.json. Stops by itself.
"""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
PORTS = dict(PARLEY_EDGE_PORT=52000, PARLEY_EDGE_TLS_PORT=52443, PARLEY_AUTH_PORT=52081,
             PARLEY_STORE_PORT=52082, PARLEY_ROUTER_PORT=52083, PARLEY_GATEWAY_PORT=52080,
             PARLEY_REDIS_PORT=52379, PARLEY_MONGO_PORT=52017, PARLEY_KAFKA_PORT=52092,
             PARLEY_KAFKA_CONTROLLER_PORT=52093)
os.environ.update({k: str(v) for k, v in PORTS.items()})

import benchlib  # noqa: E402
import websockets  # noqa: E402
from lpclient import LongPoll  # noqa: E402

OUT = os.path.join(ROOT, "var", "bench", time.strftime("%Y%m%d-%H%M%S"))
VAR = os.path.join(ROOT, "var", "bench", "longpoll-cluster")
BIN = os.path.join(ROOT, "build", "bin")
RATE = int(os.environ.get("PARLEY_BENCH_LP_RATE", "100"))
SECONDS = float(os.environ.get("PARLEY_BENCH_LP_SECONDS", "30"))
IDLE = int(os.environ.get("PARLEY_BENCH_LP_IDLE", "2000"))
WARM_S = 5.0
IDLE_USERS = 50
ENV = dict(os.environ, PARLEY_VAR=VAR, PARLEY_BIN=BIN, PARLEY_GATEWAYS="1",
           PARLEY_MONGO_DB="parley_lpbench", PARLEY_KAFKA_PARTITIONS="3",
           PARLEY_LOG_LEVEL="warn", PARLEY_EDGE_CONN_PER_ADDR="60000",
           PARLEY_EDGE_REST_RATE="100000", PARLEY_EDGE_REST_BURST="100000",
           PARLEY_LP_USER_MAX="10000", PARLEY_STORE_COLD_CHECK_S="0",
           PARLEY_GATEWAY_USER_RATE="1000000", PARLEY_GATEWAY_USER_BURST="1000000",
           PARLEY_GATEWAY_INFLIGHT_MAX="100000")
EDGE = f"http://127.0.0.1:{PORTS['PARLEY_EDGE_PORT']}"
GW = f"http://127.0.0.1:{PORTS['PARLEY_GATEWAY_PORT']}"


def say(msg):
    print(f"[bench-longpoll] {msg}", file=sys.stderr, flush=True)


def create_users(names):
    import datetime
    import pymongo
    db = pymongo.MongoClient(f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}")["parley_lpbench"]
    now = datetime.datetime.now(datetime.timezone.utc)
    db.users.insert_many([{"_id": n, "password_hash": "!", "display_name": n, "locale": "en",
                           "time_zone": "UTC", "created_at": now} for n in names], ordered=False)


def token(user):
    return benchlib.sign(os.path.join(VAR, "keys", "jwt-private.pem"), user)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 2) if xs else None


class WsDev:
    """A WebSocket device with the face the latency loop needs (send, async iteration)."""

    @classmethod
    async def connect(cls, tok):
        d = cls()
        d.ws = await websockets.connect(EDGE.replace("http", "ws") + "/ws", max_size=2 ** 22,
                                        additional_headers={"Authorization": "Bearer " + tok})
        assert json.loads(await d.ws.recv())["type"] == "ready"
        return d

    async def send(self, text):
        await self.ws.send(text)

    def __aiter__(self):
        return self.ws.__aiter__()

    async def close(self):
        await self.ws.close()


async def latency_pair(kind, a, b, ta, tb):
    if kind == "lp":
        sa, sb = await LongPoll.connect(ta, base=EDGE), await LongPoll.connect(tb, base=EDGE)
        assert json.loads(await sa.recv())["type"] == "ready"
        assert json.loads(await sb.recv())["type"] == "ready"
    else:
        sa, sb = await WsDev.connect(ta), await WsDev.connect(tb)
    got = []
    warm = int(RATE * WARM_S)  # the first messages of a conversation set it up: not measured
    total = warm + int(RATE * SECONDS)
    seen = [0]

    async def reader():
        async for raw in sb:
            f = json.loads(raw)
            if f.get("type") == "msg" and f.get("sender") == a:
                i, at = f["content"].split()
                seen[0] += 1
                if int(i) >= warm:
                    got.append((time.time() - float(at)) * 1000)
                if seen[0] >= total:
                    return
    rt = asyncio.create_task(reader())
    t0 = time.monotonic()
    for i in range(total):
        await sa.send(json.dumps({"type": "send", "client_id": f"{kind}{i}", "to": b,
                                  "content": f"{i} {time.time():.6f}"}))
        delay = t0 + (i + 1) / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    try:
        await asyncio.wait_for(rt, 20)
    except asyncio.TimeoutError:
        pass
    await sa.close()
    await sb.close()
    return {"sent": total - warm, "delivered": len(got), "p50_ms": pct(got, 0.5),
            "p99_ms": pct(got, 0.99), "max_ms": pct(got, 1.0)}


async def idle_memory(gw_pid, toks):
    """Idle WebSockets first, then idle long-poll sessions on top of them: each delta is
    measured with nothing freed before it (freed memory would be reused and hide the cost)."""
    base = rss_kb(gw_pid)
    wss = []
    for i in range(IDLE):
        wss.append(await websockets.connect(GW.replace("http", "ws") + "/ws", ping_interval=None,
                                            additional_headers={"Authorization": "Bearer " + toks[i % len(toks)]}))
    await asyncio.sleep(5)
    ws_kb = rss_kb(gw_pid)
    say(f"{IDLE} WebSockets open")
    lps = []
    for i in range(IDLE):
        lps.append(await LongPoll.connect(toks[i % len(toks)], base=GW, timeout=60))
        if i % 500 == 499:
            say(f"{i + 1} long-poll sessions open")
    await asyncio.sleep(5)  # every poll held
    lp_kb = rss_kb(gw_pid)
    held = sum(1 for lp in lps if lp.close_code is None)
    for lp in lps:
        await lp.close()
    for w in wss:
        await w.close()
    return {"sessions": IDLE, "long_poll_sessions_alive": held, "rss_before_kb": base,
            "rss_with_ws_kb": ws_kb, "rss_with_ws_and_lp_kb": lp_kb,
            "ws_bytes_per_socket": round((ws_kb - base) * 1024 / IDLE),
            "lp_bytes_per_session": round((lp_kb - ws_kb) * 1024 / IDLE)}


def main():
    os.makedirs(OUT, exist_ok=True)
    for cmd in (("cluster.sh", "down"), ("infra.sh", "stop")):
        subprocess.run([os.path.join(ROOT, "deploy", cmd[0]), cmd[1]], env=ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(VAR, ignore_errors=True)
    subprocess.run(["make", "-C", ROOT, "build"], check=True, stdout=subprocess.DEVNULL)
    say("starting a cluster with one gateway")
    subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "up"], env=ENV, check=True)
    try:
        pair = ["lpa", "lpb", "wsa", "wsb"]
        idle_users = [f"idle{j:04d}" for j in range(IDLE_USERS)]
        create_users(pair + idle_users)
        toks = {u: token(u) for u in pair + idle_users}
        say(f"latency: {RATE} msg/s for {SECONDS:.0f} s over long-polling and over WebSockets")

        async def both():
            return await asyncio.gather(
                latency_pair("lp", "lpa", "lpb", toks["lpa"], toks["lpb"]),
                latency_pair("ws", "wsa", "wsb", toks["wsa"], toks["wsb"]))
        lp, ws = asyncio.run(both())
        say(f"long-poll: {lp}")
        say(f"websocket: {ws}")
        say(f"memory: {IDLE} idle WebSockets, then {IDLE} idle long-poll sessions")
        mem = asyncio.run(idle_memory(benchlib.pid_of(VAR, "gateway0"),
                                      [toks[u] for u in idle_users]))
        say(f"memory: {mem}")
    finally:
        for cmd in (("cluster.sh", "down"), ("infra.sh", "stop")):
            subprocess.run([os.path.join(ROOT, "deploy", cmd[0]), cmd[1]], env=ENV,
                           stdout=subprocess.DEVNULL)
    res = {"rate": RATE, "seconds": SECONDS, "longpoll": lp, "websocket": ws, "memory": mem}
    with open(os.path.join(OUT, "longpoll.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))
    say(f"results in {OUT}")


if __name__ == "__main__":
    main()
