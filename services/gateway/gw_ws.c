/*
 * WebSocket connections on the gateway's loop: this file reads each socket into the loop's
 * buffer and has pl_ws_rx_feed() cut it into frames (masking, control frames, fragmentation,
 * the 64 KiB message cap), answers pings and closes, validates text as UTF-8, hands text
 * frames to the session layer, and writes what the session layer queues into bounded
 * per-socket queues flushed once per turn, several frames to one sendmsg().
 *
 * Memory: an idle socket holds its ws_conn_t (and its session) only. A connection keeps bytes
 * (pend, rx.frag, the out queue) only while a frame is incomplete, a fragmented message is open
 * or the peer has not read what was written to it; all three are capped (64 KiB frames,
 * sendq_max).
 */
#include "gw_ws.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "parley/ws.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define WS_MAGIC       0x67776331u
#define CLOSE_GRACE_MS 5000
#define RX_TURN_MAX    (64 * 1024) /* bytes read from one socket per loop turn */
#define RX_TURN_SMALL  4096        /* the same, for a socket lately over its budget */
#define TX_IOV_MAX     64          /* frames handed to one sendmsg() */
#define RX_CHUNK       4096        /* bytes per recv() (see read_frames) */

typedef struct ws_conn_s ws_conn_t;

/* One frame waiting to be written: header and payload, written from off. */
typedef struct out_s {
    struct out_s *next;
    size_t len, off;
    unsigned char data[];
} out_t;

struct ws_conn_s {
    uint32_t magic;
    gw_watch_t w;
    gw_ws_t *ws;
    gw_sess_t *sess; /* the session layer's; NULL once on_closed was reported */
    int fd;          /* the socket; -1 once released */
    /* What an idle socket costs is this structure and nothing else: input is read into the
     * loop's buffer, and memory is taken only for what cannot be finished in one turn. */
    pl_ws_rx_t rx;       /* a fragmented message being received */
    unsigned char *pend; /* an incomplete frame, or unread frames, kept until the next read */
    size_t pend_len;
    out_t *out_head, *out_tail; /* frames waiting to be written, in order */
    size_t out_bytes;           /* their size (the send-queue cap) */
    unsigned char closing;      /* close() was called: nothing more goes up */
    unsigned char close_queued; /* our close frame is queued: nothing may follow it */
    unsigned char close_rcvd;   /* the peer's close arrived: nothing more is read */
    unsigned char rx_failed;    /* the socket failed or reached EOF, or a protocol error */
    unsigned char tx_partial;   /* the wire is inside a frame we are writing */
    unsigned char held;         /* the session holds it: nothing is read or parsed */
    unsigned char dirty;        /* on the flush list */
    long long last_rx_ms, ping_ms;
    /* Over its user's send budget: nothing more is read from the socket until this time, so
     * a flood is held back by TCP instead of costing a parse and an error frame each. */
    long long throttled_until_ms;
    long long throttled_at_ms; /* when it last went over budget */
    size_t rx_turn;            /* bytes read in this loop turn (fairness cap) */
    ws_conn_t *throttle_next;  /* on the throttled list */
    ws_conn_t *prev, *next;    /* among all connections */
    ws_conn_t *flush_next;     /* on the flush list */
    ws_conn_t *dead_next;      /* on the free-at-end-of-turn list */
};

/* A socket handed over by the HTTP thread. */
typedef struct handoff_s {
    int fd;
    unsigned char *extra;
    size_t extra_len;
    int authed;
    pl_jwt_claims_t claims;
    struct handoff_s *next;
} handoff_t;

struct gw_ws_s {
    gw_ws_cfg_t cfg;
    ws_conn_t *all;
    long count;
    ws_conn_t *flush;
    ws_conn_t *dead;
    ws_conn_t *throttled; /* connections not read until their throttled_until_ms */
    pthread_mutex_t hand_lock;
    handoff_t *hand_head;
    gw_watch_t hand_w;
    int hand_fd;
    pl_metric_t *m_conns, *m_slow_closed;
};

/* Every socket is read into this buffer (the loop is single-threaded): an incomplete frame
 * left at its end (at most a frame header and PL_MAX_FRAME bytes) moves to the connection's
 * pend, and comes back here in front of the next read. */
static unsigned char rxbuf[PL_WS_HEADER_MAX + 4 + PL_MAX_FRAME + RX_TURN_MAX];

