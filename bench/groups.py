#!/usr/bin/env python3
"""make bench-groups (also run by make bench): group messages, Parley against the seed's
Socket.IO design with rooms, on the same machine, database and schedule, interleaved.

A cluster of its own (plain build, 3 gateways, ports 58xxx, var/bench/groups-cluster) and the
peer (bench/peer/server.js, rooms: socket.join(group), io.to(group).emit, each message saved
first). For each group size (PARLEY_BENCH_GROUP_SIZES, "1000,10000"), every member holds one
idle socket (Parley: spread over the 3 gateways; the peer: its one process) and 5 members send
to the group at stepped rates (PARLEY_BENCH_GROUP_RATES_<size>), each step PARLEY_BENCH_STEP_SECONDS
long, until the p99 from a message's intended send time to its delivery passes 100 ms or
fewer than 99% of the deliveries arrive. Measured per step:
  - deliveries and their latency (p50, p99, max; per delivery: the p99 over every member's
    copy of every message, so the slowest members count);
  - Parley: Redis commands per group message, from Redis's own INFO commandstats over the
    sending window (everything the cluster did meanwhile, periodic work included; the
    members' connects before it and disconnects after it are not counted);
  - CPU seconds of every process over the sending window; deliveries per gateway
    CPU-second (the peer's one process stands for its gateway).
Before each step FerretDB must be idle: the members' disconnects of one step (presence,
last_seen) are not paid by the next one, of either system.
Prints a summary and writes var/bench/<time>/groups.json. Stops by itself.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import benchlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "var", "bench", time.strftime("%Y%m%d-%H%M%S"))
VAR = os.path.join(ROOT, "var", "bench", "groups-cluster")
BIN = os.path.join(ROOT, "build", "bin")
SIZES = [int(x) for x in os.environ.get("PARLEY_BENCH_GROUP_SIZES", "1000,10000").split(",")]
DEFAULT_RATES = {1000: "10,20,50,100,200", 10000: "1,2,5,10,20"}
STEP_S = float(os.environ.get("PARLEY_BENCH_STEP_SECONDS", "10"))
SENDERS = 5
IDLE_RATES = {}  # size -> {command: calls per second} of the members' idle sockets
P99_MS = 100.0
GATEWAYS = 3
PORTS = dict(PARLEY_EDGE_PORT=58000, PARLEY_EDGE_TLS_PORT=58443, PARLEY_AUTH_PORT=58081,
             PARLEY_STORE_PORT=58082, PARLEY_ROUTER_PORT=58083, PARLEY_GATEWAY_PORT=58080,
             PARLEY_REDIS_PORT=56379, PARLEY_MONGO_PORT=57017, PARLEY_KAFKA_PORT=59092,
             PARLEY_KAFKA_CONTROLLER_PORT=59093)
PEER_PORT = 58500
# The load comes from one address: the per-user send budget and in-flight cap, the edge's
# per-address connections and the group's slow mode are raised for it (their defaults are
# what a real client meets).
ENV = dict(os.environ, PARLEY_VAR=VAR, PARLEY_BIN=BIN, PARLEY_GATEWAYS=str(GATEWAYS),
           PARLEY_MONGO_DB="parley_groups", PARLEY_KAFKA_PARTITIONS="6", PARLEY_LOG_LEVEL="warn",
           PARLEY_GATEWAY_USER_RATE="1000000", PARLEY_GATEWAY_USER_BURST="1000000",
           PARLEY_GATEWAY_INFLIGHT_MAX="100000", PARLEY_EDGE_CONN_PER_ADDR="60000",
           PARLEY_GROUP_RATE="100000", **{k: str(v) for k, v in PORTS.items()})
KEY = os.path.join(VAR, "keys", "jwt-private.pem")
# Source addresses for the members' sockets: a step opens up to 10,000 and the ports of the
# last step may still be in TIME_WAIT.
SRC = ",".join(f"127.0.0.{i}" for i in range(2, 10))


def say(msg):
    print(f"[bench-groups] {msg}", file=sys.stderr, flush=True)


def pid_of(name):
    return benchlib.pid_of(VAR, name)


def gateway_ports():
    base, router = PORTS["PARLEY_GATEWAY_PORT"], PORTS["PARLEY_ROUTER_PORT"]
    return [base] + [router + i for i in range(1, GATEWAYS)]


def user(i):
    return f"bench{i:07d}"  # parley-bench's and the peer client's naming


def create_users(db, n):
    import datetime
    now = datetime.datetime.now(datetime.timezone.utc)
    db.users.delete_many({})
    # User 0, the groups' owner, registers through the API: it needs a session to call it.
    for i in range(1, n, 1000):
        db.users.insert_many([{"_id": user(j), "password_hash": "!", "display_name": user(j),
                               "locale": "en", "time_zone": "UTC", "created_at": now}
                              for j in range(max(1, i), min(n, i + 1000))])


def owner_token():
    password = "bench owner password"
    call("POST", "/v1/auth/register", {"username": user(0), "password": password}, None, ok=(409,))
    return call("POST", "/v1/auth/login", {"username": user(0), "password": password},
                None)["access_token"]


def call(method, path, body, token, ok=()):
    req = urllib.request.Request(f"http://127.0.0.1:{PORTS['PARLEY_AUTH_PORT']}{path}",
                                 data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": "Bearer " + token}
                                             if token else {})})
    for _ in range(20):
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return {}
            if e.code != 503:
                raise
            time.sleep(1)  # the store is still applying: the same client_id again
    raise RuntimeError(f"{method} {path}: no answer")


def create_group(size):
    """A group of users 0..size-1 (user 0 owns it), through parley-auth's REST API."""
    token = owner_token()
    first = [user(i) for i in range(1, min(size, 1000))]
    conv = call("POST", "/v1/groups", {"name": f"bench {size}", "members": first,
                                      "client_id": f"create-{size}"}, token)["conv"]
    for start in range(1000, size, 1000):
        batch = [user(i) for i in range(start, min(size, start + 1000))]
        call("POST", f"/v1/groups/{conv}/members", {"users": batch,
                                                    "client_id": f"add-{size}-{start}"}, token)
    return conv


