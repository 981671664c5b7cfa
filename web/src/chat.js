// The client's state and its sync rules (docs/protocol.md, "Staying in sync"): per
// conversation the items by seq and the highest contiguous seq held; a push that is the next
// seq is taken, a lower one is a duplicate, a higher one means a gap and a range pull first.
// After every (re)connection the conversation list is read and every conversation held is
// pulled up to its last_seq, so a network loss shows nothing twice and nothing out of order.
//
// Sends go through an outbox kept in localStorage: shown at once, resent with the same
// client_id after a reconnect or a reload until acked (the server stores a client_id once),
// dropped when the stored item comes back.

import { Conn } from './conn.js';
import { ApiError } from './api.js';

const PAGE = 50;
const RESEND_AFTER_MS = 8000;

function newClientId() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return 'w-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export function directConv(a, b) {
  return a <= b ? `d:${a}:${b}` : `d:${b}:${a}`;
}

export class Chat {
  constructor(api, me, emit) {
    this.api = api;
    this.me = me;
    this.emit = emit;
    this.convs = new Map();
    this.contacts = [];
    this.blocks = [];
    this.presence = new Map();
    this.typing = new Map(); // conv -> Map(user -> expiry ms)
    this.openId = null;
    this.notice = null; // {error, text} shown in a banner
    this.connState = 'connecting';
    this.outboxKey = 'parley.outbox.' + me;
    this.outbox = new Map();
    try {
      for (const e of JSON.parse(localStorage.getItem(this.outboxKey) || '[]')) {
        e.state = e.state === 'failed' ? 'failed' : 'pending';
        e.sentAt = 0;
        this.outbox.set(e.cid, e);
      }
    } catch (e) {
      /* a damaged outbox is dropped */
    }
    this.deliveredTimers = new Map();
    this.typingSent = null; // {conv, at}
    this.conn = new Conn(api, {
      onFrame: (f) => this.onFrame(f),
      onReady: () => this.onReady(),
      onState: (s) => {
        this.connState = s;
        this.emit();
      },
    });
    this.ticker = setInterval(() => this.tick(), 1000);
    this.onVisible = () => {
      if (document.visibilityState === 'visible') this.markRead();
    };
    document.addEventListener('visibilitychange', this.onVisible);
  }

  start() {
    this.conn.start();
    this.loadContacts();
  }

  stop() {
    clearInterval(this.ticker);
    document.removeEventListener('visibilitychange', this.onVisible);
    this.conn.stop();
  }

  fail(e) {
    if (e instanceof ApiError && e.status === 401) return; // the session handler shows it
    this.notice = { error: e };
    this.emit();
  }

  // ---- conversations ----

  conv(id) {
    let c = this.convs.get(id);
    if (!c) {
      const kind = id.slice(0, 1);
      c = {
        conv: id,
        kind,
        name: null,
        members: kind === 'd' ? id.split(':').slice(1) : [],
        last_seq: 0,
        last_timestamp: null,
        read_seq: 0,
        unread: 0,
        last_item: null,
        items: new Map(),
        loaded: false,
        high: 0, // highest seq held with nothing missing below it (since low)
        low: 0, // lowest seq held
        hasOlder: false,
        loadingOlder: false,
        allReadSeq: 0, // every other member has read up to here
        readBy: new Map(),
        group: null, // {info, members} for an open group
        left: false,
      };
      this.convs.set(id, c);
    }
    return c;
  }

  peer(c) {
    return c.kind === 'd' ? c.members.find((u) => u !== this.me) || this.me : null;
  }

  list() {
    return [...this.convs.values()]
      .filter((c) => c.kind !== 'u' && (c.last_seq > 0 || c.conv === this.openId || this.pendingFor(c.conv).length))
      .sort((a, b) => (b.last_timestamp || '').localeCompare(a.last_timestamp || ''));
  }

  async loadConvs() {
    const r = await this.api.req('GET', '/v1/conversations?limit=200');
    for (const s of r.conversations) {
      const c = this.conv(s.conv);
      c.kind = s.kind || c.kind;
      if (s.name) c.name = s.name;
      if (s.members && c.kind === 'd') c.members = s.members;
      c.last_seq = Math.max(c.last_seq, s.last_seq || 0);
      if (s.last_timestamp && (!c.last_timestamp || s.last_timestamp > c.last_timestamp)) c.last_timestamp = s.last_timestamp;
      if (s.read_seq !== undefined) c.read_seq = Math.max(c.read_seq, s.read_seq);
      if (s.unread !== undefined) c.unread = s.unread;
      if (s.last_item) c.last_item = s.last_item;
    }
    this.emit();
  }

