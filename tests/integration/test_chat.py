"""The live path end to end, through the edge: gateway -> Kafka -> store -> router ->
gateway, with real Kafka, Redis and the MongoDB-compatible server."""
import asyncio
import json
import os
import re
import time

import pytest

from conftest import (Api, gateway_ports, infra, pid_of, sign_token, unique_name, user_with_token,
                      wait_cluster_ready)
from wsclient import Chat, RawWS


def run(coro):
    return asyncio.run(coro)


def history(api, token, conv, **q):
    qs = "&".join(f"{k}={v}" for k, v in q.items())
    return api.call("GET", f"/v1/conversations/{conv}/messages?{qs}", token=token)


def pull_all(api, token, conv):
    """Pulls a whole conversation in pages of 200, as a client syncs."""
    out, after = [], 0
    while True:
        r = history(api, token, conv, after_seq=after, limit=200)
        assert r.status == 200, r
        page = r.json["messages"]
        if not page:
            return out
        out += page
        after = page[-1]["seq"]


def test_two_users_on_two_gateways_exchange_1000_each_way(edge, mongo):
    alice, ta = user_with_token(edge, "alice")
    bob, tb = user_with_token(edge, "bob")
    conv = f"d:{min(alice, bob)}:{max(alice, bob)}"

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb, header_auth=False)  # the browser way: token in a first frame
        assert a.gateway != b.gateway, "the edge should spread two clients over two gateways"
        sent_a, sent_b = await asyncio.gather(
            a.send_many(bob, [f"a->b {i} ☕" for i in range(1000)]),
            b.send_many(alice, [f"b->a {i}" for i in range(1000)]))
        await a.wait(lambda: len(a.acks) == 1000 and len(a.msgs) >= 2000, timeout=90)
        await b.wait(lambda: len(b.acks) == 1000 and len(b.msgs) >= 2000, timeout=90)
        await asyncio.sleep(0.5)  # anything extra would be a duplicate
        assert not a.errors and not b.errors, (a.errors[:3], b.errors[:3])
        for c in (a, b):
            seqs = [m["seq"] for m in c.msgs]
            assert seqs == list(range(1, 2001)), "each delivered once, in order"
            assert len({m["msg_id"] for m in c.msgs}) == 2000
        # Both sides see the same message at the same seq.
        assert [m["msg_id"] for m in a.msgs] == [m["msg_id"] for m in b.msgs]
        # Each sender's own messages come in the order sent.
        mine = [m["client_id"] for m in a.msgs if m["sender"] == alice]
        assert mine == sent_a
        assert [m["client_id"] for m in b.msgs if m["sender"] == bob] == sent_b
        # An ack's msg_id is the pushed message's.
        by_cid = {m["client_id"]: m for m in a.msgs}
        assert all(a.acks[c]["msg_id"] == by_cid[c]["msg_id"] for c in sent_a)
        await a.close()
        await b.close()

    run(go())
    docs = list(mongo.messages.find({"conv": conv}))
    assert len(docs) == 2000, "each stored once"
    assert sorted(d["seq"] for d in docs) == list(range(1, 2001))
    d = docs[0]
    # The seed's schema, extended.
    for field in ("sender", "receiver", "content", "timestamp", "conv", "seq", "client_id"):
        assert field in d, field
    assert d["timestamp"].year >= 2026  # a BSON date, not a string
    conv_doc = mongo.conversations.find_one({"_id": conv})
    assert conv_doc["last_seq"] == 2000 and sorted(conv_doc["members"]) == sorted([alice, bob])


def test_redis_restart_loses_no_live_push(edge):
    """Redis restarts while two users talk on two gateways. What is sent before, during and
    right after the outage is pushed live to both, once and in order: the router holds the
    pushes while Redis is away, and when a gateway's subscriber has not yet come back it waits
    for it rather than publishing to nobody (pub/sub keeps nothing for an absent listener)."""
    alice, ta = user_with_token(edge, "rra")
    bob, tb = user_with_token(edge, "rrb")

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb, header_auth=False)
        assert a.gateway != b.gateway
        sent = await a.send_many(bob, [f"before {i}" for i in range(20)])
        await b.wait(lambda: len(b.msgs) >= 20)
        infra("stop", "redis")
        try:
            sent += await a.send_many(bob, [f"during {i}" for i in range(20)])
        finally:
            infra("start", "redis")
        # No waiting for the gateways to reconnect: a client cannot know when they have.
        sent += await a.send_many(bob, [f"after {i}" for i in range(20)])
        for c in (a, b):
            await c.wait(lambda: len(c.msgs) >= 60, timeout=30)
        await asyncio.sleep(0.5)  # anything extra would be a duplicate
        for c in (a, b):
            assert [m["seq"] for m in c.msgs] == list(range(1, 61))
            assert [m["client_id"] for m in c.msgs] == sent
            assert c.closed is None and not c.errors, (c.closed, c.errors[:3])
        await a.close()
        await b.close()

    try:
        run(go())
    finally:
        wait_cluster_ready()


