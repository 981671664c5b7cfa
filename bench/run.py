#!/usr/bin/env python3
"""make bench: Parley against the seed document's design (Node.js + Socket.IO + mongoose),
on the same machine, the same MongoDB-compatible server, the same schedule, interleaved.

Starts a cluster of its own (plain build, one gateway, ports 28xxx) with deploy/cluster.sh and
the peer (bench/peer/server.js), creates the users, then runs:
  1. idle density: N sockets held on one gateway / on the peer; memory per connection
  2. 1:1 chat at stepped rates until p99 send->deliver passes 50 ms (both systems per step)
  3. connection rate: handshakes per second, with token verification
  4. fan-out: deliveries per second per gateway CPU-second (from the chat steps)
CPU seconds (utime + stime) and peak RSS of every process come from /proc. Results go to
var/bench/<time>/ (results.json, summary.txt, latency.png); the summary is printed.

Environment: PARLEY_BENCH_RATES (comma list, default 500,1000,2000,5000,10000),
PARLEY_BENCH_STEP_SECONDS (10), PARLEY_BENCH_CONNS (1000 chat sockets),
PARLEY_BENCH_IDLE (10000 idle sockets), PARLEY_BENCH_PROCS (2).
"""
import json
import os
import shutil
import subprocess
import sys
import time

import benchlib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
STAMP = time.strftime("%Y%m%d-%H%M%S")
OUT = os.path.join(ROOT, "var", "bench", STAMP)
VAR = os.path.join(ROOT, "var", "bench", "cluster")
BIN = os.path.join(ROOT, "build", "bin")
RATES = [int(x) for x in os.environ.get("PARLEY_BENCH_RATES", "500,1000,2000,5000,10000").split(",")]
STEP_S = float(os.environ.get("PARLEY_BENCH_STEP_SECONDS", "10"))
CONNS = int(os.environ.get("PARLEY_BENCH_CONNS", "1000"))
IDLE = int(os.environ.get("PARLEY_BENCH_IDLE", "10000"))
PROCS = int(os.environ.get("PARLEY_BENCH_PROCS", "2"))
PORTS = dict(PARLEY_EDGE_PORT=28000, PARLEY_EDGE_TLS_PORT=28443, PARLEY_AUTH_PORT=28081,
             PARLEY_STORE_PORT=28082, PARLEY_ROUTER_PORT=28083, PARLEY_GATEWAY_PORT=28080,
             PARLEY_REDIS_PORT=26379, PARLEY_MONGO_PORT=47017, PARLEY_KAFKA_PORT=29092,
             PARLEY_KAFKA_CONTROLLER_PORT=29093, PARLEY_FERRETDB_DEBUG_PORT=47088)
PEER_PORT = 28500
ENV = dict(os.environ, PARLEY_VAR=VAR, PARLEY_BIN=BIN, PARLEY_GATEWAYS="1",
           PARLEY_MONGO_DB="parley_bench", PARLEY_KAFKA_PARTITIONS="6", PARLEY_LOG_LEVEL="warn",
           PARLEY_GATEWAY_USER_RATE="1000000", PARLEY_GATEWAY_USER_BURST="1000000",
           PARLEY_GATEWAY_INFLIGHT_MAX="100000", PARLEY_EDGE_CONN_PER_ADDR="60000",
           **{k: str(v) for k, v in PORTS.items()})
CLK = os.sysconf("SC_CLK_TCK")


