"""A long-poll client (DESIGN 7.6) with the face of a `websockets` connection, so a test or
the fault ledger can run a device over either transport: `send(text)`, `recv()`, `async for`
over server frames, `close()`, and `close_code` once the session is over.

It behaves as the client library must: it proposes a random sid with its open (the edge
routes every request of the session by it), acknowledges each answer with the next poll
(ack=next), and drops frames numbered below what it has already taken, so a lost answer or a
repeated one shows nothing twice. A 404, a gateway that went away (502/503/504, a refused
connection) or a "closed" note ends the session; the caller opens a new one and syncs."""
import asyncio
import json
import secrets

import os

import aiohttp

EDGE = f"http://127.0.0.1:{os.environ.get('PARLEY_EDGE_PORT', '8000')}"


def _retry_after(r):
    try:
        return min(5.0, float(r.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


class OpenFailed(Exception):
    def __init__(self, status, body):
        super().__init__(f"long-poll open: {status} {body}")
        self.status = status
        self.body = body


class LongPoll:
    def __init__(self, base, token, http):
        self.base = base
        self.token = token
        self.http = http
        self.sid = None
        self.next = 1           # the number of the next frame not yet taken
        self.frames = asyncio.Queue()
        self.close_code = None
        self.close_reason = None
        self.polls = 0
        self._poller = None

    @classmethod
    async def connect(cls, token, base=None, sid=None, timeout=40):
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))
        lp = cls(base or EDGE, token, http)
        try:
            await lp._open(sid or secrets.token_urlsafe(18))
        except BaseException:
            await http.close()
            raise
        lp._poller = asyncio.create_task(lp._poll_loop())
        return lp

    def _headers(self):
        return {"Authorization": "Bearer " + self.token}

    async def _open(self, sid):
        async with self.http.post(f"{self.base}/v1/lp/open", params={"sid": sid},
                                  headers=self._headers()) as r:
            body = await r.text()
            if r.status != 200:
                raise OpenFailed(r.status, body)
            self.sid = json.loads(body)["sid"]

    def _end(self, code, reason=""):
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.frames.put_nowait(None)

    async def _poll_loop(self):
        while self.close_code is None:
            try:
                async with self.http.get(f"{self.base}/v1/lp/poll",
                                         params={"sid": self.sid, "ack": str(self.next)},
                                         headers=self._headers()) as r:
                    body = await r.text()
                    status = r.status
                    wait = _retry_after(r)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                self._end(1006, "connection failed")
                return
            self.polls += 1
            if status in (429, 503):  # over a limit, or busy: the session lives; wait
                await asyncio.sleep(wait)
                continue
            if status != 200:
                self._end(1006 if status != 401 else 4001, f"poll answered {status}")
                return
            a = json.loads(body)
            frames = a["frames"]
            first = a["next"] - len(frames)
            for i, f in enumerate(frames):
                if first + i >= self.next:  # below: taken already (its answer came twice)
                    self.frames.put_nowait(json.dumps(f))
            self.next = max(self.next, a["next"])
            if "closed" in a:
                self._end(a["closed"]["code"], a["closed"]["reason"])

    async def send(self, text):
        """Sends one frame (or a list of frames); returns the HTTP status (202 when taken)."""
        frames = text if isinstance(text, list) else [json.loads(text)]
        for _ in range(5):
            if self.http.closed:
                return 0  # this session is over; the caller resends on the next one
            try:
                async with self.http.post(f"{self.base}/v1/lp/send", params={"sid": self.sid},
                                          json=frames, headers=self._headers()) as r:
                    await r.read()
                    if r.status not in (429, 503):
                        return r.status
                    wait = _retry_after(r)  # nothing of it was taken: send it again
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                return 0
            await asyncio.sleep(wait)
        return 429

    async def recv(self):
        f = await self.frames.get()
        if f is None:
            self.frames.put_nowait(None)
            raise ConnectionError(f"long-poll session closed: {self.close_code}")
        return f

    def __aiter__(self):
        return self

    async def __anext__(self):
        f = await self.frames.get()
        if f is None:
            self.frames.put_nowait(None)
            raise StopAsyncIteration
        return f

    async def close(self):
        self._end(1000, "closed by the client")
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
        await self.http.close()