def test_offline_recipient_catches_up_by_sync(edge):
    alice, ta = user_with_token(edge, "alice")
    bob, tb = user_with_token(edge, "bob")

    async def send_500():
        a = await Chat.connect(ta)
        await a.send_many(bob, [f"while you were away {i}" for i in range(500)])
        await a.wait(lambda: len(a.acks) == 500 and len(a.msgs) == 500, timeout=60)
        await a.close()

    run(send_500())
    # Bob comes back: conversation list, then range pulls.
    convs = edge.call("GET", "/v1/conversations", token=tb)
    assert convs.status == 200
    entry = [c for c in convs.json["conversations"] if alice in c["members"]]
    assert len(entry) == 1 and entry[0]["last_seq"] == 500
    got = pull_all(edge, tb, entry[0]["conv"])
    assert [m["seq"] for m in got] == list(range(1, 501))
    assert [m["content"] for m in got] == [f"while you were away {i}" for i in range(500)]
    assert all(m["sender"] == alice and m["receiver"] == bob for m in got)
    # The latest page, and paging backwards.
    last = history(edge, tb, entry[0]["conv"], limit=10).json["messages"]
    assert [m["seq"] for m in last] == list(range(491, 501))
    before = history(edge, tb, entry[0]["conv"], before_seq=491, limit=10).json["messages"]
    assert [m["seq"] for m in before] == list(range(481, 491))
    # Recent messages of a user, newest first (the seed's getRecentMessages).
    recent = edge.call("GET", "/v1/messages/recent?limit=5", token=tb).json["messages"]
    assert [m["seq"] for m in recent] == [500, 499, 498, 497, 496]


def test_multi_device_sees_everything(edge):
    alice, ta = user_with_token(edge, "alice")
    bob, tb = user_with_token(edge, "bob")
    ports = gateway_ports()

    async def go():
        a1 = await Chat.connect(ta, url=f"ws://127.0.0.1:{ports[0]}/ws")
        a2 = await Chat.connect(ta, url=f"ws://127.0.0.1:{ports[1]}/ws")
        b = await Chat.connect(tb)
        assert a1.gateway != a2.gateway
        for i in range(20):
            await a1.send(bob, f"from phone {i}")
            await b.send(alice, f"to alice {i}")
            await a2.send(bob, f"from laptop {i}")
        for c in (a1, a2, b):
            await c.wait(lambda c=c: len(c.msgs) >= 60)
        await asyncio.sleep(0.3)
        for c in (a1, a2, b):
            assert [m["seq"] for m in c.msgs] == list(range(1, 61))
        assert [m["msg_id"] for m in a1.msgs] == [m["msg_id"] for m in a2.msgs]
        for c in (a1, a2, b):
            await c.close()

    run(go())


def test_forged_fields_are_ignored(edge):
    alice, ta = user_with_token(edge, "alice")
    bob, tb = user_with_token(edge, "bob")

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        await a.send(bob, "forged", sender=bob, seq=999, msg_id="x" * 32, timestamp="1999-01-01T00:00:00Z")
        await b.wait(lambda: len(b.msgs) == 1)
        m = b.msgs[0]
        assert m["sender"] == alice and m["seq"] == 1 and m["msg_id"] != "x" * 32
        assert m["timestamp"].startswith(time.strftime("%Y-", time.gmtime()))
        await a.close()
        await b.close()

    run(go())


def test_tokens_refused(edge, auth):
    name, token = user_with_token(edge, "tok")
    port = gateway_ports()[0]
    # No token: a first frame that is not auth closes with 1008.
    raw = RawWS(port)
    assert raw.status == 101
    raw.send_text(json.dumps({"type": "send", "client_id": "1", "to": name, "content": "x"}))
    assert raw.expect_close() == 1008
    # A bad token in the header is refused at the handshake; in a frame, with 1008.
    assert RawWS(port, token="not.a.token").status == 401
    raw = RawWS(port)
    raw.send_text(json.dumps({"type": "auth", "token": token[:-3] + "abc"}))
    assert raw.expect_close() == 1008
    # An expired token (signed with the real key) is refused either way.
    now = int(time.time())
    expired = sign_token({"iss": "parley", "aud": "parley", "sub": name, "sid": "s" * 32,
                          "jti": "j1", "iat": now - 3600, "exp": now - 600})
    assert RawWS(port, token=expired).status == 401
    raw = RawWS(port)
    raw.send_text(json.dumps({"type": "auth", "token": expired}))
    assert raw.expect_close() == 1008


