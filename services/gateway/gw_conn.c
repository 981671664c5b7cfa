/*
 * WebSocket connections on the gateway's loop: this file reads each socket into the loop's
 * buffer and has pl_ws_rx_feed() cut it into frames (masking, control frames, fragmentation,
 * the 64 KiB message cap), answers pings and closes, validates text as UTF-8, authenticates,
 * turns "send" frames into Kafka records, and writes acks, errors and pushed messages into
 * bounded per-socket queues flushed once per turn, several frames to one sendmsg().
 *
 * Memory: an idle socket holds its gw_conn_t only. A connection keeps bytes (pend, rx.frag,
 * the out queue) only while a frame is incomplete, a fragmented message is open or the peer
 * has not read what was written to it; all three are capped (64 KiB frames, sendq_max).
 */
#include "gw.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/ws.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define CLOSE_GRACE_MS 5000
#define RX_TURN_MAX    (64 * 1024) /* bytes read from one socket per loop turn */
#define RX_TURN_SMALL  4096        /* the same, for a socket lately over its budget */
#define TX_IOV_MAX     64          /* frames handed to one sendmsg() */
#define RX_CHUNK       4096        /* bytes per recv() (see read_frames) */

/* Every socket is read into this buffer (the loop is single-threaded): an incomplete frame
 * left at its end (at most a frame header and PL_MAX_FRAME bytes) moves to the connection's
 * pend, and comes back here in front of the next read. */
static unsigned char rxbuf[PL_WS_HEADER_MAX + 4 + PL_MAX_FRAME + RX_TURN_MAX];

gw_conn_t *gw_conn_find(gw_ctx_t *ctx, uint64_t id)
{
    for (gw_conn_t *c = ctx->by_id[id % GW_ID_BUCKETS]; c != NULL; c = c->id_next) {
        if (c->id == id) {
            return c;
        }
    }
    return NULL;
}

gw_user_t *gw_user_find(gw_ctx_t *ctx, const char *name)
{
    for (gw_user_t *u = ctx->users[pl_hash_str(name) % GW_USER_BUCKETS]; u != NULL; u = u->next) {
        if (strcmp(u->name, name) == 0) {
            return u;
        }
    }
    return NULL;
}

static void user_link(gw_ctx_t *ctx, gw_conn_t *c)
{
    gw_user_t *u = gw_user_find(ctx, c->user);
    if (u == NULL) {
        u = calloc(1, sizeof(*u));
        if (u == NULL) {
            return;
        }
        snprintf(u->name, sizeof(u->name), "%s", c->user);
        u->tokens = ctx->user_burst;
        u->refilled_ms = pl_now_ms();
        size_t h = pl_hash_str(c->user) % GW_USER_BUCKETS;
        u->next = ctx->users[h];
        ctx->users[h] = u;
    }
    c->u_prev = NULL;
    c->u_next = u->conns;
    if (u->conns != NULL) {
        u->conns->u_prev = c;
    }
    u->conns = c;
}

static void user_unlink(gw_ctx_t *ctx, gw_conn_t *c)
{
    gw_user_t *u = gw_user_find(ctx, c->user);
    if (u == NULL) {
        return;
    }
    if (c->u_prev != NULL) {
        c->u_prev->u_next = c->u_next;
    } else if (u->conns == c) {
        u->conns = c->u_next;
    } else {
        return; /* not linked */
    }
    if (c->u_next != NULL) {
        c->u_next->u_prev = c->u_prev;
    }
    c->u_prev = c->u_next = NULL;
    if (u->conns == NULL) {
        gw_user_t **pp = &ctx->users[pl_hash_str(u->name) % GW_USER_BUCKETS];
        while (*pp != u) {
            pp = &(*pp)->next;
        }
        *pp = u->next;
        free(u);
    }
}

static void mark_dirty(gw_conn_t *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->flush_next = c->ctx->flush;
        c->ctx->flush = c;
    }
}

