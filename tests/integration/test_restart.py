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
