"""Groups (DESIGN 7.4): the REST contract, membership changes as system items in the group's
own stream, windows [joined_seq, left_seq] for live pushes and history, roles and the post
policy, delivery only to gateways that hold a member, slow mode. Real binaries, Kafka, Redis
and FerretDB."""
import asyncio
import os
import re
import signal
import time
import uuid

import pytest

from conftest import VAR, Api, cluster, conversation, history, pid_of, user_with_token, wait_until
from wsclient import Chat


def run(coro):
    return asyncio.run(coro)


def users(api, n, prefix="g"):
    return [user_with_token(api, prefix) for _ in range(n)]


def create(api, token, name, members, **extra):
    r = api.call("POST", "/v1/groups", dict(name=name, members=members, **extra), token=token)
    assert r.status == 201, r
    return r.json


def own_stream_events(api, token, user):
    return [m["event"] for m in history(api, token, f"u:{user}")]


def test_create_send_and_read_back(edge):
    (alice, ta), (bob, tb), (carol, tc) = users(edge, 3)

    async def go():
        b = await Chat.connect(tb)
        c = await Chat.connect(tc)
        g = create(edge, ta, "Weekend 周末", [bob.upper(), carol, alice])  # self and case folded
        conv = g["conv"]
        assert re.fullmatch(r"g:[0-9A-HJKMNP-TV-Z]{26}", conv), conv
        assert g["owner"] == alice and g["name"] == "Weekend 周末"
        assert g["members"] == [alice, bob, carol]
        a = await Chat.connect(ta)
        cid = await a.sendc(conv, "hello group")
        await a.wait(lambda: cid in a.acks)
        for dev in (a, b, c):
            await dev.wait(lambda: any(m["client_id"] == cid for m in dev.msgs))
        got = [m for m in b.msgs if m["conv"] == conv]
        assert got[0]["seq"] == 2 and got[0]["sender"] == alice and got[0]["kind"] == "text"
        assert got[0]["receiver"] == conv  # the seed's receiver: the group
        # The creation is the group's first item, on every member's device that was online.
        created = [s for s in b.system if s["conv"] == conv]
        assert created and created[0]["seq"] == 1
        assert created[0]["event"]["type"] == "group_created"
        await c.sendc(conv, "hi all")
        await b.wait(lambda: len([m for m in b.msgs if m["conv"] == conv]) == 2)
        for dev in (a, b, c):
            await dev.close()
        return conv

    conv = run(go())
    items = history(edge, tb, conv)
    assert [(m["seq"], m["kind"]) for m in items] == [(1, "system"), (2, "text"), (3, "text")]
    entry = conversation(edge, tb, conv)
    assert entry["kind"] == "g" and entry["name"] == "Weekend 周末" and entry["last_seq"] == 3
    assert entry["unread"] == 2 and entry["read_seq"] == 0  # both texts; nothing read yet
    assert entry["last_item"]["content"] == "hi all" and entry["last_item"]["sender"] == carol
    assert conversation(edge, tc, conv)["unread"] == 1  # her own does not count
    recent = edge.call("GET", "/v1/messages/recent?limit=10", token=tb).json["messages"]
    assert [m["content"] for m in recent if m["conv"] == conv] == ["hi all", "hello group"]
    # Each member learned of the group on their own stream too.
    assert {"type": "group_added", "conv": conv, "name": "Weekend 周末", "by": alice,
            "seq": 1} in own_stream_events(edge, tb, bob)
    r = edge.call("GET", f"/v1/groups/{conv}", token=tc)
    assert r.status == 200 and r.json["member_count"] == 3 and r.json["role"] == "member"
    r = edge.call("GET", f"/v1/groups/{conv}/members?limit=2", token=tc)
    assert [m["user"] for m in r.json["members"]] == sorted([alice, bob, carol])[:2]
    r2 = edge.call("GET", f"/v1/groups/{conv}/members?limit=2&after={r.json['next']}", token=tc)
    assert [m["user"] for m in r2.json["members"]] == sorted([alice, bob, carol])[2:]
    assert r2.json["next"] is None


