"""The fault ledger for groups (DESIGN 7.8, guarantee 8): hundreds of members on several
gateways, a few senders, members added and removed while messages flow, and a fault.

Each member has one device that behaves as the client library does: it shows an item (a
message or a system item) only when its seq is the next one, pulls gaps from history, and
syncs after every reconnect. A device that has shown nothing of the group yet starts at the
first item history gives it (history begins at the member's joined_seq) or, when history has
nothing before a push, at that push: an item is in the database before it is pushed.

At the end every device must have shown exactly the seqs of its member's window
[joined_seq, left_seq] (left_seq: the removal item; the group's last seq when still a
member), once each, in order; the stored items must be gapless, with no client_id twice.
"""
import asyncio
import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from conftest import Api, unique_name
from ledger import Device, Ledger, Sender


class GroupDevice(Device):
    def __init__(self, api, user, token, conv):
        super().__init__(api, user, token)
        self.conv = conv
        self.pushed = []  # every seq pushed, to check the window afterwards
        self.first_gateway = None  # where it was before any fault moved it

    def _is_next(self, conv, seq):
        # History begins at the member's joined_seq: a group not started yet starts there.
        return conv not in self.last or super()._is_next(conv, seq)

    async def on_push(self, m):
        conv, seq = m["conv"], m["seq"]
        ev = m.get("event") or {}
        if conv.startswith("u:") and ev.get("type") == "group_added" and ev.get("conv") == self.conv:
            # The user's own stream says where its window begins, as a client learns it.
            if self.conv not in self.last:
                self.last[self.conv] = ev["seq"] - 1
            return
        if conv != self.conv:
            return
        self.pushed.append(seq)
        if conv in self.pulling or self.sync_held is not None:
            await super().on_push(m)  # held until that pull (or sync) is done
            return
        if conv not in self.last:
            await self.pull(conv, before=seq)
            if conv not in self.last:
                self._show(m)  # history holds nothing before it: the first item of the window
                return
        await super().on_push(m)

    async def sync(self):
        if self.first_gateway is None:
            self.first_gateway = self.gateway
        if self.reconnects <= 1:
            # The first connection: the group is new and this device's state is exact (a
            # member from seq 1, or not a member yet), so there is nothing to catch up.
            # Skipping the list keeps 500 devices from queueing on the database at start.
            return
        await super().sync()

    def _follows(self, conv):
        return conv == self.conv


class GroupSender(Sender):
    def __init__(self, ledger, device, conv):
        super().__init__(ledger, device)
        self.conv = conv

    def _frame(self, cid, to, content):
        return {"type": "send", "client_id": cid, "conv": self.conv, "content": content}


class Population:
    """Users registered once for every group scenario of a module (argon2id makes each
    registration and login cost tens of milliseconds), with a token each."""

    def __init__(self, edge, n):
        self.api = edge
        self.tokens = {}

        def one(_):
            a = Api(edge.base)
            name = unique_name("g")
            r = Ledger._retrying(lambda: a.register(name), 201)
            r = Ledger._retrying(lambda: a.login(name), 200)
            return name, r.json["access_token"]

        with ThreadPoolExecutor(8) as pool:
            for name, token in pool.map(one, range(n)):
                self.tokens[name] = token
        self.users = list(self.tokens)


