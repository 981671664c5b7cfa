"""HTTP long-polling (DESIGN 7.6): a long-poll session is a device like a socket (same frames,
acks, pushes, presence, logout), its frames survive a lost answer, every kind of bad input
gets a clear error, and the fault ledger holds with long-poll clients and with a mix."""
import asyncio
import json
import os
import signal
import socket
import time

import pytest

from conftest import (Api, cluster, dm, kill9, pid_of, request, unique_name, user_with_token,
                      wait_until)
from lpclient import EDGE, LongPoll, OpenFailed
from wsclient import Chat


async def frame_of(lp, pred, timeout=10):
    """The first frame from lp for which pred holds (others are passed over)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no such frame in time"
        f = json.loads(await asyncio.wait_for(lp.recv(), left))
        if pred(f):
            return f


def test_long_poll_client_chats_with_a_websocket_client(edge):
    a, ta = user_with_token(edge, "lpa")
    b, tb = user_with_token(edge, "lpb")

    async def go():
        lp = await LongPoll.connect(ta)
        ws = await Chat.connect(tb)
        try:
            ready = await frame_of(lp, lambda f: True)
            assert ready["type"] == "ready" and ready["user"] == a
            # long-poll -> WebSocket: acked in a poll, pushed over the socket
            assert await lp.send(json.dumps({"type": "send", "client_id": "c1", "to": b,
                                             "content": "over long-poll"})) == 202
            ack = await frame_of(lp, lambda f: f["type"] == "ack")
            assert ack["client_id"] == "c1" and ack["msg_id"], ack
            await ws.wait(lambda: any(m["content"] == "over long-poll" for m in ws.msgs))
            # WebSocket -> long-poll: pushed in a poll
            await ws.send(a, "over the socket")
            m = await frame_of(lp, lambda f: f["type"] == "msg" and f["sender"] == b)
            assert m["content"] == "over the socket" and m["conv"] == dm(a, b), m
            # the sender's own push comes too (every device of both users)
            assert lp.polls >= 2
        finally:
            await lp.close()
            await ws.close()
    asyncio.run(go())


def test_a_dropped_poll_answer_comes_again_once(edge):
    """The client sends a poll and hangs up before reading the answer: nothing is acked, so
    the next poll gets the same frames, and the client's numbering shows each once."""
    a, ta = user_with_token(edge, "lpd")
    b, tb = user_with_token(edge, "lpe")
    port = int(os.environ["PARLEY_EDGE_PORT"])

    async def go():
        lp = await LongPoll.connect(tb)
        ws = await Chat.connect(ta)
        try:
            await frame_of(lp, lambda f: f["type"] == "ready")
            await lp.close()  # stop its poller; the session lives on at the gateway
            sid, ack = lp.sid, lp.next
            # A raw poll, held at the gateway; the push answers it; the answer is never read.
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall((f"GET /v1/lp/poll?sid={sid}&ack={ack} HTTP/1.1\r\nHost: x\r\n"
                       f"Authorization: Bearer {tb}\r\n\r\n").encode())
            await asyncio.sleep(0.3)
            await ws.send(b, "said once")
            await ws.wait(lambda: ws.acks)
            await asyncio.sleep(0.5)
            s.close()
            # The next poll, with the same ack: the frame again.
            r = request(EDGE, "GET", f"/v1/lp/poll?sid={sid}&ack={ack}", token=tb)
            assert r.status == 200, r
            msgs = [f for f in r.json["frames"] if f["type"] == "msg"]
            assert [m["content"] for m in msgs] == ["said once"]
            # Acknowledged, it is gone; a repeat of that same answer is dropped by number.
            nxt = r.json["next"]
            r2 = request(EDGE, "GET", f"/v1/lp/poll?sid={sid}&ack={nxt}", token=tb, timeout=40)
            assert r2.status == 200 and not [f for f in r2.json["frames"] if f["type"] == "msg"]
        finally:
            await ws.close()
    asyncio.run(go())


