"""The committed docker-compose.yml, running (make compose-test only: deploy/compose-test/run.sh
brings it up with every health check passed, then runs this file with PARLEY_COMPOSE set to
its compose command). A user registers, logs in and chats through the compose edge, on 8000
and over TLS on 8443; then the gateways are scaled to 3, one of them is killed under traffic,
and its clients go on on the others with nothing lost (the fault ledger's checks)."""
import asyncio
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import websockets

from conftest import Api, unique_name, wait_until
from ledger import Ledger, run_scenario
from wsclient import Chat

COMPOSE = os.environ.get("PARLEY_COMPOSE")
pytestmark = pytest.mark.skipif(not COMPOSE, reason="make compose-test only")
HTTP = f"http://127.0.0.1:{os.environ.get('PARLEY_EDGE_PORT', '8000')}"
TLS_PORT = os.environ.get("PARLEY_EDGE_TLS_PORT", "8443")


def compose(*args):
    r = subprocess.run(COMPOSE.split() + list(args), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def tls_context():
    """Trusts the self-signed certificate the compose `keys` job made for the edge."""
    cert = compose("exec", "-T", "edge", "cat", "/etc/nginx/tls/cert.pem")
    ctx = ssl.create_default_context(cadata=cert)
    return ctx


def gateway_containers():
    """Full container ids of the running gateway replicas."""
    return [c for c in compose("ps", "-q", "gateway").split() if c]


@pytest.fixture(scope="module")
def edge():
    return Api(HTTP)


@pytest.fixture(scope="module")
def mongo():
    import pymongo

    client = pymongo.MongoClient(f"mongodb://127.0.0.1:{os.environ['PARLEY_MONGO_PORT']}",
                                 serverSelectionTimeoutMS=5000)
    yield client[os.environ["PARLEY_MONGO_DB"]]
    client.close()


def patient(call, want):
    """As a client right after `up`: a 503 or a request that timed out is tried again (a
    register retried after a timeout may find the name taken by its first try: 409 is then
    the same success)."""
    r = None
    for _ in range(20):
        try:
            r = call()
        except OSError:  # the first request after up waited on a name Podman's DNS lost
            time.sleep(1)
            continue
        if r.status != 503:
            break
        time.sleep(0.5)
    assert r.status == want or (want == 201 and r.status == 409), r
    return r


def test_chat_through_the_edge_on_8000_and_8443(edge):
    # A client honours 503 + Retry-After: right after `up`, a service may not reach another yet
    # (under Podman, a service name sometimes does not resolve for a moment: operations.md).
    alice, bob = unique_name("ca"), unique_name("cb")
    for name in (alice, bob):
        patient(lambda: edge.register(name), 201)
    ta = patient(lambda: edge.login(alice), 200).json["access_token"]
    ctx = tls_context()
    # The REST login over TLS, with HSTS.
    req = urllib.request.Request(
        f"https://localhost:{TLS_PORT}/v1/auth/login", method="POST",
        data=json.dumps({"username": bob, "password": "correct horse battery"}).encode(),
        headers={"Content-Type": "application/json"})
    for attempt in range(50):
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=15) as r:
                assert r.status == 200
                assert "max-age" in r.headers.get("Strict-Transport-Security", "")
                tb = json.loads(r.read())["access_token"]
            break
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 49:
                raise
            time.sleep(0.2)

    async def go():
        a = await Chat.connect(ta, url=f"ws://127.0.0.1:{HTTP.rsplit(':', 1)[1]}/ws")
        # Bob over wss:// through the TLS listener.
        ws = await websockets.connect(f"wss://localhost:{TLS_PORT}/ws", ssl=ctx,
                                      additional_headers={"Authorization": "Bearer " + tb},
                                      open_timeout=10)
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready" and ready["user"] == bob
        b = Chat(ws, bob, ready["gateway"])
        # The first message after a cold start may wait on the broker (the idempotent
        # producer's id) or the first recipient lookup: a client resends it, same client_id.
        cid = await a.send(bob, "hello over compose")
        for _ in range(4):
            try:
                await a.wait(lambda: cid in a.acks, timeout=15)
                break
            except AssertionError:
                await a.send(bob, "hello over compose", client_id=cid)
        assert cid in a.acks, a.errors
        await b.wait(lambda: any(m["client_id"] == cid for m in b.msgs), timeout=20)
        await b.ws.send(json.dumps({"type": "send", "client_id": "r1", "to": alice,
                                    "content": "and back over TLS"}))
        await a.wait(lambda: any(m["content"] == "and back over TLS" for m in a.msgs), timeout=20)
        await a.close()
        await b.close()

    asyncio.run(go())
    conv = f"d:{min(alice, bob)}:{max(alice, bob)}"
    r = wait_until(lambda: (lambda r: r if len(r.json["messages"]) == 2 else None)(
        edge.call("GET", f"/v1/conversations/{conv}/messages?after_seq=0", token=ta)), timeout=20)
    assert [m["seq"] for m in r.json["messages"]] == [1, 2]


