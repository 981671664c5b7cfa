"""Read and delivered cursors and their receipts, and typing (DESIGN 7.5): cursors that only move forward
and never past the conversation's end, written to `members` coalesced, pushed as receipts to
the reader's other devices always and to the other members only where the reader's settings
and blocks allow; exact unread counts; the receipts endpoint of large groups; a store killed
with kill -9 while read frames flow. Real binaries, Kafka, Redis and FerretDB."""
import asyncio
import json
import os

from conftest import Api, cluster, conversation, dm, kill9, user_with_token, wait_until
from wsclient import Chat


def run(coro):
    return asyncio.run(coro)


async def send_n(dev, to, n):
    cids = [await dev.send(to, f"m{i}") for i in range(n)]
    await dev.wait(lambda: all(c in dev.acks for c in cids))
    return cids


def test_read_moves_forward_only_and_clears_unread(edge, mongo):
    (alice, ta), (bob, tb) = user_with_token(edge, "rc"), user_with_token(edge, "rc")
    conv = dm(alice, bob)

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        await send_n(a, bob, 3)
        await b.wait(lambda: len(b.msgs) == 3)
        assert conversation(edge, tb, conv)["unread"] == 3
        await b.cursor("read", conv, 2)
        await b.wait(lambda: len(b.cursor_acks) == 1)
        assert b.cursor_acks[0] == {"type": "ack", "cursor": "read", "conv": conv, "seq": 2,
                                    "_rx": b.cursor_acks[0]["_rx"]}
        # blocking waits run in a thread: the sockets must go on answering the gateway's pings
        await asyncio.to_thread(wait_until, lambda: conversation(edge, tb, conv)["read_seq"] == 2, timeout=10)
        assert conversation(edge, tb, conv)["unread"] == 1
        await b.cursor("read", conv, 1)  # lower: ignored, not an error
        await b.cursor("read", conv, 1000)  # past the end: held at the last seq
        await b.wait(lambda: len(b.cursor_acks) == 3)
        assert not b.errors
        await asyncio.to_thread(wait_until, lambda: conversation(edge, tb, conv)["read_seq"] == 3, timeout=10)
        await asyncio.sleep(1.5)  # a flush after the lower one could only have moved it back
        e = conversation(edge, tb, conv)
        assert (e["read_seq"], e["unread"]) == (3, 0)
        doc = mongo.members.find_one({"_id": f"{conv}|{bob}"})
        assert doc["read_seq"] == 3 and doc["delivered_seq"] == 3
        await send_n(a, bob, 2)
        await asyncio.to_thread(wait_until, lambda: conversation(edge, tb, conv)["unread"] == 2, timeout=10)
        await a.close()
        await b.close()

    run(go())


def test_read_on_one_device_reaches_the_others(edge):
    (alice, ta), (bob, tb) = user_with_token(edge, "rc"), user_with_token(edge, "rc")
    conv = dm(alice, bob)

    async def go():
        a = await Chat.connect(ta)
        b1 = await Chat.connect(tb)
        b2 = await Chat.connect(tb)
        await send_n(a, bob, 2)
        await b2.wait(lambda: len(b2.msgs) == 2)
        await b1.cursor("delivered", conv, 2)
        await b1.cursor("read", conv, 2)
        # The other device and the sender hear it; the reading device has its ack.
        await b2.wait(lambda: any(r["kind"] == "read" for r in b2.receipts))
        await a.wait(lambda: any(r["kind"] == "read" for r in a.receipts))
        got = [r for r in b2.receipts if r["kind"] == "read"][0]
        assert (got["conv"], got["user"], got["seq"]) == (conv, bob, 2)
        assert any(r["kind"] == "delivered" and r["seq"] == 2 for r in a.receipts)
        await b1.wait(lambda: len(b1.cursor_acks) == 2)
        assert not b1.receipts
        await asyncio.to_thread(wait_until, lambda: conversation(edge, tb, conv)["unread"] == 0, timeout=10)
        for d in (a, b1, b2):
            await d.close()

    run(go())


def test_no_receipt_when_the_reader_turned_them_off(edge):
    (alice, ta), (bob, tb) = user_with_token(edge, "rc"), user_with_token(edge, "rc")
    conv = dm(alice, bob)
    r = edge.call("PATCH", "/v1/users/me/settings", {"read_receipts": False}, token=tb)
    assert r.status == 200, r

    async def go():
        a = await Chat.connect(ta)
        b1 = await Chat.connect(tb)
        b2 = await Chat.connect(tb)
        await send_n(a, bob, 1)
        await b1.wait(lambda: len(b1.msgs) == 1)
        await b1.cursor("read", conv, 1)
        await b2.wait(lambda: len(b2.receipts) == 1)  # own devices: always
        # Alice reads bob's side of nothing: her own read still reaches bob.
        cid = await b1.send(alice, "reply")
        await a.wait(lambda: any(m["client_id"] == cid for m in a.msgs))
        await a.cursor("read", conv, 2)
        await b1.wait(lambda: any(r["user"] == alice for r in b1.receipts))
        await asyncio.sleep(1.5)
        assert not [r for r in a.receipts if r["user"] == bob]
        await asyncio.to_thread(wait_until, lambda: conversation(edge, tb, conv)["read_seq"] == 1, timeout=10)
        for d in (a, b1, b2):
            await d.close()

    run(go())


