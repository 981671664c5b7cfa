"""Contacts, blocks and privacy settings (DESIGN 7.2): the REST contract, the system items on
the users' own streams (u:<user>), and who may message whom, decided by the store before a
message takes a seq. Real binaries, Kafka, Redis and FerretDB."""
import asyncio
import os
import signal
import threading
import time

import pytest

from conftest import Api, cluster, history, kill9, pid_of, user_with_token, wait_until
from wsclient import Chat


def run(coro):
    return asyncio.run(coro)


def conv_of(a, b):
    return f"d:{min(a, b)}:{max(a, b)}"


def stream(api, token, user):
    """A user's whole u: stream, by range pulls as a client syncs."""
    return history(api, token, f"u:{user}")


def events(api, token, user):
    return [m["event"] for m in stream(api, token, user)]


def contacts(api, token):
    r = api.call("GET", "/v1/contacts", token=token)
    assert r.status == 200, r
    return {c["user"]: c["state"] for c in r.json["contacts"]}


def befriend(api, a, ta, b, tb):
    assert api.call("POST", "/v1/contacts", {"user": b}, token=ta).status == 201
    assert api.call("POST", f"/v1/contacts/{a}/accept", token=tb).status == 200


def test_contact_request_accept_remove_with_items_on_both_streams(edge):
    alice, ta = user_with_token(edge, "ca")
    bob, tb = user_with_token(edge, "cb")

    async def go():
        b = await Chat.connect(tb)  # bob is online: he hears of the request live
        r = edge.call("POST", "/v1/contacts", {"user": bob.upper()}, token=ta)
        assert (r.status, r.json) == (201, {"user": bob, "state": "outgoing"})
        await b.wait(lambda: len(b.system) == 1)
        live = b.system[0]
        assert live["conv"] == f"u:{bob}" and live["seq"] == 1 and live["kind"] == "system"
        assert live["event"] == {"type": "contact", "user": alice, "state": "incoming",
                                 "by": alice}
        # A repeat is idempotent: same answer, nothing new on either stream.
        r = edge.call("POST", "/v1/contacts", {"user": bob}, token=ta)
        assert (r.status, r.json["state"]) == (201, "outgoing")
        await asyncio.sleep(1.0)
        assert len(b.system) == 1, b.system
        await b.close()

    run(go())
    assert contacts(edge, ta) == {bob: "outgoing"}
    assert contacts(edge, tb) == {alice: "incoming"}
    r = edge.call("GET", "/v1/contacts", token=tb)
    assert r.json["contacts"][0]["display_name"] == alice
    # Accepting: by the accept path, or by asking back (both become accepted).
    assert edge.call("POST", f"/v1/contacts/{alice}/accept", token=tb).status == 200
    assert edge.call("POST", f"/v1/contacts/{alice}/accept", token=tb).status == 200  # repeat
    r = edge.call("POST", "/v1/contacts", {"user": alice}, token=tb)
    assert (r.status, r.json["state"]) == (200, "accepted")
    assert contacts(edge, ta) == {bob: "accepted"} and contacts(edge, tb) == {alice: "accepted"}
    assert edge.call("DELETE", f"/v1/contacts/{bob}", token=ta).status == 204
    assert edge.call("DELETE", f"/v1/contacts/{bob}", token=ta).status == 204  # repeat
    assert contacts(edge, ta) == {} and contacts(edge, tb) == {}
    # Accepting what nobody asked: 404.
    r = edge.call("POST", f"/v1/contacts/{alice}/accept", token=tb)
    assert (r.status, r.error_code) == (404, "not_found")
    # Each stream: every change once, gapless, in order (a synced device learns all of it).
    # An answer means the items are in Kafka; the store numbers them moments later.
    sa = wait_until(lambda: (lambda s: s if len(s) >= 3 else None)(stream(edge, ta, alice)))
    sb = wait_until(lambda: (lambda s: s if len(s) >= 3 else None)(stream(edge, tb, bob)))
    assert [m["seq"] for m in sa] == [1, 2, 3] and [m["seq"] for m in sb] == [1, 2, 3]
    assert [(e["user"], e["state"]) for e in (m["event"] for m in sa)] == \
        [(bob, "outgoing"), (bob, "accepted"), (bob, "none")]
    assert [(e["user"], e["state"]) for e in (m["event"] for m in sb)] == \
        [(alice, "incoming"), (alice, "accepted"), (alice, "none")]
    # Nobody else reads a user's stream; system items are not the seed's recent messages.
    r = edge.call("GET", f"/v1/conversations/u:{alice}/messages", token=tb)
    assert r.status == 403
    r = edge.call("GET", "/v1/messages/recent", token=ta)
    assert r.status == 200 and r.json["messages"] == []
    convs = {c["conv"]: c for c in edge.call("GET", "/v1/conversations", token=ta)
             .json["conversations"]}
    assert convs[f"u:{alice}"]["last_seq"] == 3 and convs[f"u:{alice}"]["members"] == [alice]