static const gw_link_ops_t ops;

#define CHECK(c) assert((c) != NULL && (c)->magic == WS_MAGIC)

static void mark_dirty(ws_conn_t *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->flush_next = c->ws->flush;
        c->ws->flush = c;
    }
}

static void unthrottle_one(ws_conn_t *c)
{
    ws_conn_t **tp = &c->ws->throttled;
    while (*tp != NULL && *tp != c) {
        tp = &(*tp)->throttle_next;
    }
    if (*tp == c) {
        *tp = c->throttle_next;
    }
    c->throttled_until_ms = 0;
}

/* Takes c out of every list, closes the socket and tells the session layer; c is freed at
 * the end of the turn (an event for it may still be in this turn's batch). */
static void release(ws_conn_t *c)
{
    gw_ws_t *ws = c->ws;
    if (c->fd < 0) {
        return; /* already released */
    }
    gw_loop_del(ws->cfg.loop, &c->w);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        ws->all = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    if (c->throttled_until_ms != 0) {
        unthrottle_one(c);
    }
    ws->count--;
    pl_metric_gauge_add(ws->m_conns, -1);
    close(c->fd);
    c->fd = -1;
    c->dead_next = ws->dead;
    ws->dead = c;
    if (c->sess != NULL) {
        gw_sess_t *s = c->sess;
        c->sess = NULL;
        ws->cfg.cbs.on_closed(ws->cfg.cbs_ud, s);
    }
}

static void update_interest(ws_conn_t *c)
{
    if (c->w.cb == NULL) {
        return;
    }
    int want_read = !c->close_rcvd && !c->rx_failed;
    int r = want_read && !c->held && c->throttled_until_ms == 0;
    int w = c->out_head != NULL;
    if (!want_read && !w) {
        release(c); /* the close handshake is over, or the peer is gone */
        return;
    }
    gw_loop_mod(c->ws->cfg.loop, &c->w, (r ? EPOLLIN : 0) | (w ? EPOLLOUT : 0) | EPOLLRDHUP);
}

/* Queues one frame; nothing is queued after a close. */
static int queue_frame(ws_conn_t *c, int opcode, const void *data, size_t len)
{
    if (c->close_queued || c->fd < 0) {
        return PL_ERR_UNAVAIL;
    }
    unsigned char h[PL_WS_HEADER_MAX];
    size_t hl = pl_ws_header(h, opcode, len);
    out_t *o = malloc(sizeof(*o) + hl + len);
    if (o == NULL) {
        return PL_ERR_NOMEM;
    }
    memcpy(o->data, h, hl);
    if (len > 0) {
        memcpy(o->data + hl, data, len);
    }
    o->len = hl + len;
    o->off = 0;
    o->next = NULL;
    if (c->out_tail != NULL) {
        c->out_tail->next = o;
    } else {
        c->out_head = o;
    }
    c->out_tail = o;
    c->out_bytes += o->len;
    c->close_queued = opcode == PL_WS_OP_CLOSE;
    mark_dirty(c);
    return PL_OK;
}

/* Drops the first r bytes written from c's queue. */
static void consume_out(ws_conn_t *c, size_t left)
{
    while (left > 0 && c->out_head != NULL) {
        out_t *o = c->out_head;
        size_t rest = o->len - o->off;
        if (left < rest) {
            o->off += left;
            break;
        }
        left -= rest;
        c->out_head = o->next;
        if (c->out_head == NULL) {
            c->out_tail = NULL;
        }
        c->out_bytes -= o->len;
        free(o);
    }
    c->tx_partial = c->out_head != NULL && c->out_head->off > 0;
}