def test_no_receipt_to_a_blocked_user(edge):
    (alice, ta), (bob, tb), (carol, tc), (dave, td) = (user_with_token(edge, "rc")
                                                       for _ in range(4))
    conv = dm(alice, bob)

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        c = await Chat.connect(tc)
        d = await Chat.connect(td)
        await send_n(a, bob, 1)
        await b.wait(lambda: len(b.msgs) == 1)
        assert edge.call("PUT", f"/v1/blocks/{alice}", token=tb).status == 204
        await b.cursor("read", conv, 1)
        # In a group: bob blocked alice, carol blocked bob; dave hears bob's read, they do not.
        g = edge.call("POST", "/v1/groups", {"name": "rc", "members": [bob, carol, dave]},
                      token=ta)
        assert g.status == 201, g
        gconv = g.json["conv"]
        assert edge.call("PUT", f"/v1/blocks/{bob}", token=tc).status == 204
        cid = await a.sendc(gconv, "hi group")
        await b.wait(lambda: any(m["client_id"] == cid for m in b.msgs))
        await b.cursor("read", gconv, 2)
        await d.wait(lambda: any(r["conv"] == gconv and r["user"] == bob for r in d.receipts))
        await asyncio.sleep(1.5)
        assert not [r for r in a.receipts if r["user"] == bob], "bob blocked alice"
        assert not [r for r in c.receipts if r["user"] == bob], "carol blocked bob"
        for dev in (a, b, c, d):
            await dev.close()

    run(go())


def test_bad_cursor_frames(edge):
    (alice, ta), (bob, tb), (eve, te) = (user_with_token(edge, "rc") for _ in range(3))
    g = edge.call("POST", "/v1/groups", {"name": "closed", "members": [bob]}, token=ta).json

    async def go():
        e = await Chat.connect(te)
        for frame in ({"type": "read", "conv": dm(alice, bob), "seq": 1},  # not hers
                      {"type": "read", "conv": g["conv"], "seq": 1},  # not a member
                      {"type": "delivered", "conv": f"u:{alice}", "seq": 1}):  # not her own
            await e.ws.send(json.dumps(frame))
        for frame in ({"type": "read", "conv": dm(alice, eve), "seq": "1"},
                      {"type": "read", "conv": dm(alice, eve), "seq": 0},
                      {"type": "read", "conv": "x:1", "seq": 1},
                      {"type": "read", "seq": 1}):
            await e.ws.send(json.dumps(frame))
        await e.wait(lambda: len(e.errors) == 7)
        # the group's answer comes from parley-auth, after the others
        assert sorted(x["code"] for x in e.errors) == ["forbidden"] * 3 + ["invalid"] * 4
        assert not e.cursor_acks
        await e.close()

    run(go())


def test_receipts_endpoint_counts_members(edge):
    (alice, ta), (bob, tb), (carol, tc), (eve, te) = (user_with_token(edge, "rc") for _ in range(4))
    g = edge.call("POST", "/v1/groups", {"name": "count", "members": [bob, carol]}, token=ta).json
    conv = g["conv"]

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        cid = await a.sendc(conv, "count me")
        await b.wait(lambda: any(m["client_id"] == cid for m in b.msgs))
        await b.cursor("read", conv, 2)
        await b.wait(lambda: len(b.cursor_acks) == 1)
        await a.close()
        await b.close()

    run(go())

    def counts():
        r = edge.call("GET", f"/v1/conversations/{conv}/receipts?seq=2", token=ta)
        assert r.status == 200, r
        return r.json if r.json["read"] == 1 else None

    got = wait_until(counts, timeout=10)
    assert (got["members"], got["read"], got["delivered"]) == (3, 1, 1)
    assert edge.call("GET", f"/v1/conversations/{conv}/receipts?seq=2", token=te).status == 403
    assert edge.call("GET", f"/v1/conversations/{conv}/receipts", token=ta).status == 400