def parley_cmd(mode, size, *extra):
    """parley-bench over the 3 gateways, the members' sockets spread over SRC."""
    return [os.path.join(BIN, "parley-bench"), f"--mode={mode}", f"--conns={size}", "--procs=2",
            f"--ports={','.join(map(str, gateway_ports()))}", "--prefix=bench", f"--key={KEY}",
            f"--src={SRC}", *extra]


def group_step_cmd(conv, size, rate):
    return parley_cmd("group", size, f"--conv={conv}", f"--senders={SENDERS}", f"--rate={rate}",
                      f"--seconds={STEP_S}", "--warmup=5", "--drain=3")


def peer_cmd(group, size, rate):
    return ["node", os.path.join(ROOT, "bench", "peer", "client.js"),
            f"--url=http://127.0.0.1:{PEER_PORT}", "--mode=group", f"--group={group}",
            f"--conns={size}", "--procs=2", f"--senders={SENDERS}", f"--rate={rate}",
            f"--seconds={STEP_S}", "--warmup=5", "--drain=3", "--prefix=bench", f"--key={KEY}"]


def snapshot(pids, redis_client):
    return {"t": time.monotonic(), "cpu": {n: benchlib.proc_cpu(p) for n, p in pids.items()},
            "redis": benchlib.commandstats(redis_client)}


def run_step(cmd, rate, pids, redis_client):
    """Runs one step of a load generator. Both print progress lines with the count of
    counted sends; CPU and Redis's counters are read when the first counted send is out and
    again when the last is, so the members' connects before the sending window and their
    disconnects after it are not charged to the messages."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    window = {}
    line = b""
    while True:
        ch = proc.stderr.read(1)
        if not ch:
            break
        if ch not in (b"\r", b"\n"):
            line += ch
            continue
        m = re.search(rb"sent (\d+)", line)
        line = b""
        sent = int(m.group(1)) if m else 0
        if sent > 0 and "start" not in window:
            window["start"] = dict(snapshot(pids, redis_client), sent=sent)
        elif "start" in window and "end" not in window and sent >= 0.99 * rate * STEP_S:
            window["end"] = dict(snapshot(pids, redis_client), sent=sent)
    out = proc.stdout.read().decode()
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd[0]} failed")
    res = json.loads(out.strip().splitlines()[-1])
    if "start" in window and "end" in window and window["end"]["sent"] > window["start"]["sent"]:
        a, b = window["start"], window["end"]
        res["window"] = {"messages": b["sent"] - a["sent"], "seconds": b["t"] - a["t"],
                         "cpu": {n: b["cpu"][n] - a["cpu"][n] for n in b["cpu"]},
                         "redis": {k: v - a["redis"].get(k, 0) for k, v in b["redis"].items()
                                   if v - a["redis"].get(k, 0) > 0}}
    return res


def idle_redis_rates(size, redis_client):
    """Redis calls per second and command with the members' sockets connected and nobody
    sending: the sockets' own periodic work (each renews its route and presence keys), which
    a message is not charged with."""
    proc = subprocess.Popen(parley_cmd("idle", size, "--seconds=40", "--drain=0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(25)  # connected and settled
    a, t0 = benchlib.commandstats(redis_client), time.monotonic()
    time.sleep(10)
    b, t1 = benchlib.commandstats(redis_client), time.monotonic()
    proc.wait()
    return {k: (v - a.get(k, 0)) / (t1 - t0) for k, v in b.items() if v > a.get(k, 0)}


def quiesce(pid, limit_s=180):
    """Waits until FerretDB is idle (under 5% of a core for 2 s): the members' disconnects of
    one step (presence, last_seen) must not be paid by the next step, of either system."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        c0 = benchlib.proc_cpu(pid)
        time.sleep(2)
        if benchlib.proc_cpu(pid) - c0 < 0.1:
            return
    say("FerretDB still busy; going on")