/* Takes c out of every table and hands the socket back; c is freed at the end of the turn. */
static void release(gw_conn_t *c)
{
    gw_ctx_t *ctx = c->ctx;
    if (c->fd < 0) {
        return; /* already released */
    }
    gw_loop_del(ctx->loop, &c->w);
    if (c->in_presence) {
        /* Whatever state it is in now: a socket closed by either side (so CLOSING) was
         * registered while it was open, and its field must not outlive it. */
        gw_presence_del(ctx, c);
    }
    user_unlink(ctx, c);
    gw_conn_t **pp = &ctx->by_id[c->id % GW_ID_BUCKETS];
    while (*pp != NULL && *pp != c) {
        pp = &(*pp)->id_next;
    }
    if (*pp == c) {
        *pp = c->id_next;
    }
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        ctx->all = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    if (c->throttled_until_ms != 0) {
        gw_conn_t **tp = &ctx->throttled;
        while (*tp != NULL && *tp != c) {
            tp = &(*tp)->throttle_next;
        }
        if (*tp == c) {
            *tp = c->throttle_next;
        }
        c->throttled_until_ms = 0;
    }
    ctx->nconns--;
    pl_metric_gauge_add(ctx->m_conns, -1);
    close(c->fd);
    c->fd = -1;
    c->dead_next = ctx->dead;
    ctx->dead = c;
}

static void update_interest(gw_conn_t *c)
{
    if (c->w.cb == NULL) {
        return;
    }
    int want_read = !c->close_rcvd && !c->rx_failed;
    int r = want_read && !c->read_paused && c->throttled_until_ms == 0;
    int w = c->out_head != NULL;
    if (!want_read && !w) {
        release(c); /* the close handshake is over, or the peer is gone */
        return;
    }
    gw_loop_mod(c->ctx->loop, &c->w, (r ? EPOLLIN : 0) | (w ? EPOLLOUT : 0) | EPOLLRDHUP);
}