/* Writes what the queue holds, as far as the socket takes it. -1 when the socket failed. */
static int flush_out(ws_conn_t *c)
{
    while (c->out_head != NULL && c->fd >= 0) {
        struct iovec iov[TX_IOV_MAX];
        int n = 0;
        size_t want = 0;
        for (out_t *o = c->out_head; o != NULL && n < TX_IOV_MAX; o = o->next, n++) {
            iov[n].iov_base = o->data + o->off;
            iov[n].iov_len = o->len - o->off;
            want += iov[n].iov_len;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t r;
        do {
            r = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        if (r < 0) {
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        }
        consume_out(c, (size_t)r);
        if ((size_t)r < want) {
            return 0; /* the socket's buffer is full: EPOLLOUT brings us back */
        }
    }
    return 0;
}

/* Queues a close frame. Code 0: a close without a status (the answer to one that had none). */
static void queue_close(ws_conn_t *c, uint16_t code, const char *reason)
{
    unsigned char p[125];
    size_t n = 0;
    if (code != 0) {
        size_t rl = reason != NULL ? strlen(reason) : 0;
        rl = rl > sizeof(p) - 2 ? sizeof(p) - 2 : rl; /* reasons here are ASCII */
        p[0] = (unsigned char)(code >> 8);
        p[1] = (unsigned char)code;
        if (rl > 0) {
            memcpy(p + 2, reason, rl);
        }
        n = 2 + rl;
    }
    queue_frame(c, PL_WS_OP_CLOSE, p, n);
}

/* Starts a close with code and reason; the socket is released once the close handshake is
 * done (or its grace period is over). */
static void close_conn(ws_conn_t *c, uint16_t code, const char *reason)
{
    if (c->closing) {
        return;
    }
    c->closing = 1;
    c->ping_ms = pl_now_ms(); /* the grace period for the close handshake starts now */
    queue_close(c, code, reason);
}

/* 1 when len more bytes would take c's send queue over its cap: c is then closed with 1013.
 * Every frame a client can cause is checked here (answers, pushes and pongs alike), so a
 * client that sends without reading cannot grow the queue. */
static int over_cap(ws_conn_t *c, size_t len)
{
    if (c->out_bytes + len <= c->ws->cfg.sendq_max) {
        return 0;
    }
    /* The client reads slower than it is written to: free it, let it resync. */
    pl_metric_inc(c->ws->m_slow_closed);
    pl_log_fields(PL_LOG_WARN, "slow_consumer", json_pack("{s:i}", "fd", c->fd),
                  "send queue over its cap; closing with 1013");
    close_conn(c, PL_WS_TRY_AGAIN, "send queue full: reconnect and sync");
    return 1;
}

/* ---- reading ---- */

static int on_frame(void *ud, int opcode, const unsigned char *data, size_t len);

/* 1 while frames already read may be handled. */
static int can_parse(const ws_conn_t *c)
{
    return c->fd >= 0 && !c->close_rcvd && !c->rx_failed && !c->held;
}

/* 1 while more may be read from c's socket: as can_parse, and not over its send budget. A
 * throttled socket's frames already read are still handled (each refused, and answered);
 * what it sends next waits in TCP. */
static int can_read(const ws_conn_t *c)
{
    return can_parse(c) && c->throttled_until_ms == 0;
}

/* Fails the connection on a protocol violation: a close with status, written at once as far
 * as the socket takes it (after what is queued, so the stream stays well-formed), then the
 * socket is dropped. */
static void fail(ws_conn_t *c, int status)
{
    if (!c->closing) {
        c->closing = 1;
        c->ping_ms = pl_now_ms();
    }
    queue_close(c, (uint16_t)status, NULL); /* no-op when a close is queued already */
    flush_out(c);
    c->rx_failed = 1;
}

/* Parses what rxbuf holds (have bytes); returns what is left unparsed, or -1 after fail(). */
static long parse_some(ws_conn_t *c, size_t have)
{
    long k = pl_ws_rx_feed(&c->rx, rxbuf, have, PL_MAX_FRAME, on_frame, c);
    if (k < 0) {
        fail(c, (int)-k);
        return -1;
    }
    memmove(rxbuf, rxbuf + k, have - (size_t)k);
    return (long)(have - (size_t)k);
}

/* Keeps what is left in rxbuf for the next turn. -1 when out of memory (c failed). */
static int keep_pending(ws_conn_t *c, size_t have)
{
    if (have == 0 || c->rx_failed || c->close_rcvd) {
        return 0;
    }
    c->pend = malloc(have);
    if (c->pend == NULL) {
        fail(c, PL_WS_INTERNAL);
        return -1;
    }
    memcpy(c->pend, rxbuf, have);
    c->pend_len = have;
    return 0;
}

/*
 * Takes the frames waiting in pend and in the socket, up to this turn's share. 0 to go on;
 * -1 when c must be released (the peer is gone, or violated the protocol and was told).
 */
static int read_frames(ws_conn_t *c)
{
    size_t have = 0;
    if (c->pend != NULL) {
        memcpy(rxbuf, c->pend, c->pend_len);
        have = c->pend_len;
        free(c->pend);
        c->pend = NULL;
        c->pend_len = 0;
    }
    /* A socket throttled in the last second reads one small chunk a turn: what it sent past
     * its budget is parsed and refused a little at a time, not 64 KiB at each release. */
    size_t cap = c->throttled_at_ms != 0 && pl_now_ms() - c->throttled_at_ms < 1000 ? RX_TURN_SMALL
                                                                                    : RX_TURN_MAX;
    for (;;) {
        if (have > 0 && can_parse(c)) {
            long left = parse_some(c, have);
            if (left < 0) {
                return -1;
            }
            have = (size_t)left;
        }
        /* Enough from this socket for one turn (the rest waits in the kernel and the loop
         * comes back to it, level-triggered), or it may not be read now: others get a turn. */
        if (!can_read(c) || c->rx_turn >= cap) {
            break;
        }
        /* At most RX_CHUNK per recv(), each parsed before the next: when a sender goes over
         * its budget mid-read, what it sent past that point stays in the kernel instead of
         * being refused frame by frame (up to 64 KiB of them, each answered and retried). */
        size_t room = sizeof(rxbuf) - have;
        size_t want = cap - c->rx_turn < room ? cap - c->rx_turn : room;
        want = want < RX_CHUNK ? want : RX_CHUNK;
        ssize_t r;
        do {
            r = recv(c->fd, rxbuf + have, want, 0);
        } while (r < 0 && errno == EINTR);
        if (r <= 0) {
            c->rx_failed = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
            if (!c->rx_failed) {
                break;
            }
            continue; /* parse nothing more: the loop ends at can_read() */
        }
        have += (size_t)r;
        c->rx_turn += (size_t)r;
        c->last_rx_ms = pl_now_ms();
    }
    if (keep_pending(c, have) != 0) {
        return -1;
    }
    return c->rx_failed ? -1 : 0;
}

/* pl_ws_rx_feed's callback: one message or control frame. Nonzero stops the feed (the rest
 * stays in pend) when c may not be read further now. */
static int on_frame(void *ud, int opcode, const unsigned char *data, size_t len)
{
    ws_conn_t *c = ud;
    if (opcode == PL_WS_OP_PING || opcode == PL_WS_OP_PONG) {
        if (!c->closing) {
            c->ping_ms = 0; /* the peer is alive */
        }
        if (opcode == PL_WS_OP_PING && !over_cap(c, len)) {
            queue_frame(c, PL_WS_OP_PONG, data, len);
        }
        return !can_parse(c);
    }
    if (opcode == PL_WS_OP_CLOSE) {
        /* Valid (pl_ws_rx_feed checked it). Answer with the same status unless a close of
         * ours is already out; the socket is released once ours is written. */
        c->close_rcvd = 1;
        uint16_t code = len >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 0;
        close_conn(c, code, NULL);
        return 1;
    }
    if (c->closing) {
        return !can_parse(c);
    }
    if (opcode == PL_WS_OP_BINARY) {
        close_conn(c, PL_WS_UNSUPPORTED, "binary frames are not supported");
    } else if (!pl_utf8_valid(data, len)) {
        close_conn(c, PL_WS_INVALID_DATA, "text frame is not valid UTF-8");
    } else if (c->sess != NULL) {
        c->ws->cfg.cbs.on_text(c->ws->cfg.cbs_ud, c->sess, (const char *)data, len);
    }
    return !can_parse(c);
}

static void on_io(gw_watch_t *w, uint32_t events)
{
    ws_conn_t *c = w->ud;
    CHECK(c);
    c->rx_turn = 0;
    if ((c->held || c->throttled_until_ms != 0) && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        release(c); /* the peer left while it was held back */
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (!c->held && read_frames(c) != 0) {
            release(c);
            return;
        }
        if ((events & (EPOLLHUP | EPOLLERR)) && c->w.cb != NULL) {
            release(c);
            return;
        }
    }
    if (c->w.cb != NULL && (events & EPOLLOUT) && flush_out(c) != 0) {
        release(c);
        return;
    }
    if (c->w.cb != NULL) {
        mark_dirty(c);
    }
}

/* ---- the link operations the session layer uses ---- */

static int op_send_text(void *link, const char *text, size_t len)
{
    ws_conn_t *c = link;
    CHECK(c);
    if (c->closing || c->fd < 0) {
        return PL_ERR_UNAVAIL;
    }
    if (over_cap(c, len)) {
        return PL_ERR_TOOBIG;
    }
    return queue_frame(c, PL_WS_OP_TEXT, text, len);
}

static void op_close(void *link, uint16_t status, const char *reason)
{
    ws_conn_t *c = link;
    CHECK(c);
    close_conn(c, status, reason);
}

static void op_hold(void *link)
{
    ws_conn_t *c = link;
    CHECK(c);
    c->held = 1;
    mark_dirty(c); /* so the end of the turn drops EPOLLIN */
}

static void op_resume(void *link)
{
    ws_conn_t *c = link;
    CHECK(c);
    c->held = 0;
    /* Frames that arrived while it was held (in pend or in the socket) are read at the end of
     * this turn, not inside the session's call: the session may be in the middle of opening
     * (an answer that came during on_open, when the transport does not know it yet). */
    mark_dirty(c);
}

static void op_throttle(void *link, long ms)
{
    ws_conn_t *c = link;
    CHECK(c);
    if (c->throttled_until_ms == 0) {
        c->throttled_at_ms = pl_now_ms();
        c->throttled_until_ms = c->throttled_at_ms + ms;
        c->throttle_next = c->ws->throttled;
        c->ws->throttled = c;
        mark_dirty(c); /* the end of the turn drops EPOLLIN */
    }
}

static const gw_link_ops_t ops = {
    .send_text = op_send_text,
    .close = op_close,
    .hold = op_hold,
    .resume = op_resume,
    .throttle = op_throttle,
};

/* ---- handoff from the HTTP thread ---- */

void gw_ws_handoff(gw_ws_t *ws, int fd, const char *extra, size_t extra_len,
                   const pl_jwt_claims_t *claims)
{
    handoff_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        close(fd);
        return;
    }
    h->fd = fd;
    if (extra_len > 0 && (h->extra = malloc(extra_len)) != NULL) {
        memcpy(h->extra, extra, extra_len);
        h->extra_len = extra_len;
    }
    if (claims != NULL) {
        h->authed = 1;
        h->claims = *claims;
    }
    pthread_mutex_lock(&ws->hand_lock);
    h->next = ws->hand_head;
    ws->hand_head = h;
    pthread_mutex_unlock(&ws->hand_lock);
    uint64_t one = 1;
    ssize_t w = write(ws->hand_fd, &one, sizeof(one));
    (void)w;
}

static void adopt_one(gw_ws_t *ws, handoff_t *h)
{
    ws_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(h->fd);
        return;
    }
    c->magic = WS_MAGIC;
    c->ws = ws;
    c->fd = h->fd;
    c->last_rx_ms = pl_now_ms();
    /* Bytes the client sent right behind its handshake are read first. */
    c->pend = h->extra;
    c->pend_len = h->extra_len;
    h->extra = NULL;
    c->next = ws->all;
    if (ws->all != NULL) {
        ws->all->prev = c;
    }
    ws->all = c;
    ws->count++;
    pl_metric_gauge_add(ws->m_conns, 1);
    if (gw_loop_add(ws->cfg.loop, &c->w, h->fd, EPOLLIN | EPOLLRDHUP, on_io, c) != PL_OK) {
        c->w.cb = on_io; /* so release() runs its course */
        release(c);
        return;
    }
    c->sess = ws->cfg.cbs.on_open(ws->cfg.cbs_ud, c, &ops, h->authed ? &h->claims : NULL);
    if (c->sess == NULL) {
        release(c);
        return;
    }
    if (c->pend_len > 0 && can_parse(c) && read_frames(c) != 0) {
        release(c);
    }
}

