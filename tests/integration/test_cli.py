"""The parley command-line client against the real cluster, through the edge."""
import os
import re
import stat
import subprocess
import time

from conftest import unique_name


def cli(home, *args, stdin=None, timeout=30, tz="Asia/Tokyo"):
    env = dict(os.environ, PARLEY_URL=f"http://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}",
               PARLEY_CONFIG_DIR=home, TZ=tz)
    return subprocess.run([os.path.join(os.environ["PARLEY_BIN"], "parley"), *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=timeout)


def two_logged_in(tmp_path, a, b):
    """Registers and logs in a and b, each with a config folder of its own; returns them."""
    ha, hb = str(tmp_path / "a"), str(tmp_path / "b")
    for name, home in ((a, ha), (b, hb)):
        assert cli(home, "register", name, stdin="correct horse battery\n").returncode == 0
        assert cli(home, "login", name, stdin="correct horse battery\n").returncode == 0
    return ha, hb


def chat_env(home):
    return dict(os.environ, PARLEY_URL=f"http://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}",
                PARLEY_CONFIG_DIR=home, TZ="UTC")


def test_cli_register_login_send_history(tmp_path):
    a, b = unique_name("cli"), unique_name("cli")
    ha, hb = str(tmp_path / "a"), str(tmp_path / "b")
    for name, home in ((a, ha), (b, hb)):
        r = cli(home, "register", name, stdin="correct horse battery\n")
        assert r.returncode == 0, r.stderr
        r = cli(home, "login", name, stdin="correct horse battery\n")
        assert r.returncode == 0 and "logged in" in r.stdout, r.stderr
        mode = stat.S_IMODE(os.stat(os.path.join(home, "session.json")).st_mode)
        assert mode == 0o600, oct(mode)
        assert "correct horse" not in open(os.path.join(home, "session.json")).read()
    assert cli(ha, "login", a, stdin="wrong password!!\n").returncode == 1
    r = cli(ha, "send", b, "hello", "from", "the", "cli")
    assert r.returncode == 0 and r.stdout.strip() == "sent", r.stderr
    r = cli(hb, "send", a, "and back")
    assert r.returncode == 0, r.stderr
    # An ack means durable in Kafka; the store writes history a moment later.
    deadline = time.time() + 10
    while True:
        r = cli(hb, "history", a)
        lines = r.stdout.strip().splitlines()
        if len(lines) >= 2 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert len(lines) == 2, r.stdout
    assert f"#1 {a} -> {b}: hello from the cli" in lines[0]
    assert f"#2 {b} -> {a}: and back" in lines[1]
    # Times are shown in the reader's zone: Tokyo is UTC+9 all year (no daylight saving).
    utc = cli(hb, "history", a, tz="UTC").stdout.strip().splitlines()
    for tokyo_line, utc_line in zip(lines, utc):
        th, tm = map(int, re.match(r"\[(?:\S+ )?(\d\d):(\d\d)\]", tokyo_line).groups())
        uh, um = map(int, re.match(r"\[(?:\S+ )?(\d\d):(\d\d)\]", utc_line).groups())
        assert (th, tm) == ((uh + 9) % 24, um), (tokyo_line, utc_line)
    r = cli(ha, "recent", "1")
    assert "and back" in r.stdout and "hello" not in r.stdout
    r = cli(ha, "send", "nosuchuser_q1", "x")
    assert r.returncode == 1 and "no such user" in r.stderr
    assert cli(ha, "logout").returncode == 0
    r = cli(ha, "send", b, "after logout")
    assert r.returncode == 1


def test_cli_chat_two_terminals(tmp_path):
    a, b = unique_name("chat"), unique_name("chat")
    ha, hb = two_logged_in(tmp_path, a, b)
    env = chat_env
    binary = os.path.join(os.environ["PARLEY_BIN"], "parley")
    pa = subprocess.Popen([binary, "chat", b], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env(ha))
    pb = subprocess.Popen([binary, "chat", a], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env(hb))
    time.sleep(1.5)
    pa.stdin.write("hi from a\n")
    pa.stdin.flush()
    time.sleep(0.5)
    pb.stdin.write("hi from b\n")
    pb.stdin.flush()
    time.sleep(1.5)
    out_a, _ = pa.communicate(timeout=10)  # closes stdin: Ctrl-D
    out_b, _ = pb.communicate(timeout=10)
    for out in (out_a, out_b):
        lines = [l for l in out.splitlines() if l.startswith("[")]
        assert [l.split("] ", 1)[1] for l in lines] == [f"{a}: hi from a", f"{b}: hi from b"], out
        assert time.strftime("%H:", time.gmtime()) in lines[0] or lines[0][1:3].isdigit()


def test_cli_chat_receipts_typing_edit_recall(tmp_path):
    """parley chat sends a read cursor for what it shows, prints ✓✓ under the user's last
    message when the other side read it, "… is typing…", and /edit and /recall act on the
    user's last message."""
    import asyncio
    import json

    from wsclient import Chat

    a, b = unique_name("chr"), unique_name("chr")
    ha, hb = two_logged_in(tmp_path, a, b)
    binary = os.path.join(os.environ["PARLEY_BIN"], "parley")
    pa = subprocess.Popen([binary, "chat", b], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=chat_env(ha))
    pb = subprocess.Popen([binary, "chat", a], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=chat_env(hb))
    time.sleep(1.5)
    pa.stdin.write("helo\n")
    pa.stdin.flush()
    time.sleep(1.5)  # b shows it, and tells the server it has read it

    async def typing():
        token = json.load(open(os.path.join(hb, "session.json")))["access_token"]
        dev = await Chat.connect(token)
        conv = "d:" + ":".join(sorted((a, b)))
        await dev.ws.send(json.dumps({"type": "typing", "conv": conv, "state": "start"}))
        await asyncio.sleep(1.0)
        await dev.close()

    asyncio.run(typing())
    for line in ("/edit hello", "/recall"):
        pa.stdin.write(line + "\n")
        pa.stdin.flush()
        time.sleep(1.5)
    out_a, err_a = pa.communicate(timeout=10)
    out_b, _ = pb.communicate(timeout=10)
    assert "   ✓✓ read by " + b in out_a.splitlines(), out_a
    assert f"-- {b} is typing… --" in err_a.splitlines(), err_a
    shown = [l.split("] ", 1)[1] for l in out_b.splitlines() if l.startswith("[")]
    assert shown == [f"{a}: helo", f"{a} edited a message (#1): hello",
                     f"-- {a} recalled a message (#1) --"], out_b
    # History as a later chat shows it: the message recalled, its edit's words gone too.
    again = subprocess.run([binary, "chat", a], input="", capture_output=True, text=True,
                           env=chat_env(hb), timeout=15)
    shown = [l.split("] ", 1)[1] for l in again.stdout.splitlines() if l.startswith("[")]
    assert shown[0] == f"{a}: (recalled)" and "hello" not in again.stdout, again.stdout


def test_cli_contacts_and_blocks(tmp_path):
    a, b = unique_name("clc"), unique_name("clc")
    ha, hb = two_logged_in(tmp_path, a, b)
    assert "no contacts yet" in cli(ha, "contacts").stdout
    r = cli(ha, "add", b)
    assert r.returncode == 0 and r.stdout.strip() == f"{b}: outgoing", r.stderr
    r = cli(hb, "contacts")
    assert re.search(rf"^{a}\s+incoming", r.stdout, re.M), r.stdout
    assert cli(hb, "accept", a).stdout.strip() == f"{a}: accepted"
    assert re.search(rf"^{b}\s+accepted", cli(ha, "contacts").stdout, re.M)
    r = cli(ha, "accept", "nosuchuser_q1")
    assert r.returncode == 1 and "no contact request" in r.stderr
    assert cli(hb, "block", a).stdout.strip() == "blocked"
    assert re.search(rf"^{a}\s+blocked", cli(hb, "contacts").stdout, re.M)
    r = cli(ha, "send", b, "are you there?")
    assert r.returncode == 1 and "cannot message" in r.stderr, (r.stdout, r.stderr)
    assert cli(hb, "unblock", a).stdout.strip() == "unblocked"
    assert cli(ha, "send", b, "are you there now?").returncode == 0
    assert cli(ha, "remove", b).stdout.strip() == "removed"
    assert "no contacts yet" in cli(hb, "contacts").stdout


def test_cli_chat_shows_the_peers_presence(tmp_path):
    a, b = unique_name("clp"), unique_name("clp")
    ha, hb = two_logged_in(tmp_path, a, b)
    assert cli(ha, "add", b).returncode == 0 and cli(hb, "accept", a).returncode == 0
    env = chat_env
    binary = os.path.join(os.environ["PARLEY_BIN"], "parley")
    pb = subprocess.Popen([binary, "chat", a], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env(hb))
    time.sleep(1.5)
    pa = subprocess.Popen([binary, "chat", b], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env(ha))
    time.sleep(2.0)
    _, err_a = pa.communicate(timeout=10)  # a leaves; b sees it after the grace
    time.sleep(8.0)
    _, err_b = pb.communicate(timeout=10)
    assert f"-- {b} is online --" in err_a, err_a
    lines = [l for l in err_b.splitlines() if l.startswith(f"-- {a} is")]
    assert lines[0] == f"-- {a} is offline --", err_b  # never seen before
    assert lines[1] == f"-- {a} is online --", err_b
    assert re.fullmatch(rf"-- {a} is offline \(last seen \d\d:\d\d\) --", lines[2]), err_b


def test_cli_groups(tmp_path):
    """parley group create/add/remove/leave/members/list, chat g:<id> live in a group joined
    after it began (the client starts at its joined_seq), history and recent with groups."""
    a, b, c = unique_name("clg"), unique_name("clg"), unique_name("clg")
    ha, hb = two_logged_in(tmp_path, a, b)
    hc = str(tmp_path / "c")
    assert cli(hc, "register", c, stdin="correct horse battery\n").returncode == 0
    assert cli(hc, "login", c, stdin="correct horse battery\n").returncode == 0
    assert "no groups yet" in cli(ha, "group", "list").stdout
    r = cli(ha, "group", "create", "Weekend plans", b)
    assert r.returncode == 0, r.stderr
    conv = re.search(r"created (g:[0-9A-Z]{26}) ", r.stdout).group(1)
    assert f"members: {a}, {b}" in r.stdout
    assert cli(hb, "send", conv, "saturday?").returncode == 0
    binary = os.path.join(os.environ["PARLEY_BIN"], "parley")
    # c is added while its chat would fail (not a member yet): it is told so and exits.
    r = cli(hc, "chat", conv)
    assert r.returncode == 1 and "not a member" in r.stderr, (r.stdout, r.stderr)
    r = cli(ha, "group", "add", conv, c)
    assert r.returncode == 0 and r.stdout.strip() == f"added: {c}", (r.stdout, r.stderr)
    assert "members already" in cli(ha, "group", "add", conv, c).stdout
    pc = subprocess.Popen([binary, "chat", conv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=chat_env(hc))
    time.sleep(1.5)
    pc.stdin.write("count me in\n")
    pc.stdin.flush()
    time.sleep(0.5)
    assert cli(hb, "send", conv, "great").returncode == 0
    time.sleep(1.5)
    out_c, err_c = pc.communicate(timeout=10)
    assert '"Weekend plans" (3 members, you are member)' in err_c, err_c
    lines = [l.split("] ", 1)[1] for l in out_c.splitlines() if l.startswith("[")]
    # c's own stream (u:) told it of the addition; the chat shows it too.
    assert f'-- {a} added you to "Weekend plans": parley chat {conv} --' in lines, out_c
    # c's stream of the group begins where it joined: nothing before it, then its line and b's.
    lines = [l for l in lines if "added you to" not in l]
    assert lines == [f"-- {a} added [\"{c}\"] --", f"{c}: count me in", f"{b}: great"], out_c
    members = cli(hb, "group", "members", conv).stdout
    assert re.search(rf"^{a}\s+owner$", members, re.M) and re.search(rf"^{c}\s+member$", members, re.M)
    assert re.search(rf"^{conv}\s+Weekend plans", cli(hb, "group", "list").stdout, re.M)
    r = cli(hb, "group", "remove", conv, c)
    assert r.returncode == 1 and "only admins" in r.stderr, r.stderr
    assert cli(ha, "group", "remove", conv, c).stdout.strip() == "removed"
    r = cli(hc, "send", conv, "still here?")
    assert r.returncode == 1 and "cannot post" in r.stderr, (r.stdout, r.stderr)
    hist = cli(hc, "history", conv).stdout
    assert "saturday?" not in hist and "count me in" in hist and f"removed {c}" in hist, hist
    assert "great" in cli(hc, "recent").stdout  # recent spans the window it had
    assert cli(hb, "group", "leave", conv).stdout.strip() == "you left the group"
    r = cli(ha, "group", "leave", conv)
    assert r.returncode == 1, r.stdout  # the owner stays


def _upgrade_blocking_proxy():
    """A proxy in front of the edge that answers every WebSocket upgrade with 404, as some
    corporate proxies do, and passes everything else through. Returns its port."""
    import socket
    import threading

    edge = ("127.0.0.1", int(os.environ["PARLEY_EDGE_PORT"]))
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)

    def pipe(src, dst):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                dst.sendall(b)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve(c):
        head = c.recv(65536)
        if head.startswith(b"GET /ws"):
            c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            c.close()
            return
        u = socket.create_connection(edge)
        u.sendall(head)
        threading.Thread(target=pipe, args=(u, c), daemon=True).start()
        pipe(c, u)

    def accept():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return ls.getsockname()[1]


def test_cli_falls_back_to_long_polling(tmp_path):
    """One side behind a proxy that refuses WebSocket upgrades (the library falls back), the
    other asking for long-polling (PARLEY_TRANSPORT=longpoll): they chat as over sockets."""
    a, b = unique_name("clp"), unique_name("clp")
    ha, hb = two_logged_in(tmp_path, a, b)
    binary = os.path.join(os.environ["PARLEY_BIN"], "parley")
    env_a = dict(chat_env(ha), PARLEY_URL=f"http://127.0.0.1:{_upgrade_blocking_proxy()}")
    env_b = dict(chat_env(hb), PARLEY_TRANSPORT="longpoll")
    pa = subprocess.Popen([binary, "chat", b], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env_a)
    pb = subprocess.Popen([binary, "chat", a], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env_b)
    time.sleep(1.5)
    pa.stdin.write("hi over long-polling\n")
    pa.stdin.flush()
    time.sleep(1.0)
    pb.stdin.write("same here\n")
    pb.stdin.flush()
    time.sleep(1.5)
    out_a, err_a = pa.communicate(timeout=10)
    out_b, err_b = pb.communicate(timeout=10)
    for out, err in ((out_a, err_a), (out_b, err_b)):
        assert "-- connected over HTTP long-polling --" in err.splitlines(), err
        lines = [l for l in out.splitlines() if l.startswith("[")]
        assert [l.split("] ", 1)[1] for l in lines] == [f"{a}: hi over long-polling",
                                                       f"{b}: same here"], (out, err)