def test_socket_closed_when_its_access_token_expires(edge):
    """A socket opened with a token that was still valid (inside the 30 s leeway) is closed
    with 1008 once the token is past it, without any frame from the client."""
    name, _ = user_with_token(edge, "exp")
    now = int(time.time())
    almost = sign_token({"iss": "parley", "aud": "parley", "sub": name, "sid": "e" * 32,
                         "jti": "j2", "iat": now - 900, "exp": now - 26})

    async def go():
        c = await Chat.connect(almost)
        t0 = time.time()
        await c.wait(lambda: c.closed is not None, timeout=15)
        assert c.closed == 1008
        # exp + 30 s of leeway, checked once a second.
        assert 2.0 <= time.time() - t0 <= 8.0, time.time() - t0

    run(go())


def test_frames_pipelined_behind_the_handshake_while_redis_is_down(edge):
    """A client that writes its first send in the same packet as its upgrade request, while
    Redis is down: the revocation check fails open at once (inside the socket's opening), and
    the send that waited behind it is still served, acked, not dropped."""
    name, token = user_with_token(edge, "pipe")
    send = json.dumps({"type": "send", "client_id": "p1", "to": name, "content": "early"})
    infra("stop", "redis")
    try:
        raw = RawWS(gateway_ports()[0], token=token, early=[send])
        assert raw.status == 101
        ready = raw.recv_json()
        assert ready["type"] == "ready", ready
        answer = raw.recv_json()
        assert answer["type"] == "ack" and answer["client_id"] == "p1", answer
        raw.close()
    finally:
        infra("start", "redis")
        wait_cluster_ready()


def test_logout_closes_open_socket_within_a_second(edge):
    name, token = user_with_token(edge, "bye")

    async def go():
        c = await Chat.connect(token)
        t0 = time.time()
        r = edge.call("POST", "/v1/auth/logout", token=token)
        assert r.status == 204
        await c.wait(lambda: c.closed is not None, timeout=5)
        elapsed = time.time() - t0
        assert c.closed == 1008
        assert elapsed < 1.0, elapsed
        # And the token no longer opens a socket.
        with pytest.raises(Exception):
            c2 = await Chat.connect(token)
            await c2.close()

    run(go())


def test_reading_someone_elses_conversation_is_403(edge):
    alice, ta = user_with_token(edge, "alice")
    bob, tb = user_with_token(edge, "bob")
    eve, te = user_with_token(edge, "eve")
    conv = f"d:{min(alice, bob)}:{max(alice, bob)}"
    assert history(edge, te, conv).status == 403
    assert history(edge, ta, conv).status == 200
    assert history(edge, ta, "d:zzz:aaa").status == 404
    assert history(edge, ta, conv, limit=1000).status == 400
    assert edge.call("GET", f"/v1/conversations/{conv}/messages").status == 401