def test_the_edge_serves_the_openapi_document(edge):
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.json")) as f:
        doc = json.load(f)
    r = edge.call("GET", "/v1/openapi.json")
    assert r.status == 200 and r.json == doc, r


def test_the_edge_serves_the_web_client_under_a_strict_csp(edge):
    r = edge.call("GET", "/")
    assert r.status == 200 and b'<div id="app">' in r.raw, r
    csp = r.headers.get("Content-Security-Policy", "")
    assert "script-src 'self'" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp, csp
    r = edge.call("GET", "/vendor/preact-htm.js")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript"), r
    r = edge.call("GET", "/no-such-file.js")
    assert r.status == 404 and r.json["error"]["code"] == "not_found", r


def test_scale_to_three_gateways_and_kill_one(edge, mongo):
    compose("up", "-d", "--no-build", "--no-recreate", "--scale", "gateway=3", "--wait",
            "--wait-timeout", "180")
    assert len(gateway_containers()) == 3
    # Every other device long-polls: the edge's sid hash must keep each session on its gateway.
    ledger = Ledger(edge, mongo, 8, transport="mix")
    ledger.setup()
    # The edge re-resolves the gateway name every 5 s: wait until it spreads new sockets.
    time.sleep(6)
    killed = {}

    async def fault():
        devices = [d for devs in ledger.devices.values() for d in devs]
        held = {}
        for d in devices:
            held.setdefault(d.gateway, []).append(d)
        gw, victims = max(held.items(), key=lambda kv: len(kv[1]))
        # A gateway's id is "<host name>-<random>", and a container's host name is its id.
        cid = next(c for c in gateway_containers() if gw.startswith(c[:12]))
        killed.update(gateway=gw, container=cid[:12], devices=len(victims),
                      spread=sorted(len(v) for v in held.values()),
                      reconnects_before=sum(d.reconnects for d in victims), victims=victims)
        await asyncio.to_thread(subprocess.run, ["podman", "kill", cid], check=True,
                                capture_output=True)

    t0 = time.monotonic()
    recovery = asyncio.run(run_scenario(ledger, 300, 30, fault, fault_at=2.0))
    r = ledger.check("compose_kill_gateway",
                     f" recovery_s={recovery or 0:.2f} duration_s={time.monotonic() - t0:.1f}")
    print(f"compose: killed gateway container {killed['container']} holding "
          f"{killed['devices']} of {sum(killed['spread'])} devices (spread {killed['spread']})")
    assert r["acked"] > 0
    assert (r["lost"], r["stored_dups"], r["shown_dups"], r["seq_gaps"], r["order_violations"]) == \
        (0, 0, 0, 0, 0), r
    assert len(killed["spread"]) >= 2, killed  # the edge spread the sockets over the gateways
    # Its clients reconnected (to another gateway, or to the same one restarted) and went on.
    assert sum(d.reconnects for d in killed["victims"]) > killed["reconnects_before"]
