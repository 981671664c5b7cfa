"""parley-auth against real Redis and the MongoDB-compatible server: accounts, logins, token
rotation, logout, rate limits, bad input, and recovery from crashes and outages."""
import datetime
import json
import re
import statistics
import threading
import time

import pytest

from conftest import Api, cluster, infra, kill9, unique_name, wait_cluster_ready, wait_until

PW = "correct horse battery"


def test_register_login_me_through_the_edge(edge):
    name = unique_name("alice")
    r = edge.register(name, display_name="Alice Ä", locale="de-DE", time_zone="Europe/Berlin")
    assert r.status == 201, r
    assert r.json["username"] == name
    assert r.json["display_name"] == "Alice Ä"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r.json["created_at"])
    assert "password" not in r.raw.decode() and "hash" not in r.raw.decode()

    r = edge.login(name, device="laptop")
    assert r.status == 200, r
    t = r.json
    assert t["token_type"] == "Bearer" and t["expires_in"] == 900
    assert t["access_token"].count(".") == 2
    assert len(t["session_id"]) == 32 and t["refresh_token"].startswith(t["session_id"] + ".")

    me = edge.call("GET", "/v1/users/me", token=t["access_token"])
    assert me.status == 200, me
    assert me.json == {"username": name, "display_name": "Alice Ä", "locale": "de-DE",
                       "time_zone": "Europe/Berlin", "created_at": r.json.get("created_at", me.json["created_at"])}

    other = unique_name("bob")
    assert edge.register(other).status == 201
    pub = edge.call("GET", f"/v1/users/{other}", token=t["access_token"])
    assert pub.status == 200 and pub.json == {"username": other, "display_name": other}
    assert edge.call("GET", "/v1/users/nosuchuser999", token=t["access_token"]).status == 404
    assert edge.call("GET", "/v1/users/Not%20valid", token=t["access_token"]).status == 404


def test_username_is_case_folded_and_unique(auth):
    name = unique_name("carol")
    assert auth.register(name.upper()).status == 201
    r = auth.register(name)
    assert r.status == 409 and r.error_code == "conflict"
    assert auth.login(name.capitalize()).status == 200


def test_duplicate_registration_is_409_and_keeps_the_first_password(auth):
    name = unique_name("dave")
    assert auth.register(name, password="first password").status == 201
    r = auth.register(name, password="second password")
    assert r.status == 409, r
    assert auth.login(name, password="first password").status == 200
    assert auth.login(name, password="second password").status == 401


def test_wrong_password_and_unknown_user_look_the_same(auth):
    name = unique_name("erin")
    assert auth.register(name).status == 201
    wrong = auth.login(name, password="not the password")
    unknown = auth.login(unique_name("ghost"), password="not the password")
    assert wrong.status == unknown.status == 401
    assert wrong.json == unknown.json


def test_unknown_user_costs_a_real_password_check(auth):
    """Without the dummy verification an unknown user answers ~20x faster than a wrong
    password (no argon2id); the bound is loose so that only that difference fails it."""
    name = unique_name("fay")
    assert auth.register(name).status == 201

    def median(user):
        times = []
        for _ in range(5):
            a = Api(auth.base)  # a fresh address, so the per-address limit is not the subject
            t0 = time.perf_counter()
            assert a.login(user, password="wrong password!").status == 401
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    wrong, unknown = median(name), median(unique_name("ghost"))
    assert unknown > 0.4 * wrong, (unknown, wrong)


