"""The fault harness: many clients chat through the edge while a fault is injected, keeping a
ledger of every send, then sync and check DESIGN section 5's guarantees against MongoDB and
against what every device was shown.

A device behaves as the client library does: it shows a pushed message only when its seq is
the next one in its conversation, pulls gaps from history, resends whatever was not acked
(same client_id) after errors, timeouts and reconnects, and syncs after every reconnect."""
import asyncio
import json
import os
import random
import time
import uuid

import websockets

from conftest import Api, request, unique_name
from lpclient import LongPoll
from wsclient import edge_ws

ACK_TIMEOUT = 8.0


class Device:
    def __init__(self, api, user, token):
        self.api = api
        self.user = user
        self.token = token
        self.ws = None
        self.shown = {}        # conv -> [msg_id, ...] in the order shown
        self.last = {}         # conv -> last seq shown
        self.shown_seqs = {}   # conv -> [seq, ...]
        self.reconnects = 0
        self.closed_codes = []
        self.slow = False
        self.gaps_pulled = 0
        self.redelivered = 0  # pushes of a message already shown, dropped by seq
        self.pulling = {}     # conv -> {seq: push} held while a pull of conv is on its way
        self.sync_task = None
        self.sync_held = None  # conv -> {seq: push} held while a sync is on its way
        self.gateway = None   # the gateway of the current (or last) connection
        self.transport = "ws"  # or "lp": HTTP long-polling (DESIGN 7.6)

    # -- showing messages, as the client library does --
    def _show(self, m):
        conv = m["conv"]
        self.last[conv] = m["seq"]
        self.shown.setdefault(conv, []).append(m["msg_id"])
        self.shown_seqs.setdefault(conv, []).append(m["seq"])

    async def renew(self):
        """Logs in again for a fresh access token, as a client does when its token expired
        (they live 15 minutes; the ten-minute soak and its final sync outlast that)."""
        r = await asyncio.to_thread(self.api.login, self.user)
        if r.status == 200:
            self.token = r.json["access_token"]

    async def pull(self, conv, before=None):
        """Pulls conv's history after the last seq shown, up to `before` and up to the first
        push that arrives meanwhile: pushes for conv are held until the pull is done, so the
        range pulled and the pushes do not overlap (a push of a message a pull already showed
        is a push wasted). One pull per conversation at a time."""
        if conv in self.pulling:
            return
        held = self.pulling[conv] = self.sync_held.pop(conv, {}) if self.sync_held is not None else {}
        try:
            await self._pull_pages(conv, before, held)
        finally:
            del self.pulling[conv]
        for seq in sorted(held):
            await self.on_push(held[seq])

    async def _pull_pages(self, conv, before, held):
        while True:
            after = self.last.get(conv, 0)
            try:
                r = await asyncio.to_thread(self.api.call, "GET",
                                            f"/v1/conversations/{conv}/messages?after_seq={after}&limit=200",
                                            token=self.token)
            except OSError:  # a timeout while the database is busy: ask again
                await asyncio.sleep(0.3)
                continue
            if r.status == 401:
                await self.renew()
            if r.status != 200:
                await asyncio.sleep(0.3)
                continue
            page = r.json["messages"]
            for m in page:
                limits = ([before] if before is not None else []) + list(held)
                if limits and m["seq"] >= min(limits):
                    return  # from here on, pushes bring it
                if self._is_next(conv, m["seq"]):
                    self._show(m)
            if len(page) < 200:
                return

    def _is_next(self, conv, seq):
        return seq == self.last.get(conv, 0) + 1

    async def on_push(self, m):
        conv, seq = m["conv"], m["seq"]
        if conv in self.pulling:
            self.pulling[conv][seq] = m  # taken when the pull is done
            return
        if self.sync_held is not None:
            self.sync_held.setdefault(conv, {})[seq] = m  # taken when the sync is done
            return
        last = self.last.get(conv, 0)
        if seq <= last:
            self.redelivered += 1
            return  # a duplicate push: dropped, never shown
        if seq > last + 1:
            self.gaps_pulled += 1
            await self.pull(conv, before=seq)
        if seq == self.last.get(conv, 0) + 1:
            self._show(m)

    async def sync(self):
        """Lists the conversations and pulls those ahead, as after every reconnect. Pushes
        are held meanwhile (a conversation's pull stops at the first of them) and taken in
        order when it is done, so a sync adds no pulls of its own for them: gap pulls racing
        the sync's would double the history reads of a reconnect, which on FerretDB/SQLite
        each scan the collection."""
        self.sync_held = {}
        try:
            await self._sync()
        finally:
            held, self.sync_held = self.sync_held, None
        for conv, pushes in held.items():
            for seq in sorted(pushes):
                await self.on_push(pushes[seq])

    async def _sync(self):
        while True:
            try:
                r = await asyncio.to_thread(self.api.call, "GET", "/v1/conversations?limit=1000",
                                            token=self.token)
            except OSError:  # a timeout while the database is busy: ask again, as pull() does
                await asyncio.sleep(0.3)
                continue
            if r.status == 200:
                break
            if r.status == 401:
                await self.renew()
            await asyncio.sleep(0.3)
        for c in r.json["conversations"]:
            if self._follows(c["conv"]) and c["last_seq"] > self.last.get(c["conv"], 0):
                await self.pull(c["conv"])

    def _follows(self, conv):
        return True