def test_store_killed_while_reads_flow_keeps_every_cursor(edge, mongo):
    """kill -9 of the store while 1,000 read frames flow: every acknowledged cursor is written
    once the store is back (the final cursors equal the highest seq each member read)."""
    pairs = [(user_with_token(edge, "rk"), user_with_token(edge, "rk")) for _ in range(5)]
    per = 200

    async def go():
        devs = []
        for (s, ts), (r, tr) in pairs:
            devs.append((await Chat.connect(ts), await Chat.connect(tr), dm(s, r)))
        await asyncio.gather(*(a.send_many(r, [f"m{i}" for i in range(per)])
                               for (a, _, _), (_, (r, _)) in zip(devs, pairs)))
        for a, b, conv in devs:
            await b.wait(lambda: len(b.msgs) == per, timeout=60)
        killed = False
        for i in range(1, per + 1):
            for a, b, conv in devs:
                await b.cursor("read", conv, i)
            if i == per // 2 and not killed:
                kill9("store")
                killed = True
            await asyncio.sleep(0.025)  # 40 frames/s a socket, under its cursor budget
        for a, b, conv in devs:
            await b.wait(lambda: len(b.cursor_acks) == per, timeout=60)
        cluster("up")
        for a, b, conv in devs:
            await a.close()
            await b.close()
        return devs

    devs = run(go())
    for (_, _, conv), ((_, _), (r, _)) in zip(devs, pairs):
        wait_until(lambda: (mongo.members.find_one({"_id": f"{conv}|{r}"}) or {}).get("read_seq")
                   == per, timeout=60)


def counter(port, name):
    raw = Api(f"http://127.0.0.1:{port}").call("GET", "/metrics").raw
    text = raw.decode() if isinstance(raw, bytes) else raw
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pipeline_counts():
    """What went through the durable topics: the store's messages and cursors, the router's."""
    return (counter(os.environ["PARLEY_STORE_PORT"], "parley_store_messages_total"),
            counter(os.environ["PARLEY_STORE_PORT"], "parley_store_cursors_total"),
            counter(os.environ["PARLEY_ROUTER_PORT"], "parley_router_routed_total"))


def test_typing_reaches_the_other_member_and_lapses(edge, mongo):
    (alice, ta), (bob, tb) = user_with_token(edge, "ty"), user_with_token(edge, "ty")
    conv = dm(alice, bob)

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        before = pipeline_counts()
        await a.ws.send(json.dumps({"type": "typing", "conv": conv, "state": "start"}))
        await b.wait(lambda: b.typing, timeout=10)
        assert {k: v for k, v in b.typing[0].items() if k != "_rx"} == \
            {"type": "typing", "conv": conv, "user": alice, "state": "start"}
        started = b.typing[0]["_rx"]
        # No stop from alice: the gateway ends it after 10 s without a refresh.
        await b.wait(lambda: len(b.typing) == 2, timeout=15)
        assert b.typing[1]["state"] == "stop"
        assert 9.0 <= b.typing[1]["_rx"] - started <= 12.5
        # A refreshed start keeps it, an explicit stop ends it at once.
        await a.ws.send(json.dumps({"type": "typing", "conv": conv, "state": "start"}))
        await b.wait(lambda: len(b.typing) == 3)
        await a.ws.send(json.dumps({"type": "typing", "conv": conv, "state": "stop"}))
        await b.wait(lambda: len(b.typing) == 4)
        assert b.typing[3]["state"] == "stop"
        assert not a.typing and not a.errors
        # Nothing went through Kafka's durable topics nor into the database.
        assert pipeline_counts() == before
        assert mongo.messages.count_documents({"conv": conv}) == 0
        await a.close()
        await b.close()

    run(go())


def test_typing_respects_blocks_groups_and_limits(edge):
    (alice, ta), (bob, tb), (carol, tc), (eve, te) = (user_with_token(edge, "ty") for _ in range(4))
    g = edge.call("POST", "/v1/groups", {"name": "ty", "members": [bob, carol]}, token=ta).json
    assert edge.call("PUT", f"/v1/blocks/{alice}", token=tc).status == 204

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        c = await Chat.connect(tc)
        e = await Chat.connect(te)
        await a.ws.send(json.dumps({"type": "typing", "conv": g["conv"], "state": "start"}))
        await b.wait(lambda: b.typing)
        assert b.typing[0]["user"] == alice and b.typing[0]["conv"] == g["conv"]
        # carol blocked alice: no typing either way, in the group or 1:1.
        await a.ws.send(json.dumps({"type": "typing", "conv": dm(alice, carol), "state": "start"}))
        await c.ws.send(json.dumps({"type": "typing", "conv": dm(alice, carol), "state": "start"}))
        # eve is in neither conversation.
        await e.ws.send(json.dumps({"type": "typing", "conv": g["conv"], "state": "start"}))
        await e.ws.send(json.dumps({"type": "typing", "conv": dm(alice, bob), "state": "start"}))
        await e.wait(lambda: len(e.errors) == 2)
        assert [x["code"] for x in e.errors] == ["forbidden", "forbidden"]
        # A flood is refused after the socket's burst.
        for _ in range(20):
            await b.ws.send(json.dumps({"type": "typing", "conv": g["conv"], "state": "start"}))
        await b.wait(lambda: any(x["code"] == "rate_limited" for x in b.errors))
        await asyncio.sleep(1.0)
        assert not [t for t in c.typing if t["user"] == alice]
        assert not [t for t in a.typing if t["user"] == carol]
        assert [t for t in c.typing if t["user"] == bob], "bob's typing reaches carol"
        for d in (a, b, c, e):
            await d.close()

    run(go())