def gateway_rss_kib(index=0):
    with open(f"/proc/{pid_of(f'gateway{index}')}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def test_bad_input_gets_close_codes_or_errors(edge):
    alice, ta = user_with_token(edge, "bad")
    bob, tb = user_with_token(edge, "bad")
    port = gateway_ports()[0]

    async def bystander_ok():
        b = await Chat.connect(tb, url=f"ws://127.0.0.1:{port}/ws")
        a = await Chat.connect(ta, url=f"ws://127.0.0.1:{port}/ws")
        await a.send(bob, "still fine")
        await b.wait(lambda: len(b.msgs) >= 1)
        await a.close()
        await b.close()

    rss_before = gateway_rss_kib()

    def opened():
        r = RawWS(port, token=ta)
        assert r.status == 101
        assert r.recv_json()["type"] == "ready"
        return r

    for _ in range(20):
        # Unmasked client frame: protocol error.
        r = opened()
        r.send_frame(1, b'{"type":"send"}', mask=False)
        assert r.expect_close() == 1002
        # A frame over 64 KiB.
        r = opened()
        r.send_frame(1, b"x" * (64 * 1024 + 1))
        assert r.expect_close() == 1009
        # Invalid UTF-8, also split across fragments.
        r = opened()
        r.send_frame(1, b'{"type":"send","content":"\xc3\x28"}')
        assert r.expect_close() == 1007
        r = opened()
        r.send_frame(1, b'{"a":"\xe2\x82', fin=False)
        r.send_frame(0, b'"}', fin=True)
        assert r.expect_close() == 1007
        # Reserved bits and unknown opcodes.
        r = opened()
        r.send_frame(1, b"{}", rsv=4)
        assert r.expect_close() == 1002
        r = opened()
        r.send_frame(3, b"{}")
        assert r.expect_close() == 1002
        # Binary frames are not part of the protocol.
        r = opened()
        r.send_frame(2, b"\x00\x01")
        assert r.expect_close() == 1003

    # Errors that keep the connection open, each answered with an error frame.
    r = opened()
    cases = [
        (b"not json", "invalid"),
        (b"[" * 10000 + b"]" * 10000, "invalid"),
        (b'{"type":"dance"}', "invalid"),
        (b'{"type":"send","client_id":"c1","to":"' + bob.encode() + b'"}', "invalid"),
        (b'{"type":"send","client_id":"c2","content":"x"}', "invalid"),
        (b'{"type":"send","to":"' + bob.encode() + b'","content":"x"}', "invalid"),
        (b'{"type":"send","client_id":"' + b"c" * 65 + b'","to":"b","content":"x"}', "invalid"),
        (b'{"type":"send","client_id":"c3","to":"nosuchuser_zz9","content":"x"}', "not_found"),
        (b'{"type":"send","client_id":"c4","to":"' + bob.encode() + b'","content":"' + b"y" * 62000 + b'"}',
         "too_large"),
    ]
    for payload, code in cases:
        r.send_text(payload)
        f = r.recv_json()
        assert f["type"] == "error" and f["code"] == code, (payload[:50], f)
    # The connection still works after all that.
    r.send_text(json.dumps({"type": "send", "client_id": "ok-1", "to": bob, "content": "fine"}))
    while True:
        f = r.recv_json()
        if f["type"] == "ack":
            assert f["client_id"] == "ok-1"
            break
    r.close()
    run(bystander_ok())
    rss_after = gateway_rss_kib()
    # 180 hostile connections must not leave the gateway holding their buffers.
    assert rss_after - rss_before < 64 * 1024, (rss_before, rss_after)


def test_origin_allowlist(edge):
    port = gateway_ports()[0]
    assert RawWS(port, headers={"Origin": "https://evil.example"}).status == 403
    allowed = f"http://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}"
    assert RawWS(port, headers={"Origin": allowed}).status == 101


def test_handshake_validation():
    import socket

    port = gateway_ports()[0]
    for req in [b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n"]:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(req)
        assert s.recv(100).startswith(b"HTTP/1.1 400"), req
        s.close()


def test_send_to_deliver_latency_report(edge):
    """Prints p50/p99 send->deliver of 1,000 messages at 200/s (a figure, not an assertion)."""
    alice, ta = user_with_token(edge, "lat")
    bob, tb = user_with_token(edge, "lat")

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        sent = {}
        for i in range(1000):
            cid = f"lat-{i}"
            sent[cid] = time.perf_counter()
            await a.send(bob, "x", client_id=cid)
            await asyncio.sleep(0.005)
        await b.wait(lambda: len(b.msgs) >= 1000, timeout=60)
        await a.close()
        await b.close()
        return sent, b

    sent, b = run(go())
    lat = sorted((m["_rx"] - sent[m["client_id"]]) * 1000 for m in b.msgs)
    assert len(lat) == 1000
    p50, p99 = lat[499], lat[989]
    print(f"\nsend->deliver over 1000 messages at 200/s: p50={p50:.2f} ms p99={p99:.2f} ms "
          f"max={lat[-1]:.2f} ms")


def test_frames_split_byte_by_byte_and_at_random(edge):
    """The framing glue reassembles frames however TCP splits them."""
    import random
    import socket

    alice, ta = user_with_token(edge, "split")
    bob, tb = user_with_token(edge, "split")
    port = gateway_ports()[0]
    r = RawWS(port, token=ta)
    assert r.recv_json()["type"] == "ready"
    r.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rng = random.Random(7)

    def frame(payload):
        import os as _os
        import struct as _struct
        mask = _os.urandom(4)
        hdr = _struct.pack("!BB", 0x81, 0x80 | 126) + _struct.pack("!H", len(payload)) \
            if len(payload) >= 126 else _struct.pack("!BB", 0x81, 0x80 | len(payload))
        return hdr + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))

    for i in range(6):
        body = json.dumps({"type": "send", "client_id": f"split-{i}", "to": bob,
                           "content": "é" * (10 if i % 2 else 200)}).encode()
        data = frame(body)
        if i == 0:
            cuts = list(range(1, len(data)))  # byte by byte
        else:
            cuts = sorted(rng.sample(range(1, len(data)), min(5, len(data) - 1)))
        prev = 0
        for c in cuts + [len(data)]:
            r.s.sendall(data[prev:c])
            prev = c
            time.sleep(0.001)
        while True:
            f = r.recv_json()
            if f["type"] == "ack":
                assert f["client_id"] == f"split-{i}"
                break
            assert f["type"] == "msg", f
    # Fragmented messages (continuation frames) are reassembled too.
    body = json.dumps({"type": "send", "client_id": "frag", "to": bob, "content": "fragmented"}).encode()
    r.send_frame(1, body[:10], fin=False)
    r.send_frame(0, body[10:20], fin=False)
    r.send_frame(9, b"ping-in-between")  # a control frame may interleave
    r.send_frame(0, body[20:], fin=True)
    seen = set()
    while "ack" not in seen:
        f = r.recv_frame()
        if f[0] == 1:
            seen.add(json.loads(f[1])["type"])
        elif f[0] == 10:
            seen.add("pong")
    assert "pong" in seen
    r.close()