def say(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def pid_of(name):
    return benchlib.pid_of(VAR, name)


def proc_stats(pid):
    """CPU seconds so far, current and peak RSS in KiB."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLK
        rss = hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
        return cpu, rss, hwm
    except (OSError, IndexError, ValueError):
        return 0.0, 0, 0


def tcp_mem_kib():
    """Kernel memory of all TCP sockets (pages in /proc/net/sockstat)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    return 0


class Procs:
    """CPU and memory of a named set of processes between two points."""

    def __init__(self, pids):
        self.pids = {k: v for k, v in pids.items() if v}
        self.start = {k: proc_stats(v) for k, v in self.pids.items()}

    def delta(self):
        out = {}
        for k, pid in self.pids.items():
            cpu, rss, hwm = proc_stats(pid)
            out[k] = {"cpu_s": round(cpu - self.start[k][0], 3), "rss_kib": rss, "peak_rss_kib": hwm}
        return out


def parley_pids():
    return {n: pid_of(n) for n in ("gateway0", "auth", "store", "router")}


def infra_pids():
    return {n: pid_of(n) for n in ("kafka", "redis", "ferretdb")}


def run_parley(mode, conns, rate=0, seconds=STEP_S, procs=PROCS, first=0):
    cmd = [os.path.join(BIN, "parley-bench"), f"--mode={mode}", "--host=127.0.0.1",
           f"--port={PORTS['PARLEY_GATEWAY_PORT']}", f"--conns={conns}", f"--procs={procs}",
           f"--rate={rate}", f"--seconds={seconds}", "--drain=3", "--prefix=bench",
           f"--first-user={first}", f"--key={os.path.join(VAR, 'keys', 'jwt-private.pem')}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_peer(mode, conns, rate=0, seconds=STEP_S, procs=PROCS, first=0):
    cmd = ["node", os.path.join(ROOT, "bench", "peer", "client.js"), f"--url=http://127.0.0.1:{PEER_PORT}",
           f"--mode={mode}", f"--conns={conns}", f"--procs={procs}", f"--rate={rate}",
           f"--seconds={seconds}", "--drain=3", "--prefix=bench", f"--first-user={first}",
           f"--key={os.path.join(VAR, 'keys', 'jwt-private.pem')}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 180)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def create_users(n):
    import pymongo
    db = pymongo.MongoClient(f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}")["parley_bench"]
    have = db.users.count_documents({"_id": {"$regex": "^bench"}})
    if have >= n:
        return
    say(f"creating {n} users")
    now = time.time()
    import datetime
    created = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    for i in range(0, n, 1000):
        docs = [{"_id": f"bench{j:07d}", "password_hash": "!", "display_name": f"bench {j}",
                 "locale": "en", "time_zone": "UTC", "created_at": created}
                for j in range(i, min(n, i + 1000))]
        try:
            db.users.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError:
            pass  # already there


def main():
    os.makedirs(OUT, exist_ok=True)
    shutil.rmtree(VAR, ignore_errors=True)
    subprocess.run(["make", "-C", ROOT, "build"], check=True, stdout=subprocess.DEVNULL)
    if not os.path.isdir(os.path.join(ROOT, "bench", "peer", "node_modules")):
        say("installing the peer's npm packages")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=os.path.join(ROOT, "bench", "peer"),
                       check=True, stdout=subprocess.DEVNULL)
    say("starting Parley (1 gateway) and the peer")
    subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "up"], env=ENV, check=True)
    peer_log = open(os.path.join(OUT, "peer.log"), "w")
    peer = subprocess.Popen(["node", os.path.join(ROOT, "bench", "peer", "server.js")],
                            env=dict(os.environ, PEER_PORT=str(PEER_PORT),
                                     PEER_MONGO_URI=f"mongodb://127.0.0.1:{PORTS['PARLEY_MONGO_PORT']}/parley_peer",
                                     PEER_JWT_PUBLIC_KEY=os.path.join(VAR, "keys", "jwt-public.pem")),
                            stdout=peer_log, stderr=peer_log)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": os.uname().nodename,
               "cpus": os.cpu_count(), "steps": [], "idle": {}, "connect": {}}
    try:
        create_users(max(IDLE, CONNS))
        time.sleep(2)
        # Warm-up, not recorded: creates the conversations of the chat steps on both systems
        # and starts the store's start-up window (PARLEY_STORE_COLD_CHECK_S, 120 s, in which
        # it looks every record up by _id before numbering it; docs/guarantees.md), which the
        # chat steps then wait out: they measure the steady state.
        say("warm-up: 5 s of chat at 200/s on each system")
        run_parley("chat", CONNS, rate=200, seconds=5)
        t_warm = time.time()
        run_peer("chat", CONNS, rate=200, seconds=5)
        # 1. Idle density.
        for name, runner, pid in (("parley", run_parley, lambda: pid_of("gateway0")),
                                  ("peer", run_peer, lambda: peer.pid)):
            before = proc_stats(pid())[1]
            tcp0 = tcp_mem_kib()
            # The sockets are held idle_s seconds; the server's RSS is sampled meanwhile.
            idle_s = 20
            t = time.time()
            proc = subprocess.Popen(
                ([os.path.join(BIN, "parley-bench"), "--mode=idle", f"--port={PORTS['PARLEY_GATEWAY_PORT']}",
                  f"--conns={IDLE}", f"--procs={PROCS}", f"--seconds={idle_s}", "--drain=0",
                  "--prefix=bench", f"--key={os.path.join(VAR, 'keys', 'jwt-private.pem')}"]
                 if name == "parley" else
                 ["node", os.path.join(ROOT, "bench", "peer", "client.js"), f"--url=http://127.0.0.1:{PEER_PORT}",
                  "--mode=idle", f"--conns={IDLE}", f"--procs={PROCS}", f"--seconds={idle_s}", "--drain=0",
                  "--prefix=bench", f"--key={os.path.join(VAR, 'keys', 'jwt-private.pem')}"]),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            peak, tcp_peak = before, tcp0
            while proc.poll() is None:
                peak = max(peak, proc_stats(pid())[1])
                tcp_peak = max(tcp_peak, tcp_mem_kib())
                time.sleep(0.5)
            out = json.loads(proc.stdout.read().strip().splitlines()[-1])
            n = out["ready"] or 1
            results["idle"][name] = {"sockets": out["ready"], "rss_before_kib": before, "rss_held_kib": peak,
                                     "user_bytes_per_conn": round((peak - before) * 1024 / n),
                                     "kernel_tcp_bytes_per_conn": round((tcp_peak - tcp0) * 1024 / n),
                                     "seconds": round(time.time() - t, 1)}
            say(f"idle {name}: {results['idle'][name]}")
            time.sleep(3)
        # 3. Connection rate (token verification included).
        for name, runner, pids in (("parley", run_parley, lambda: {"gateway": pid_of("gateway0")}),
                                   ("peer", run_peer, lambda: {"peer": peer.pid})):
            p = Procs(pids())
            out = runner("connect", min(IDLE, 5000), seconds=0)
            cpu = sum(v["cpu_s"] for v in p.delta().values())
            results["connect"][name] = {"handshakes_per_s": round(out["handshakes_per_s"]),
                                        "server_cpu_s": round(cpu, 3),
                                        "handshakes_per_cpu_s": round(out["ready"] / cpu) if cpu else None,
                                        "ready": out["ready"], "failed": out["failed"]}
            say(f"connect {name}: {results['connect'][name]}")
            time.sleep(3)
        # 2 and 4. Stepped 1:1 chat, interleaved. The store looks every record up by _id for
        # its first PARLEY_STORE_COLD_CHECK_S seconds (120) after it starts (docs/guarantees.md):
        # the chat steps measure the steady state after that window.
        cold = float(os.environ.get("PARLEY_STORE_COLD_CHECK_S", "120")) + 5 - (time.time() - t_warm)
        if cold > 0:
            say(f"waiting {cold:.0f} s for the store's start-up window to close")
            time.sleep(cold)
        done = {"parley": False, "peer": False}
        for rate in RATES:
            for name, runner, pids in (("parley", run_parley, lambda: {**parley_pids(), **infra_pids()}),
                                       ("peer", run_peer, lambda: {"peer": peer.pid, **infra_pids()})):
                if done[name]:
                    continue
                p = Procs(pids())
                db0 = benchlib.ferretdb_requests(PORTS["PARLEY_FERRETDB_DEBUG_PORT"])
                out = runner("chat", CONNS, rate=rate)
                use = p.delta()
                db = benchlib.delta(benchlib.ferretdb_requests(PORTS["PARLEY_FERRETDB_DEBUG_PORT"]), db0)
                own = [k for k in use if k not in ("kafka", "redis", "ferretdb")]
                own_cpu = sum(use[k]["cpu_s"] for k in own)
                step = {"system": name, "rate": rate, **out, "cpu": use,
                        "own_cpu_s": round(own_cpu, 3),
                        "own_cpu_s_per_1000": round(own_cpu * 1000 / out["delivered"], 4) if out["delivered"] else None,
                        # FerretDB's own request counters over the step, per message sent
                        "db_requests": db,
                        "db_requests_per_msg": round(sum(db.values()) / out["sent"], 3) if out["sent"] else None}
                if "duplicates" in out:
                    # pushes of a seq the device already had, per delivery needed (the
                    # receiver's and the sender's device each need one)
                    needed = out["delivered"] + out.get("echoed", 0)
                    step["dup_per_needed"] = round(out["duplicates"] / needed, 4) if needed else None
                if name == "parley":
                    gw = use.get("gateway0", {}).get("cpu_s", 0)
                    step["deliveries_per_gateway_cpu_s"] = round((out["delivered"] + out.get("echoed", 0)) / gw) if gw else None
                results["steps"].append(step)
                say(f"{name} @ {rate}/s: sent {out['sent']} delivered {out['delivered']} "
                    f"p50 {out['deliver_ms']['p50']:.2f} p99 {out['deliver_ms']['p99']:.2f} ms, "
                    f"own CPU {own_cpu:.2f} s, database requests per message "
                    f"{step['db_requests_per_msg']} {db}, duplicate pushes per needed "
                    f"{step.get('dup_per_needed', 'n/a')}")
                if out["deliver_ms"]["p99"] > 50 or out["delivered"] < 0.99 * out["sent"]:
                    done[name] = True
                time.sleep(3)
    finally:
        peer.terminate()
        subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), "down"], env=ENV)
        subprocess.run([os.path.join(ROOT, "deploy", "infra.sh"), "stop"], env=ENV)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    summary = summarize(results)
    with open(os.path.join(OUT, "summary.txt"), "w") as f:
        f.write(summary)
    plot(results)
    print(summary)
    say(f"results in {OUT}")