static void on_handoff(gw_watch_t *w, uint32_t events)
{
    gw_ws_t *ws = w->ud;
    uint64_t n;
    (void)events;
    ssize_t r = read(ws->hand_fd, &n, sizeof(n));
    (void)r;
    pthread_mutex_lock(&ws->hand_lock);
    handoff_t *h = ws->hand_head;
    ws->hand_head = NULL;
    pthread_mutex_unlock(&ws->hand_lock);
    while (h != NULL) {
        handoff_t *next = h->next;
        adopt_one(ws, h);
        free(h->extra);
        free(h);
        h = next;
    }
}

/* ---- per turn and per second ---- */

static void free_dead(gw_ws_t *ws)
{
    while (ws->dead != NULL) {
        ws_conn_t *c = ws->dead;
        ws->dead = c->dead_next;
        c->magic = 0;
        pl_ws_rx_clear(&c->rx);
        free(c->pend);
        for (out_t *o = c->out_head, *n; o != NULL; o = n) {
            n = o->next;
            free(o);
        }
        free(c);
    }
}

void gw_ws_end_turn(gw_ws_t *ws)
{
    while (ws->flush != NULL) {
        ws_conn_t *c = ws->flush;
        ws->flush = c->flush_next;
        c->dirty = 0;
        if (c->w.cb == NULL) {
            continue;
        }
        /* Frames left in pend while c was throttled or held: the socket may have nothing
         * new, so no EPOLLIN would bring them back. */
        if (c->pend != NULL && can_read(c) && read_frames(c) != 0) {
            release(c);
            continue;
        }
        if (c->out_head != NULL && flush_out(c) != 0) {
            release(c);
            continue;
        }
        update_interest(c);
    }
    free_dead(ws);
}

