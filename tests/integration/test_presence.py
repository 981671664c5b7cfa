"""Presence that people see (DESIGN 7.3): one online for the first device anywhere, one
offline after the last (with a grace against reconnects), only to those allowed to see it,
last_seen kept durably; a gateway killed with kill -9, and Redis restarted. Real binaries,
Kafka, Redis and FerretDB. The cluster's grace is the default (PARLEY_PRESENCE_GRACE_MS)."""
import asyncio
import time

from conftest import (cluster, gateway_ports, infra, kill9, user_with_token, wait_cluster_ready,
                      wait_until)
from wsclient import Chat

GRACE = 5.0


def run(coro):
    return asyncio.run(coro)


def befriend(api, a, ta, b, tb):
    assert api.call("POST", "/v1/contacts", {"user": b}, token=ta).status == 201
    assert api.call("POST", f"/v1/contacts/{a}/accept", token=tb).status == 200


def gw_url(i):
    return f"ws://127.0.0.1:{gateway_ports()[i]}/ws"


def statuses(chat, user):
    return [f["status"] for f in chat.presence if f["user"] == user]


def test_one_online_and_one_offline_over_two_devices_on_two_gateways(edge):
    alice, ta = user_with_token(edge, "pa")
    bob, tb = user_with_token(edge, "pb")
    befriend(edge, alice, ta, bob, tb)

    async def go():
        b = await Chat.connect(tb)
        a1 = await Chat.connect(ta, url=gw_url(0))
        await b.wait(lambda: statuses(b, alice) == ["online"], timeout=10)
        frame = b.presence[0]
        assert frame["last_seen"].endswith("Z")
        a2 = await Chat.connect(ta, url=gw_url(1))  # a second device, another gateway
        await a1.close()
        await asyncio.sleep(GRACE + 2)
        assert statuses(b, alice) == ["online"], "one device is still there"
        await a2.close()
        await b.wait(lambda: statuses(b, alice) == ["online", "offline"], timeout=GRACE + 10)
        # A reconnect within the grace announces nothing.
        a3 = await Chat.connect(ta, url=gw_url(0))
        await b.wait(lambda: statuses(b, alice) == ["online", "offline", "online"], timeout=10)
        await a3.close()
        a4 = await Chat.connect(ta, url=gw_url(1))
        await asyncio.sleep(GRACE + 2)
        assert statuses(b, alice) == ["online", "offline", "online"], b.presence
        await a4.close()
        await b.wait(lambda: len(statuses(b, alice)) == 4, timeout=GRACE + 10)
        await b.close()

    run(go())
    # last_seen kept: by REST, from the durable copy too.
    r = edge.call("GET", f"/v1/presence?users={alice},nobody-here", token=tb)
    assert r.status == 200 and [p["user"] for p in r.json["presence"]] == [alice]
    assert r.json["presence"][0]["status"] == "offline" and r.json["presence"][0]["last_seen"]
    r = edge.call("GET", "/v1/contacts", token=tb)
    assert r.json["contacts"][0]["presence"]["status"] == "offline"


def test_privacy_of_presence(edge):
    """Who hears alice come online: a contact does; a stranger, a user alice blocked, a user
    who blocked alice, and everyone when alice's presence is "nobody", do not."""
    alice, ta = user_with_token(edge, "pv")
    friend, tf = user_with_token(edge, "pf")
    stranger, ts = user_with_token(edge, "ps")
    blocked, tbk = user_with_token(edge, "pk")
    blocker, tbr = user_with_token(edge, "pr")
    for who, tok in ((friend, tf), (blocked, tbk), (blocker, tbr)):
        befriend(edge, alice, ta, who, tok)
    assert edge.call("PUT", f"/v1/blocks/{blocked}", token=ta).status == 204
    assert edge.call("PUT", f"/v1/blocks/{alice}", token=tbr).status == 204

    async def go():
        viewers = {n: await Chat.connect(t) for n, t in
                   (("friend", tf), ("stranger", ts), ("blocked", tbk), ("blocker", tbr))}
        a = await Chat.connect(ta)
        await viewers["friend"].wait(lambda: statuses(viewers["friend"], alice) == ["online"])
        await a.close()
        await viewers["friend"].wait(
            lambda: statuses(viewers["friend"], alice) == ["online", "offline"], timeout=20)
        for n in ("stranger", "blocked", "blocker"):
            assert statuses(viewers[n], alice) == [], n
        # Hidden presence: nobody hears, and the REST read shows nothing.
        r = edge.call("PATCH", "/v1/users/me/settings", {"presence": "nobody"}, token=ta)
        assert r.status == 200
        a = await Chat.connect(ta)
        await asyncio.sleep(2.0)
        assert statuses(viewers["friend"], alice) == ["online", "offline"]
        r = edge.call("GET", f"/v1/presence?users={alice}", token=tf)
        assert r.json == {"presence": []}
        await a.close()
        for v in viewers.values():
            await v.close()

    run(go())
    for tok in (ts, tbk, tbr):
        r = edge.call("GET", f"/v1/presence?users={alice}", token=tok)
        assert (r.status, r.json) == (200, {"presence": []})
    assert edge.call("GET", "/v1/presence", token=tf).status == 400
    assert edge.call("GET", f"/v1/presence?users={alice}").status == 401


async def alice_online_for_bob(edge, prefix):
    """Two contacts: alice on gateway 0, bob on gateway 1 once he has heard her online."""
    alice, ta = user_with_token(edge, prefix)
    bob, tb = user_with_token(edge, prefix)
    befriend(edge, alice, ta, bob, tb)
    b = await Chat.connect(tb, url=gw_url(1))
    a = await Chat.connect(ta, url=gw_url(0))
    await b.wait(lambda: statuses(b, alice) == ["online"])
    return alice, a, b, tb


def test_a_gateway_killed_with_kill9_takes_its_users_offline_within_30s(edge):
    async def go():
        alice, a, b, _ = await alice_online_for_bob(edge, "pk9")
        t0 = time.monotonic()
        kill9("gateway0")
        await b.wait(lambda: statuses(b, alice) == ["online", "offline"], timeout=30)
        took = time.monotonic() - t0
        print(f"offline announced {took:.1f} s after kill -9")
        await b.close()
        a._task.cancel()

    try:
        run(go())
    finally:
        cluster("up")
        wait_cluster_ready()


def test_redis_restart_rebuilds_presence_without_a_false_offline(edge):
    async def go():
        alice, a, b, tb = await alice_online_for_bob(edge, "prr")
        infra("stop", "redis")
        infra("start", "redis")
        # Both gateways register their devices again within seconds; nobody went offline.
        await asyncio.sleep(GRACE + 8)
        assert statuses(b, alice) == ["online"], b.presence
        assert a.closed is None and b.closed is None
        r = edge.call("GET", f"/v1/presence?users={alice}", token=tb)
        assert r.json["presence"][0]["status"] == "online", r.json
        # Presence works as before: the last device gone is announced once.
        await a.close()
        await b.wait(lambda: statuses(b, alice) == ["online", "offline"], timeout=GRACE + 10)
        await b.close()

    try:
        run(go())
    finally:
        wait_cluster_ready()