def test_dead_peer_is_dropped_and_live_one_kept(edge):
    """A peer that never answers pings is freed; one that does stays (heartbeat 1.5 s here)."""
    name, token = user_with_token(edge, "hb")
    port = gateway_ports()[0]
    silent = RawWS(port, token=token)
    assert silent.recv_json()["type"] == "ready"

    async def live():
        c = await Chat.connect(token, url=f"ws://127.0.0.1:{port}/ws")
        await asyncio.sleep(5)
        assert c.closed is None
        await c.close()

    run(live())
    # The silent one got a ping it never answered, then was dropped.
    ops = []
    try:
        while True:
            op, _ = silent.recv_frame()
            ops.append(op)
    except (EOFError, ConnectionResetError):
        pass
    assert 9 in ops  # it was pinged
    silent.close()


def test_slow_reader_is_closed_with_1013_and_others_unaffected(edge):
    alice, ta = user_with_token(edge, "slow")
    bob, tb = user_with_token(edge, "slow")
    carol, tc = user_with_token(edge, "slow")
    port = gateway_ports()[0]
    slow = RawWS(port, token=tb, rcvbuf=4096)  # bob, who never reads
    assert slow.recv_json()["type"] == "ready"
    # Bob is alive, just slow: unsolicited pongs (RFC 6455 5.5.3) keep the heartbeat happy.
    import threading
    stop = threading.Event()

    def keepalive():
        while not stop.wait(0.4):
            try:
                slow.send_frame(10, b"")
            except OSError:
                return

    threading.Thread(target=keepalive, daemon=True).start()

    async def go():
        a = await Chat.connect(ta, url=f"ws://127.0.0.1:{port}/ws")
        c = await Chat.connect(tc, url=f"ws://127.0.0.1:{port}/ws")
        await a.send_many(bob, ["z" * 50000 for _ in range(150)], window=16)
        await a.send(carol, "you are fine")
        await c.wait(lambda: len(c.msgs) == 1, timeout=30)
        await a.close()
        await c.close()

    run(go())
    stop.set()
    # The queue cap (1 MiB) was passed: the slow socket got 1013 (after whatever was
    # already in flight) or was dropped when it did not read the close.
    code = slow.expect_close()
    assert code in (1013, None), code
    metrics = Api(f"http://127.0.0.1:{port}").call("GET", "/metrics").raw.decode()
    assert re.search(r"^parley_gateway_slow_consumer_closes_total [1-9]", metrics, re.M), \
        [l for l in metrics.splitlines() if l.startswith("parley_gateway")]
    slow.close()


