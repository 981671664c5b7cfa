// The peer's load generator: the same open-loop schedule, pairing, client_id timestamps and
// log-linear histogram as clients/bench.c, with socket.io-client. Prints one JSON line.
// --mode=group --group=NAME: every socket joins the room; the first --senders sockets of each
// worker send to it in turn, and every other member's copy counts as a delivery.
'use strict';
const { fork } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const { io } = require('socket.io-client');

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, '').split('=')));
const opt = {
  url: args.url || 'http://127.0.0.1:28500', mode: args.mode || 'chat',
  conns: Number(args.conns || 100), procs: Number(args.procs || 2), rate: Number(args.rate || 100),
  seconds: Number(args.seconds || 10), drain: Number(args.drain || 3), warmup: Number(args.warmup || 2), size: Number(args.size || 32),
  prefix: args.prefix || 'bench', key: args.key, first: Number(args['first-user'] || 0),
  group: args.group, senders: Number(args.senders || 1),
};
const H_SUB = 64, H_EXP = 40, H_BUCKETS = H_SUB * H_EXP;
function hIdx(v) {
  v = Math.max(0, Math.floor(v));
  if (v < H_SUB) return v;
  const e = Math.floor(Math.log2(v));
  const step = 2 ** (e - 6);
  return Math.min(H_BUCKETS - 1, (e - 5) * H_SUB + Math.floor((v - 2 ** e) / step));
}
function hVal(i) {
  if (i < H_SUB) return i;
  const e = Math.floor(i / H_SUB) + 5, step = 2 ** (e - 6);
  return 2 ** e + (i % H_SUB) * step + step / 2;
}
function hNew() { return { n: new Array(H_BUCKETS).fill(0), count: 0, max: 0 }; }
function hAdd(h, v) { h.n[hIdx(v)]++; h.count++; if (v > h.max) h.max = v; }
function hPct(h, p) {
  if (!h.count) return 0;
  const want = Math.ceil(p * h.count); let seen = 0;
  for (let i = 0; i < H_BUCKETS; i++) { seen += h.n[i]; if (seen >= want) return hVal(i) / 1000; }
  return h.max / 1000;
}
const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

function sign(key, sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const input = b64({ alg: 'ES256', typ: 'JWT' }) + '.' + b64({ iss: 'parley', aud: 'parley', sub,
    sid: crypto.randomBytes(16).toString('hex'), jti: crypto.randomBytes(8).toString('hex'), iat: now, exp: now + 3600 });
  const sig = crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return input + '.' + sig.toString('base64url');
}

async function worker(w, first, n) {
  const key = crypto.createPrivateKey(fs.readFileSync(opt.key));
  const rep = { ready: 0, failed: 0, sent: 0, acked: 0, delivered: 0, echoed: 0, errors: 0, ack: hNew(), deliver: hNew() };
  const socks = [];
  const t0w = { from: Infinity }; // set when sending starts
  const t0c = nowUs();
  await new Promise((resolve) => {
    let pending = n;
    for (let i = 0; i < n; i++) {
      const user = opt.prefix + String(first + i).padStart(7, '0');
      const s = io(opt.url, { transports: ['websocket'], auth: { token: sign(key, user) }, reconnection: false });
      s.user = user; s.peer = opt.prefix + String(first + (i ^ 1)).padStart(7, '0');
      s.on('ready', () => {
        if (opt.group) s.emit('join', opt.group);
        rep.ready++; if (--pending === 0) resolve();
      });
      s.on('connect_error', () => { rep.failed++; if (--pending === 0) resolve(); });
      s.on('msg', (m) => {
        const due = Number(String(m.client_id).split('.')[2]);
        if (due < t0w.from) return;
        if (m.sender === s.user) { rep.echoed++; return; }
        rep.delivered++; hAdd(rep.deliver, Math.max(0, nowUs() - due));
      });
      socks.push(s);
    }
  });
  const connectSeconds = (nowUs() - t0c) / 1e6;
  process.send({ progress: { ready: rep.ready, failed: rep.failed } });
  const rate = opt.mode === 'chat' || opt.mode === 'group' ? opt.rate / opt.procs : 0;
  const senders = opt.mode === 'group' ? Math.min(opt.senders, n) : n;
  const content = 'x'.repeat(opt.size);
  const t0 = nowUs(); const from = t0 + opt.warmup * 1e6; t0w.from = from; const end = from + opt.seconds * 1e6; let k = 0;
  let nextProgress = t0 + 1e6;
  await new Promise((resolve) => {
    const tick = () => {
      const t = nowUs();
      if (t >= nextProgress) { nextProgress += 1e6; process.send({ progress: { sent: rep.sent } }); }
      while (rate > 0 && t < end && t0 + (k * 1e6) / rate <= t) {
        const due = Math.round(t0 + (k * 1e6) / rate);
        const s = socks[k % senders];
        const cid = `${w}.${k}.${due}`;
        if (s.connected) {
          const counted = due >= from; // the warm-up is sent at the rate but not counted
          if (counted) rep.sent++;
          const target = opt.group ? { group: opt.group } : { to: s.peer };
          s.emit('send', { ...target, content, client_id: cid }, (a) => {
            if (!counted) return;
            if (a && a.error) { rep.errors++; return; }
            rep.acked++; hAdd(rep.ack, Math.max(0, nowUs() - due));
          });
        }
        k++;
      }
      if (t >= end + opt.drain * 1e6 || (rate === 0 && t >= end)) return resolve();
      const next = rate > 0 && t < end ? Math.max(0, (t0 + (k * 1e6) / rate - t) / 1000) : 50;
      setTimeout(tick, Math.min(next, 50));
    };
    tick();
  });
  socks.forEach((s) => s.close());
  process.send({ final: { ...rep, connectSeconds } });
}