def measure(name, cmd, pids, redis_client, size, rate):
    out = run_step(cmd, rate, pids, redis_client)
    w = out.get("window") or {"messages": 0, "seconds": 0, "cpu": {}, "redis": {}}
    gw_cpu = sum(v for n, v in w["cpu"].items() if n.startswith("gateway") or n == "peer")
    expected = out["sent"] * (size - 1)
    per_message = w["messages"] * (size - 1)  # deliveries the window's messages made
    step = {"system": name, "size": size, "rate": rate, "sent": out["sent"],
            "acked": out["acked"], "delivered": out["delivered"], "expected": expected,
            "deliver_ms": out["deliver_ms"],
            "window": {"messages": w["messages"], "seconds": round(w["seconds"], 2),
                       "cpu_s": {n: round(v, 2) for n, v in w["cpu"].items()}},
            "deliveries_per_s": round(out["delivered"] / STEP_S),
            "deliveries_per_gateway_cpu_s": round(per_message / gw_cpu) if gw_cpu else None}
    if name == "parley" and w["messages"]:
        idle = IDLE_RATES.get(size, {})
        net = {k: max(0.0, v - idle.get(k, 0) * w["seconds"]) for k, v in w["redis"].items()}
        step["redis_calls_per_message"] = round(sum(w["redis"].values()) / w["messages"], 2)
        step["redis_calls_per_message_net"] = round(sum(net.values()) / w["messages"], 2)
        step["redis_net_by_command"] = {k: round(v / w["messages"], 2) for k, v in net.items()
                                        if v / w["messages"] >= 0.05}
    return step


def summarize(res):
    lines = [f"group messages: Parley ({GATEWAYS} gateways) against the Socket.IO peer with rooms; "
             f"{SENDERS} senders, steps of {STEP_S:.0f} s, p99 per delivery"]
    for size in SIZES:
        lines.append(f"\n{size} members")
        for s in [s for s in res["steps"] if s["size"] == size]:
            extra = (f", Redis {s['redis_calls_per_message']}/msg "
                     f"({s['redis_calls_per_message_net']} net of the idle sockets' renewals)"
                     if s.get("redis_calls_per_message") is not None else "")
            lines.append(f"  {s['system']:6} {s['rate']:>5}/s: delivered {s['delivered']}/"
                         f"{s['expected']} p50 {s['deliver_ms']['p50']:.1f} p99 "
                         f"{s['deliver_ms']['p99']:.1f} ms, {s['deliveries_per_s']}/s, "
                         f"{s['deliveries_per_gateway_cpu_s']} per gateway CPU-s{extra}")
        for name in ("parley", "peer"):
            ok = [s for s in res["steps"] if s["size"] == size and s["system"] == name
                  and s["ok"]]
            best = max(ok, key=lambda s: s["rate"]) if ok else None
            res["sustained"][f"{name}_{size}"] = (
                {"rate": best["rate"], "deliveries_per_s": best["deliveries_per_s"]}
                if best else None)
        p, q = res["sustained"][f"parley_{size}"], res["sustained"][f"peer_{size}"]
        ratio = (f"{p['deliveries_per_s'] / q['deliveries_per_s']:.1f}x"
                 if p and q and q["deliveries_per_s"] else "n/a")
        lines.append(f"  sustained at p99 <= {P99_MS:.0f} ms: parley "
                     f"{p['rate'] if p else 0} msg/s ({p['deliveries_per_s'] if p else 0} "
                     f"deliveries/s), peer {q['rate'] if q else 0} msg/s "
                     f"({q['deliveries_per_s'] if q else 0} deliveries/s); ratio {ratio}")
    return "\n".join(lines) + "\n"


