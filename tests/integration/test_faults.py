"""DESIGN section 5 under faults: each scenario runs traffic through the edge, injects one
fault, syncs every device and prints one ledger line. Every scenario requires lost=0,
stored_dups=0, shown_dups=0, seq_gaps_final=0 and order_violations=0.

PARLEY_FAULT_SCALE (default 1) multiplies users and messages: `make test` runs the short
version, `make chaos` a long one."""
import asyncio
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import re

from conftest import VAR, Api, cluster, gateway_ports, infra, kill9, pid_of
from group_ledger import GroupLedger, Population
from ledger import Ledger, run_scenario
from wsclient import Chat

SCALE = float(os.environ.get("PARLEY_FAULT_SCALE", "1"))


def users(n):
    return max(2, int(n * SCALE))


def msgs(n):
    return max(10, int(n * SCALE))


def assert_clean(r):
    assert r["acked"] > 0
    assert (r["lost"], r["stored_dups"], r["shown_dups"], r["seq_gaps"], r["order_violations"]) == \
        (0, 0, 0, 0, 0), r


def scenario(edge, mongo, name, total, rate, fault=None, fault_at=1.5, nusers=10, devices=1,
             prepare=None, transport="ws", **kw):
    ledger = Ledger(edge, mongo, users(nusers), devices, transport=transport)
    ledger.setup()
    if prepare is not None:
        prepare(ledger)
    t0 = time.monotonic()
    recovery = asyncio.run(run_scenario(ledger, msgs(total), rate, fault, fault_at, **kw))
    extra = f" recovery_s={recovery:.2f}" if recovery is not None else ""
    extra += f" duration_s={time.monotonic() - t0:.1f}"
    r = ledger.check(name, extra)
    assert_clean(r)
    return ledger, r


async def restart_after(name, seconds=2.0):
    await asyncio.sleep(seconds)
    await asyncio.to_thread(cluster, "up")


def kill9_then_restart(name, down_s=2.0):
    async def fault():
        kill9(name)
        await restart_after(name, down_s)
    return fault


