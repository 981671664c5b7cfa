"""The web client (web/, served by the edge at /) in a real browser: Debian's chromium driven by
Playwright (no browser download), against the real cluster. Two people in two browser
contexts, one en-US in New York and one zh-CN in Shanghai, register, become contacts, chat both
ways, see each other's presence, typing and read receipts, and share a group with a third; a
context whose WebSocket is blocked chats over long-polling; a context that goes offline and
comes back shows every message once and in order.

Screenshots are written to var/artifacts/web/ (docs/web-en.png and docs/web-zh.png are
copies of two of them)."""
import asyncio
import concurrent.futures
import datetime
import os
import re
import shutil
import uuid
import zoneinfo

import pytest
from conftest import user_with_token, wait_until
from playwright.sync_api import expect, sync_playwright
from wsclient import Chat

EDGE = f"http://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}"
CHROMIUM = os.environ.get("PARLEY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Kept after the run (the cluster's folder is removed when every test passed).
ART = os.environ.get("PARLEY_ARTIFACTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "var", "artifacts", "web")
PASSWORD = "correct horse battery"
WAIT = 20000  # ms, for anything that crosses the cluster

expect.set_options(timeout=WAIT)


@pytest.fixture(scope="module")
def browser():
    os.makedirs(ART, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


class Person:
    """One browser context (its own storage, locale, zone and network) with one page."""

    def __init__(self, browser, locale, zone, block_websocket=False):
        self.ctx = browser.new_context(locale=locale, timezone_id=zone, viewport={"width": 1100, "height": 720})
        self.zone = zone
        self.csp = []
        self.errors = []
        if block_websocket:
            # A network that refuses the upgrade: every WebSocket to /ws is closed at once.
            self.ctx.route_web_socket(re.compile(r"/ws$"), lambda ws: ws.close())
        self.page = self.ctx.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.name = None

    def _console(self, m):
        if "Content Security Policy" in m.text:
            self.csp.append(m.text)

    def register(self, prefix, state="online"):
        self.name = f"{prefix}{uuid.uuid4().hex[:8]}"
        pg = self.page
        pg.goto(EDGE + "/")
        pg.locator("button.link").click()  # "New here? Create an account"
        pg.locator("input[name=username]").fill(self.name)
        pg.locator("input[name=password]").fill(PASSWORD)
        pg.locator("form button[type=submit]").click()
        self.connected(state)
        return self.name

    def connected(self, state="online"):
        expect(self.page.locator(f".conn[data-state={state}]")).to_be_visible()

    def tab(self, n):
        self.page.locator(".tabs button").nth(n).click()

    def add_contact(self, user):
        self.tab(1)
        self.page.locator("#add-contact").fill(user)
        self.page.locator(".contacts form button[type=submit]").click()

    def accept(self, user):
        self.tab(1)
        self.page.locator(f".contact[data-user={user}] .actions button").first.click()

    def open_chat(self, user):
        self.tab(1)
        row = self.page.locator(f".contact[data-user={user}]")
        expect(row.locator(".dot")).to_be_visible()  # accepted
        row.locator(".actions button").first.click()  # "Message"
        expect(self.page.locator(".conversation")).to_be_visible()

    def open_conv(self, title):
        self.tab(0)
        self.page.locator(".conv", has_text=title).click()

    def send(self, text):
        box = self.page.locator("#composer")
        box.fill(text)
        box.press("Enter")

    def stored(self, text):
        """The stored (not pending) message with this text."""
        return self.page.locator(".msg:not(.pending)", has=self.page.locator(".content", has_text=text))

    def texts(self):
        return self.page.locator(".messages .msg .content").all_inner_texts()

    def shot(self, name):
        for b in self.page.locator(".notice button").all():
            b.click()
        self.page.screenshot(path=os.path.join(ART, name))

    def close(self):
        assert not self.csp, self.csp
        assert not self.errors, self.errors
        self.ctx.close()


def in_thread(coro_fn):
    """Runs an asyncio client (wsclient) beside Playwright's own loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(lambda: asyncio.run(coro_fn())).result()


def rendered_hour(text):
    """The hour a rendered time shows, 0-23 ("08:15 PM" → 20, "20:15" → 20)."""
    m = re.search(r"(\d{1,2}):(\d{2})", text)
    assert m, text
    h = int(m.group(1))
    if re.search(r"PM", text) and h != 12:
        h += 12
    if re.search(r"AM", text) and h == 12:
        h = 0
    return h


def expected_hour(ts_ms, zone):
    return datetime.datetime.fromtimestamp(int(ts_ms) / 1000, zoneinfo.ZoneInfo(zone)).hour


def test_two_people_in_two_languages_chat_with_presence_typing_receipts_and_a_group(browser):
    a = Person(browser, "en-US", "America/New_York")
    b = Person(browser, "zh-CN", "Asia/Shanghai")
    an = a.register("webalice")
    bn = b.register("webbob")

    # Each UI speaks its user's language.
    expect(a.page.locator(".tabs button").nth(1)).to_have_text(re.compile("Contacts"))
    expect(b.page.locator(".tabs button").nth(1)).to_have_text(re.compile("联系人"))
    expect(b.page.locator("html")).to_have_attribute("lang", "zh-CN")

    # Contacts: a request, its acceptance, and presence on both sides.
    a.add_contact(bn)
    expect(a.page.locator(".notice")).to_contain_text(f"Request sent to {bn}")
    b.tab(1)
    expect(b.page.locator(f".contact[data-user={an}]")).to_be_visible()
    expect(b.page.get_by_role("heading", name="收到的请求")).to_be_visible()
    b.accept(an)
    expect(a.page.locator(f".contact[data-user={bn}] .dot.on")).to_be_visible()
    expect(b.page.locator(f".contact[data-user={an}] .dot.on")).to_be_visible()
    expect(b.page.locator(f".contact[data-user={an}] .presence")).to_have_text("在线")

    # A message from New York: shown at once, then stored; unread on the other side.
    a.open_chat(bn)
    a.send("hello from New York")
    expect(a.stored("hello from New York")).to_be_visible()
    b.tab(0)
    row = b.page.locator(".conv", has_text=an)
    expect(row.locator(".badge")).to_have_text("1")
    expect(row.locator(".badge")).to_have_attribute("aria-label", "1 条未读消息")
    row.click()
    expect(b.stored("hello from New York")).to_be_visible()
    expect(row.locator(".badge")).to_have_count(0)
    # b has read it: a sees ✓✓
    expect(a.stored("hello from New York").locator(".ticks.read")).to_have_text("✓✓")
    expect(b.page.locator(".conversation .status")).to_have_text("在线")
    expect(a.page.locator(".conversation .status")).to_have_text("online")

    # Typing reaches the other side, then the reply.
    b.page.locator("#composer").press_sequentially("你好", delay=50)
    expect(a.page.locator(".typing")).to_have_text(f"{bn} is typing…")
    b.page.locator("#composer").press("Enter")
    expect(a.stored("你好")).to_be_visible()
    expect(a.page.locator(".typing")).to_have_text("")
    expect(b.stored("你好").locator(".ticks.read")).to_be_visible()

    # Each side shows the times of its own zone, under a "today" separator of that zone.
    for p, today in ((a, "Today"), (b, "今天")):
        for text in ("hello from New York", "你好"):
            t = p.stored(text).locator("time")
            ts = t.get_attribute("data-ts")
            assert rendered_hour(t.inner_text()) == expected_hour(ts, p.zone), (p.zone, t.inner_text(), ts)
        expect(p.page.locator(".messages .day").first).to_have_text(today)
    ny = a.stored("你好").locator("time").inner_text()
    sh = b.stored("你好").locator("time").inner_text()
    assert rendered_hour(ny) != rendered_hour(sh), (ny, sh)  # 13 hours apart

    # Edit and recall, seen live on the other side.
    msg = a.stored("hello from New York")
    msg.hover()
    msg.locator(".msg-actions button").first.click()  # Edit
    box = a.page.locator("#composer")
    box.fill("hello from NYC")
    box.press("Enter")
    expect(b.stored("hello from NYC").locator(".edited")).to_have_text("已编辑")
    a.send("a slip")
    expect(b.stored("a slip")).to_be_visible()
    slip = a.stored("a slip")
    slip.hover()
    slip.locator(".msg-actions button").nth(1).click()  # Recall
    expect(b.page.locator(".msg .recalled")).to_have_text("此消息已撤回")

    # A group with a third person.
    c = Person(browser, "en-US", "Europe/Berlin")
    cn = c.register("webcarol")
    a.tab(2)
    a.page.locator("input[name=group_name]").fill("Trio 三人组")
    a.page.locator("input[name=group_members]").fill(f"{bn}, {cn}")
    a.page.locator(".newgroup button[type=submit]").click()
    expect(a.page.locator(".conversation h2")).to_have_text("Trio 三人组")
    expect(a.page.locator(".messages .system")).to_contain_text("You created the group")
    a.send("welcome, both")
    for p in (b, c):
        p.open_conv("Trio 三人组")
        expect(p.stored("welcome, both")).to_be_visible()
    expect(b.page.locator(".messages .system").first).to_contain_text("创建了群组")
    c.send("thanks from Berlin")
    expect(a.stored("thanks from Berlin").locator(".sender")).to_have_text(cn)
    expect(b.stored("thanks from Berlin")).to_be_visible()
    # Members: the owner removes carol; carol's view says she is out.
    a.page.locator(".conversation header button.secondary").click()
    expect(a.page.locator(".group-panel .member")).to_have_count(3)
    a.page.locator(f".group-panel .member[data-user={cn}] button").click()
    expect(a.page.locator(".group-panel .member")).to_have_count(2)
    expect(c.page.locator(".conversation .left")).to_be_visible()
    expect(b.page.locator(".messages .system").last).to_contain_text(f"移除了 {cn}")

    a.shot("chat-en-new-york.png")
    b.open_conv(an)
    expect(b.stored("hello from NYC")).to_be_visible()
    b.shot("chat-zh-shanghai.png")

    # Presence going away: a signs out; b sees a offline with a last-seen time.
    a.page.locator(".me button").click()
    expect(a.page.locator("form button[type=submit]")).to_be_visible()
    expect(b.page.locator(".conversation .status")).to_contain_text("最后在线", timeout=30000)
    for p in (a, b, c):
        p.close()


def test_a_blocked_websocket_falls_back_to_long_polling(browser):
    d = Person(browser, "en-US", "Europe/London", block_websocket=True)
    e = Person(browser, "en-US", "Asia/Tokyo")
    dn = d.register("weblp", state="longpoll")
    en = e.register("webws")
    d.add_contact(en)
    e.accept(dn)
    d.open_chat(en)
    d.send("over long-polling")
    e.open_conv(dn)
    expect(e.stored("over long-polling")).to_be_visible()
    e.send("got it over a socket")
    expect(d.stored("got it over a socket")).to_be_visible()
    expect(e.stored("over long-polling").locator(".ticks.read")).to_have_count(0)
    expect(d.stored("over long-polling").locator(".ticks.read")).to_be_visible()
    d.page.locator("#composer").press_sequentially("typing…", delay=50)
    expect(e.page.locator(".typing")).to_contain_text(dn)
    d.shot("long-polling.png")
    d.close()
    e.close()


def test_offline_and_back_loses_nothing_and_shows_nothing_twice(browser):
    f = Person(browser, "en-US", "America/Los_Angeles")
    g = Person(browser, "zh-CN", "Asia/Shanghai")
    fn = f.register("weboff")
    gn = g.register("webon")
    f.add_contact(gn)
    g.accept(fn)
    f.open_chat(gn)
    f.send("before 1")
    g.open_conv(fn)
    expect(g.stored("before 1")).to_be_visible()

    f.ctx.set_offline(True)
    f.connected("offline")
    for i in range(3):
        g.send(f"while away {i}")
    for i in range(2):
        f.send(f"queued {i}")
    expect(f.page.locator(".msg.pending")).to_have_count(2)
    expect(g.stored("while away 2")).to_be_visible()
    f.ctx.set_offline(False)
    f.connected("online")

    want_f = ["before 1"] + [f"while away {i}" for i in range(3)] + [f"queued {i}" for i in range(2)]
    expect(f.page.locator(".msg.pending")).to_have_count(0)
    expect(f.page.locator(".messages .msg .content")).to_have_text(want_f)
    expect(g.page.locator(".messages .msg .content")).to_have_text(want_f)
    # Stored once each, at consecutive seqs.
    seqs = [int(s) for s in f.page.locator(".messages .msg").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert seqs == list(range(seqs[0], seqs[0] + len(want_f))), seqs

    # Away again with nothing to send: only the sync after the reconnect can bring these.
    f.ctx.set_offline(True)
    f.connected("offline")
    g.send("while away again")
    expect(g.stored("while away again")).to_be_visible()
    f.ctx.set_offline(False)
    f.connected("online")
    want_f.append("while away again")
    expect(f.page.locator(".messages .msg .content")).to_have_text(want_f)

    # Shift+Enter is a new line, Enter sends.
    box = g.page.locator("#composer")
    box.press_sequentially("line one")
    box.press("Shift+Enter")
    box.press_sequentially("line two")
    box.press("Enter")
    expect(f.stored("line two").locator(".content")).to_have_text("line one\nline two")
    want_f.append("line one\nline two")

    # On a phone's width: one column, the conversation or the list, nothing wider than it.
    g.page.set_viewport_size({"width": 390, "height": 800})
    expect(g.page.locator(".side")).to_be_hidden()
    assert g.page.evaluate("document.documentElement.scrollWidth") <= 390
    g.page.locator(".conversation .back").click()
    expect(g.page.locator(".side")).to_be_visible()
    expect(g.page.locator(".pane")).to_be_hidden()
    assert g.page.evaluate("document.documentElement.scrollWidth") <= 390

    # A reload (the page and its outbox come back from storage) shows the same, once.
    f.page.reload()
    f.connected("online")
    f.open_conv(gn)
    expect(f.page.locator(".messages .msg .content")).to_have_text(want_f)
    f.close()
    g.close()


def test_errors_are_shown_in_the_users_language(browser):
    h = Person(browser, "zh-CN", "Asia/Shanghai")
    hn = h.register("weberr")
    h.page.locator(".me button").click()  # sign out
    pg = h.page
    pg.locator("input[name=username]").fill(hn)
    pg.locator("input[name=password]").fill("not the password")
    pg.locator("form button[type=submit]").click()
    expect(pg.locator(".auth .error")).to_have_text("用户名或密码错误。")
    # Over the per-user login limit (PARLEY_LOGIN_LIMIT_USER, 10 in this suite): the wait.
    for _ in range(12):
        pg.locator("form button[type=submit]").click()
        expect(pg.locator("form button[type=submit]")).to_be_enabled()
        if "秒后重试" in pg.locator(".auth .error").inner_text():
            break
    expect(pg.locator(".auth .error")).to_have_text(re.compile(r"^尝试次数过多，请在 \d+ 秒后重试。$"))
    # A taken username, in English after switching the language.
    pg.locator("select[name=language]").select_option("en")
    pg.locator("button.link").click()
    pg.locator("input[name=username]").fill(hn)
    pg.locator("input[name=password]").fill(PASSWORD)
    pg.locator("form button[type=submit]").click()
    expect(pg.locator(".auth .error")).to_have_text("That username is taken. Pick another one.")
    h.close()


def test_the_edge_serves_the_web_client_under_a_strict_csp(edge):
    r = edge.call("GET", "/")
    assert r.status == 200 and b'<div id="app">' in r.raw, r
    csp = r.headers.get("Content-Security-Policy", "")
    for part in ("default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"):
        assert part in csp, csp
    assert "unsafe" not in csp, csp
    for path in ("/app.js", "/vendor/preact-htm.js"):
        r = edge.call("GET", path)
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript"), (path, r)
    r = edge.call("GET", "/no-such-file.js")
    assert r.status == 404 and r.json["error"]["code"] == "not_found", r


def test_the_access_token_is_refreshed_without_the_user_noticing(browser):
    """The page's clock jumps 14.5 minutes (the access token lives 15): the client rotates its
    tokens by itself, stays connected, and a reload carries on with the new session."""
    k = Person(browser, "en-US", "UTC")
    refreshes = []
    k.page.on("response", lambda r: refreshes.append(r.status) if r.url.endswith("/v1/auth/refresh") else None)
    k.page.clock.install()
    k.register("webclock")
    assert refreshes == []
    k.page.clock.fast_forward("14:30")
    for _ in range(100):  # the refresh is a real request: let it come back
        if refreshes:
            break
        k.page.wait_for_timeout(100)
    assert refreshes == [200], refreshes
    k.connected("online")
    k.page.reload()
    k.connected("online")
    expect(k.page.locator(".me small")).to_have_text(f"Signed in as {k.name}")
    k.close()


def test_older_history_loads_on_scroll_and_privacy_settings_apply(browser, edge):
    j = Person(browser, "en-US", "Australia/Sydney")
    jn = j.register("webhist")
    stranger, token = user_with_token(edge, "webst")
    want = [f"old {i:02d}" for i in range(60)]

    async def sixty():
        c = await Chat.connect(token)
        await c.send_many(jn, want, window=1)
        await c.close()
    in_thread(sixty)
    # acked is durable in Kafka; opening the conversation before the store has written all 60
    # would show them by sync instead of by scrolling
    conv = f"d:{min(jn, stranger)}:{max(jn, stranger)}"
    wait_until(lambda: edge.call("GET", f"/v1/conversations/{conv}/messages?after_seq=59",
                                 token=token).json["messages"], timeout=30)

    j.open_conv(stranger)
    msgs = j.page.locator(".messages .msg .content")
    expect(msgs).to_have_count(50)  # the latest page
    expect(msgs.first).to_have_text("old 10")
    j.page.locator(".messages").evaluate("el => { el.scrollTop = 0; }")
    expect(msgs).to_have_count(60)
    expect(msgs).to_have_text(want)

    # Privacy: messages from contacts only; the stranger's next send is refused.
    j.tab(3)
    j.page.locator("select[name=who_can_message]").select_option("contacts")
    expect(j.page.locator(".notice")).to_have_text(re.compile("Saved"))

    async def refused():
        c = await Chat.connect(token)
        await c.send(jn, "after the change")
        await c.wait(lambda: c.errors)
        await c.close()
        return c.errors[0]["code"]
    assert in_thread(refused) == "forbidden"
    j.page.reload()
    j.connected("online")
    j.tab(3)
    expect(j.page.locator("select[name=who_can_message]")).to_have_value("contacts")
    j.close()