class Sender:
    """One user's sending side, on its first device."""

    def __init__(self, ledger, device):
        self.ledger = ledger
        self.dev = device
        self.unacked = {}  # client_id -> (to, content, sent_at)

    async def send(self, cid, to, content):
        self.unacked[cid] = (to, content, time.monotonic())
        await self._write(cid, to, content)

    async def _write(self, cid, to, content):
        ws = self.dev.ws
        if ws is None:
            return  # resent after the reconnect
        try:
            await ws.send(json.dumps(self._frame(cid, to, content)))
        except websockets.ConnectionClosed:
            pass

    def _frame(self, cid, to, content):
        return {"type": "send", "client_id": cid, "to": to, "content": content}

    async def resend_all(self):
        for cid, (to, content, _) in list(self.unacked.items()):
            self.unacked[cid] = (to, content, time.monotonic())
            await self._write(cid, to, content)

    async def on_frame(self, f):
        cid = f.get("client_id")
        if f["type"] == "ack" and "seq" in f:
            # A resend of a stored message: not pushed again. Pulled only if this device
            # does not hold it (its push came while it was away) and no sync, which brings
            # it, is on its way: after a reconnect every resend is answered so, and a pull
            # each would queue on the database behind the sync's.
            self.unacked.pop(cid, None)
            self.ledger.acked[(self.dev.user, cid)] = f["msg_id"]
            if self.dev.last.get(f["conv"], 0) < f["seq"] and self.dev.sync_held is None:
                await self.dev.pull(f["conv"], before=f["seq"] + 1)
        elif f["type"] == "ack" and cid in self.unacked:
            del self.unacked[cid]
            self.ledger.acked[(self.dev.user, cid)] = f["msg_id"]
            self.ledger.last_ack_at = time.monotonic()
        elif f["type"] == "error" and cid in self.unacked:
            if f["code"] in ("unavailable", "rate_limited"):
                to, content, _ = self.unacked[cid]
                await asyncio.sleep(f.get("retry_after_ms", 200) / 1000)
                if cid in self.unacked:
                    await self._write(cid, to, content)
            else:
                self.ledger.refused += 1
                del self.unacked[cid]

    async def retry_stale(self):
        now = time.monotonic()
        for cid, (to, content, at) in list(self.unacked.items()):
            if now - at > ACK_TIMEOUT:
                self.unacked[cid] = (to, content, now)
                await self._write(cid, to, content)