def wait_gone(pid, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def test_1_steady_state(edge, mongo):
    # The full-size run of the issue: PARLEY_FAULT_SCALE=5 PARLEY_STEADY_TOTAL=20000 (100
    # clients, 20,000 messages) at PARLEY_STEADY_RATE per second (README, "About the
    # database", on what FerretDB sustains); `make test` runs 800 from 20 users with two
    # devices each.
    total = os.environ.get("PARLEY_STEADY_TOTAL")
    if total:
        ledger = Ledger(edge, mongo, users(20), 1)
        ledger.setup()
        t0 = time.monotonic()
        asyncio.run(run_scenario(ledger, int(total), float(os.environ.get("PARLEY_STEADY_RATE", "200"))))
        r = ledger.check("steady_state", f" duration_s={time.monotonic() - t0:.1f}")
        assert_clean(r)
        return
    scenario(edge, mongo, "steady_state", 800, 200, nusers=20, devices=2)


def test_2_client_resends(edge, mongo):
    scenario(edge, mongo, "client_resends", 400, 100, resend_frac=0.10, reconnect_frac=0.05)


def test_3_kill_gateway(edge, mongo):
    scenario(edge, mongo, "kill9_gateway", 400, 100, kill9_then_restart("gateway0"), devices=2)


def test_4_kill_router(edge, mongo):
    scenario(edge, mongo, "kill9_router", 400, 100, kill9_then_restart("router"))


def test_5_kill_store(edge, mongo):
    scenario(edge, mongo, "kill9_store", 400, 100, kill9_then_restart("store"))


def test_6_kill_auth(edge, mongo):
    # Open sockets keep working: tokens are verified by the gateways themselves.
    scenario(edge, mongo, "kill9_auth", 300, 100, kill9_then_restart("auth", 3.0))


def test_7_sigterm_each_service(edge, mongo):
    async def fault():
        for name in ("gateway1", "router", "store", "auth"):
            pid = pid_of(name)
            os.kill(pid, signal.SIGTERM)
            await asyncio.to_thread(wait_gone, pid)
            await asyncio.to_thread(cluster, "up")
    scenario(edge, mongo, "sigterm_each", 600, 100, fault)


def test_8_kafka_restart(edge, mongo):
    async def fault():
        await asyncio.to_thread(infra, "stop", "kafka")
        await asyncio.sleep(2)
        await asyncio.to_thread(infra, "start", "kafka")
    scenario(edge, mongo, "kafka_restart", 400, 100, fault)


def test_9_redis_restart_without_data(edge, mongo):
    async def fault():
        await asyncio.to_thread(infra, "stop", "redis")
        shutil.rmtree(os.path.join(VAR, "redis"), ignore_errors=True)
        await asyncio.to_thread(infra, "start", "redis")
    scenario(edge, mongo, "redis_restart_empty", 400, 100, fault, devices=2)


def test_10_mongodb_restart(edge, mongo):
    async def fault():
        await asyncio.to_thread(infra, "stop", "ferretdb")
        await asyncio.sleep(2)
        await asyncio.to_thread(infra, "start", "ferretdb")
    scenario(edge, mongo, "mongodb_restart", 400, 100, fault)


def test_11_slow_reader(edge, mongo):
    """One device reads slowly: it is closed with 1013 at its queue cap, reconnects, catches
    up by sync; everyone else's messages keep flowing."""
    def slow_first(ledger):
        ledger.devices[ledger.users[0]][0].slow = True

    ledger, r = scenario(edge, mongo, "slow_reader", 200, 50, nusers=4, prepare=slow_first,
                         to_first=0.8, size=40000)
    slow = ledger.devices[ledger.users[0]][0]
    print(f"slow device closed with {slow.closed_codes}, reconnected {slow.reconnects - 1} times")
    # It was cut off and caught up by sync. Which limit cut it depends on the race between its
    # 1 MiB send queue and the heartbeat (1.5 s here): a ping waits behind the backlog it is not
    # reading, and a close frame (1013) too, so the device mostly sees the drop (1006).
    # test_chat.py::test_slow_reader_is_closed_with_1013_and_others_unaffected shows the 1013.
    assert slow.closed_codes and set(slow.closed_codes) <= {1013, 1006}


def test_13_sigterm_router_while_redis_is_down(edge, mongo):
    """The router retries a batch while Redis is down; SIGTERM then ends it within 5 s (the
    backoff waits for the signal too), with the batch's offsets unstored: after Redis and the
    router are back, the ledger finds nothing lost."""
    took = {}

    async def fault():
        await asyncio.to_thread(infra, "stop", "redis")
        await asyncio.sleep(2.0)  # traffic goes on: the router holds a batch and retries
        pid = pid_of("router")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        await asyncio.to_thread(wait_gone, pid, 30)
        took["exit_s"] = time.monotonic() - t0
        await asyncio.to_thread(infra, "start", "redis")
        await asyncio.to_thread(cluster, "up")

    scenario(edge, mongo, "sigterm_router_redis_down", 300, 100, fault)
    print(f"router exit after SIGTERM with Redis down: {took['exit_s']:.2f} s")
    assert took["exit_s"] < 5.0, took


# ---- groups (guarantee 8): one group over three gateways ----
# `make test` runs the steady scenario with PARLEY_GROUP_MEMBERS=100; `make faults-groups`
# runs it and the kill -9 scenarios with 500 members (the size; docs/guarantees.md).
GROUP_MEMBERS = int(os.environ.get("PARLEY_GROUP_MEMBERS", "100"))
group_faults = pytest.mark.skipif(not os.environ.get("PARLEY_GROUP_FAULTS"),
                                  reason="make faults-groups only")


@pytest.fixture(scope="module")
def population():
    """GROUP_MEMBERS users with a token each, and a third gateway, for the group scenarios."""
    cluster("scale", "3")
    try:
        yield Population(Api(f"http://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}"), GROUP_MEMBERS)
    finally:
        cluster("scale", "2")


def group_scenario(edge, mongo, population, name, fault=None, total=200, rate=20):
    """80% of the users are members at creation; while `total` messages from 5 senders flow,
    8% of them are removed one by one and the other 20% added in batches of 20."""
    ledger = GroupLedger(edge, mongo, population, initial=int(GROUP_MEMBERS * 0.8),
                         removals=int(GROUP_MEMBERS * 0.08))
    ledger.setup()
    t0 = time.monotonic()

    async def go():
        # Devices pull history from threads: more than asyncio's default handful.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
        return await run_scenario(ledger, msgs(total), rate, fault, fault_at=3.0)

    recovery = asyncio.run(go())
    devices = [d for devs in ledger.devices.values() for d in devs]
    # Where the devices were at the start: a killed gateway's devices end on the others.
    spread = sorted(sum(1 for d in devices if (d.first_gateway or "").startswith(f"gw{i}-"))
                    for i in range(3))
    extra = f" recovery_s={recovery:.2f}" if recovery is not None else ""
    extra += f" devices_per_gateway={spread} duration_s={time.monotonic() - t0:.1f}"
    r = ledger.check(name, extra)
    assert_clean(r)
    assert (r["outside"], r["missing_items"]) == (0, 0), r
    assert r["removed_ok"] == len(ledger.removed), r
    assert all(n > 0 for n in spread), spread
    return ledger, r


def test_14_group_steady_state(edge, mongo, population):
    group_scenario(edge, mongo, population, "group_steady")


@group_faults
def test_15_group_kill_gateway(edge, mongo, population):
    group_scenario(edge, mongo, population, "group_kill9_gateway", kill9_then_restart("gateway0"))


@group_faults
def test_16_group_kill_store(edge, mongo, population):
    group_scenario(edge, mongo, population, "group_kill9_store", kill9_then_restart("store"))


@group_faults
def test_17_group_kill_router(edge, mongo, population):
    group_scenario(edge, mongo, population, "group_kill9_router", kill9_then_restart("router"))


@pytest.mark.skipif(not os.environ.get("PARLEY_CHAOS_SECONDS"), reason="make chaos only")
def test_chaos_soak(edge, mongo):
    """For PARLEY_CHAOS_SECONDS, a random service is killed, stopped or restarted every 15 to
    45 s while traffic flows; then the ledger is checked."""
    import random

    seconds = float(os.environ["PARLEY_CHAOS_SECONDS"])
    rnd = random.Random()
    faults = []

    async def chaos():
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(rnd.uniform(15, 45))
            kind = rnd.choice(["kill9", "sigterm", "infra"])
            if kind == "infra":
                name = rnd.choice(["kafka", "redis", "ferretdb"])
                faults.append(f"restart:{name}")
                await asyncio.to_thread(infra, "stop", name)
                await asyncio.sleep(rnd.uniform(1, 5))
                await asyncio.to_thread(infra, "start", name)
            else:
                name = rnd.choice(["gateway0", "gateway1", "router", "store", "auth"])
                faults.append(f"{kind}:{name}")
                pid = pid_of(name)
                os.kill(pid, signal.SIGKILL if kind == "kill9" else signal.SIGTERM)
                await asyncio.to_thread(wait_gone, pid)
                await asyncio.sleep(rnd.uniform(0, 3))
                await asyncio.to_thread(cluster, "up")

    rate = 50
    ledger, r = scenario(edge, mongo, "chaos", int(seconds * rate), rate, chaos, fault_at=0.0,
                         nusers=20, devices=2)
    print("faults injected:", " ".join(faults))


def test_12_scale_out_then_drain_a_gateway(edge, mongo):
    """Horizontal scaling, shown with processes: 300 sockets (30 users x 10 devices) on two
    gateways behind the edge; a third gateway is added (`cluster.sh scale 3`, which reloads
    the edge) and new connections reach it; then one of the first two gets SIGTERM under
    traffic: its clients receive 1001 and reconnect through the edge to the others, and the
    ledger shows nothing lost or doubled. Prints the drain time."""
    info = {}
    held = {}

    def prepare(ledger):
        held["ledger"] = ledger

    async def fault():
        devices = [d for devs in held["ledger"].devices.values() for d in devs]
        info["before"] = sorted(sum(1 for d in devices if (d.gateway or "").startswith(f"gw{i}-"))
                                for i in range(2))
        await asyncio.to_thread(cluster, "scale", "3")
        # nginx reloads gracefully: until its new worker has taken over, connections still
        # go by the old upstream list. Wait for the first one to reach the third gateway.
        for _ in range(100):
            probe = await Chat.connect(devices[0].token)
            landed = probe.gateway.startswith("gw2-")
            await probe.close()
            if landed:
                break
            await asyncio.sleep(0.1)
        extra = [await Chat.connect(devices[0].token) for _ in range(30)]
        info["new_on_third"] = sum(1 for c in extra if c.gateway.startswith("gw2-"))
        for c in extra:
            await c.close()
        pid = pid_of("gateway1")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)

        def exited():
            wait_gone(pid)
            info["exit_s"] = time.monotonic() - t0
        # The fault ends with the signal: traffic goes on while the gateway drains and exits.
        info["exit"] = threading.Thread(target=exited)
        info["exit"].start()

    try:
        # Users talk in pairs: 300 sockets but 15 conversations, so the syncs of 300 devices
        # (at start, after the drain, at the end) stay cheap on FerretDB, which scans.
        ledger, r = scenario(edge, mongo, "scale_out_and_drain", 1000, 100, fault, fault_at=1.0,
                             nusers=30, devices=10, prepare=prepare, pairs=True)
    finally:
        if "exit" in info:
            info["exit"].join(120)
        cluster("scale", "2")
    # The gateway's own account of its drain: signal -> sockets closed -> process done.
    events = {}
    with open(os.path.join(VAR, "log", "gateway1.log"), errors="replace") as f:
        for line in f:
            for ev in ("draining", "stopping", "stopped"):
                if f'"event":"{ev}"' in line:
                    events[ev] = line.split('"ts":"')[1][11:23]
    def ms(t):
        h, m, sec = t.split(":")
        return (int(h) * 3600 + int(m) * 60 + float(sec)) * 1000
    drain_ms = ms(events["stopped"]) - ms(events["draining"])
    print(f"gateway1 drain: signal {events['draining']}, sockets closed {events.get('stopping')}, "
          f"stopped {events['stopped']}: {drain_ms:.0f} ms (the process exit after that includes "
          f"the sanitizer's leak check)")
    devices = [d for devs in ledger.devices.values() for d in devs]
    moved = [d for d in devices if 1001 in d.closed_codes]
    print(f"scale_out sockets={len(devices)} per_gateway_before={info['before']} "
          f"new_connections_on_third={info['new_on_third']}/30 drained_clients={len(moved)} "
          f"drain_ms={drain_ms:.0f} process_exit_s={info.get('exit_s', -1):.2f}")
    assert len(devices) == users(30) * 10
    # Pushes wasted on messages a device already showed: with the sync ending where pushes
    # begin and resends answered by an ack, few (8,083 in 20,000 needed before either).
    assert r["redelivered"] <= 0.05 * r["needed"], r
    # New sockets reach the new gateway. (Not all of them: nginx's reload starts workers whose
    # least_conn counts begin at zero, so the three share new sockets about evenly.)
    assert info["new_on_third"] >= 3, info
    assert moved, "the drained gateway's clients should have received 1001"
    assert all(not d.gateway.startswith("gw1-") for d in moved), "they reconnect elsewhere"