def test_contact_requests_refused_clearly(edge):
    alice, ta = user_with_token(edge, "cr")
    cases = [
        ({"user": alice}, 400, "invalid"),           # yourself
        ({"user": "nobody-" + alice[-8:]}, 404, "not_found"),
        ({"user": "NO SUCH"}, 400, "invalid"),
        ({"usr": "x"}, 400, "invalid"),
        (["not", "an", "object"], 400, "invalid"),
    ]
    for body, status, code in cases:
        r = edge.call("POST", "/v1/contacts", body, token=ta)
        assert (r.status, r.error_code) == (status, code), (body, r)
    assert edge.call("POST", "/v1/contacts", {"user": "bob"}).status == 401
    assert edge.call("GET", "/v1/contacts", token=ta + "x").status == 401
    assert edge.call("DELETE", "/v1/contacts/a/b", token=ta).status == 404
    assert edge.call("PUT", f"/v1/blocks/{alice}", token=ta).status == 400
    assert edge.call("PUT", "/v1/blocks/nobody-at-all-here", token=ta).status == 404


def test_contact_requests_are_rate_limited_per_user(edge, own_auth):
    api = own_auth({"PARLEY_CONTACT_LIMIT_USER": "3", "PARLEY_RATE_WINDOW": "30"})
    alice, ta = user_with_token(edge, "rl")
    others = [user_with_token(edge, "rt")[0] for _ in range(4)]
    for o in others[:3]:
        assert api.call("POST", "/v1/contacts", {"user": o}, token=ta).status == 201
    r = api.call("POST", "/v1/contacts", {"user": others[3]}, token=ta)
    assert (r.status, r.error_code) == (429, "rate_limited")
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    # Another user is not held back by alice's limit.
    bob, tb = user_with_token(edge, "rl")
    assert api.call("POST", "/v1/contacts", {"user": others[3]}, token=tb).status == 201


def test_settings_defaults_changes_and_their_items(edge):
    alice, ta = user_with_token(edge, "st")
    r = edge.call("GET", "/v1/users/me/settings", token=ta)
    assert (r.status, r.json) == (200, {"who_can_message": "everyone", "presence": "contacts",
                                        "read_receipts": True})
    for bad in ({}, {"who_can_message": "nobody"}, {"presence": "everyone"},
                {"read_receipts": "yes"}, {"theme": "dark"}, [1]):
        r = edge.call("PATCH", "/v1/users/me/settings", bad, token=ta)
        assert (r.status, r.error_code) == (400, "invalid"), bad

    async def go():
        a = await Chat.connect(ta)
        r = edge.call("PATCH", "/v1/users/me/settings",
                      {"who_can_message": "contacts", "read_receipts": False}, token=ta)
        assert r.status == 200 and r.json == {"who_can_message": "contacts",
                                              "presence": "contacts", "read_receipts": False}
        await a.wait(lambda: len(a.system) == 1)
        assert a.system[0]["event"] == {"type": "settings", "settings": r.json}
        await a.close()

    run(go())
    assert edge.call("GET", "/v1/users/me/settings", token=ta).json["who_can_message"] == \
        "contacts"
    wait_until(lambda: [e["type"] for e in events(edge, ta, alice)] == ["settings"])