def test_bad_long_poll_requests_get_clear_errors(edge):
    a, ta = user_with_token(edge, "lpx")
    b, tb = user_with_token(edge, "lpy")

    async def go():
        lp = await LongPoll.connect(ta)
        try:
            await frame_of(lp, lambda f: f["type"] == "ready")
            sid = lp.sid
            cases = [
                # (method, path, body/raw, token, status, words in the message)
                ("GET", "/v1/lp/poll", None, ta, 400, "sid is required"),
                ("POST", "/v1/lp/send", [], ta, 400, "sid is required"),
                ("GET", "/v1/lp/poll?sid=short", None, ta, 400, "sid must be"),
                ("GET", f"/v1/lp/poll?sid={sid}", None, tb, 404, "no such long-poll session"),
                ("POST", f"/v1/lp/send?sid={sid}", [{"type": "typing"}], tb, 404,
                 "no such long-poll session"),
                ("POST", f"/v1/lp/send?sid={sid}", {"type": "send"}, ta, 400, "JSON array"),
                ("POST", f"/v1/lp/send?sid={sid}", ["x"], ta, 400, "not a JSON object"),
                ("POST", f"/v1/lp/send?sid={sid}", [{}] * 10000, ta, 413,
                 "too many frames in one send: 10000"),
                ("POST", f"/v1/lp/open?access_token={ta}", None, None, 400,
                 "Authorization header"),
                ("GET", f"/v1/lp/poll?sid={sid}&token={ta}", None, ta, 400,
                 "Authorization header"),
                ("GET", f"/v1/lp/poll?sid={sid}&ack=x", None, ta, 400, "ack must be"),
                ("GET", f"/v1/lp/poll?sid={sid}&ack=999999", None, ta, 400, "ack is ahead"),
                ("GET", f"/v1/lp/poll?sid={sid}", None, None, 401, ""),
                ("GET", f"/v1/lp/poll?sid={sid}", None, "not.a.token", 401, ""),
                ("POST", "/v1/lp/open", None, ta[:-4] + "AAAA", 401, ""),
            ]
            for method, path, body, token, status, words in cases:
                r = request(EDGE, method, path, body=body, token=token)
                assert r.status == status, (path, r)
                assert r.json["error"]["message"].find(words) >= 0, (path, r)
                assert "frames" not in (r.json or {}), (path, r)  # nothing of a session leaks
            for raw in (b"{not json", b"[\xff\xfe]", b"[" + b"{}," * 100000 + b"{}]"):
                r = request(EDGE, "POST", f"/v1/lp/send?sid={sid}", raw=raw, token=ta)
                assert r.status in (400, 413) and r.json["error"]["code"] in ("invalid", "too_large"), r
            # Through all that, the session is unharmed.
            assert await lp.send(json.dumps({"type": "send", "client_id": "k", "to": b,
                                             "content": "still here"})) == 202
            ack = await frame_of(lp, lambda f: f["type"] in ("ack", "error"))
            assert ack["type"] == "ack", ack
        finally:
            await lp.close()
    asyncio.run(go())


def test_logout_ends_the_long_poll_session_at_once(edge):
    a, ta = user_with_token(edge, "lpl")

    async def go():
        lp = await LongPoll.connect(ta)
        try:
            await frame_of(lp, lambda f: f["type"] == "ready")
            await asyncio.sleep(0.5)  # a poll is held now
            t0 = time.monotonic()
            r = await asyncio.to_thread(edge.call, "POST", "/v1/auth/logout", token=ta)
            assert r.status in (200, 204), r
            while lp.close_code is None and time.monotonic() - t0 < 5:
                await asyncio.sleep(0.05)
            took = time.monotonic() - t0
            assert lp.close_code is not None and lp.close_code >= 4000 or lp.close_code == 1008, \
                (lp.close_code, lp.close_reason)
            assert took < 2, took
            r = request(EDGE, "GET", f"/v1/lp/poll?sid={lp.sid}", token=ta)
            assert r.status in (401, 404), r
        finally:
            await lp.close()
    asyncio.run(go())


