"""History and live chat survive kill -9 of every Parley service."""
import asyncio

from conftest import cluster, kill9, user_with_token
from wsclient import Chat


def test_history_survives_killing_every_service(edge):
    alice, ta = user_with_token(edge, "rs")
    bob, tb = user_with_token(edge, "rs")
    conv = f"d:{min(alice, bob)}:{max(alice, bob)}"

    async def chat(n, start):
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        await a.send_many(bob, [f"m{i}" for i in range(start, start + n)])
        await b.wait(lambda: len(b.msgs) == n, timeout=60)
        seqs = [m["seq"] for m in b.msgs]
        await a.close()
        await b.close()
        return seqs

    assert asyncio.run(chat(50, 0)) == list(range(1, 51))
    for name in ("auth", "store", "router", "gateway0", "gateway1"):
        kill9(name)
    cluster("up")
    r = edge.call("GET", f"/v1/conversations/{conv}/messages?after_seq=0&limit=200", token=tb)
    assert r.status == 200, r
    assert [m["content"] for m in r.json["messages"]] == [f"m{i}" for i in range(50)]
    # The old tokens still work (sessions are in MongoDB), and numbering continues.
    assert asyncio.run(chat(10, 50)) == list(range(51, 61))


def test_store_numbering_whatever_the_conversation_document_says(edge, mongo):
    """The conversations document is only a hint for the store's sequence. After a restart,
    a hint that lags the messages (naming an older message) and a hint ahead of them (naming a
    message that is not there) both lead to the next free number: no gap, no reuse, and the
    sender's order kept."""
    alice, ta = user_with_token(edge, "sh")
    bob, tb = user_with_token(edge, "sh")
    conv = f"d:{min(alice, bob)}:{max(alice, bob)}"

    async def chat(n, start):
        a = await Chat.connect(ta)
        sent = await a.send_many(bob, [f"m{i}" for i in range(start, start + n)])
        # A store killed before its offsets were committed announces its last batch again:
        # those pushes are replays (same msg_id and seq), which clients drop.
        await a.wait(lambda: set(sent) <= {m["client_id"] for m in a.msgs}, timeout=60)
        await a.close()
        by_cid = {m["client_id"]: m["seq"] for m in a.msgs}
        return [by_cid[c] for c in sent]

    assert asyncio.run(chat(5, 0)) == [1, 2, 3, 4, 5]
    second = mongo.messages.find_one({"conv": conv, "seq": 2})
    for hint, names, then in ((2, second["_id"], [6, 7, 8]), (20, "0" * 32, [9])):
        kill9("store")
        mongo.conversations.update_one({"_id": conv},
                                       {"$set": {"last_seq": hint, "last_msg_id": names}})
        cluster("up")
        assert asyncio.run(chat(len(then), 100 + hint)) == then
    seqs = sorted(d["seq"] for d in mongo.messages.find({"conv": conv}, {"seq": 1}))
    assert seqs == list(range(1, 10))