async def attempt(chat, to, content):
    """Sends once; returns "delivered" (acked and pushed back with a seq) or the error code."""
    cid = await chat.send(to, content)
    await chat.wait(lambda: any(e.get("client_id") == cid for e in chat.errors) or
                    any(m["client_id"] == cid for m in chat.msgs), timeout=20)
    err = [e for e in chat.errors if e.get("client_id") == cid]
    return (err[0]["code"], err[0]["message"]) if err else "delivered"


def test_privacy_matrix_for_sends(edge, mongo):
    """Who may message a receiver: contact / stranger / blocked (either way) × who_can_message
    everyone / contacts. A refused message is neither stored nor delivered, and the blocked
    sender's error is exactly the one a stranger gets from a contacts-only receiver."""
    results = {}
    for wcm in ("everyone", "contacts"):
        rcv, tr = user_with_token(edge, "mr")
        friend, tf = user_with_token(edge, "mf")
        stranger, ts = user_with_token(edge, "ms")
        blocked, tbk = user_with_token(edge, "mb")
        blocker, tbr = user_with_token(edge, "mk")
        befriend(edge, rcv, tr, friend, tf)
        befriend(edge, rcv, tr, blocked, tbk)  # a contact, and still refused once blocked
        assert edge.call("PUT", f"/v1/blocks/{blocked}", token=tr).status == 204
        assert edge.call("PUT", f"/v1/blocks/{rcv}", token=tbr).status == 204
        r = edge.call("PATCH", "/v1/users/me/settings", {"who_can_message": wcm}, token=tr)
        assert r.status == 200

        async def go():
            out = {}
            for who, tok in (("friend", tf), ("stranger", ts), ("blocked", tbk),
                             ("blocker", tbr)):
                c = await Chat.connect(tok)
                out[who] = await attempt(c, rcv, f"hello from the {who}")
                await c.close()
            return out

        results[wcm] = run(go())
        for who, name in (("stranger", stranger), ("blocked", blocked), ("blocker", blocker)):
            stored = mongo.messages.count_documents({"conv": conv_of(rcv, name)})
            assert stored == (1 if results[wcm][who] == "delivered" else 0), (wcm, who)
        wait_until(lambda: [e["type"] for e in events(edge, tr, rcv)].count("block") == 1)
        assert all(e["type"] != "block" for e in events(edge, tbk, blocked)), \
            "a blocked user learns nothing of the block"
    assert results["everyone"]["friend"] == "delivered"
    assert results["everyone"]["stranger"] == "delivered"
    assert results["contacts"]["friend"] == "delivered"
    forbidden = results["contacts"]["stranger"]
    assert forbidden[0] == "forbidden"
    for wcm in ("everyone", "contacts"):
        assert results[wcm]["blocked"] == forbidden, "the same error as contacts-only"
        assert results[wcm]["blocker"][0] == "forbidden"


def test_a_block_applies_to_the_next_message_whatever_was_cached(edge, mongo):
    """Gateways and the store cache who may message whom; once PUT /v1/blocks has answered,
    the very next message is refused (the block moved the receiver's policy token and told
    the gateways), and unblocking lets the next one through."""
    alice, ta = user_with_token(edge, "ba")
    bob, tb = user_with_token(edge, "bb")

    async def go():
        a = await Chat.connect(ta)
        assert await attempt(a, bob, "warm the cache") == "delivered"
        assert await attempt(a, bob, "and again") == "delivered"
        assert edge.call("PUT", f"/v1/blocks/{alice}", token=tb).status == 204
        assert (await attempt(a, bob, "after the block"))[0] == "forbidden"
        assert edge.call("DELETE", f"/v1/blocks/{alice}", token=tb).status == 204
        assert await attempt(a, bob, "after the unblock") == "delivered"
        await a.close()
        return [m["content"] for m in a.msgs]

    shown = run(go())
    assert shown == ["warm the cache", "and again", "after the unblock"]
    docs = sorted(mongo.messages.find({"conv": conv_of(alice, bob)}), key=lambda d: d["seq"])
    assert [(d["seq"], d["content"]) for d in docs] == \
        [(1, "warm the cache"), (2, "and again"), (3, "after the unblock")], "no gap either"
    r = edge.call("GET", "/v1/blocks", token=tb)
    assert (r.status, r.json) == (200, {"blocks": []})