def main():
    import pymongo
    import redis
    os.makedirs(OUT, exist_ok=True)
    shutil.rmtree(VAR, ignore_errors=True)
    subprocess.run(["make", "-C", ROOT, "build"], check=True, stdout=subprocess.DEVNULL)
    if not os.path.isdir(os.path.join(ROOT, "bench", "peer", "node_modules")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"],
                       cwd=os.path.join(ROOT, "bench", "peer"), check=True,
                       stdout=subprocess.DEVNULL)
    say(f"starting a cluster with {GATEWAYS} gateways and the peer")
    subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "up"], env=ENV, check=True)
    peer_log = open(os.path.join(OUT, "peer-groups.log"), "w")
    peer = subprocess.Popen(
        ["node", os.path.join(ROOT, "bench", "peer", "server.js")],
        env=dict(os.environ, PEER_PORT=str(PEER_PORT),
                 PEER_MONGO_URI=f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}/parley_peer",
                 PEER_JWT_PUBLIC_KEY=os.path.join(VAR, "keys", "jwt-public.pem")),
        stdout=peer_log, stderr=peer_log)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "gateways": GATEWAYS,
           "senders": SENDERS, "step_seconds": STEP_S, "steps": [], "sustained": {}}
    try:
        db = pymongo.MongoClient(f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}")[
            "parley_groups"]
        create_users(db, max(SIZES))
        r = redis.Redis(port=PORTS["PARLEY_REDIS_PORT"])
        parley_pids = {n: pid_of(n) for n in
                       ["auth", "store", "router"] + [f"gateway{i}" for i in range(GATEWAYS)]}
        infra = {n: pid_of(n) for n in ("kafka", "redis", "ferretdb")}
        time.sleep(2)
        for size in SIZES:
            conv = create_group(size)
            say(f"group of {size}: {conv}")
            rates = [int(x) for x in os.environ.get(f"PARLEY_BENCH_GROUP_RATES_{size}",
                                                    DEFAULT_RATES.get(size, "1,2,5")).split(",")]
            IDLE_RATES[size] = idle_redis_rates(size, r)
            idle_total = sum(IDLE_RATES[size].values())
            res.setdefault("idle_redis_calls_per_s", {})[size] = round(idle_total, 1)
            say(f"idle sockets of {size} members: {idle_total:.0f} Redis calls/s")
            # A warm-up step on each system, not recorded: the members' first connections
            # (the gateways learn their groups, the peer's process warms up).
            for cmd in (group_step_cmd(conv, size, rates[0]),
                        peer_cmd(f"bench{size}", size, rates[0])):
                quiesce(infra["ferretdb"])
                run_step(cmd, rates[0], {}, r)
            done = {"parley": False, "peer": False}
            for rate in rates:
                for name, cmd, pids in (
                        ("parley", group_step_cmd(conv, size, rate), {**parley_pids, **infra}),
                        ("peer", peer_cmd(f"bench{size}", size, rate),
                         {"peer": peer.pid, **infra})):
                    if done[name]:
                        continue
                    quiesce(infra["ferretdb"])
                    step = measure(name, cmd, pids, r, size, rate)
                    step["ok"] = (step["deliver_ms"]["p99"] <= P99_MS and
                                  step["delivered"] >= 0.99 * step["expected"])
                    res["steps"].append(step)
                    say(f"{name} {size} members @ {rate}/s: delivered {step['delivered']}/"
                        f"{step['expected']} p99 {step['deliver_ms']['p99']:.1f} ms")
                    done[name] = done[name] or not step["ok"]
    finally:
        peer.terminate()
        subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "down"], env=ENV,
                       stdout=subprocess.DEVNULL)
    summary = summarize(res)
    with open(os.path.join(OUT, "groups.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(OUT, "groups.txt"), "w") as f:
        f.write(summary)
    print(summary)
    say(f"results in {OUT}")


if __name__ == "__main__":
    main()
