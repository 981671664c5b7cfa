"""Edit and recall (DESIGN 7.5): new items in the stream with target_seq, the target changed in
place (latest content and edited_at, or content erased and recalled: true), idempotent by
client_id, allowed to the author within the windows (PARLEY_EDIT_WINDOW_S and
PARLEY_RECALL_WINDOW_S, short in this suite: see run.sh) or, for a recall, to a group admin.
Real binaries, Kafka, Redis and FerretDB."""
import asyncio
import json
import os
import uuid

from conftest import dm, history, user_with_token
from wsclient import Chat

WINDOW_S = int(os.environ.get("PARLEY_EDIT_WINDOW_S", "172800"))


def run(coro):
    return asyncio.run(coro)


async def change(dev, kind, conv, target, content=None, client_id=None):
    cid = client_id or uuid.uuid4().hex
    frame = dict(type=kind, client_id=cid, conv=conv, target_seq=target)
    if content is not None:
        frame["content"] = content
    await dev.ws.send(json.dumps(frame))
    return cid


def by_seq(api, token, conv):
    return {m["seq"]: m for m in history(api, token, conv)}


def test_edit_then_recall_in_a_chat(edge, mongo):
    (alice, ta), (bob, tb) = user_with_token(edge, "ed"), user_with_token(edge, "ed")
    conv = dm(alice, bob)

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        await a.send(bob, "helo wrold")
        await b.wait(lambda: len(b.msgs) == 1)
        cid = await change(a, "edit", conv, 1, "hello world")
        await a.wait(lambda: cid in a.acks)
        await b.wait(lambda: len(b.msgs) == 2)
        e = b.msgs[1]
        assert (e["kind"], e["target_seq"], e["seq"], e["content"]) == ("edit", 1, 2, "hello world")
        # The same client_id again is the same item: stored once, answered with an ack that
        # names its seq, not pushed again.
        del a.acks[cid]
        await change(a, "edit", conv, 1, "hello world", client_id=cid)
        await a.wait(lambda: "seq" in a.acks.get(cid, {}))
        assert (a.acks[cid]["conv"], a.acks[cid]["seq"]) == (conv, 2)
        items = by_seq(edge, tb, conv)
        assert sorted(items) == [1, 2]
        assert items[1]["content"] == "hello world" and "edited_at" in items[1]
        assert not items[1].get("recalled")
        # bob may not edit or recall alice's message.
        bad = [await change(b, "edit", conv, 1, "mine now"), await change(b, "recall", conv, 1)]
        await b.wait(lambda: sum(1 for x in b.errors if x.get("client_id") in bad) == 2)
        assert {x["code"] for x in b.errors if x.get("client_id") in bad} == {"forbidden"}
        # alice recalls it: its words are gone from the database and from every history page.
        rid = await change(a, "recall", conv, 1)
        await b.wait(lambda: any(m["kind"] == "recall" for m in b.msgs))
        await a.wait(lambda: any(m["client_id"] == rid for m in a.msgs))
        rseq = next(m["seq"] for m in a.msgs if m["client_id"] == rid)
        await change(a, "recall", conv, 1, client_id=rid)  # a replay: one item
        await a.wait(lambda: a.acks.get(rid, {}).get("seq") == rseq)
        again = await change(a, "edit", conv, 1, "back again")
        await a.wait(lambda: any(x.get("client_id") == again for x in a.errors))
        await a.close()
        await b.close()

    run(go())
    items = by_seq(edge, tb, conv)
    assert sorted(items) == [1, 2, 3], "bob's refused changes and the replays took no seq"
    assert items[1]["recalled"] is True and items[1]["content"] == ""
    assert items[3]["kind"] == "recall" and items[3]["target_seq"] == 1
    for page in (history(edge, ta, conv), history(edge, tb, conv)):
        assert not [m for m in page if "hel" in m["content"] or "wrold" in m["content"]]
    for doc in mongo.messages.find({"conv": conv}):
        assert "hel" not in doc["content"] and "wrold" not in doc["content"], doc
    recent = edge.call("GET", "/v1/messages/recent?limit=10", token=tb).json["messages"]
    assert [m["seq"] for m in recent if m["conv"] == conv] == [1]  # text items only


def test_edit_window_and_group_admin_recall(edge):
    (alice, ta), (bob, tb), (carol, tc) = (user_with_token(edge, "ed") for _ in range(3))
    g = edge.call("POST", "/v1/groups", {"name": "ed", "members": [bob, carol]}, token=ta).json
    conv = g["conv"]

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        c = await Chat.connect(tc)
        cid = await c.sendc(conv, "carol's words")
        await a.wait(lambda: any(m["client_id"] == cid for m in a.msgs))
        # bob is a member, not an admin: he cannot recall carol's; alice (owner) can.
        no = await change(b, "recall", conv, 2)
        await b.wait(lambda: any(x.get("client_id") == no for x in b.errors))
        yes = await change(a, "recall", conv, 2)
        await c.wait(lambda: any(m["client_id"] == yes for m in c.msgs))
        # After the edit window the author's own edit is refused.
        late = await c.sendc(conv, "too late to fix")
        await c.wait(lambda: any(m["client_id"] == late for m in c.msgs))
        seq = [m for m in c.msgs if m["client_id"] == late][0]["seq"]
        await asyncio.sleep(WINDOW_S + 1)
        fix = await change(c, "edit", conv, seq, "fixed")
        await c.wait(lambda: any(x.get("client_id") == fix for x in c.errors))
        assert [x["code"] for x in c.errors if x.get("client_id") == fix] == ["forbidden"]
        for d in (a, b, c):
            await d.close()
        return seq

    seq = run(go())
    items = by_seq(edge, tb, conv)
    assert items[2]["recalled"] is True and items[2]["content"] == ""
    assert items[seq]["content"] == "too late to fix" and "edited_at" not in items[seq]
    assert max(items) == seq, "the refused changes took no seq"


def test_bad_change_frames(edge):
    (alice, ta), (bob, tb) = user_with_token(edge, "ed"), user_with_token(edge, "ed")

    async def go():
        a = await Chat.connect(ta)
        conv = dm(alice, bob)
        frames = [dict(type="edit", client_id="x1", conv=conv, target_seq=1),  # no content
                  dict(type="edit", client_id="x2", conv=conv, target_seq=0, content="c"),
                  dict(type="recall", client_id="x3", conv=f"u:{alice}", target_seq=1),
                  dict(type="recall", conv=conv, target_seq=1)]
        for f in frames:
            await a.ws.send(json.dumps(f))
        await a.wait(lambda: len(a.errors) == 4)
        assert [x["code"] for x in a.errors] == ["invalid"] * 4
        # A target that does not exist: refused by the store, no seq taken.
        cid = await change(a, "recall", conv, 5)
        await a.wait(lambda: any(x.get("client_id") == cid for x in a.errors))
        await a.close()

    run(go())
    assert history(edge, ta, dm(alice, bob)) == []