def test_sigterm_drains_with_1001(edge):
    from conftest import cluster, pid_of
    import signal

    name, token = user_with_token(edge, "drain")
    ports = gateway_ports()

    async def go():
        c = await Chat.connect(token, url=f"ws://127.0.0.1:{ports[1]}/ws")
        t0 = time.time()
        os.kill(pid_of("gateway1"), signal.SIGTERM)
        await c.wait(lambda: c.closed is not None, timeout=10)
        print(f"\ndrain with one client took {time.time() - t0:.2f} s")
        assert c.closed == 1001
        # Clients go to the other gateway through the edge.
        c2 = await Chat.connect(token)
        await c2.close()

    run(go())
    for _ in range(100):
        try:
            os.kill(pid_of("gateway1"), 0)
            time.sleep(0.1)
        except (ProcessLookupError, FileNotFoundError):
            break
    cluster("up")


def test_password_change_and_disable_end_every_session_and_socket(edge):
    """Changing the password, and disabling the account, revoke every session of the user:
    open sockets on any gateway close with 1008 within a second, tokens and refresh tokens
    stop working, and a disabled account can neither log in nor receive messages."""
    name, t1 = user_with_token(edge, "pwc")
    r2 = edge.login(name, device="phone")
    t2, refresh2 = r2.json["access_token"], r2.json["refresh_token"]
    peer, tp = user_with_token(edge, "pwp")

    async def sockets_close(action):
        a = await Chat.connect(t1, url=f"ws://127.0.0.1:{gateway_ports()[0]}/ws")
        b = await Chat.connect(t2, url=f"ws://127.0.0.1:{gateway_ports()[1]}/ws")
        t0 = time.time()
        action()
        await a.wait(lambda: a.closed is not None, timeout=5)
        await b.wait(lambda: b.closed is not None, timeout=5)
        assert (a.closed, b.closed) == (1008, 1008)
        return time.time() - t0

    def change():
        r = edge.call("POST", "/v1/auth/password", {"current_password": "wrong one!",
                                                     "new_password": "a new long secret"},
                      token=t1)
        assert r.status == 403, r
        r = edge.call("POST", "/v1/auth/password", {"current_password": "correct horse battery",
                                                     "new_password": "a new long secret"},
                      token=t1)
        assert r.status == 204, r
    took = run(sockets_close(change))
    assert took < 1.5, took
    assert edge.call("GET", "/v1/users/me", token=t2).status == 401
    assert edge.call("POST", "/v1/auth/refresh", {"refresh_token": refresh2}).status == 401
    assert edge.login(name).status == 401
    r = edge.login(name, password="a new long secret")
    assert r.status == 200
    t3 = r.json["access_token"]
    r4 = edge.login(name, password="a new long secret", device="tablet")
    t1, t2 = t3, r4.json["access_token"]

    def disable():
        r = edge.call("POST", "/v1/auth/disable", {"password": "a new long secret"}, token=t1)
        assert r.status == 204, r
    took = run(sockets_close(disable))
    assert took < 1.5, took
    r = edge.login(name, password="a new long secret")
    assert r.status == 403 and r.json["error"]["message"] == "account is disabled"
    assert edge.register(name).status == 409  # the name stays taken

    async def nobody_home():
        c = await Chat.connect(tp)
        await c.send(name, "are you there?", client_id="x1")
        await c.wait(lambda: c.errors, timeout=10)
        assert c.errors[0]["code"] == "not_found"
        await c.close()
    run(nobody_home())


def test_operator_disables_an_account_on_the_internal_port(edge, auth):
    name, token = user_with_token(edge, "opd")
    # Not reachable through the edge.
    assert edge.call("POST", f"/internal/users/{name}/disable").status == 404
    assert auth.call("POST", "/internal/users/nosuchuser99/disable").status == 404

    async def go():
        c = await Chat.connect(token)
        assert auth.call("POST", f"/internal/users/{name}/disable").status == 204
        await c.wait(lambda: c.closed is not None, timeout=5)
        assert c.closed == 1008
    run(go())
    assert edge.login(name).status == 403


def test_the_gateways_recipient_check_refuses_a_disabled_account(edge, auth):
    """GET /internal/users/<name>?from=<sender>, the gateways' question before producing a
    send: answered from one read of the receiver's account (its settings and its disabled
    flag), so a disabled receiver is "no such user" with a sender given as without."""
    a, _ = user_with_token(edge, "rca")
    b, _ = user_with_token(edge, "rcb")
    assert auth.call("GET", f"/internal/users/{b}?from={a}").status == 200
    assert auth.call("GET", f"/internal/users/nosuchuser99?from={a}").status == 404
    assert auth.call("POST", f"/internal/users/{b}/disable").status == 204
    assert auth.call("GET", f"/internal/users/{b}?from={a}").status == 404
    assert auth.call("GET", f"/internal/users/{b}").status == 404