def test_non_members_learn_nothing(edge):
    (alice, ta), (bob, tb), (eve, te) = users(edge, 3)
    conv = create(edge, ta, "secret", [bob])["conv"]
    missing = "g:" + "0" * 26
    answers = []
    for c in (conv, missing):
        for path in (f"/v1/groups/{c}", f"/v1/groups/{c}/members",
                     f"/v1/conversations/{c}/messages"):
            r = edge.call("GET", path, token=te)
            answers.append((r.status, r.json))
        r = edge.call("POST", f"/v1/groups/{c}/members", {"users": [eve]}, token=te)
        answers.append((r.status, r.json))
    # The same answer whether the group exists or not.
    assert all(a[0] == 403 for a in answers), answers
    assert answers[:4] == answers[4:]

    async def go():
        e = await Chat.connect(te)
        cid = await e.sendc(conv, "let me in")
        await e.wait(lambda: any(x.get("client_id") == cid for x in e.errors))
        err = [x for x in e.errors if x.get("client_id") == cid][0]
        assert err["code"] == "forbidden", err
        assert cid not in e.acks  # refused by the gateway before Kafka, not acked and then refused
        await e.close()

    run(go())
    assert [m["seq"] for m in history(edge, tb, conv)] == [1]  # nothing stored
    assert conversation(edge, te, conv) is None


def test_removal_and_addition_windows(edge):
    (alice, ta), (bob, tb), (carol, tc), (erin, tr) = users(edge, 4)
    conv = create(edge, ta, "windows", [bob, carol])["conv"]

    async def go():
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        b2 = await Chat.connect(tb)  # bob's second device
        for i in range(3):
            await a.sendc(conv, f"before {i}")
        await b.wait(lambda: len([m for m in b.msgs if m["conv"] == conv]) == 3)
        r = edge.call("DELETE", f"/v1/groups/{conv}/members/{bob}", token=ta)
        assert r.status == 204, r
        e = await Chat.connect(tr)  # online before she is added: her gateway learns it live
        r = edge.call("POST", f"/v1/groups/{conv}/members", {"users": [erin]}, token=ta)
        assert r.status == 200 and r.json["added"] == [erin], r
        joined = r.json["seq"]
        for i in range(3):
            await a.sendc(conv, f"after {i}")
        await a.wait(lambda: len([m for m in a.msgs if m["conv"] == conv]) == 6)
        await e.wait(lambda: len([m for m in e.msgs if m["conv"] == conv]) == 3)
        cid = await b.sendc(conv, "am I still here?")
        await b.wait(lambda: any(x.get("client_id") == cid for x in b.errors))
        assert [x for x in b.errors if x.get("client_id") == cid][0]["code"] == "forbidden"
        await asyncio.sleep(1.0)
        for dev in (b, b2):
            removal = [s for s in dev.system if s["conv"] == conv and
                       s["event"]["type"] == "member_removed"]
            assert removal, dev.system
            removed_at = removal[0]["seq"]
            assert max(i["seq"] for i in dev.items(conv)) == removed_at, dev.items(conv)
        assert min(i["seq"] for i in e.items(conv)) == joined
        for dev in (a, b, b2, e):
            await dev.close()
        return removed_at, joined

    removed_at, joined = run(go())
    seen = history(edge, tb, conv)
    assert max(m["seq"] for m in seen) == removed_at
    assert "am I still here?" not in [m["content"] for m in history(edge, ta, conv)]
    r = edge.call("GET", f"/v1/conversations/{conv}/messages?before_seq=1000", token=tb)
    assert max(m["seq"] for m in r.json["messages"]) == removed_at
    assert [m["seq"] for m in history(edge, tr, conv)][0] == joined
    entry = conversation(edge, tb, conv)
    assert entry["last_seq"] == removed_at and entry["left_seq"] == removed_at
    recent = edge.call("GET", "/v1/messages/recent", token=tb).json["messages"]
    assert not [m for m in recent if m["conv"] == conv and m["seq"] > removed_at]
    assert any(ev["type"] == "group_removed" and ev["conv"] == conv
               for ev in own_stream_events(edge, tb, bob))
    # The group still answers its members; bob is not one any more.
    assert edge.call("GET", f"/v1/groups/{conv}", token=tb).status == 403
    assert edge.call("GET", f"/v1/groups/{conv}", token=tr).status == 200