def test_idle_sessions_end_caps_hold_and_a_slow_poller_is_cut_off(edge, own_gateway):
    gw = own_gateway({"PARLEY_LP_IDLE_MS": "1500", "PARLEY_LP_HOLD_MS": "700",
                      "PARLEY_LP_USER_MAX": "2", "PARLEY_GATEWAY_SENDQ_MAX": "65536"})
    base = f"http://127.0.0.1:{gw.port}"
    a, ta = user_with_token(edge, "lpi")
    b, tb = user_with_token(edge, "lpj")

    async def go():
        # An empty poll is answered after hold_ms, not held for ever.
        lp = await LongPoll.connect(ta, base=base)
        await frame_of(lp, lambda f: f["type"] == "ready")
        t0 = time.monotonic()
        polls = lp.polls
        while lp.polls < polls + 2:
            await asyncio.sleep(0.05)
        assert time.monotonic() - t0 < 3
        # Per user: two sessions here, the third is refused.
        lp2 = await LongPoll.connect(ta, base=base)
        with pytest.raises(OpenFailed) as e:
            await LongPoll.connect(ta, base=base)
        assert e.value.status == 429 and "too many long-poll sessions" in e.value.body
        await lp2.close()
        await lp.close()
        # A session nobody polls ends after idle_ms: its sid is gone (and, the two above gone
        # too, the user may open again).
        await asyncio.sleep(3.2)
        r = request(base, "POST", "/v1/lp/open?sid=idle-session-0001", token=ta)
        assert r.status == 200, r
        await asyncio.sleep(3.2)
        r = request(base, "GET", "/v1/lp/poll?sid=idle-session-0001", token=ta)
        assert r.status == 404, r
        # A poller that never polls while frames pile up is cut off at the buffer cap (64 KiB
        # here): its session ends with 1013 and the client resyncs.
        r = request(base, "POST", "/v1/lp/open?sid=slow-session-00001", token=tb)
        assert r.status == 200, r
        ws = await Chat.connect(ta, url=f"ws://127.0.0.1:{gw.port}/ws")
        for i in range(40):
            await ws.send(b, "x" * 2000 + str(i))
        await ws.wait(lambda: len(ws.acks) >= 40, timeout=20)
        await ws.close()
        # Polls without an ack take nothing away: the frames pile up until the cap.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = request(base, "GET", "/v1/lp/poll?sid=slow-session-00001", token=tb)
            if r.status != 200 or "closed" in r.json:
                break
            await asyncio.sleep(0.2)
        assert r.status == 200 and r.json.get("closed", {}).get("code") == 1013, r
        assert r.json["frames"] == [], r  # dropped: the client syncs after opening again
        r = request(base, "GET", "/v1/lp/poll?sid=slow-session-00001", token=tb)
        assert r.status == 404, r
    asyncio.run(go())


def test_sigterm_answers_held_polls_at_once(edge, own_gateway):
    gw = own_gateway({})
    base = f"http://127.0.0.1:{gw.port}"
    a, ta = user_with_token(edge, "lps")

    async def go():
        lp = await LongPoll.connect(ta, base=base)
        await frame_of(lp, lambda f: f["type"] == "ready")
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        # the fixture's process: the one listening on gw.port
        out = os.popen(f"ss -ltnpH 'sport = :{gw.port}'").read()
        gpid = int(out.split("pid=")[1].split(",")[0])
        os.kill(gpid, signal.SIGTERM)
        while lp.close_code is None and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        assert lp.close_code == 1001, (lp.close_code, lp.close_reason)
        assert time.monotonic() - t0 < 2
        await lp.close()
    asyncio.run(go())


# ---- the fault ledger over long-polling, and over a mix of both transports ----

def _fault_on_the_long_poll_gateway(kind, holder):
    """kill -9 or SIGTERM of the gateway that holds most of the long-poll sessions (after an
    earlier drain the edge may have put them all on one), then it is started again."""
    from test_faults import wait_gone

    async def fault():
        from collections import Counter
        lps = [d for devs in holder["ledger"].devices.values() for d in devs
               if d.transport == "lp" and d.gateway]
        # gateway ids are "gw<i>-<random>" (deploy/cluster.sh sets PARLEY_GATEWAY_ID=gw<i>)
        gw = Counter(d.gateway.split("-")[0] for d in lps).most_common(1)[0][0]
        name = "gateway" + gw[2:]
        holder["victim"] = gw
        if kind == "kill9":
            kill9(name)
            await asyncio.sleep(2)
        else:
            pid = pid_of(name)
            os.kill(pid, signal.SIGTERM)
            await asyncio.to_thread(wait_gone, pid)
        await asyncio.to_thread(cluster, "up")
    return fault


# Three of the six pairs: each fault and each transport once (make test's time budget); the
# other three differ from these only in which devices a fault happens to hit.
@pytest.mark.parametrize("transport,fault", [("lp", "steady"), ("lp", "kill9_gateway"),
                                             ("mix", "sigterm_gateway")])
def test_ledger_over_long_polling(edge, mongo, transport, fault):
    """Every device long-polls (lp) or every other one does (mix); the gateway that holds
    most long-poll sessions is killed with -9 or drained with SIGTERM mid-traffic. Each run
    must end lost=0 stored_dups=0 shown_dups=0 seq_gaps_final=0."""
    from test_faults import scenario
    holder = {}
    f = None if fault == "steady" else _fault_on_the_long_poll_gateway(fault.split("_")[0], holder)
    ledger, r = scenario(edge, mongo, f"lp_{transport}_{fault}", 300, 100, f,
                         nusers=8, devices=2, transport=transport,
                         prepare=lambda lg: holder.update(ledger=lg))
    lps = [d for devs in ledger.devices.values() for d in devs if d.transport == "lp"]
    assert lps and all(d.reconnects >= 1 for d in lps)
    if fault != "steady":
        # the fault reached long-poll sessions: those on the victim were opened again
        assert any(d.reconnects >= 2 for d in lps), (holder.get("victim"),
                                                     [d.reconnects for d in lps])