def sustainable(results, name):
    ok = [s["rate"] for s in results["steps"] if s["system"] == name
          and s["deliver_ms"]["p99"] <= 50 and s["delivered"] >= 0.99 * s["sent"]]
    return max(ok) if ok else 0


def summarize(r):
    lines = [f"Parley vs the seed design (Socket.IO 4 + mongoose), {r['date']}, {r['cpus']} CPUs", ""]
    lines.append("rate/s  system  sent    delivered  ack p50/p99 ms     deliver p50/p99 ms   own CPU s/1000 msgs  db requests/msg  dup pushes/needed")
    for s in r["steps"]:
        lines.append(f"{s['rate']:>6}  {s['system']:<6}  {s['sent']:>6}  {s['delivered']:>9}  "
                     f"{s['ack_ms']['p50']:>7.2f}/{s['ack_ms']['p99']:<8.2f}  "
                     f"{s['deliver_ms']['p50']:>7.2f}/{s['deliver_ms']['p99']:<8.2f}     {s['own_cpu_s_per_1000']:<19}  "
                     f"{s.get('db_requests_per_msg')!s:<15}  {s.get('dup_per_needed', 'n/a')}")
    ps, qs = sustainable(r, "parley"), sustainable(r, "peer")
    lines += ["", f"sustainable 1:1 rate at p99 <= 50 ms: parley {ps}/s, peer {qs}/s, ratio "
              f"{(ps / qs) if qs else 'n/a'}"]
    for name in ("parley", "peer"):
        i = r["idle"].get(name)
        if i:
            lines.append(f"idle {name}: {i['sockets']} sockets, {i['user_bytes_per_conn']} B user-space per "
                         f"connection, {i['kernel_tcp_bytes_per_conn']} B kernel TCP per connection (both ends)")
        c = r["connect"].get(name)
        if c:
            lines.append(f"connect {name}: {c['handshakes_per_s']} handshakes/s, "
                         f"{c['handshakes_per_cpu_s']} per server CPU-second")
    # A step's own CPU includes fixed costs (connecting the sockets, clients polling the broker
    # while idle); the slope between two steps that both kept up is the cost per message.
    for name in ("parley", "peer"):
        ok = [s for s in r["steps"] if s["system"] == name and s["deliver_ms"]["p99"] <= 50
              and s["delivered"] >= 0.99 * s["sent"]]
        for a, b in zip(ok, ok[1:]):
            dm = b["delivered"] - a["delivered"]
            if dm > 0:
                lines.append(f"marginal own CPU {name} {a['rate']}->{b['rate']}/s: "
                             f"{(b['own_cpu_s'] - a['own_cpu_s']) * 1000 / dm:.3f} s per 1000 messages")
    fan = [s.get("deliveries_per_gateway_cpu_s") for s in r["steps"] if s["system"] == "parley"]
    lines.append(f"gateway fan-out: deliveries per gateway CPU-second by step: {fan}")
    return "\n".join(lines) + "\n"


def plot(r):
    if not shutil.which("gnuplot"):
        return
    data = os.path.join(OUT, "latency.dat")
    with open(data, "w") as f:
        for name in ("parley", "peer"):
            f.write(f"# {name}\n")
            for s in r["steps"]:
                if s["system"] == name:
                    f.write(f"{s['rate']} {s['deliver_ms']['p50']} {s['deliver_ms']['p99']}\n")
            f.write("\n\n")
    script = f"""set terminal pngcairo size 900,560
set output '{os.path.join(OUT, "latency.png")}'
set logscale xy
set xlabel 'offered rate (messages/s)'
set ylabel 'send to deliver (ms)'
set key left top
plot '{data}' index 0 using 1:3 with linespoints title 'Parley p99', \\
     '{data}' index 0 using 1:2 with linespoints title 'Parley p50', \\
     '{data}' index 1 using 1:3 with linespoints title 'Socket.IO peer p99', \\
     '{data}' index 1 using 1:2 with linespoints title 'Socket.IO peer p50'
"""
    subprocess.run(["gnuplot"], input=script, text=True)


if __name__ == "__main__":
    main()