def test_roles_post_policy_and_leaving(edge):
    (alice, ta), (bob, tb), (carol, tc), (dave, td) = users(edge, 4)
    conv = create(edge, ta, "roles", [bob, carol])["conv"]
    # A member cannot add or remove or rename.
    assert edge.call("POST", f"/v1/groups/{conv}/members", {"users": [dave]},
                     token=tb).status == 403
    assert edge.call("DELETE", f"/v1/groups/{conv}/members/{carol}", token=tb).status == 403
    assert edge.call("PATCH", f"/v1/groups/{conv}", {"name": "x"}, token=tb).status == 403
    # The owner makes bob an admin; an admin adds and renames, cannot remove the owner.
    r = edge.call("PATCH", f"/v1/groups/{conv}/members/{bob}", {"role": "admin"}, token=ta)
    assert r.status == 200, r
    assert edge.call("POST", f"/v1/groups/{conv}/members", {"users": [dave]},
                     token=tb).status == 200
    assert edge.call("DELETE", f"/v1/groups/{conv}/members/{alice}", token=tb).status == 403
    assert edge.call("DELETE", f"/v1/groups/{conv}/members/{alice}", token=ta).status == 409
    r = edge.call("PATCH", f"/v1/groups/{conv}", {"name": "renamed", "post_policy": "admins"},
                  token=tb)
    assert r.status == 200, r
    bad = edge.call("PATCH", f"/v1/groups/{conv}", {"post_policy": "everyone"}, token=tb)
    assert bad.status == 400

    async def go():
        c = await Chat.connect(tc)
        b = await Chat.connect(tb)
        refused = await c.sendc(conv, "members may not post now")
        allowed = await b.sendc(conv, "admins may")
        await c.wait(lambda: any(x.get("client_id") == refused for x in c.errors))
        await c.wait(lambda: any(m.get("client_id") == allowed for m in c.msgs))
        assert [x for x in c.errors if x.get("client_id") == refused][0]["code"] == "forbidden"
        await c.close()
        await b.close()

    run(go())
    assert conversation(edge, tc, conv)["name"] == "renamed"
    g = edge.call("GET", f"/v1/groups/{conv}", token=td).json
    assert (g["name"], g["post_policy"], g["member_count"]) == ("renamed", "admins", 4)
    # Leaving: 204, then 403 like any non-member.
    assert edge.call("DELETE", f"/v1/groups/{conv}/members/{dave}", token=td).status == 204
    assert edge.call("GET", f"/v1/groups/{conv}", token=td).status == 403
    types = [m["event"]["type"] for m in history(edge, ta, conv) if m["kind"] == "system"]
    assert types == ["group_created", "role_changed", "members_added", "group_updated",
                     "member_removed"]


def test_changes_are_idempotent_by_client_id(edge):
    (alice, ta), (bob, tb), (carol, tc) = users(edge, 3)
    first = create(edge, ta, "once", [bob], client_id="create-1")
    again = create(edge, ta, "once", [bob], client_id="create-1")
    assert first["conv"] == again["conv"]
    conv = first["conv"]
    for _ in range(2):
        r = edge.call("POST", f"/v1/groups/{conv}/members",
                      {"users": [carol], "client_id": "add-carol"}, token=ta)
        assert r.status == 200, r
    items = history(edge, ta, conv)
    assert [m["event"]["type"] for m in items] == ["group_created", "members_added"]
    assert edge.call("GET", f"/v1/groups/{conv}", token=ta).json["member_count"] == 3