if (process.env.PEER_BENCH_WORKER) {
  const [w, first, n] = process.env.PEER_BENCH_WORKER.split(',').map(Number);
  worker(w, first, n).then(() => process.exit(0));
} else {
  const per = opt.conns / opt.procs;
  const finals = [];
  const start = Date.now();
  const kids = [];
  const sent = new Array(opt.procs).fill(0);
  for (let w = 0; w < opt.procs; w++) {
    const kid = fork(__filename, process.argv.slice(2), { env: { ...process.env, PEER_BENCH_WORKER: `${w},${opt.first + w * per},${per}` } });
    kid.on('message', (m) => {
      if (m.final) finals.push(m.final);
      if (m.progress && m.progress.sent !== undefined) sent[w] = m.progress.sent;
    });
    kids.push(new Promise((r) => kid.on('exit', r)));
  }
  const timer = setInterval(() => process.stderr.write(`\r[peer bench ${Math.round((Date.now() - start) / 1000)}s] sent ${sent.reduce((a, b) => a + b, 0)} workers done ${finals.length}/${opt.procs}   `), 1000);
  Promise.all(kids).then(() => {
    clearInterval(timer); process.stderr.write('\n');
    const s = { ready: 0, failed: 0, sent: 0, acked: 0, delivered: 0, errors: 0, ack: hNew(), deliver: hNew(), connectSeconds: 0 };
    for (const f of finals) {
      for (const k of ['ready', 'failed', 'sent', 'acked', 'delivered', 'errors']) s[k] += f[k];
      for (const h of ['ack', 'deliver']) {
        for (let i = 0; i < H_BUCKETS; i++) s[h].n[i] += f[h].n[i];
        s[h].count += f[h].count; s[h].max = Math.max(s[h].max, f[h].max);
      }
      s.connectSeconds = Math.max(s.connectSeconds, f.connectSeconds);
    }
    const pct = (h) => ({ p50: hPct(h, 0.5), p90: hPct(h, 0.9), p99: hPct(h, 0.99), p999: hPct(h, 0.999), max: h.max / 1000 });
    console.log(JSON.stringify({ mode: opt.mode, conns: opt.conns, procs: opt.procs, rate: opt.rate, seconds: opt.seconds,
      ready: s.ready, failed: s.failed, connect_seconds: s.connectSeconds, handshakes_per_s: s.connectSeconds ? s.ready / s.connectSeconds : 0,
      sent: s.sent, acked: s.acked, delivered: s.delivered, lost: s.sent - s.delivered, errors: s.errors,
      ack_ms: pct(s.ack), deliver_ms: pct(s.deliver) }));
  });
}