def test_stored_hash_is_argon2id_not_the_password(auth, mongo):
    name = unique_name("gus")
    pw = "a very particular passphrase"
    assert auth.register(name, password=pw).status == 201
    doc = mongo.users.find_one({"_id": name})
    assert doc is not None
    h = doc["password_hash"]
    m = re.fullmatch(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+", h)
    assert m, h
    assert int(m.group(1)) >= 19 * 1024 and int(m.group(2)) >= 2
    assert pw not in json.dumps(doc, default=str)
    # Another account with the same password gets another salt.
    other = unique_name("gus")
    assert auth.register(other, password=pw).status == 201
    assert mongo.users.find_one({"_id": other})["password_hash"] != h


def test_session_is_stored_with_only_a_hash_of_the_refresh_token(auth, mongo):
    name = unique_name("hal")
    assert auth.register(name).status == 201
    t = auth.login(name, device="phone").json
    s = mongo.sessions.find_one({"_id": t["session_id"]})
    assert s["user"] == name and s["device"] == "phone" and s["revoked"] is False
    assert t["refresh_token"] not in json.dumps(s, default=str)
    assert t["refresh_token"].split(".")[1] not in json.dumps(s, default=str)
    assert re.fullmatch(r"[0-9a-f]{64}", s["refresh_hash"])
    assert s["expires_at"] > s["created_at"]


def test_password_bounds_and_never_truncated(auth):
    name = unique_name("ivy")
    assert auth.register(name, password="short").status == 400
    assert auth.register(name, password="x" * 1025).status == 400
    long_pw = "p" * 1023 + "q"
    assert auth.register(name, password=long_pw).status == 201
    assert auth.login(name, password=long_pw).status == 200
    assert auth.login(name, password="p" * 1023 + "r").status == 401
    assert auth.login(name, password="p" * 1023).status == 401


def test_refresh_rotates_and_reuse_revokes_the_session(auth):
    name = unique_name("jay")
    assert auth.register(name).status == 201
    first = auth.login(name).json
    r = auth.call("POST", "/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert r.status == 200, r
    second = r.json
    assert second["refresh_token"] != first["refresh_token"]
    assert second["session_id"] == first["session_id"]
    assert auth.call("GET", "/v1/users/me", token=second["access_token"]).status == 200

    # Presenting the rotated-out token again revokes the whole session...
    r = auth.call("POST", "/v1/auth/refresh", {"refresh_token": first["refresh_token"]})
    assert r.status == 401 and "revoked" in r.json["error"]["message"]
    # ...so the newest refresh token and every access token of the session stop working.
    assert auth.call("POST", "/v1/auth/refresh", {"refresh_token": second["refresh_token"]}).status == 401
    assert auth.call("GET", "/v1/users/me", token=second["access_token"]).status == 401
    assert auth.call("GET", "/v1/users/me", token=first["access_token"]).status == 401
    # Another session of the same user is untouched.
    assert auth.login(name).status == 200


def test_an_expired_session_cannot_refresh(auth, mongo):
    """A session past its expires_at (PARLEY_REFRESH_TTL after its last refresh) is over: its
    refresh token gets 401 and the client must log in again."""
    name = unique_name("old")
    assert auth.register(name).status == 201
    t = auth.login(name).json
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    mongo.sessions.update_one({"_id": t["session_id"]}, {"$set": {"expires_at": past}})
    r = auth.call("POST", "/v1/auth/refresh", {"refresh_token": t["refresh_token"]})
    assert r.status == 401 and "log in again" in r.json["error"]["message"], r
    # One second before the end it still works, and the refresh extends the session.
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)
    t = auth.login(name).json
    mongo.sessions.update_one({"_id": t["session_id"]}, {"$set": {"expires_at": soon}})
    r = auth.call("POST", "/v1/auth/refresh", {"refresh_token": t["refresh_token"]})
    assert r.status == 200, r
    s = mongo.sessions.find_one({"_id": t["session_id"]})
    assert s["expires_at"].replace(tzinfo=datetime.timezone.utc) > soon + datetime.timedelta(days=1)


def test_refresh_with_garbage_is_401(auth):
    for tok in ["", "abc", "0" * 32 + "." + "A" * 43, 42, None]:
        r = auth.call("POST", "/v1/auth/refresh", {"refresh_token": tok})
        assert r.status in (400, 401), (tok, r)
    assert auth.call("POST", "/v1/auth/refresh", {}).status == 400


def test_logout_revokes_everywhere_and_is_announced(auth, redis_client):
    name = unique_name("kim")
    assert auth.register(name).status == 201
    t = auth.login(name).json
    other = auth.login(name).json
    sub = redis_client.pubsub()
    sub.subscribe("parley:revoke")
    wait_until(lambda: sub.get_message(timeout=0.1), timeout=5)  # the subscribe confirmation

    r = auth.call("POST", "/v1/auth/logout", token=t["access_token"])
    assert r.status == 204, r
    msg = wait_until(lambda: sub.get_message(timeout=0.2), timeout=5)
    assert json.loads(msg["data"]) == {"sid": t["session_id"], "user": name}
    sub.close()

    # The revoked-session flag that gateways and the store check, for an access token's lifetime.
    key = f"parley:revoked:{t['session_id']}"
    assert redis_client.exists(key)
    assert 900 <= redis_client.ttl(key) <= 930

    assert auth.call("GET", "/v1/users/me", token=t["access_token"]).status == 401
    assert auth.call("POST", "/v1/auth/refresh", {"refresh_token": t["refresh_token"]}).status == 401
    # Logout is idempotent, and other sessions keep working.
    assert auth.call("POST", "/v1/auth/logout", token=t["access_token"]).status == 204
    assert auth.call("GET", "/v1/users/me", token=other["access_token"]).status == 200


def test_bad_tokens_are_401(auth):
    name = unique_name("lee")
    assert auth.register(name).status == 201
    t = auth.login(name).json
    assert auth.call("GET", "/v1/users/me").status == 401
    for bad in ["nonsense", t["refresh_token"], t["access_token"][:-4] + "AAAA",
                t["access_token"] + "x", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0."]:
        r = auth.call("GET", "/v1/users/me", token=bad)
        assert r.status == 401 and r.error_code == "unauthorized", (bad, r)
    r = auth.call("GET", "/v1/users/me", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert r.status == 401


def test_bad_input_gets_clear_4xx(auth):
    cases = [
        (dict(raw=b"{not json"), 400, "invalid"),
        (dict(raw=b"[1,2,3]"), 400, "invalid"),
        (dict(raw=b'"string"'), 400, "invalid"),
        (dict(raw=b'{"username":"\xff\xfe","password":"12345678"}'), 400, "invalid"),
        (dict(raw=b"[" * 5000 + b"]" * 5000), 400, "invalid"),  # deeper than the parser allows
        (dict(raw=b'{"username":"ab","password":"12345678"}'), 400, "invalid"),
        (dict(raw=b'{"username":"a b c","password":"12345678"}'), 400, "invalid"),
        (dict(raw=b'{"username":"abc\\u0000def","password":"12345678"}'), 400, "invalid"),
        (dict(raw=b'{"username":123,"password":"12345678"}'), 400, "invalid"),
        (dict(raw=b'{"username":"okname","password":"12345678","display_name":""}'), 400, "invalid"),
        (dict(raw=b'{"username":"okname","password":"12345678","time_zone":"../../etc"}'), 400, "invalid"),
        (dict(raw=b'{"username":"okname","username":"other","password":"12345678"}'), 400, "invalid"),
        (dict(raw=b"{}"), 400, "invalid"),
        (dict(raw=b'{"username":"' + b"a" * 17000 + b'"}'), 413, "too_large"),
    ]
    for kw, status, code in cases:
        r = auth.call("POST", "/v1/auth/register", **kw)
        assert r.status == status and r.error_code == code, (kw["raw"][:60], r)
    r = auth.call("GET", "/v1/auth/register")
    assert r.status == 405
    r = auth.call("GET", "/v1/nothing/here")
    assert r.status == 404 and r.error_code == "not_found"


def test_login_rate_limited_per_username(auth):
    name = unique_name("max")
    assert auth.register(name).status == 201
    statuses = []
    for i in range(12):
        a = Api(auth.base)  # a new address each time: only the per-username limit applies
        statuses.append(a.login(name, password="wrong password!"))
    assert [r.status for r in statuses[:10]] == [401] * 10
    limited = statuses[10]
    assert limited.status == 429 and limited.error_code == "rate_limited", limited
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    # Even the right password waits out the window: the limit protects the account.
    assert Api(auth.base).login(name).status == 429
    # Other users are unaffected.
    other = unique_name("max")
    assert auth.register(other).status == 201
    assert Api(auth.base).login(other).status == 200


def test_login_rate_limited_per_address(own_auth):
    api = own_auth({"PARLEY_LOGIN_LIMIT_ADDR": "5"})
    a = Api(api.base)
    statuses = [a.login(unique_name("nobody"), password="wrong password!").status for _ in range(7)]
    assert statuses == [401] * 5 + [429, 429]
    # Another address is unaffected.
    b = Api(api.base)
    assert b.login(unique_name("nobody"), password="wrong password!").status == 401


def test_health_ready_metrics(auth):
    assert auth.call("GET", "/healthz").status == 200
    r = auth.call("GET", "/readyz")
    assert r.status == 200 and r.json["mongodb"] == "ok" and r.json["redis"] == "ok"
    m = auth.call("GET", "/metrics")
    assert m.status == 200
    text = m.raw.decode()
    assert "# TYPE parley_auth_logins_total counter" in text
    assert re.search(r'^parley_http_requests_total\{code="200"\} \d+$', text, re.M)


def test_auth_killed_with_sigkill_comes_back_with_all_accounts(auth):
    names = [unique_name("pat") for _ in range(5)]
    for n in names:
        assert auth.register(n).status == 201
    kept = auth.login(names[0]).json
    kill9("auth")
    cluster("up")  # the same script users run; restarts only what is down
    for n in names:
        assert auth.login(n).status == 200, n
    # Sessions survive too: the old access and refresh tokens still work.
    assert auth.call("GET", "/v1/users/me", token=kept["access_token"]).status == 200
    assert auth.call("POST", "/v1/auth/refresh", {"refresh_token": kept["refresh_token"]}).status == 200


def test_mongodb_outage_is_503_then_recovers(auth):
    name = unique_name("quin")
    assert auth.register(name).status == 201
    token = auth.login(name).json["access_token"]
    infra("stop", "ferretdb")
    try:
        r = auth.login(name)
        assert r.status == 503 and r.error_code == "unavailable", r
        assert int(r.headers["Retry-After"]) >= 1
        assert auth.register(unique_name("quin")).status == 503
        assert auth.call("GET", "/v1/users/me", token=token).status == 503
        ready = auth.call("GET", "/readyz")
        assert ready.status == 503 and ready.json["mongodb"] == "unavailable"
        assert auth.call("GET", "/healthz").status == 200  # alive, just not ready
    finally:
        infra("start", "ferretdb")
    wait_until(lambda: auth.call("GET", "/readyz").status == 200, timeout=30)
    wait_cluster_ready()
    assert auth.login(name).status == 200
    assert auth.call("GET", "/v1/users/me", token=token).status == 200


def test_redis_outage_is_503_then_recovers(auth):
    name = unique_name("rae")
    assert auth.register(name).status == 201
    infra("stop", "redis")
    try:
        r = auth.login(name)
        assert r.status == 503 and r.error_code == "unavailable", r
        ready = auth.call("GET", "/readyz")
        assert ready.status == 503 and ready.json["redis"] == "unavailable"
    finally:
        infra("start", "redis")
    wait_until(lambda: auth.call("GET", "/readyz").status == 200, timeout=30)
    wait_cluster_ready()
    assert auth.login(name).status == 200


def test_concurrent_logins_all_answered(auth):
    """Eight clients at once on a four-thread pool: every request gets its answer."""
    names = [unique_name("sam") for _ in range(8)]
    for n in names:
        assert auth.register(n).status == 201
    results = []

    def go(n):
        results.append(Api(auth.base).login(n).status)

    threads = [threading.Thread(target=go, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 8