  async loadContacts() {
    try {
      const [cs, bs] = await Promise.all([this.api.req('GET', '/v1/contacts'), this.api.req('GET', '/v1/blocks')]);
      this.contacts = cs.contacts;
      this.blocks = bs.blocks;
      for (const k of cs.contacts) if (k.presence) this.presence.set(k.user, k.presence);
      this.emit();
    } catch (e) {
      this.fail(e);
    }
  }

  async onReady() {
    this.resendOutbox(true);
    try {
      await this.loadConvs();
      for (const c of this.convs.values()) if (c.loaded && c.last_seq > c.high) await this.pullAfter(c);
      await this.loadContacts();
      this.markRead();
    } catch (e) {
      this.fail(e);
    }
  }

  async open(id) {
    this.stopTyping();
    this.openId = id;
    const c = this.conv(id);
    this.emit();
    try {
      if (!c.loaded) await this.loadLatest(c);
      if (c.kind === 'g') await this.loadGroup(c);
      await this.loadReceipts(c);
    } catch (e) {
      this.fail(e);
    }
    this.markRead();
  }

  close() {
    this.stopTyping();
    this.openId = null;
    this.emit();
  }

  async loadLatest(c) {
    let r;
    try {
      r = await this.api.req('GET', `/v1/conversations/${c.conv}/messages?limit=${PAGE}`);
    } catch (e) {
      // a 1:1 conversation nobody wrote in yet does not exist: it starts empty
      if (c.kind === 'd' && (e.status === 403 || e.status === 404)) r = { messages: [] };
      else throw e;
    }
    c.loaded = true;
    this.take(c, r.messages);
    c.hasOlder = r.messages.length === PAGE;
    if (c.last_seq > c.high) await this.pullAfter(c);
    this.emit();
  }

  async loadOlder(c) {
    if (!c.hasOlder || c.loadingOlder || !c.low) return;
    c.loadingOlder = true;
    this.emit();
    try {
      const r = await this.api.req('GET', `/v1/conversations/${c.conv}/messages?before_seq=${c.low}&limit=${PAGE}`);
      this.take(c, r.messages);
      c.hasOlder = r.messages.length === PAGE;
    } catch (e) {
      this.fail(e);
    } finally {
      c.loadingOlder = false;
      this.emit();
    }
  }

  // Pulls everything after the highest contiguous seq held, up to the last seq known. A push
  // that shows a gap while a pull is on its way may be newer than what that pull asked for,
  // so the loop goes on until it reaches last_seq (or stops making progress: items outside
  // the user's window of a group are never returned).
  async pullAfter(c) {
    if (c.pulling) return c.pulling;
    c.pulling = (async () => {
      let stalled = 0;
      for (;;) {
        const before = c.high;
        const r = await this.api.req('GET', `/v1/conversations/${c.conv}/messages?after_seq=${c.high}&limit=200`);
        this.take(c, r.messages);
        if (r.messages.length === 200) continue;
        if (c.last_seq <= c.high) break;
        stalled = c.high === before ? stalled + 1 : 0;
        if (stalled >= 2) break;
      }
    })().finally(() => {
      c.pulling = null;
      this.emit();
    });
    return c.pulling;
  }

  // Takes history items (any order, duplicates allowed) into a conversation.
  take(c, items) {
    items.sort((a, b) => a.seq - b.seq);
    for (const m of items) this.apply(c, m);
    // the contiguous high: from low upwards, nothing missing
    if (!c.high && items.length) c.high = items[0].seq - 1;
    while (c.items.has(c.high + 1)) c.high++;
  }