def test_the_same_change_id_in_two_groups_is_two_changes(edge, mongo):
    """A request id names a change within its group: the same client_id in two groups, or a
    removal's default id (its target and membership), makes a change in each group."""
    (alice, ta), (bob, tb), (carol, tc), (dave, td) = users(edge, 4)
    convs = [create(edge, ta, f"twin {i}", [bob, carol], client_id=uuid.uuid4().hex)["conv"]
             for i in range(2)]
    for conv in convs:
        r = edge.call("POST", f"/v1/groups/{conv}/members",
                      {"users": [dave], "client_id": "same"}, token=ta)
        assert r.status == 200, r
        r = edge.call("DELETE", f"/v1/groups/{conv}/members/{carol}", token=ta)
        assert r.status == 204, r
    for conv in convs:
        items = history(edge, ta, conv)
        assert [m["event"]["type"] for m in items] == \
            ["group_created", "members_added", "member_removed"], items
        left = mongo.members.find_one({"conv": conv, "user": carol})["left_seq"]
        assert left == items[-1]["seq"], (conv, left, items)
        assert edge.call("GET", f"/v1/groups/{conv}", token=ta).json["member_count"] == 3
    # carol's own stream tells of both removals.
    removed = [e for e in own_stream_events(edge, tc, carol) if e["type"] == "group_removed"]
    assert sorted(e["conv"] for e in removed) == sorted(convs)


def test_a_resend_goes_back_to_its_device_only(edge):
    """A client's resend of a stored message (same client_id) is acked with the same msg_id,
    then answered on the sending device only with an ack naming its conv and seq: every
    device was pushed the first copy, so nothing is pushed again, and one resend does not
    cost the group another fan-out. The same for 1:1."""
    (alice, ta), (bob, tb) = users(edge, 2)
    conv = create(edge, ta, "resends", [bob])["conv"]

    async def go():
        a, a2, b = await Chat.connect(ta), await Chat.connect(ta), await Chat.connect(tb)
        for target, send in ((conv, a.sendc), (bob, a.send)):
            cid = await send(target, "once")
            await b.wait(lambda: any(m.get("client_id") == cid for m in b.msgs))
            await a.wait(lambda: any(m.get("client_id") == cid for m in a.msgs))
            await asyncio.sleep(0.5)  # stored and announced: what follows is a replay
            first = next(m for m in a.msgs if m.get("client_id") == cid)
            del a.acks[cid]
            await send(target, "once", client_id=cid)
            await a.wait(lambda: "seq" in a.acks.get(cid, {}))
            await asyncio.sleep(1.0)
            ack = a.acks[cid]
            assert (ack["msg_id"], ack["conv"], ack["seq"]) == \
                (first["msg_id"], first["conv"], first["seq"]), (ack, first)
            assert len([m for m in a.msgs if m.get("client_id") == cid]) == 1, target
            assert len([m for m in b.msgs if m.get("client_id") == cid]) == 1, target
            assert len([m for m in a2.msgs if m.get("client_id") == cid]) == 1, target
        for dev in (a, a2, b):
            await dev.close()

    run(go())


def test_bad_requests(edge):
    (alice, ta), (bob, tb) = users(edge, 2)
    for body in ({"members": [bob]}, {"name": "", "members": [bob]},
                 {"name": "x" * 101, "members": [bob]}, {"name": "ok", "members": "bob"},
                 {"name": "ok", "members": ["no such user!"]}, {"name": "a\nb", "members": []}):
        r = edge.call("POST", "/v1/groups", body, token=ta)
        assert r.status == 400, (body, r)
    r = edge.call("POST", "/v1/groups", {"name": "ok", "members": ["nobody_here_" + "x"]},
                  token=ta)
    assert r.status == 404 and "nobody_here_x" in r.json["error"]["message"]
    assert edge.call("POST", "/v1/groups", {"name": "ok", "members": []}).status == 401


def test_member_limit(edge, own_auth):
    (alice, ta), (bob, tb), (carol, tc), (dave, td) = users(edge, 4)
    small = own_auth({"PARLEY_GROUP_MEMBER_LIMIT": "3"})
    r = small.call("POST", "/v1/groups", {"name": "big", "members": [bob, carol, dave]},
                   token=ta)
    assert r.status == 400 and "members" in r.json["error"]["message"], r
    conv = small.call("POST", "/v1/groups", {"name": "ok", "members": [bob, carol]},
                      token=ta).json["conv"]
    r = small.call("POST", f"/v1/groups/{conv}/members", {"users": [dave]}, token=ta)
    assert r.status == 400, r


