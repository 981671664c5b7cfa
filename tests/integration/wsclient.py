"""Test clients for the gateway: a high-level one on the websockets library (a client we did
not write), and a raw-socket one that can send what no well-behaved library would (unmasked
frames, invalid UTF-8, oversized frames) and read close codes."""
import asyncio
import base64
import json
import os
import socket
import struct
import time
import uuid

import websockets


def edge_ws():
    return f"ws://127.0.0.1:{os.environ['PARLEY_EDGE_PORT']}/ws"


class Chat:
    """One device of one user: sends, and collects acks, errors and pushed messages."""

    def __init__(self, ws, user, gateway):
        self.ws = ws
        self.user = user
        self.gateway = gateway
        self.msgs = []
        self.system = []
        self.presence = []
        self.acks = {}
        self.cursor_acks = []  # acks of read and delivered frames
        self.receipts = []
        self.typing = []
        self.errors = []
        self.closed = None
        self._task = asyncio.get_event_loop().create_task(self._reader())

    @classmethod
    async def connect(cls, token, url=None, header_auth=True):
        headers = {"Authorization": "Bearer " + token} if header_auth else {}
        ws = await websockets.connect(url or edge_ws(), additional_headers=headers,
                                      max_size=2 ** 22, open_timeout=10)
        if not header_auth:
            await ws.send(json.dumps({"type": "auth", "token": token}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", ready
        return cls(ws, ready["user"], ready["gateway"])

    async def _reader(self):
        try:
            async for raw in self.ws:
                f = json.loads(raw)
                f["_rx"] = time.perf_counter()  # arrival, for latency measurements
                if f["type"] == "msg" and f.get("kind", "text") == "system":
                    self.system.append(f)  # the user's own stream (u:): contact changes…
                elif f["type"] == "msg":
                    self.msgs.append(f)
                elif f["type"] == "presence":
                    self.presence.append(f)
                elif f["type"] == "ack" and "cursor" in f:
                    self.cursor_acks.append(f)
                elif f["type"] == "ack":
                    self.acks[f["client_id"]] = f
                elif f["type"] == "receipt":
                    self.receipts.append(f)
                elif f["type"] == "typing":
                    self.typing.append(f)
                elif f["type"] == "error":
                    self.errors.append(f)
        except websockets.ConnectionClosed as e:
            # The close code the server sent, or 1006 when the socket just went away.
            self.closed = e.rcvd.code if e.rcvd is not None else 1006
        if self.closed is None:
            self.closed = self.ws.close_code or 1006

    async def send(self, to, content, client_id=None, **extra):
        cid = client_id or uuid.uuid4().hex
        await self.ws.send(json.dumps(dict(type="send", client_id=cid, to=to, content=content, **extra)))
        return cid

    async def sendc(self, conv, content, client_id=None):
        """A send to a conversation ("g:…" or "d:…") rather than to a user."""
        cid = client_id or uuid.uuid4().hex
        await self.ws.send(json.dumps(dict(type="send", client_id=cid, conv=conv, content=content)))
        return cid

    async def cursor(self, kind, conv, seq):
        """A read or delivered frame (DESIGN 7.5)."""
        await self.ws.send(json.dumps(dict(type=kind, conv=conv, seq=seq)))

    def items(self, conv):
        """Every item of conv this device was pushed (messages and system items), in arrival
        order."""
        return [f for f in self.msgs + self.system if f["conv"] == conv]

    async def send_many(self, to, contents, window=32, timeout=120):
        """Sends each content keeping at most `window` unacknowledged, as a client library
        would, resending with the same client_id after rate_limited or unavailable errors.
        Returns the client_ids in order."""
        cids = [uuid.uuid4().hex for _ in contents]
        pending = {}
        retried = set()
        deadline = asyncio.get_event_loop().time() + timeout
        i = 0
        seen_errors = 0
        while i < len(cids) or pending:
            if asyncio.get_event_loop().time() > deadline:
                raise AssertionError(f"send_many timed out with {len(pending)} unacked")
            for e in self.errors[seen_errors:]:
                cid = e.get("client_id")
                if cid in pending and e["code"] in ("rate_limited", "unavailable"):
                    pending[cid] = asyncio.get_event_loop().time() + e.get("retry_after_ms", 100) / 1000
                    retried.add(cid)
            seen_errors = len(self.errors)
            for cid in [c for c in pending if c in self.acks]:
                del pending[cid]
            now = asyncio.get_event_loop().time()
            for cid, due in list(pending.items()):
                if due is not None and due <= now:
                    pending[cid] = None
                    await self.send(to, contents[cids.index(cid)], client_id=cid)
            while i < len(cids) and len(pending) < window:
                pending[cids[i]] = None
                await self.send(to, contents[i], client_id=cids[i])
                i += 1
            await asyncio.sleep(0.002)
        self.errors = [e for e in self.errors if e.get("client_id") not in retried]
        return cids

    async def wait(self, pred, timeout=30):
        deadline = asyncio.get_event_loop().time() + timeout
        while not pred():
            if asyncio.get_event_loop().time() > deadline:
                raise AssertionError(f"timed out; msgs={len(self.msgs)} acks={len(self.acks)} "
                                     f"errors={self.errors[-3:]} closed={self.closed}")
            await asyncio.sleep(0.02)

    async def close(self):
        await self.ws.close()
        try:
            await asyncio.wait_for(self._task, 5)
        except asyncio.TimeoutError:
            self._task.cancel()


class RawWS:
    """A WebSocket client over a bare socket, for malformed input."""

    def __init__(self, port, token=None, host="127.0.0.1", headers=None, rcvbuf=None, early=()):
        """early: text frames written right behind the request, in the same send (pipelined,
        before the 101 is read)."""
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Before connect, so the advertised window stays small: a genuinely slow reader.
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(10)
        self.s.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET /ws HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        self.s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() +
                       b"".join(self.frame(1, t.encode()) for t in early))
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = self.s.recv(4096)
            if not chunk:
                break
            resp += chunk
        head, _, self.buf = resp.partition(b"\r\n\r\n")
        self.head = head.decode("latin-1")
        self.status = int(head.split(b" ")[1]) if head else 0

    @staticmethod
    def frame(opcode, payload, fin=True, mask=True, rsv=0):
        """A client frame's bytes."""
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        if n < 126:
            hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            m = os.urandom(4)
            payload = bytes(c ^ m[i % 4] for i, c in enumerate(payload))
            hdr += m
        return hdr + payload

    def send_frame(self, opcode, payload, fin=True, mask=True, rsv=0):
        self.s.sendall(self.frame(opcode, payload, fin, mask, rsv))

    def send_text(self, text):
        self.send_frame(1, text.encode() if isinstance(text, str) else text)

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def recv_json(self):
        while True:
            op, data = self.recv_frame()
            if op == 1:
                return json.loads(data)
            if op == 8:
                raise AssertionError(f"closed: {self.close_code_of(data)}")

    @staticmethod
    def close_code_of(data):
        return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None

    def expect_close(self):
        """Reads until a close frame; returns its code (None for an abrupt close)."""
        try:
            while True:
                op, data = self.recv_frame()
                if op == 8:
                    return self.close_code_of(data)
        except (EOFError, ConnectionResetError, socket.timeout):
            return None

    def close(self):
        self.s.close()