  apply(c, m) {
    if (c.items.has(m.seq)) return false;
    const kind = m.kind || 'text';
    const item = { ...m, kind };
    c.items.set(m.seq, item);
    if (!c.low || m.seq < c.low) c.low = m.seq;
    if (kind === 'edit' || kind === 'recall') {
      const target = c.items.get(m.target_seq);
      if (target && !target.recalled) {
        if (kind === 'edit') {
          target.content = m.content;
          target.edited_at = m.timestamp;
        } else {
          target.content = '';
          target.recalled = true;
        }
      }
      if (c.last_item && c.last_item.seq === m.target_seq) {
        c.last_item = { ...c.last_item, content: kind === 'edit' ? m.content : '', recalled: kind === 'recall' };
      }
    }
    if (m.sender === this.me && m.client_id && this.outbox.has(m.client_id)) {
      this.outbox.delete(m.client_id);
      this.saveOutbox();
    }
    if (kind === 'system' && m.event && c.kind === 'g') this.onGroupEvent(c, m);
    return true;
  }

  // ---- frames from the server ----

  onFrame(f) {
    switch (f.type) {
      case 'msg':
        this.onMsg(f);
        break;
      case 'ack':
        if (f.client_id && f.seq) {
          this.onStoredAck(f);
        } else if (f.client_id && this.outbox.has(f.client_id)) {
          const e = this.outbox.get(f.client_id);
          e.state = 'acked';
          e.msg_id = f.msg_id;
          this.saveOutbox();
          this.emit();
        }
        break;
      case 'error':
        this.onError(f);
        break;
      case 'presence':
        this.presence.set(f.user, { status: f.status, last_seen: f.last_seen });
        this.emit();
        break;
      case 'typing': {
        let m = this.typing.get(f.conv);
        if (!m) this.typing.set(f.conv, (m = new Map()));
        if (f.state === 'start') m.set(f.user, Date.now() + 10000);
        else m.delete(f.user);
        this.emit();
        break;
      }
      case 'receipt':
        this.onReceipt(f);
        break;
      default:
        break;
    }
  }

  // The answer to a resend of a message already stored: its first copy was pushed, so it is
  // not pushed again. Done with the outbox entry; pulled if this tab does not hold it.
  onStoredAck(f) {
    if (this.outbox.has(f.client_id)) {
      this.outbox.delete(f.client_id);
      this.saveOutbox();
    }
    const c = this.conv(f.conv);
    if (f.seq > c.last_seq) c.last_seq = f.seq;
    if (c.loaded && f.seq > c.high) this.pullAfter(c).catch((e) => this.fail(e));
    this.emit();
  }

  onMsg(m) {
    const c = this.conv(m.conv);
    const kind = m.kind || 'text';
    const fresh = m.seq > c.last_seq;
    if (fresh) {
      c.last_seq = m.seq;
      c.last_timestamp = m.timestamp;
      if (kind === 'text' || kind === 'system') c.last_item = { seq: m.seq, sender: m.sender, kind, content: m.content, timestamp: m.timestamp };
      if (kind === 'text' && m.sender !== this.me && m.seq > c.read_seq) c.unread = Math.min(999, c.unread + 1);
    }
    if (c.kind === 'u') {
      if (kind === 'system') this.onOwnEvent(m);
    } else if (c.loaded) {
      if (m.seq === c.high + 1) {
        this.apply(c, m);
        c.high = m.seq;
        while (c.items.has(c.high + 1)) c.high++;
      } else if (m.seq > c.high + 1) {
        this.pullAfter(c).catch((e) => this.fail(e));
      } else if (!c.items.has(m.seq)) {
        this.apply(c, m); // below high but not held: an older page not loaded; harmless
      }
    } else if (m.sender === this.me && m.client_id && this.outbox.has(m.client_id)) {
      this.outbox.delete(m.client_id);
      this.saveOutbox();
    }
    if (fresh && kind === 'text' && m.sender !== this.me) {
      const t = this.typing.get(m.conv);
      if (t) t.delete(m.sender);
      if (this.openId === m.conv) this.markRead();
      else this.scheduleDelivered(c);
    }
    this.emit();
  }

  // A change on the user's own stream u:<me>: contacts, blocks, groups.
  onOwnEvent(m) {
    const ev = m.event || {};
    if (ev.type === 'contact' || ev.type === 'block') this.loadContacts();
    if (ev.type === 'group_added' || ev.type === 'group_removed') {
      const c = this.conv(ev.conv);
      if (ev.name) c.name = ev.name;
      c.kind = 'g';
      if (ev.type === 'group_removed') c.left = true;
      else c.left = false;
      this.loadConvs().catch((e) => this.fail(e));
    }
  }