class GroupLedger(Ledger):
    """One group of the population's users: `initial` members at creation (the first user
    owns it), the rest added while messages flow, `removals` members removed meanwhile;
    `senders` members (never removed) send."""

    def __init__(self, edge, mongo, pop, initial, removals, senders=5, seed=7):
        super().__init__(edge, mongo, 0, 1)
        self.pop = pop
        self.rnd = random.Random(seed)
        self.users = list(pop.users)
        self.initial = self.users[:initial]
        self.later = self.users[initial:]
        self.sending = self.users[:senders]
        self.removed = self.rnd.sample(self.initial[senders:], removals)
        self.owner = self.users[0]
        self.changes = []  # (what, user, status) of every membership change made
        self.conv = None
        self.pulled_at_end = 0

    def call(self, method, path, body=None):
        """A client's retries: 503 (the store is catching up) and 5xx (a restart) again,
        with the same client_id in the body, until an answer."""
        for _ in range(200):
            r = self.api.call(method, path, body, token=self.pop.tokens[self.owner])
            if r.status < 500 and r.status != 429:
                return r
            time.sleep(0.25)
        return r

    def setup(self):
        r = self.call("POST", "/v1/groups", {"name": "ledger", "members": self.initial[1:],
                                            "client_id": uuid.uuid4().hex})
        assert r.status in (200, 201), r
        self.conv = r.json["conv"]
        for u in self.users:
            dev = GroupDevice(Api(self.api.base), u, self.pop.tokens[u], self.conv)
            if u in self.initial:
                dev.last[self.conv] = 0  # a member since the group began (seq 1)
            self.devices[u] = [dev]
            self.senders[u] = GroupSender(self, dev, self.conv)

    async def churn(self, seconds):
        """Adds the later users in a few batches and removes the chosen members one by one,
        spread over `seconds`, in a random order."""
        steps = [("add", self.later[i:i + 20]) for i in range(0, len(self.later), 20)]
        steps += [("remove", [u]) for u in self.removed]
        self.rnd.shuffle(steps)
        for what, users in steps:
            await asyncio.sleep(seconds / max(1, len(steps)))
            cid = uuid.uuid4().hex
            if what == "add":
                r = await asyncio.to_thread(self.call, "POST", f"/v1/groups/{self.conv}/members",
                                            {"users": users, "client_id": cid})
                assert r.status == 200, r
            else:
                r = await asyncio.to_thread(self.call, "DELETE",
                                            f"/v1/groups/{self.conv}/members/{users[0]}")
                # 404 only when a retry follows a removal that was applied before its answer
                # was lost.
                assert r.status in (204, 404), r
            self.changes.append((what, users, r.status))

    async def traffic(self, total, rate, **_):
        interval = 1.0 / rate
        start = time.monotonic()
        churn = asyncio.create_task(self.churn(total / rate))
        for i in range(total):
            s = self.rnd.choice(self.sending)
            cid = uuid.uuid4().hex
            content = f"{s} #{i}"
            self.attempted[(s, cid)] = (self.conv, content)
            await self.senders[s].send(cid, self.conv, content)
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await churn

    async def final_sync(self):
        """Every device catches up to the end of its window, as after a reconnect; the ends
        come from the database in one query (what each device's conversation list would
        say: its last_seq), and only devices behind pull."""
        last = max((d["seq"] for d in self.mongo.messages.find({"conv": self.conv}, {"seq": 1})),
                   default=0)
        ends = {m["user"]: m.get("left_seq") or last
                for m in self.mongo.members.find({"conv": self.conv})}
        behind = [d for devs in self.devices.values() for d in devs
                  if ends.get(d.user, 0) > d.last.get(self.conv, 0)]
        self.pulled_at_end = len(behind)
        gate = asyncio.Semaphore(8)  # as many at once as the store serves well

        async def one(d):
            async with gate:
                await d.pull(self.conv)
        await asyncio.gather(*(one(d) for d in behind))

    async def wait_stored(self, timeout=120):
        want = set(self.acked.values())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = await asyncio.to_thread(lambda: {
                d["_id"] for d in self.mongo.messages.find({"conv": self.conv, "kind": "text"},
                                                           {"_id": 1})})
            if want <= have:
                return
            await asyncio.sleep(0.5)

    def check(self, scenario, extra=""):
        docs = list(self.mongo.messages.find({"conv": self.conv},
                                             {"_id": 1, "sender": 1, "client_id": 1, "seq": 1,
                                              "kind": 1}))
        seqs = sorted(d["seq"] for d in docs)
        last = seqs[-1] if seqs else 0
        seq_gaps = 0 if seqs == list(range(1, len(seqs) + 1)) else 1
        keys = [(d["sender"], d["client_id"]) for d in docs]
        stored_dups = len(keys) - len(set(keys))
        stored_ids = {d["_id"] for d in docs}
        members = list(self.mongo.members.find({"conv": self.conv}))
        windows = {m["user"]: (m["joined_seq"], m.get("left_seq") or last) for m in members}
        seq_of = {d["_id"]: d["seq"] for d in docs}
        acked_seq = {seq_of[mid]: mid for mid in self.acked.values() if mid in seq_of}
        lost = sum(1 for mid in self.acked.values() if mid not in stored_ids)
        shown_dups = order_violations = outside = missing_items = 0
        lost_msgs = set()
        rows = []  # per device: outside, missing, user, window, last shown, gateway
        for user, devs in self.devices.items():
            joined, left = windows.get(user, (0, -1))
            want_set = set(range(joined, left + 1)) if joined else set()
            for d in devs:
                shown = d.shown_seqs.get(self.conv, [])
                ids = d.shown.get(self.conv, [])
                shown_dups += len(ids) - len(set(ids))
                if shown != sorted(set(shown)):
                    order_violations += 1
                out = len((set(shown) | set(d.pushed)) - want_set)
                gone = want_set - set(shown)
                outside += out
                missing_items += len(gone)
                rows.append((out, len(gone), user, (joined, left), d.last.get(self.conv),
                             d.gateway))
                lost_msgs |= {acked_seq[s] for s in gone if s in acked_seq}
        lost += len(lost_msgs)
        lefts = {m["user"]: m.get("left_seq") or 0 for m in members}
        removed_ok = sum(1 for u in self.removed if lefts.get(u, 0) > 0)
        deliveries = sum(len(d.shown_seqs.get(self.conv, [])) for devs in self.devices.values()
                         for d in devs)
        redelivered = sum(d.redelivered for devs in self.devices.values() for d in devs)
        extra = f" redelivered_per_delivery={redelivered / max(deliveries, 1):.4f}" + extra
        line = (f"scenario={scenario} members={len(windows)} attempted={len(self.attempted)} "
                f"acked={len(self.acked)} stored={len(stored_ids & set(self.acked.values()))} "
                f"items={last} lost={lost} missing_items={missing_items} "
                f"stored_dups={stored_dups} shown_dups={shown_dups} seq_gaps_final={seq_gaps} "
                f"order_violations={order_violations} outside_window={outside} "
                f"removed={removed_ok}/{len(self.removed)} added={len(self.later)} "
                f"deliveries={deliveries} redelivered={redelivered} "
                f"pulled_at_end={self.pulled_at_end}{extra}")
        if missing_items or outside or seq_gaps:
            self._explain(seqs, last, members, rows)
        print("\n" + line)
        with open(os.path.join(os.environ["PARLEY_VAR"], "..", "ledger.log"), "a") as f:
            f.write(line + "\n")
        return dict(lost=lost, stored_dups=stored_dups, shown_dups=shown_dups, seq_gaps=seq_gaps,
                    order_violations=order_violations, acked=len(self.acked),
                    attempted=len(self.attempted), refused=self.refused, outside=outside,
                    missing_items=missing_items, removed_ok=removed_ok, deliveries=deliveries,
                    redelivered=redelivered)

    def _explain(self, seqs, last, members, rows):
        """What a failed check needs to be understood: holes in the stream, windows that end
        past its last item, and the devices furthest from their windows."""
        holes = sorted(set(range(1, last + 1)) - set(seqs))
        beyond = sorted((m["user"], m["joined_seq"], m.get("left_seq")) for m in members
                        if (m.get("left_seq") or 0) > last or m["joined_seq"] > last)
        print(f"\nexplain: holes={holes[:20]} ({len(holes)}) windows past the last item="
              f"{beyond[:10]} ({len(beyond)})")
        for row in sorted(rows, reverse=True)[:8]:
            print("explain: outside, missing, user, window, last shown, gateway:", row)