/* Queues one frame; nothing is queued after a close. */
static int queue_frame(gw_conn_t *c, int opcode, const void *data, size_t len)
{
    if (c->close_queued || c->fd < 0) {
        return PL_ERR_UNAVAIL;
    }
    unsigned char h[PL_WS_HEADER_MAX];
    size_t hl = pl_ws_header(h, opcode, len);
    gw_out_t *o = malloc(sizeof(*o) + hl + len);
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

/* Writes what the queue holds, as far as the socket takes it. -1 when the socket failed. */
static int flush_out(gw_conn_t *c)
{
    while (c->out_head != NULL && c->fd >= 0) {
        struct iovec iov[TX_IOV_MAX];
        int n = 0;
        size_t want = 0;
        for (gw_out_t *o = c->out_head; o != NULL && n < TX_IOV_MAX; o = o->next, n++) {
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
        for (size_t left = (size_t)r; left > 0 && c->out_head != NULL;) {
            gw_out_t *o = c->out_head;
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
            if (c->close_queued && c->out_head == NULL) {
                c->close_sent = 1; /* the close is always the last frame queued */
            }
            free(o);
        }
        c->tx_partial = c->out_head != NULL && c->out_head->off > 0;
        if ((size_t)r < want) {
            return 0; /* the socket's buffer is full: EPOLLOUT brings us back */
        }
    }
    return 0;
}

/* 1 when len more bytes would take c's send queue over its cap: c is then closed with 1013.
 * Every frame a client can cause is checked here (answers, pushes and pongs alike), so a
 * client that sends without reading cannot grow the queue. */
static int over_cap(gw_conn_t *c, size_t len)
{
    if (c->out_bytes + len <= c->ctx->sendq_max) {
        return 0;
    }
    /* The client reads slower than it is written to: free it, let it resync. */
    pl_metric_inc(c->ctx->m_slow_closed);
    pl_log_fields(PL_LOG_WARN, "slow_consumer",
                  json_pack("{s:s,s:I}", "user", c->user, "conn", (json_int_t)c->id),
                  "send queue over its cap; closing with 1013");
    gw_conn_close(c, PL_WS_TRY_AGAIN, "send queue full: reconnect and sync");
    return 1;
}

int gw_conn_send_text(gw_conn_t *c, const char *text, size_t len)
{
    if (c->state == GW_CLOSING || c->fd < 0) {
        return PL_ERR_UNAVAIL;
    }
    if (over_cap(c, len)) {
        return PL_ERR_TOOBIG;
    }
    return queue_frame(c, PL_WS_OP_TEXT, text, len);
}

static void queue_close(gw_conn_t *c, uint16_t code, const char *reason);

void gw_conn_close(gw_conn_t *c, uint16_t code, const char *reason)
{
    if (c->state == GW_CLOSING) {
        return;
    }
    c->state = GW_CLOSING;
    c->ping_ms = pl_now_ms(); /* the grace period for the close handshake starts now */
    queue_close(c, code, reason);
}

/* Queues a close frame. Code 0: a close without a status (the answer to one that had none). */
static void queue_close(gw_conn_t *c, uint16_t code, const char *reason)
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

static void send_error(gw_conn_t *c, const char *code, const char *msg, const char *client_id,
                       long retry_ms)
{
    char *f = pl_frame_error(code, msg, client_id, retry_ms);
    if (f != NULL) {
        gw_conn_send_text(c, f, strlen(f));
        free(f);
    }
    char labels[64];
    snprintf(labels, sizeof(labels), "code=\"%s\"", code);
    pl_metric_inc(pl_metrics_counter(c->ctx->metrics, "parley_gateway_errors_total",
                                     "Error frames sent, by code", labels));
}

/* ---- reading ---- */

static int on_frame(void *ud, int opcode, const unsigned char *data, size_t len);
static void on_message(gw_conn_t *c, int opcode, const unsigned char *msg, size_t msg_length);

/* 1 while frames already read may be handled (not while its token is being checked). */
static int can_parse(const gw_conn_t *c)
{
    return c->fd >= 0 && !c->close_rcvd && !c->rx_failed && !c->read_paused;
}

/* 1 while more may be read from c's socket: as can_parse, and not over its send budget. A
 * throttled socket's frames already read are still handled (each refused, and answered);
 * what it sends next waits in TCP. */
static int can_read(const gw_conn_t *c)
{
    return can_parse(c) && c->throttled_until_ms == 0;
}

/* Fails the connection on a protocol violation: a close with status, written at once as far
 * as the socket takes it (after what is queued, so the stream stays well-formed), then the
 * socket is dropped. */
static void fail(gw_conn_t *c, int status)
{
    if (c->state != GW_CLOSING) {
        c->state = GW_CLOSING;
        c->ping_ms = pl_now_ms();
    }
    queue_close(c, (uint16_t)status, NULL); /* no-op when a close is queued already */
    flush_out(c);
    c->rx_failed = 1;
}

/*
 * Takes the frames waiting in pend and in the socket, up to this turn's share. 0 to go on;
 * -1 when c must be released (the peer is gone, or violated the protocol and was told).
 */
static int read_frames(gw_conn_t *c)
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
            long k = pl_ws_rx_feed(&c->rx, rxbuf, have, PL_MAX_FRAME, on_frame, c);
            if (k < 0) {
                fail(c, (int)-k);
                return -1;
            }
            memmove(rxbuf, rxbuf + k, have - (size_t)k);
            have -= (size_t)k;
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
    if (have > 0 && !c->rx_failed && !c->close_rcvd) {
        c->pend = malloc(have);
        if (c->pend == NULL) {
            fail(c, PL_WS_INTERNAL);
            return -1;
        }
        memcpy(c->pend, rxbuf, have);
        c->pend_len = have;
    }
    return c->rx_failed ? -1 : 0;
}

static void start_auth(gw_conn_t *c, const pl_jwt_claims_t *claims)
{
    /* Tokens come from parley-auth, whose subjects are usernames; anything else is refused. */
    if (pl_username_normalize(claims->sub, c->user) != PL_OK || strcmp(claims->sub, c->user) != 0) {
        gw_conn_close(c, PL_WS_POLICY, "invalid token subject");
        return;
    }
    snprintf(c->sid, sizeof(c->sid), "%s", claims->sid);
    c->token_exp = claims->exp;
    c->state = GW_CHECKING;
    /* Read nothing more until the session is known to be live: frames wait in the socket. */
    c->read_paused = 1;
    mark_dirty(c); /* so the end of the turn drops EPOLLIN */
    gw_check_revoked(c->ctx, c);
}

void gw_conn_auth_result(gw_ctx_t *ctx, uint64_t conn_id, int rc)
{
    gw_conn_t *c = gw_conn_find(ctx, conn_id);
    if (c == NULL || c->state != GW_CHECKING) {
        return;
    }
    if (rc != PL_OK) {
        gw_conn_close(c, PL_WS_POLICY, "session revoked");
        return;
    }
    c->state = GW_OPEN;
    c->read_paused = 0;
    user_link(ctx, c);
    gw_presence_add(ctx, c);
    c->in_presence = 1;
    pl_metric_inc(ctx->m_opened);
    json_t *ready =
        json_pack("{s:s,s:s,s:s}", "type", "ready", "user", c->user, "gateway", ctx->gw_id);
    char *f = ready ? json_dumps(ready, JSON_COMPACT) : NULL;
    json_decref(ready);
    if (f != NULL) {
        gw_conn_send_text(c, f, strlen(f));
        free(f);
    }
    update_interest(c);
    /* Frames that arrived during the check are still in pend or the socket: read them now. */
    if (read_frames(c) != 0) {
        release(c);
    }
}

static void on_auth_frame(gw_conn_t *c, const pl_frame_t *f)
{
    pl_jwt_claims_t claims;
    int rc = pl_jwt_verify(c->ctx->verifier, f->token, (long)(pl_now_ms() / 1000), &claims);
    if (rc != PL_OK) {
        gw_conn_close(c, PL_WS_POLICY, rc == PL_ERR_EXPIRED ? "token expired" : "invalid token");
        return;
    }
    start_auth(c, &claims);
}

/* Takes one send from u's bucket. 0 when allowed, else the milliseconds until one is. */
static long take_token(gw_ctx_t *ctx, gw_user_t *u)
{
    if (u == NULL) {
        return 0; /* not linked (out of memory at open): the in-flight cap still holds */
    }
    long long now = pl_now_ms();
    u->tokens += (double)(now - u->refilled_ms) * ctx->user_rate / 1000.0;
    u->refilled_ms = now;
    if (u->tokens > ctx->user_burst) {
        u->tokens = ctx->user_burst;
    }
    if (u->tokens < 1.0) {
        return 1 + (long)((1.0 - u->tokens) * 1000.0 / ctx->user_rate);
    }
    u->tokens -= 1.0;
    return 0;
}

/* Stops reading c for retry_ms (see throttled_until_ms). */
static void throttle(gw_conn_t *c, long retry_ms)
{
    if (c->throttled_until_ms == 0) {
        c->throttled_at_ms = pl_now_ms();
        c->throttled_until_ms = c->throttled_at_ms + retry_ms;
        c->throttle_next = c->ctx->throttled;
        c->ctx->throttled = c;
        mark_dirty(c); /* the end of the turn drops EPOLLIN */
    }
}

static void on_send_frame(gw_conn_t *c, const pl_frame_t *f)
{
    gw_ctx_t *ctx = c->ctx;
    if (atomic_load(&ctx->draining)) {
        send_error(c, "unavailable", "gateway is shutting down; reconnect", f->client_id, 500);
        return;
    }
    if (c->inflight >= ctx->inflight_max) {
        send_error(c, "rate_limited", "too many unacknowledged sends", f->client_id, 100);
        return;
    }
    long retry_ms = take_token(ctx, gw_user_find(ctx, c->user));
    if (retry_ms > 0) {
        send_error(c, "rate_limited", "too many messages; slow down", f->client_id, retry_ms);
        throttle(c, retry_ms);
        return;
    }
    gw_send_t *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->content = malloc(f->content_len)) == NULL) {
        free(s);
        send_error(c, "internal", "out of memory", f->client_id, 1000);
        return;
    }
    memcpy(s->content, f->content, f->content_len);
    s->content_len = f->content_len;
    s->conn_id = c->id;
    snprintf(s->client_id, sizeof(s->client_id), "%s", f->client_id);
    snprintf(s->to, sizeof(s->to), "%s", f->to);
    pl_msg_id(c->user, f->client_id, s->msg_id);
    s->ts_ms = pl_now_ms();
    clock_gettime(CLOCK_MONOTONIC, &s->started);
    c->inflight++;
    c->inflight_bytes += s->content_len;
    gw_users_check(ctx, s);
}

