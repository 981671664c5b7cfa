// The live connection: a WebSocket to /ws, or HTTP long-polling (/v1/lp/…, DESIGN 7.6) when
// the WebSocket does not get through (a proxy or a network that blocks upgrades). Both carry
// the same frames. The owner gets every server frame through onFrame, and onReady after each
// (re)connection, which is where it resends what was not acknowledged and syncs.
//
// Fallback rule: two WebSocket attempts in a row that end before the server's "ready" switch
// this page to long-polling for good (a reload tries the WebSocket again).

const WS_FAILS_BEFORE_LP = 2;

function randomSid() {
  const b = new Uint8Array(18);
  crypto.getRandomValues(b);
  return btoa(String.fromCharCode(...b)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export class Conn {
  constructor(api, { onFrame, onReady, onState }) {
    this.api = api;
    this.onFrame = onFrame;
    this.onReady = onReady;
    this.onState = onState;
    this.mode = 'ws';
    this.wsFails = 0;
    this.state = 'connecting';
    this.ws = null;
    this.lp = null; // {sid, next, abort}
    this.generation = 0; // bumps on every (re)connect; stale callbacks check it
    this.backoff = 500;
    this.timer = null;
    this.stopped = false;
    this.online = navigator.onLine !== false;
    this.onOffline = () => {
      this.online = false;
      this.drop();
      this.setState('offline');
    };
    this.onOnline = () => {
      this.online = true;
      this.backoff = 500;
      this.reconnectSoon(0);
    };
    window.addEventListener('offline', this.onOffline);
    window.addEventListener('online', this.onOnline);
  }

  setState(s) {
    if (this.state !== s) {
      this.state = s;
      this.onState(s);
    }
  }

  get ready() {
    return this.state === 'online' || this.state === 'longpoll';
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener('offline', this.onOffline);
    window.removeEventListener('online', this.onOnline);
    this.drop();
  }

  // Ends the current socket or session without reconnecting (the caller decides).
  drop() {
    this.generation++;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close();
      } catch (e) {
        /* already closed */
      }
    }
    if (this.lp) {
      this.lp.abort.abort();
      this.lp = null;
    }
  }

  reconnectSoon(delay) {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const wait = delay ?? this.backoff;
    this.backoff = Math.min(this.backoff * 2, 10000);
    this.timer = setTimeout(() => this.connect(), wait + Math.random() * 250);
  }

  connect() {
    if (this.stopped) return;
    this.drop();
    if (!this.online) {
      this.setState('offline');
      return;
    }
    this.setState('connecting');
    if (this.mode === 'ws') this.connectWs();
    else this.connectLp();
  }

  connectWs() {
    const gen = this.generation;
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this.wsFailed();
      return;
    }
    this.ws = ws;
    let gotReady = false;
    ws.onopen = async () => {
      try {
        const token = await this.api.token();
        if (gen === this.generation) ws.send(JSON.stringify({ type: 'auth', token }));
      } catch (e) {
        ws.close();
      }
    };
    ws.onmessage = (ev) => {
      if (gen !== this.generation) return;
      let f;
      try {
        f = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (f.type === 'ready') {
        gotReady = true;
        this.wsFails = 0;
        this.backoff = 500;
        this.setState('online');
        this.onReady();
        return;
      }
      this.onFrame(f);
    };
    ws.onclose = (ev) => {
      if (gen !== this.generation) return;
      this.ws = null;
      if (!gotReady) {
        if (ev.code === 1008) {
          // authentication refused: a fresh token, then try again
          this.api.refresh().then(() => this.reconnectSoon(), () => {});
          return;
        }
        this.wsFailed();
        return;
      }
      if (ev.code === 1008) {
        this.api.refresh().then(() => this.reconnectSoon(0), () => {});
        return;
      }
      this.reconnectSoon(ev.code === 1001 ? 0 : undefined);
    };
    ws.onerror = () => {};
  }

  wsFailed() {
    this.wsFails++;
    if (this.wsFails >= WS_FAILS_BEFORE_LP) this.mode = 'lp';
    this.reconnectSoon(this.mode === 'lp' ? 0 : undefined);
  }

  async lpFetch(method, path, body, signal) {
    const token = await this.api.token();
    const headers = { Authorization: 'Bearer ' + token };
    if (body) headers['Content-Type'] = 'application/json';
    return fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, signal, cache: 'no-store' });
  }

  async connectLp() {
    const gen = this.generation;
    const abort = new AbortController();
    const sid = randomSid();
    let r;
    try {
      r = await this.lpFetch('POST', '/v1/lp/open?sid=' + sid, null, abort.signal);
    } catch (e) {
      if (gen === this.generation) this.reconnectSoon();
      return;
    }
    if (gen !== this.generation) return;
    if (r.status === 401) {
      this.api.refresh().then(() => this.reconnectSoon(0), () => {});
      return;
    }
    if (r.status !== 200) {
      const ra = parseFloat(r.headers.get('Retry-After') || '');
      this.reconnectSoon(Number.isFinite(ra) ? ra * 1000 : undefined);
      return;
    }
    const opened = await r.json();
    this.lp = { sid: opened.sid, next: 1, abort };
    this.backoff = 500;
    this.setState('longpoll');
    this.onReady();
    this.pollLoop(gen);
  }

  async pollLoop(gen) {
    while (gen === this.generation && this.lp) {
      const lp = this.lp;
      let r;
      try {
        r = await this.lpFetch('GET', `/v1/lp/poll?sid=${lp.sid}&ack=${lp.next}`, null, lp.abort.signal);
      } catch (e) {
        if (gen === this.generation) this.reconnectSoon();
        return;
      }
      if (gen !== this.generation) return;
      if (r.status === 429 || r.status === 503) {
        const ra = parseFloat(r.headers.get('Retry-After') || '1');
        await new Promise((res) => setTimeout(res, (Number.isFinite(ra) ? ra : 1) * 1000));
        continue;
      }
      if (r.status !== 200) {
        // 404: the session is gone (idle, or its gateway went away); 401: a new token first
        if (r.status === 401) await this.api.refresh().catch(() => {});
        this.reconnectSoon(0);
        return;
      }
      let a;
      try {
        a = await r.json();
      } catch (e) {
        this.reconnectSoon();
        return;
      }
      if (gen !== this.generation) return;
      const first = a.next - a.frames.length;
      a.frames.forEach((f, i) => {
        // below next: taken already (an answer that came twice)
        if (first + i >= lp.next) this.onFrame(f);
      });
      lp.next = Math.max(lp.next, a.next);
      if (a.closed) {
        if (a.closed.code === 1008 || a.closed.code === 4001) await this.api.refresh().catch(() => {});
        this.reconnectSoon(0);
        return;
      }
    }
  }

  // Sends client frames; false when not connected (the caller keeps them for the next ready).
  send(frames) {
    if (!Array.isArray(frames)) frames = [frames];
    if (this.state === 'online' && this.ws && this.ws.readyState === WebSocket.OPEN) {
      for (const f of frames) this.ws.send(JSON.stringify(f));
      return true;
    }
    if (this.state === 'longpoll' && this.lp) {
      const lp = this.lp;
      const gen = this.generation;
      // At most 100 frames a request (the gateway's limit), one request after the other and
      // behind any earlier ones, so the frames keep their order.
      for (let i = 0; i < frames.length; i += 100) {
        const chunk = frames.slice(i, i + 100);
        lp.sending = (lp.sending || Promise.resolve())
          .then(() => this.lpFetch('POST', '/v1/lp/send?sid=' + lp.sid, chunk, lp.abort.signal))
          .then((r) => {
            // The session ended: a new one resends what is unacked. Any other refusal (429,
            // 503): nothing was taken, and the owner's outbox resends unacked sends later.
            if (r.status === 404 && gen === this.generation) this.reconnectSoon(0);
          })
          .catch(() => {});
      }
      return true;
    }
    return false;
  }
}
