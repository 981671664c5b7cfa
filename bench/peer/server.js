// The peer: the seed document's design, written as its authors would, for side-by-side
// benchmarks (make bench). Express + Socket.IO 4 + mongoose: a socket authenticates with the
// same ES256 access token Parley's gateways take, joins a room named after its user, and a
// "send" is saved to MongoDB (the seed's {sender, receiver, content, timestamp}) before it is
// emitted to the receiver's room and acknowledged. Not part of Parley.
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const express = require('express');
const mongoose = require('mongoose');
const { Server } = require('socket.io');

const port = Number(process.env.PEER_PORT || 28500);
const mongoUri = process.env.PEER_MONGO_URI || 'mongodb://127.0.0.1:27017/parley_peer';
const publicKey = crypto.createPublicKey(fs.readFileSync(process.env.PEER_JWT_PUBLIC_KEY));

const Message = mongoose.model('Message', new mongoose.Schema({
  sender: { type: String, index: true },
  receiver: { type: String, index: true },
  content: String,
  timestamp: { type: Date, default: Date.now },
}));

function verify(token) {
  const parts = String(token || '').split('.');
  if (parts.length !== 3) return null;
  const ok = crypto.verify('sha256', Buffer.from(parts[0] + '.' + parts[1]),
    { key: publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(parts[2], 'base64url'));
  if (!ok) return null;
  const claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString());
  return claims.exp * 1000 > Date.now() ? claims : null;
}

const app = express();
app.get('/healthz', (req, res) => res.json({ status: 'ok' }));
const server = http.createServer(app);
const io = new Server(server, { maxHttpBufferSize: 64 * 1024 });

io.use((socket, next) => {
  const claims = verify(socket.handshake.auth && socket.handshake.auth.token);
  if (!claims) return next(new Error('unauthorized'));
  socket.data.user = claims.sub;
  next();
});

io.on('connection', (socket) => {
  socket.join(socket.data.user);
  socket.emit('ready', { user: socket.data.user });
  // Rooms, as the seed's snippet has them (socket.join(group), io.to(group).emit): a group
  // message is saved first, then emitted to the room, whose sockets all belong to members.
  socket.on('join', (group) => socket.join(`group:${group}`));
  socket.on('send', async (m, ack) => {
    try {
      const to = m.group ? `group:${m.group}` : m.to;
      const doc = await Message.create({ sender: socket.data.user, receiver: to, content: m.content });
      const out = { msg_id: String(doc._id), sender: doc.sender, receiver: doc.receiver,
        content: doc.content, timestamp: doc.timestamp, client_id: m.client_id };
      io.to(to).emit('msg', out);
      if (typeof ack === 'function') ack({ client_id: m.client_id, msg_id: out.msg_id });
    } catch (e) {
      if (typeof ack === 'function') ack({ client_id: m.client_id, error: 'unavailable' });
    }
  });
});

mongoose.connect(mongoUri).then(() => {
  server.listen(port, '127.0.0.1', () => console.log(`peer listening on ${port}`));
});