def metric(port, name, labels):
    raw = Api(f"http://127.0.0.1:{port}").call("GET", "/metrics").raw
    text = raw.decode() if isinstance(raw, bytes) else raw
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_gateway_without_members_gets_no_envelope(edge, own_gateway):
    """Items go only to the gateways holding a member (or a party of a 1:1): a gateway with a
    socket of somebody else gets nothing, so a router that broadcast would fail here."""
    (alice, ta), (bob, tb), (carol, tc), (zed, tz) = users(edge, 4)
    other = own_gateway({})
    url = f"ws://127.0.0.1:{other.port}/ws"
    conv = create(edge, ta, "routed", [bob])["conv"]

    async def go():
        z = await Chat.connect(tz, url=url)  # a live gateway, with a socket, holding no member
        a = await Chat.connect(ta)
        b = await Chat.connect(tb)
        for i in range(5):
            await a.sendc(conv, f"g{i}")
            await a.send(bob, f"d{i}")
        await b.wait(lambda: len(b.msgs) == 10)
        await asyncio.sleep(0.5)
        routed_g = metric(other.port, "parley_gateway_routed_items_total", 'kind="g"')
        routed_d = metric(other.port, "parley_gateway_routed_items_total", 'kind="d"')
        assert (routed_g, routed_d) == (0, 0)
        # The control: a member there is reached through that gateway.
        c = await Chat.connect(tc, url=url)
        r = edge.call("POST", f"/v1/groups/{conv}/members", {"users": [carol]}, token=ta)
        assert r.status == 200
        cid = await a.sendc(conv, "carol too")
        await c.wait(lambda: any(m.get("client_id") == cid for m in c.msgs))
        assert metric(other.port, "parley_gateway_routed_items_total", 'kind="g"') >= 1
        for dev in (z, a, b, c):
            await dev.close()

    run(go())


def test_slow_mode(edge, request):
    """A group takes PARLEY_GROUP_RATE items a second (here 2, with a burst of 4): the
    store refuses the rest with rate_limited, and nothing refused is stored."""
    (alice, ta), (bob, tb) = users(edge, 2)
    conv = create(edge, ta, "slow", [bob])["conv"]
    store = Api(f"http://127.0.0.1:{os.environ['PARLEY_STORE_PORT']}")
    pid = pid_of("store")
    os.kill(pid, signal.SIGTERM)
    # Gone, not only deaf: an ASan build checks for leaks after it stops listening, and
    # `cluster.sh up` would take a process still alive for the store it need not start.
    wait_until(lambda: not _alive(pid), timeout=60)
    request.addfinalizer(lambda: cluster("up"))
    # The suite's store, with a slow group rate (one store at a time owns the partitions).
    env = dict(os.environ, PARLEY_GROUP_RATE="2",
               PARLEY_JWT_PUBLIC_KEY=os.path.join(VAR, "keys", "jwt-public.pem"),
               PARLEY_KAFKA_BROKERS=f"127.0.0.1:{os.environ['PARLEY_KAFKA_PORT']}",
               PARLEY_MONGO_URI=f"mongodb://127.0.0.1:{os.environ['PARLEY_MONGO_PORT']}")
    import subprocess

    log = open(os.path.join(VAR, "log", "store-slow.log"), "w")
    slow = subprocess.Popen([os.path.join(os.environ["PARLEY_BIN"], "parley-store")], env=env,
                            stdout=log, stderr=log)
    try:
        wait_until(lambda: _up(store) and store.call("GET", "/readyz").status == 200)

        async def go():
            a = await Chat.connect(ta)
            cids = [await a.sendc(conv, f"m{i}") for i in range(10)]
            await a.wait(lambda: all(c in a.acks for c in cids), timeout=60)
            await a.wait(lambda: len([m for m in a.msgs if m["conv"] == conv]) +
                         len([x for x in a.errors if x.get("code") == "rate_limited"]) == 10,
                         timeout=60)
            limited = [x for x in a.errors if x.get("code") == "rate_limited"]
            assert limited and limited[0]["retry_after_ms"] > 0
            await a.close()
            return len(limited)

        limited = run(go())
        assert 4 <= 10 - limited <= 6, limited
        assert len(history(edge, tb, conv)) == 1 + 10 - limited
    finally:
        slow.send_signal(signal.SIGTERM)
        slow.wait(timeout=30)


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def _up(api):
    try:
        api.call("GET", "/healthz")
        return True
    except OSError:
        return False

