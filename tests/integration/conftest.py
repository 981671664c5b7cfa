"""Fixtures for the integration suite: the cluster that run.sh started (ports and folders come
from the PARLEY_* environment), HTTP helpers, and control of individual processes through the
same deploy scripts users run."""
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VAR = os.environ["PARLEY_VAR"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the services' recent warnings and errors, so a failure
    in CI, where the logs are not kept, can still be read."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    logdir = os.path.join(VAR, "log")
    lines = []
    for name in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
        if not name.endswith(".log") or not name.startswith(("auth", "gateway", "store", "router")):
            continue
        with open(os.path.join(logdir, name), errors="replace") as f:
            lines += [(name, ln.rstrip()[:300]) for ln in f
                      if '"level":"warn"' in ln or '"level":"error"' in ln]
    lines.sort(key=lambda nl: nl[1])  # each line starts with its timestamp
    rep.sections.append(("service warnings and errors (last 40)",
                         "\n".join(f"{n}: {ln}" for n, ln in lines[-40:]) or "(none)"))


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def error_code(self):
        return (self.json or {}).get("error", {}).get("code")

    def __repr__(self):
        return f"<{self.status} {self.raw[:200]!r}>"


def request(base, method, path, body=None, token=None, headers=None, raw=None, timeout=15):
    """One HTTP request; returns a Response whatever the status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())


class Api:
    """The REST API at one base URL, with a client address of its own (X-Real-IP, trusted
    because the services run with PARLEY_TRUST_FORWARDED as they do behind the edge)."""

    def __init__(self, base, addr=None):
        self.base = base
        self.addr = addr or "10.%d.%d.%d" % tuple(uuid.uuid4().bytes[:3])

    def call(self, method, path, body=None, token=None, headers=None, raw=None):
        h = {"X-Real-IP": self.addr}
        h.update(headers or {})
        return request(self.base, method, path, body, token, h, raw)

    def register(self, username, password="correct horse battery", **extra):
        return self.call("POST", "/v1/auth/register", dict(username=username, password=password, **extra))

    def login(self, username, password="correct horse battery", **extra):
        return self.call("POST", "/v1/auth/login", dict(username=username, password=password, **extra))


def unique_name(prefix="u"):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def edge():
    """The API through the nginx edge, as clients reach it."""
    return Api(f"http://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}")


@pytest.fixture
def auth():
    """parley-auth directly, bypassing the edge."""
    return Api(f"http://127.0.0.1:{os.environ['PARLEY_AUTH_PORT']}")


def free_port():
    """A loopback port the kernel just handed out (free until someone else takes it)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _own_service(binary, port_var, name):
    """A fixture that starts extra copies of a service with other settings, on free ports,
    against the suite's Redis, Kafka and MongoDB; stopped with SIGTERM afterwards."""
    procs = []

    def start(extra):
        port = free_port()
        env = dict(os.environ, PARLEY_TRUST_FORWARDED="1",
                   PARLEY_JWT_PRIVATE_KEY=os.path.join(VAR, "keys", "jwt-private.pem"),
                   PARLEY_JWT_PUBLIC_KEY=os.path.join(VAR, "keys", "jwt-public.pem"),
                   PARLEY_KAFKA_BROKERS=f"127.0.0.1:{os.environ['PARLEY_KAFKA_PORT']}",
                   PARLEY_MONGO_URI=f"mongodb://127.0.0.1:{os.environ['PARLEY_MONGO_PORT']}",
                   **{port_var: str(port)})
        env.update(extra)
        log = open(os.path.join(VAR, "log", f"{name}-extra-{port}.log"), "w")
        p = subprocess.Popen([os.path.join(os.environ["PARLEY_BIN"], binary)], env=env,
                             stdout=log, stderr=log)
        procs.append(p)
        api = Api(f"http://127.0.0.1:{port}")
        api.port = port
        wait_until(lambda: _ready(api), timeout=30)
        return api

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=20)


@pytest.fixture
def own_auth():
    """A separate parley-auth with extra settings (own_auth({...}) returns its Api)."""
    yield from _own_service("parley-auth", "PARLEY_AUTH_PORT", "auth")