def test_the_store_refuses_what_was_accepted_before_a_block(edge, mongo):
    """The race the gateway cannot see: messages acked (in Kafka) while the store is paused,
    then the receiver blocks the sender, then the store resumes. The block came before their
    seq, so none is numbered, stored or delivered, and the sending device gets forbidden for
    each, after its ack."""
    alice, ta = user_with_token(edge, "sr")
    bob, tb = user_with_token(edge, "ss")
    store = pid_of("store")

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        assert await attempt(a, bob, "before") == "delivered"
        os.kill(store, signal.SIGSTOP)
        try:
            cids = [await a.send(bob, f"in flight {i}") for i in range(5)]
            await a.wait(lambda: all(c in a.acks for c in cids))
            assert edge.call("PUT", f"/v1/blocks/{alice}", token=tb).status == 204
        finally:
            os.kill(store, signal.SIGCONT)
        await a.wait(lambda: len([e for e in a.errors if e.get("client_id") in cids]) == 5,
                     timeout=30)
        assert {e["code"] for e in a.errors} == {"forbidden"}
        await asyncio.sleep(1.0)
        assert [m["content"] for m in b.msgs] == ["before"], "nothing after the block"
        assert [m["content"] for m in a.msgs] == ["before"]
        await a.close()
        await b.close()

    run(go())
    assert [d["content"] for d in mongo.messages.find({"conv": conv_of(alice, bob)})] == ["before"]
    text = Api(f"http://127.0.0.1:{os.environ['PARLEY_STORE_PORT']}").call("GET", "/metrics")
    refused = [ln for ln in text.raw.decode().splitlines()
               if ln.startswith("parley_store_refused_total ")]
    assert refused and float(refused[0].split()[1]) >= 5, refused


def test_store_killed_during_contact_changes_loses_none(edge):
    """kill -9 of the store while 12 users make contact requests and answers: afterwards every
    user's u: stream is gapless and holds every change that was answered, once."""
    users = [user_with_token(edge, "sk") for _ in range(12)]
    done = []

    def worker(i):
        me, tok = users[i]
        for j in range(len(users)):
            if j == i:
                continue
            other = users[j][0]
            for _ in range(60):  # a client retries a 503 with the same request
                r = edge.call("POST", "/v1/contacts", {"user": other}, token=tok)
                if r.status in (200, 201):
                    done.append((me, other, r.json["state"]))
                    break
                assert r.status == 503, r
                time.sleep(0.5)
            else:
                raise AssertionError("never answered")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(users))]
    for t in threads:
        t.start()
    time.sleep(0.5)
    kill9("store")
    time.sleep(1.0)
    cluster("up")
    for t in threads:
        t.join(timeout=120)
    n = len(users)
    assert len(done) == n * (n - 1)
    for me, tok in users:
        def complete():
            s = stream(edge, tok, me)
            final = {}
            for m in s:
                final[m["event"]["user"]] = m["event"]["state"]
            return (s, final) if len(final) == n - 1 and \
                all(v == "accepted" for v in final.values()) else None
        s, _ = wait_until(complete, timeout=60)
        assert [m["seq"] for m in s] == list(range(1, len(s) + 1)), "gapless"
        assert len({m["msg_id"] for m in s}) == len(s), "each change once"
        # Each pair: one request item and one accept item on each side.
        assert len(s) == 2 * (n - 1), [m["event"] for m in s]
    assert all(v == "accepted" for v in contacts(edge, users[0][1]).values())