int gw_ws_unthrottle(gw_ws_t *ws, int max_ms)
{
    long long now = pl_now_ms();
    long long next = now + max_ms;
    for (ws_conn_t **pp = &ws->throttled; *pp != NULL;) {
        ws_conn_t *c = *pp;
        if (c->throttled_until_ms <= now) {
            *pp = c->throttle_next;
            c->throttled_until_ms = 0;
            mark_dirty(c); /* the end of the turn asks for EPOLLIN again */
            continue;
        }
        next = c->throttled_until_ms < next ? c->throttled_until_ms : next;
        pp = &c->throttle_next;
    }
    return (int)(next - now);
}

void gw_ws_tick(gw_ws_t *ws)
{
    long long now = pl_now_ms();
    for (ws_conn_t *c = ws->all, *next; c != NULL; c = next) {
        next = c->next;
        if (c->closing) {
            /* A peer that never completes the close handshake is dropped. */
            if (now - c->ping_ms > CLOSE_GRACE_MS) {
                release(c);
            }
        } else if (c->ping_ms != 0 && now - c->ping_ms > ws->cfg.dead_after_ms) {
            pl_log_info("dead_peer", "no pong from fd %d; closing", c->fd);
            release(c);
        } else if (c->ping_ms == 0 && !c->held && now - c->last_rx_ms > ws->cfg.ping_interval_ms) {
            queue_frame(c, PL_WS_OP_PING, "hb", 2);
            c->ping_ms = now;
        }
    }
}

