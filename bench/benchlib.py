"""What the bench scripts share: tokens signed with a cluster's key, CPU seconds from /proc,
Redis's own command counters."""
import base64
import json
import os
import subprocess
import time
import uuid

CLK = os.sysconf("SC_CLK_TCK")


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key_path, user):
    """An ES256 access token for user, signed with the PEM key at key_path by the OpenSSL CLI."""
    now = int(time.time())
    claims = {"iss": "parley", "aud": "parley", "sub": user, "sid": uuid.uuid4().hex,
              "jti": uuid.uuid4().hex, "iat": now, "exp": now + 3600}
    head = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode()) + "." + \
        b64url(json.dumps(claims).encode())
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_path],
                         input=head.encode(), capture_output=True, check=True).stdout
    i = 2 if der[1] < 0x80 else 3
    rlen = der[i + 1]
    r = der[i + 2:i + 2 + rlen]
    j = i + 2 + rlen
    s = der[j + 2:j + 2 + der[j + 1]]
    return head + "." + b64url(r[-32:].rjust(32, b"\0") + s[-32:].rjust(32, b"\0"))


def proc_cpu(pid):
    """CPU seconds (user + system) of pid so far; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def commandstats(r):
    """Calls per Redis command so far, from Redis's INFO commandstats."""
    return {k[len("cmdstat_"):]: v["calls"] for k, v in r.info("commandstats").items()}


def ferretdb_requests(port):
    """Requests per command so far, from FerretDB's own counters (its debug listener,
    PARLEY_FERRETDB_DEBUG_PORT); {} when it cannot be read."""
    import re
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for m in re.finditer(r'^ferretdb_client_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        cmd = re.search(r'command="([^"]*)"', m.group(1))
        if cmd:
            out[cmd.group(1)] = out.get(cmd.group(1), 0) + int(float(m.group(2)))
    return out


def delta(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def pid_of(var, name):
    """The pid deploy/cluster.sh or infra.sh wrote for service name under var, or None."""
    try:
        with open(os.path.join(var, "run", f"{name}.pid")) as f:
            return int(f.read())
    except OSError:
        return None