/* pl_ws_rx_feed's callback: one message or control frame. Nonzero stops the feed (the rest
 * stays in pend) when c may not be read further now. */
static int on_frame(void *ud, int opcode, const unsigned char *data, size_t len)
{
    gw_conn_t *c = ud;
    if (opcode == PL_WS_OP_PING || opcode == PL_WS_OP_PONG) {
        if (c->state != GW_CLOSING) {
            c->ping_ms = 0; /* the peer is alive */
        }
        if (opcode == PL_WS_OP_PING) {
            if (!over_cap(c, len)) {
                queue_frame(c, PL_WS_OP_PONG, data, len);
            }
        }
        return !can_parse(c);
    }
    if (opcode == PL_WS_OP_CLOSE) {
        /* Valid (pl_ws_rx_feed checked it). Answer with the same status unless a close of
         * ours is already out; the socket is released once ours is written. */
        c->close_rcvd = 1;
        uint16_t code = len >= 2 ? (uint16_t)(data[0] << 8 | data[1]) : 0;
        gw_conn_close(c, code, NULL);
        return 1;
    }
    on_message(c, opcode, data, len);
    return !can_parse(c);
}

static void on_message(gw_conn_t *c, int opcode, const unsigned char *msg, size_t msg_length)
{
    if (c->state == GW_CLOSING) {
        return;
    }
    if (opcode == PL_WS_OP_BINARY) {
        gw_conn_close(c, PL_WS_UNSUPPORTED, "binary frames are not supported");
        return;
    }
    pl_metric_inc(c->ctx->m_frames_in);
    if (!pl_utf8_valid(msg, msg_length)) {
        gw_conn_close(c, PL_WS_INVALID_DATA, "text frame is not valid UTF-8");
        return;
    }
    pl_frame_t f;
    const char *why = NULL;
    int rc = pl_frame_parse((const char *)msg, msg_length, &f, &why);
    if (c->state == GW_WAIT_AUTH) {
        if (rc != PL_OK || f.type != PL_FRAME_AUTH) {
            gw_conn_close(c, PL_WS_POLICY, "authenticate first: {\"type\":\"auth\",\"token\":…}");
        } else {
            on_auth_frame(c, &f);
        }
        pl_frame_clear(&f);
        return;
    }
    if (rc != PL_OK) {
        /* Echo the client_id when it can be read, so the client knows which send failed. */
        json_t *j = json_loadb((const char *)msg, msg_length, 0, NULL);
        const char *cid = json_string_value(json_object_get(j, "client_id"));
        if (cid != NULL && strlen(cid) > PL_MAX_CLIENT_ID) {
            cid = NULL;
        }
        send_error(c, rc == PL_ERR_TOOBIG ? "too_large" : "invalid", why, cid, 0);
        json_decref(j);
        /* A refused frame costs its sender a send from the budget too, so a stream of
         * garbage is held back like a flood of sends (each one costs a parse and an answer). */
        long retry_ms = take_token(c->ctx, gw_user_find(c->ctx, c->user));
        if (retry_ms > 0) {
            throttle(c, retry_ms);
        }
        return;
    }
    if (f.type == PL_FRAME_SEND) {
        on_send_frame(c, &f);
    } else {
        send_error(c, "invalid", "already authenticated", NULL, 0);
    }
    pl_frame_clear(&f);
}