long gw_ws_count(const gw_ws_t *ws)
{
    return ws->count;
}

gw_ws_t *gw_ws_new(const gw_ws_cfg_t *cfg)
{
    gw_ws_t *ws = calloc(1, sizeof(*ws));
    if (ws == NULL) {
        return NULL;
    }
    ws->cfg = *cfg;
    ws->hand_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&ws->hand_lock, NULL);
    if (ws->hand_fd < 0 ||
        gw_loop_add(cfg->loop, &ws->hand_w, ws->hand_fd, EPOLLIN, on_handoff, ws) != PL_OK) {
        gw_ws_free(&ws);
        return NULL;
    }
    ws->m_conns =
        pl_metrics_gauge(cfg->metrics, "parley_gateway_connections", "Open WebSockets", NULL);
    ws->m_slow_closed =
        pl_metrics_counter(cfg->metrics, "parley_gateway_slow_consumer_closes_total",
                           "Connections closed with 1013 at the queue cap", NULL);
    return ws;
}

void gw_ws_free(gw_ws_t **pws)
{
    if (pws == NULL || *pws == NULL) {
        return;
    }
    gw_ws_t *ws = *pws;
    while (ws->all != NULL) {
        release(ws->all);
    }
    ws->flush = NULL;
    free_dead(ws);
    for (handoff_t *h = ws->hand_head, *next; h != NULL; h = next) {
        next = h->next;
        close(h->fd);
        free(h->extra);
        free(h);
    }
    if (ws->hand_fd >= 0) {
        gw_loop_del(ws->cfg.loop, &ws->hand_w);
        close(ws->hand_fd);
    }
    pthread_mutex_destroy(&ws->hand_lock);
    free(ws);
    *pws = NULL;
}