class Ledger:
    def __init__(self, edge_api, mongo, nusers, devices_per_user=1, transport="ws"):
        """transport: "ws", "lp" (long-polling), or "mix" (every other device long-polls)."""
        self.transport = transport
        self.api = edge_api
        self.mongo = mongo
        self.nusers = nusers
        self.devices_per_user = devices_per_user
        self.users = []
        self.devices = {}   # user -> [Device]
        self.senders = {}
        self.attempted = {}  # (sender, client_id) -> (to, content)
        self.acked = {}      # (sender, client_id) -> msg_id
        self.refused = 0
        self.last_ack_at = None
        self.stop = False
        self.tasks = []

    @staticmethod
    def _retrying(call, want):
        """A client honours 503 + Retry-After (a dependency just came back)."""
        for _ in range(50):
            r = call()
            if r.status != 503:
                break
            time.sleep(0.2)
        assert r.status == want, r
        return r

    def setup(self):
        for _ in range(self.nusers):
            name = unique_name("f")
            a = Api(self.api.base)
            self._retrying(lambda: a.register(name), 201)
            tokens = [self._retrying(lambda: a.login(name), 200).json["access_token"]
                      for _ in range(self.devices_per_user)]
            self.users.append(name)
            self.devices[name] = [Device(Api(self.api.base), name, t) for t in tokens]
            for i, d in enumerate(self.devices[name]):
                n = len(self.users) + i
                d.transport = {"ws": "ws", "lp": "lp"}.get(self.transport, "lp" if n % 2 else "ws")
            self.senders[name] = Sender(self, self.devices[name][0])

    async def run_device(self, dev):
        """Keeps one device connected: reconnect with backoff, resend, sync, read."""
        backoff = 0.2
        while not self.stop:
            ws = None
            try:
                if dev.transport == "lp":
                    ws = await LongPoll.connect(dev.token)
                else:
                    ws = await websockets.connect(edge_ws(), additional_headers={"Authorization": "Bearer " + dev.token},
                                                  max_size=2 ** 22, open_timeout=5, ping_interval=None,
                                                  max_queue=4 if dev.slow else None)
                ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert ready["type"] == "ready"
                dev.gateway = ready.get("gateway")
            except Exception as e:
                if isinstance(ws, LongPoll):
                    await ws.close()
                if getattr(getattr(e, "response", None), "status_code", None) == 401 or \
                        getattr(e, "status", None) == 401:
                    await dev.renew()  # the token expired: log in again
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.2
            dev.ws = ws
            dev.reconnects += 1
            sender = self.senders[dev.user] if self.senders[dev.user].dev is dev else None
            if sender is not None:
                await sender.resend_all()
            # The sync runs while pushes are read: a conversation being pulled holds its
            # pushes (Device.pull), so the pull ends where they begin.
            dev.sync_task = asyncio.create_task(dev.sync())
            try:
                async for raw in ws:
                    f = json.loads(raw)
                    if dev.slow:
                        await asyncio.sleep(0.05)
                    if f["type"] == "msg":
                        await dev.on_push(f)
                    elif sender is not None:
                        await sender.on_frame(f)
            except websockets.ConnectionClosed as e:
                dev.closed_codes.append(e.rcvd.code if e.rcvd else 1006)
            except Exception:
                pass
            else:
                # A clean close (1001 from a draining gateway) ends the iteration without an
                # exception; the harness's own close at the end is not counted.
                if not self.stop:
                    dev.closed_codes.append(ws.close_code or 1006)
            dev.ws = None
            dev.sync_task.cancel()  # the next connection syncs again
            await asyncio.gather(dev.sync_task, return_exceptions=True)
            if isinstance(ws, LongPoll):
                await ws.close()

    async def traffic(self, total, rate, resend_frac=0.0, reconnect_frac=0.0, to_first=0.0,
                      size=0, pairs=False):
        """Sends `total` messages at `rate` per second from random users to random others
        (to the first user with probability to_first; with pairs, users 2k and 2k+1 only
        write to each other; padded to `size` bytes when given)."""
        rnd = random.Random(42)
        interval = 1.0 / rate
        start = time.monotonic()
        for i in range(total):
            if self.stop:
                break
            s = rnd.choice(self.users)
            to = rnd.choice([u for u in self.users if u != s])
            if pairs and len(self.users) % 2 == 0:
                to = self.users[self.users.index(s) ^ 1]
            if to_first and rnd.random() < to_first and s != self.users[0]:
                to = self.users[0]
            cid = uuid.uuid4().hex
            content = f"{s}->{to} #{i}"
            if size:
                content = content.ljust(size, ".")
            self.attempted[(s, cid)] = (to, content)
            snd = self.senders[s]
            await snd.send(cid, to, content)
            x = rnd.random()
            if x < resend_frac:
                await snd._write(cid, to, content)  # the same send, twice
            elif x < resend_frac + reconnect_frac and snd.dev.ws is not None:
                await snd.dev.ws.close()  # reconnect before the ack; resent after it
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def watchdog(self):
        while not self.stop:
            await asyncio.sleep(1)
            for s in self.senders.values():
                await s.retry_stale()

    async def settle(self, timeout=90):
        """Waits until every attempt is acked (or refused), then lets pushes arrive."""
        deadline = time.monotonic() + timeout
        tick = 0
        while any(s.unacked for s in self.senders.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            tick += 1
            if tick % 5 == 0:
                # as during the traffic: a send unacked for ACK_TIMEOUT is sent again (same
                # client_id), as every client library does, so one whose request was lost
                # on the way (a long-poll send to a gateway that just went away) is not
                # left waiting for a reconnect that may never come
                for s in self.senders.values():
                    await s.retry_stale()
        await asyncio.sleep(2)

    async def wait_stored(self, timeout=120):
        """Acked means durable in Kafka; the store writes it to MongoDB shortly after (seconds
        after a store restart: its consumer group must rebalance first). Waits until every
        conversation's last_seq covers its acked messages, or timeout, so the check sees the
        end state. (Reads the small conversations collection, not the messages.)"""
        want = {}
        for (s, cid), mid in self.acked.items():
            to = self.attempted[(s, cid)][0]
            conv = f"d:{min(s, to)}:{max(s, to)}"
            want.setdefault(conv, set()).add(mid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = await asyncio.to_thread(lambda: {
                c["_id"]: c.get("last_seq", 0)
                for c in self.mongo.conversations.find({"members": {"$in": self.users}})})
            if all(have.get(c, 0) >= len(ids) for c, ids in want.items()):
                return
            await asyncio.sleep(0.5)

    async def final_sync(self):
        for devs in self.devices.values():
            for d in devs:
                await d.sync()

    def check(self, scenario, extra=""):
        acked_ids = set(self.acked.values())
        stored = {}
        for d in self.mongo.messages.find({"sender": {"$in": self.users}}, {"_id": 1, "sender": 1, "client_id": 1, "conv": 1, "seq": 1}):
            stored.setdefault((d["sender"], d["client_id"]), []).append(d)
        stored_ids = {d["_id"] for docs in stored.values() for d in docs}
        stored_dups = sum(len(v) - 1 for v in stored.values())
        convs = {}
        for docs in stored.values():
            for d in docs:
                convs.setdefault(d["conv"], []).append(d["seq"])
        seq_gaps = sum(1 for seqs in convs.values() if sorted(seqs) != list(range(1, len(seqs) + 1)))
        for conv, seqs in list(convs.items())[:200]:
            ss = sorted(seqs)
            if ss != list(range(1, len(ss) + 1)):
                missing = sorted(set(range(1, ss[-1] + 1)) - set(ss))
                print(f"DEBUG gap {conv} n={len(ss)} max={ss[-1]} missing={missing[:10]} "
                      f"dups={[x for x in ss if ss.count(x) > 1][:5]}")
        lost = 0
        delivered = 0
        shown_dups = 0
        order_violations = 0
        shown_by_dev = []
        for devs in self.devices.values():
            for d in devs:
                ids = [m for v in d.shown.values() for m in v]
                shown_dups += len(ids) - len(set(ids))
                for conv, seqs in d.shown_seqs.items():
                    if seqs != list(range(seqs[0], seqs[0] + len(seqs))) or seqs[0] != 1:
                        order_violations += 1
                shown_by_dev.append((d.user, set(ids)))
        for (s, cid), mid in self.acked.items():
            to = self.attempted[(s, cid)][0]
            ok = mid in stored_ids
            for user, ids in shown_by_dev:
                if user in (s, to) and mid not in ids:
                    ok = False
            lost += 0 if ok else 1
            delivered += 1 if ok else 0
        if lost:
            sample = [(k, v) for k, v in self.acked.items() if v not in stored_ids][:3]
            for (s, cid), mid in sample:
                doc = self.mongo.messages.find_one({"_id": mid})
                print(f"DEBUG lost {s} {cid} {mid} direct-lookup={doc is not None} "
                      f"by-cid={self.mongo.messages.count_documents({'client_id': cid})}")
            print("DEBUG stored total", self.mongo.messages.count_documents({"sender": {"$in": self.users}}),
                  "per-user", sum(self.mongo.messages.count_documents({"sender": u}) for u in self.users))
        # Deliveries needed: every acked message to every device of its sender and receiver.
        ndev = {u: len(devs) for u, devs in self.devices.items()}
        needed = sum(ndev[s] + (ndev[self.attempted[(s, cid)][0]] if self.attempted[(s, cid)][0] != s else 0)
                     for (s, cid) in self.acked)
        redelivered = sum(d.redelivered for devs in self.devices.values() for d in devs)
        line = (f"scenario={scenario} attempted={len(self.attempted)} acked={len(self.acked)} "
                f"stored={len(stored_ids & acked_ids)} delivered_after_sync={delivered} lost={lost} "
                f"stored_dups={stored_dups} shown_dups={shown_dups} seq_gaps_final={seq_gaps} "
                f"order_violations={order_violations} "
                f"redelivered={redelivered} needed={needed} "
                f"redelivered_per_needed={redelivered / max(needed, 1):.4f}{extra}")
        print("\n" + line)
        with open(os.path.join(os.environ["PARLEY_VAR"], "..", "ledger.log"), "a") as f:
            f.write(line + "\n")
        return dict(lost=lost, stored_dups=stored_dups, shown_dups=shown_dups, seq_gaps=seq_gaps,
                    order_violations=order_violations, acked=len(self.acked),
                    attempted=len(self.attempted), refused=self.refused,
                    redelivered=redelivered, needed=needed)


async def run_scenario(ledger, total, rate, fault=None, fault_at=None, **traffic_kw):
    """Runs traffic with an optional fault (an async callable) fired after fault_at seconds.
    Returns the recovery time in seconds: from the fault to the first ack after it."""
    ledger.stop = False
    devices = [d for devs in ledger.devices.values() for d in devs]
    ledger.tasks = [asyncio.create_task(ledger.run_device(d)) for d in devices]
    wd = asyncio.create_task(ledger.watchdog())
    for _ in range(100):
        if all(d.ws is not None for d in devices):
            break
        await asyncio.sleep(0.1)
    recovery = None
    fault_task = None
    if fault is not None:
        async def fire():
            nonlocal recovery
            await asyncio.sleep(fault_at)
            t0 = time.monotonic()
            before = len(ledger.acked)
            await fault()
            while time.monotonic() - t0 < 120:
                if len(ledger.acked) > before and ledger.last_ack_at and ledger.last_ack_at > t0:
                    recovery = time.monotonic() - t0
                    break
                await asyncio.sleep(0.05)
        fault_task = asyncio.create_task(fire())
    await ledger.traffic(total, rate, **traffic_kw)
    if fault_task is not None:
        await fault_task
    await ledger.settle()
    # The devices stay connected until the store has caught up, as users would: what they
    # miss live is then what the faults cost, not what a queue held when they hung up.
    await ledger.wait_stored()
    await asyncio.sleep(1)
    ledger.stop = True
    for d in devices:
        if d.ws is not None:
            await d.ws.close()
    await asyncio.gather(*ledger.tasks, return_exceptions=True)
    wd.cancel()
    await ledger.final_sync()
    return recovery