static void on_io(gw_watch_t *w, uint32_t events)
{
    gw_conn_t *c = w->ud;
    c->rx_turn = 0;
    if ((c->read_paused || c->throttled_until_ms != 0) &&
        (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        release(c); /* the peer left while its token was being checked */
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (!c->read_paused && read_frames(c) != 0) {
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

/* ---- handoff from the HTTP thread ---- */

void gw_handoff(gw_ctx_t *ctx, gw_handoff_t *h)
{
    pthread_mutex_lock(&ctx->hand_lock);
    h->next = ctx->hand_head;
    ctx->hand_head = h;
    pthread_mutex_unlock(&ctx->hand_lock);
    uint64_t one = 1;
    ssize_t w = write(ctx->hand_fd, &one, sizeof(one));
    (void)w;
}

static void adopt_one(gw_ctx_t *ctx, gw_handoff_t *h)
{
    gw_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(h->fd);
        return;
    }
    c->magic = GW_MAGIC;
    c->ctx = ctx;
    c->fd = h->fd;
    c->id = ++ctx->next_id;
    c->state = GW_WAIT_AUTH;
    c->opened_ms = c->last_rx_ms = pl_now_ms();
    /* Bytes the client sent right behind its handshake are read first. */
    c->pend = h->extra;
    c->pend_len = h->extra_len;
    h->extra = NULL;
    c->id_next = ctx->by_id[c->id % GW_ID_BUCKETS];
    ctx->by_id[c->id % GW_ID_BUCKETS] = c;
    c->next = ctx->all;
    if (ctx->all != NULL) {
        ctx->all->prev = c;
    }
    ctx->all = c;
    ctx->nconns++;
    pl_metric_gauge_add(ctx->m_conns, 1);
    if (gw_loop_add(ctx->loop, &c->w, h->fd, EPOLLIN | EPOLLRDHUP, on_io, c) != PL_OK) {
        c->w.cb = on_io; /* so release() runs its course */
        release(c);
        return;
    }
    if (atomic_load(&ctx->draining)) {
        gw_conn_close(c, PL_WS_GOING_AWAY, "gateway is shutting down");
        return;
    }
    if (h->authed) {
        start_auth(c, &h->claims);
    } else if (c->pend_len > 0 && read_frames(c) != 0) {
        release(c);
    }
}

void gw_adopt(gw_watch_t *w, uint32_t events)
{
    gw_ctx_t *ctx = w->ud;
    uint64_t n;
    (void)events;
    ssize_t r = read(ctx->hand_fd, &n, sizeof(n));
    (void)r;
    pthread_mutex_lock(&ctx->hand_lock);
    gw_handoff_t *h = ctx->hand_head;
    ctx->hand_head = NULL;
    pthread_mutex_unlock(&ctx->hand_lock);
    while (h != NULL) {
        gw_handoff_t *next = h->next;
        adopt_one(ctx, h);
        free(h->extra);
        free(h);
        h = next;
    }
}

/* ---- per turn and per second ---- */

void gw_end_turn(gw_ctx_t *ctx)
{
    while (ctx->flush != NULL) {
        gw_conn_t *c = ctx->flush;
        ctx->flush = c->flush_next;
        c->dirty = 0;
        if (c->w.cb == NULL) {
            continue;
        }
        /* Frames left in pend while c was throttled or paused: the socket may have nothing
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
    while (ctx->dead != NULL) {
        gw_conn_t *c = ctx->dead;
        ctx->dead = c->dead_next;
        c->magic = 0;
        pl_ws_rx_clear(&c->rx);
        free(c->pend);
        for (gw_out_t *o = c->out_head, *n; o != NULL; o = n) {
            n = o->next;
            free(o);
        }
        free(c);
    }
}

int gw_unthrottle(gw_ctx_t *ctx, int max_ms)
{
    long long now = pl_now_ms();
    long long next = now + max_ms;
    for (gw_conn_t **pp = &ctx->throttled; *pp != NULL;) {
        gw_conn_t *c = *pp;
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

void gw_tick(gw_ctx_t *ctx)
{
    long long now = pl_now_ms();
    long now_s = (long)(now / 1000);
    for (gw_conn_t *c = ctx->all, *next; c != NULL; c = next) {
        next = c->next;
        switch (c->state) {
        case GW_WAIT_AUTH:
            if (now - c->opened_ms > ctx->auth_timeout_ms) {
                gw_conn_close(c, PL_WS_POLICY, "authentication timed out");
            }
            break;
        case GW_OPEN:
            if (c->token_exp + PL_JWT_MAX_LEEWAY < now_s) {
                gw_conn_close(c, PL_WS_POLICY, "token expired; reconnect with a fresh one");
            } else if (c->ping_ms != 0 && now - c->ping_ms > ctx->dead_after_ms) {
                pl_log_info("dead_peer", "no pong from conn %llu; closing",
                            (unsigned long long)c->id);
                release(c);
            } else if (c->ping_ms == 0 && now - c->last_rx_ms > ctx->ping_interval_ms) {
                queue_frame(c, PL_WS_OP_PING, "hb", 2);
                c->ping_ms = now;
            }
            break;
        case GW_CLOSING:
            /* A peer that never completes the close handshake is dropped. */
            if (now - c->ping_ms > CLOSE_GRACE_MS) {
                release(c);
            }
            break;
        default:
            break;
        }
    }
}

void gw_close_all(gw_ctx_t *ctx, uint16_t code, const char *reason)
{
    for (gw_conn_t *c = ctx->all; c != NULL; c = c->next) {
        gw_conn_close(c, code, reason);
    }
}

/* ---- producing, delivery reports, pushes, revocation ---- */

static void send_done(gw_ctx_t *ctx, gw_send_t *s)
{
    gw_conn_t *c = gw_conn_find(ctx, s->conn_id);
    if (c != NULL) {
        c->inflight--;
        c->inflight_bytes -= s->content_len;
    }
    free(s->content);
    free(s);
}

void gw_send_fail(gw_ctx_t *ctx, gw_send_t *s, const char *code, const char *msg, long retry_ms)
{
    gw_conn_t *c = gw_conn_find(ctx, s->conn_id);
    if (c != NULL) {
        send_error(c, code, msg, s->client_id, retry_ms);
    }
    send_done(ctx, s);
}

void gw_produce(gw_ctx_t *ctx, gw_send_t *s)
{
    gw_conn_t *c = gw_conn_find(ctx, s->conn_id);
    if (c == NULL || c->state != GW_OPEN) {
        /* The client went away before its send was produced: nothing was acked, it retries. */
        send_done(ctx, s);
        return;
    }
    pl_msg_t m;
    memset(&m, 0, sizeof(m));
    snprintf(m.msg_id, sizeof(m.msg_id), "%s", s->msg_id);
    pl_conv_id(c->user, s->to, m.conv);
    snprintf(m.sender, sizeof(m.sender), "%s", c->user);
    snprintf(m.receiver, sizeof(m.receiver), "%s", s->to);
    snprintf(m.client_id, sizeof(m.client_id), "%s", s->client_id);
    snprintf(m.origin_gw, sizeof(m.origin_gw), "%s", ctx->gw_id);
    m.origin_conn = c->id;
    m.content = s->content;
    m.content_len = s->content_len;
    m.ts_ms = s->ts_ms;
    char *rec = pl_msg_record(&m);
    int rc = rec ? pl_kafka_produce(ctx->producer, "parley.messages", m.conv, strlen(m.conv), rec,
                                    strlen(rec), s)
                 : PL_ERR_NOMEM;
    free(rec);
    if (rc != PL_OK) {
        gw_send_fail(ctx, s, "unavailable", "message queue is full; retry", 1000);
    }
}

void gw_on_delivery(void *ud, void *opaque, int err)
{
    gw_ctx_t *ctx = ud;
    gw_send_t *s = opaque;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pl_metric_observe(ctx->m_produce_seconds, (double)(now.tv_sec - s->started.tv_sec) +
                                                  (double)(now.tv_nsec - s->started.tv_nsec) / 1e9);
    if (err != PL_OK) {
        /* Failed or unknown outcome: never an ack. The client retries; the store
         * de-duplicates by msg_id if the record did land. */
        gw_send_fail(ctx, s, "unavailable", "message not accepted; retry with the same client_id",
                     1000);
        return;
    }
    gw_conn_t *c = gw_conn_find(ctx, s->conn_id);
    if (c != NULL) {
        char *f = pl_frame_ack(s->client_id, s->msg_id);
        if (f != NULL) {
            gw_conn_send_text(c, f, strlen(f));
            free(f);
        }
        pl_metric_inc(ctx->m_acks);
    }
    send_done(ctx, s);
}

void gw_on_dr_pipe(gw_watch_t *w, uint32_t events)
{
    gw_ctx_t *ctx = w->ud;
    char buf[256];
    (void)events;
    while (read(ctx->dr_pipe[0], buf, sizeof(buf)) > 0) {
    }
    pl_kafka_poll(ctx->producer, 0);
}

static void push_to(gw_ctx_t *ctx, const char *user, const char *text, size_t len)
{
    gw_user_t *u = gw_user_find(ctx, user);
    if (u == NULL) {
        return;
    }
    for (gw_conn_t *c = u->conns, *next; c != NULL; c = next) {
        next = c->u_next;
        if (c->state == GW_OPEN && gw_conn_send_text(c, text, len) == PL_OK) {
            pl_metric_inc(ctx->m_pushes);
        }
    }
}

void gw_push(gw_ctx_t *ctx, json_t *msg)
{
    pl_msg_t m;
    if (pl_msg_from_json(msg, &m) != PL_OK || m.seq <= 0) {
        pl_log_warn("bad_push", "malformed message from the router");
        return;
    }
    json_t *frame = pl_msg_json(&m, 1);
    char *text = frame ? json_dumps(frame, JSON_COMPACT) : NULL;
    json_decref(frame);
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    push_to(ctx, m.receiver, text, len);
    if (strcmp(m.sender, m.receiver) != 0) {
        push_to(ctx, m.sender, text, len);
    }
    free(text);
}

void gw_revoke(gw_ctx_t *ctx, const char *user, const char *sid)
{
    gw_user_t *u = gw_user_find(ctx, user);
    for (gw_conn_t *c = u ? u->conns : NULL; c != NULL; c = c->u_next) {
        if (strcmp(c->sid, sid) == 0) {
            gw_conn_close(c, PL_WS_POLICY, "session revoked");
        }
    }
    /* Connections still checking their token are matched too. */
    for (gw_conn_t *c = ctx->all; c != NULL; c = c->next) {
        if (c->state == GW_CHECKING && strcmp(c->sid, sid) == 0) {
            gw_conn_close(c, PL_WS_POLICY, "session revoked");
        }
    }
}