@pytest.fixture
def own_gateway():
    """A separate parley-gateway with extra settings (its Api has .port)."""
    yield from _own_service("parley-gateway", "PARLEY_GATEWAY_PORT", "gateway")


def _ready(api):
    try:
        return api.call("GET", "/readyz").status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def mongo():
    import pymongo

    client = pymongo.MongoClient(
        f"mongodb://127.0.0.1:{os.environ['PARLEY_MONGO_PORT']}", serverSelectionTimeoutMS=5000
    )
    yield client[os.environ["PARLEY_MONGO_DB"]]
    client.close()


@pytest.fixture
def redis_client():
    import redis

    r = redis.Redis(host="127.0.0.1", port=int(os.environ["PARLEY_REDIS_PORT"]), socket_timeout=5)
    yield r
    r.close()


def pid_of(name):
    with open(os.path.join(VAR, "run", f"{name}.pid")) as f:
        return int(f.read())


def history(api, token, conv, after=0):
    """A conversation's whole history after seq `after`, by range pulls as a client syncs."""
    out = []
    while True:
        r = api.call("GET", f"/v1/conversations/{conv}/messages?after_seq={after}&limit=200",
                     token=token)
        assert r.status == 200, r
        if not r.json["messages"]:
            return out
        out += r.json["messages"]
        after = out[-1]["seq"]


def dm(a, b):
    """The 1:1 conversation id of users a and b."""
    return "d:" + ":".join(sorted((a, b)))


def conversation(api, token, conv):
    """conv's entry in the caller's conversation list, or None."""
    r = api.call("GET", "/v1/conversations", token=token)
    assert r.status == 200, r
    found = [c for c in r.json["conversations"] if c["conv"] == conv]
    return found[0] if found else None


def kill9(name):
    """kill -9 a process the scripts started, and wait until it is gone."""
    pid = pid_of(name)
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    # A SIGKILLed child of ours stays a zombie until reaped; it is gone for the test's purpose.


def cluster(*args):
    subprocess.run([os.path.join(ROOT, "deploy", "cluster.sh"), *args], check=True)


def infra(*args):
    subprocess.run([os.path.join(ROOT, "deploy", "infra.sh"), *args], check=True)


def wait_until(pred, timeout=30, interval=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


def b64url(data):
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_token(claims, key_path=None):
    """An ES256 token signed with the cluster's own private key (OpenSSL CLI), for tokens
    parley-auth would never issue, such as an expired one."""
    key_path = key_path or os.path.join(VAR, "keys", "jwt-private.pem")
    signing_input = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()) + "." + \
        b64url(json.dumps(claims).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_path],
                         input=signing_input.encode(), capture_output=True, check=True).stdout
    # DER ECDSA signature: SEQUENCE { INTEGER r, INTEGER s } -> r || s, 32 bytes each.
    i = 2 if der[1] < 0x80 else 3
    rlen = der[i + 1]
    r = der[i + 2:i + 2 + rlen]
    j = i + 2 + rlen
    s = der[j + 2:j + 2 + der[j + 1]]
    raw = r[-32:].rjust(32, b"\0") + s[-32:].rjust(32, b"\0")
    return signing_input + "." + b64url(raw)


def gateway_ports():
    base = int(os.environ["PARLEY_GATEWAY_PORT"])
    router = int(os.environ["PARLEY_ROUTER_PORT"])
    n = int(os.environ.get("PARLEY_GATEWAYS", "2"))
    return [base] + [router + i for i in range(1, n)]


def service_ports():
    return [int(os.environ[f"PARLEY_{s}_PORT"]) for s in ("AUTH", "STORE", "ROUTER")] + \
        gateway_ports()


def wait_cluster_ready(timeout=30):
    """Every service answers /readyz with 200: after a dependency was restarted, the next
    test starts on a cluster that has reconnected everywhere (gateways re-subscribed too)."""
    def all_ready():
        bad = [p for p in service_ports()
               if Api(f"http://127.0.0.1:{p}").call("GET", "/readyz").status != 200]
        return not bad or None
    wait_until(all_ready, timeout=timeout)


def user_with_token(api, prefix="u"):
    name = unique_name(prefix)
    assert api.register(name).status == 201
    r = api.login(name)
    assert r.status == 200, r
    return name, r.json["access_token"]
