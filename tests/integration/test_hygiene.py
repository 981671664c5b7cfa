"""Log hygiene and response hygiene.

Secrets and bodies carrying a unique marker go through every path that might log them (a
register, good and failed logins, a forged and a garbled token, a delivered message, refused
frames); then no line of any service's or the edge's log may contain the marker. run.sh also
greps the logs of the whole suite for tokens and the test password when it stops.

Error responses must carry no internal detail: no file paths, stack traces, driver or
database errors, only the documented {"error":{"code","message"}} shape.
"""
import glob
import json
import os
import re
import time
import uuid

from conftest import VAR, gateway_ports, user_with_token, wait_until
from wsclient import RawWS

INTERNAL = re.compile(r"(/work/|/home/|/usr/|\.c:\d|Traceback|bson|mongoc|libmongoc|hiredis|"
                      r"rdkafka|jansson|errno|segfault|sanitizer|0x[0-9a-f]{8,})", re.I)


def logs_containing(marker):
    hits = []
    for path in glob.glob(os.path.join(VAR, "log", "*.log")):
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if marker.encode() in line:
                    hits.append(f"{os.path.basename(path)}:{n}: {line[:200]!r}")
    return hits


def test_no_secret_or_body_reaches_a_log(edge):
    marker = "hyg" + uuid.uuid4().hex[:16]
    password = f"pw-{marker}-secret"
    name = "h" + uuid.uuid4().hex[:10]
    assert edge.register(name, password=password, display_name=f"d-{marker}"[:60]).status == 201
    r = edge.login(name, password=password, device=f"dev-{marker}"[:60])
    assert r.status == 200
    token, refresh = r.json["access_token"], r.json["refresh_token"]
    assert edge.login(name, password=password + "x").status == 401
    assert edge.login(f"nouser{marker}"[:30], password=password).status == 401
    assert edge.call("POST", "/v1/auth/refresh", {"refresh_token": refresh + "x"}).status == 401
    forged = token[:-8] + "AAAAAAAA"
    assert edge.call("GET", "/v1/users/me", token=forged).status == 401
    assert edge.call("GET", "/v1/users/me", token=f"{marker}.{marker}.{marker}").status == 401
    peer, _ = user_with_token(edge, "hp")

    port = gateway_ports()[0]
    ws = RawWS(port, token=token)
    assert ws.status == 101
    assert ws.recv_json()["type"] == "ready"
    ws.send_text(json.dumps({"type": "send", "client_id": "h1", "to": peer,
                             "content": f"body-{marker}"}))
    while ws.recv_json().get("type") != "ack":
        pass
    ws.send_text(json.dumps({"type": "send", "client_id": "h2", "to": peer,
                             "content": f"big-{marker}" * 2700}))  # over 60 KiB content
    ws.send_text(f'{{"type":"send","content":"bad-{marker}"')  # not JSON
    ws.send_text(json.dumps({"type": "send", "client_id": "h3", "to": f"x{marker}"[:30],
                             "content": f"lost-{marker}"}))  # unknown user
    seen = set()
    while len(seen) < 3:
        f = ws.recv_json()
        if f.get("type") == "error":
            seen.add(f.get("client_id"))
    ws.close()
    # A bad token in a first frame, and in the upgrade header.
    assert RawWS(port, token=f"{marker}.x.y").status == 401
    raw = RawWS(port)
    raw.send_text(json.dumps({"type": "auth", "token": f"{marker}.a.b"}))
    assert raw.expect_close() == 1008
    # Let the store and router write what they write about the message.
    time.sleep(2)
    assert logs_containing(marker) == []
    assert logs_containing(token.split(".")[2]) == []
    assert logs_containing(refresh.split(".")[1]) == []


def test_errors_carry_no_internal_detail(edge, auth):
    name, token = user_with_token(edge, "he")
    probes = [
        ("POST", "/v1/auth/register", b'{"username":', None),
        ("POST", "/v1/auth/register", b'{"username":"a","username":"b"}', None),
        ("POST", "/v1/auth/login", b"\xff\xfe\x00", None),
        ("POST", "/v1/auth/login", json.dumps({"username": ["x"], "password": {}}).encode(), None),
        ("POST", "/v1/auth/refresh", b'{"refresh_token":"../../etc/passwd"}', None),
        ("GET", "/v1/users/%00", None, token),
        ("GET", "/v1/users/" + "a" * 4000, None, token),
        ("GET", "/v1/conversations/d:x:y/messages?limit=-1", None, token),
        ("GET", "/v1/conversations/d:zz:aa/messages?after_seq=abc", None, token),
        ("GET", "/v1/conversations/%2e%2e%2f/messages", None, token),
        ("GET", "/v1/messages/recent?limit=99999999999999999999999", None, token),
        ("DELETE", "/v1/auth/login", None, None),
        ("GET", "/nope", None, None),
    ]
    for method, path, raw, tok in probes:
        r = edge.call(method, path, token=tok, raw=raw,
                      headers={"Content-Type": "application/json"} if raw else None)
        assert 400 <= r.status < 500, (method, path, r.status)
        body = r.raw.decode("utf-8", "replace")
        assert not INTERNAL.search(body), (method, path, body)
        if r.json is not None:
            assert set(r.json) == {"error"}, (path, r.json)
            assert set(r.json["error"]) <= {"code", "message"}, (path, r.json)