  onGroupEvent(c, m) {
    const ev = m.event;
    if (ev.type === 'group_created' || ev.type === 'group_updated') {
      if (ev.name) c.name = ev.name;
    }
    if (ev.type === 'member_removed' && ev.user === this.me) c.left = true;
    if (ev.type === 'members_added' && (ev.users || []).includes(this.me)) c.left = false;
    if (c.group && this.openId === c.conv && ['members_added', 'member_removed', 'role_changed'].includes(ev.type)) {
      this.loadGroup(c).catch(() => {});
    }
  }

  onReceipt(f) {
    const c = this.conv(f.conv);
    if (f.user === this.me) {
      if (f.kind === 'read' && f.seq > c.read_seq) {
        c.read_seq = f.seq;
        c.unread = f.seq >= c.last_seq ? 0 : this.countUnread(c);
      }
    } else if (f.kind === 'read') {
      c.readBy.set(f.user, Math.max(c.readBy.get(f.user) || 0, f.seq));
      if (c.kind === 'd') c.allReadSeq = Math.max(c.allReadSeq, f.seq);
      else if (c.group && c.readBy.size >= c.group.info.member_count - 1) {
        c.allReadSeq = Math.max(c.allReadSeq, Math.min(...c.readBy.values()));
      }
    }
    this.emit();
  }

  countUnread(c) {
    let n = 0;
    for (const it of c.items.values()) if (it.kind === 'text' && it.sender !== this.me && it.seq > c.read_seq) n++;
    return Math.min(n, 999);
  }

  onError(f) {
    const e = f.client_id && this.outbox.get(f.client_id);
    if (!e) {
      // typing and cursor refusals are best effort; anything else is worth telling
      if (f.code !== 'rate_limited') {
        this.notice = { error: new ApiError(400, f.code, f.message) };
        this.emit();
      }
      return;
    }
    if (f.code === 'rate_limited' || f.code === 'unavailable' || f.code === 'internal') {
      e.state = 'pending';
      e.sentAt = Date.now() - RESEND_AFTER_MS + (f.retry_after_ms || 1000);
    } else {
      e.state = 'failed';
      e.error = { code: f.code, message: f.message };
    }
    this.saveOutbox();
    this.emit();
  }

  // ---- sending ----

  saveOutbox() {
    localStorage.setItem(this.outboxKey, JSON.stringify([...this.outbox.values()]));
  }

  pendingFor(conv) {
    return [...this.outbox.values()].filter((e) => e.conv === conv && e.frame.type === 'send');
  }

  queue(conv, frame) {
    const cid = newClientId();
    const e = { cid, conv, frame: { ...frame, client_id: cid }, state: 'pending', at: new Date().toISOString(), sentAt: 0 };
    this.outbox.set(cid, e);
    this.saveOutbox();
    this.transmit(e);
    this.emit();
    return e;
  }

  transmit(e) {
    e.sentAt = Date.now();
    this.conn.send(e.frame);
  }

  // Resends what was not acked: all of it after a (re)connect, else what waited too long.
  resendOutbox(all) {
    if (!this.conn.ready) return;
    const now = Date.now();
    const due = [...this.outbox.values()].filter((e) => e.state === 'pending' && (all || now - e.sentAt > RESEND_AFTER_MS));
    if (due.length) {
      for (const e of due) e.sentAt = now;
      this.conn.send(due.map((e) => e.frame));
    }
  }

  retry(cid) {
    const e = this.outbox.get(cid);
    if (e) {
      e.state = 'pending';
      delete e.error;
      this.saveOutbox();
      this.transmit(e);
      this.emit();
    }
  }

  discard(cid) {
    this.outbox.delete(cid);
    this.saveOutbox();
    this.emit();
  }

  sendText(c, content) {
    this.stopTyping();
    const peer = this.peer(c);
    const frame = c.kind === 'd' && c.last_seq === 0 ? { type: 'send', to: peer, content } : { type: 'send', conv: c.conv, content };
    this.queue(c.conv, frame);
  }

  edit(c, seq, content) {
    this.queue(c.conv, { type: 'edit', conv: c.conv, target_seq: seq, content });
  }

  recall(c, seq) {
    this.queue(c.conv, { type: 'recall', conv: c.conv, target_seq: seq });
  }

  typingInput(c) {
    const now = Date.now();
    if (!this.typingSent || this.typingSent.conv !== c.conv || now - this.typingSent.at > 3000) {
      if (this.conn.send({ type: 'typing', conv: c.conv, state: 'start' })) this.typingSent = { conv: c.conv, at: now };
    }
  }

  stopTyping() {
    if (this.typingSent) {
      this.conn.send({ type: 'typing', conv: this.typingSent.conv, state: 'stop' });
      this.typingSent = null;
    }
  }

  // A read cursor for the open conversation, when the page is seen.
  markRead() {
    const c = this.openId && this.convs.get(this.openId);
    if (!c || !c.loaded || document.visibilityState !== 'visible') return;
    const seq = c.high;
    if (seq > c.read_seq || c.unread) {
      if (seq > 0 && this.conn.send({ type: 'read', conv: c.conv, seq })) {
        c.read_seq = Math.max(c.read_seq, seq);
        c.unread = 0;
        this.emit();
      }
    }
  }

  scheduleDelivered(c) {
    if (this.deliveredTimers.has(c.conv)) return;
    this.deliveredTimers.set(
      c.conv,
      setTimeout(() => {
        this.deliveredTimers.delete(c.conv);
        this.conn.send({ type: 'delivered', conv: c.conv, seq: c.last_seq });
      }, 500),
    );
  }

  async loadReceipts(c) {
    if (c.kind === 'u') return;
    let mine = 0;
    for (const it of c.items.values()) if (it.sender === this.me && it.kind === 'text' && it.seq > mine) mine = it.seq;
    if (!mine || c.allReadSeq >= mine) return;
    try {
      const r = await this.api.req('GET', `/v1/conversations/${c.conv}/receipts?seq=${mine}`);
      if (r.read >= r.members) c.allReadSeq = Math.max(c.allReadSeq, mine);
      this.emit();
    } catch (e) {
      /* receipts are a nicety: a group left or gone answers 403 */
    }
  }

  tick() {
    const now = Date.now();
    let changed = false;
    for (const m of this.typing.values()) {
      for (const [u, exp] of m) {
        if (exp < now) {
          m.delete(u);
          changed = true;
        }
      }
    }
    this.resendOutbox(false);
    if (changed) this.emit();
  }

  typingIn(conv) {
    const m = this.typing.get(conv);
    return m ? [...m.keys()] : [];
  }

  // ---- contacts, blocks, groups (REST) ----

  async addContact(user) {
    const r = await this.api.req('POST', '/v1/contacts', { user });
    await this.loadContacts();
    return r;
  }

  async acceptContact(user) {
    await this.api.req('POST', `/v1/contacts/${user}/accept`);
    await this.loadContacts();
  }

  async removeContact(user) {
    await this.api.req('DELETE', `/v1/contacts/${user}`);
    await this.loadContacts();
  }

  async block(user, on) {
    await this.api.req(on ? 'PUT' : 'DELETE', `/v1/blocks/${user}`);
    await this.loadContacts();
  }

  async createGroup(name, members) {
    const r = await this.api.req('POST', '/v1/groups', { name, members, client_id: newClientId() });
    const c = this.conv(r.conv);
    c.kind = 'g';
    c.name = r.name;
    await this.loadConvs();
    return r.conv;
  }

  async loadGroup(c) {
    try {
      const [info, mem] = await Promise.all([
        this.api.req('GET', `/v1/groups/${c.conv}`),
        this.api.req('GET', `/v1/groups/${c.conv}/members?limit=200`),
      ]);
      c.group = { info, members: mem.members };
      c.name = info.name;
      c.left = false;
    } catch (e) {
      if (e.status === 403) c.left = true;
      else throw e;
    }
    this.emit();
  }

  async addMembers(c, users) {
    await this.api.req('POST', `/v1/groups/${c.conv}/members`, { users, client_id: newClientId() });
    await this.loadGroup(c);
  }

  async removeMember(c, user) {
    await this.api.req('DELETE', `/v1/groups/${c.conv}/members/${user}`);
    if (user === this.me) c.left = true;
    else await this.loadGroup(c);
    this.emit();
  }
}
