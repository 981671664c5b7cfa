/*
 * WebSocket connections on the gateway's loop: wslay does the framing (masking, control
 * frames, fragmentation, the 64 KiB message cap, close replies); this file feeds it bytes,
 * validates text as UTF-8, authenticates, turns "send" frames into Kafka records, and writes
 * acks, errors and pushed messages into bounded per-socket queues flushed once per turn.
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
#include <unistd.h>

#define CLOSE_GRACE_MS 5000
#define RX_TURN_MAX    (64 * 1024) /* bytes read from one socket per loop turn */
#define RX_TURN_SMALL  4096        /* the same, for a socket lately over its budget */

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
    if (c->w.cb == NULL && c->urh == NULL) {
        return; /* already released */
    }
    gw_loop_del(ctx->loop, &c->w);
    if (c->state == GW_OPEN || c->u_prev != NULL || c->u_next != NULL) {
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
    pl_http_upgraded_close(c->urh);
    c->urh = NULL;
    c->dead_next = ctx->dead;
    ctx->dead = c;
}

static void update_interest(gw_conn_t *c)
{
    if (c->w.cb == NULL) {
        return;
    }
    int r = wslay_event_want_read(c->ws) && !c->read_paused && c->throttled_until_ms == 0;
    int w = wslay_event_want_write(c->ws);
    if (!wslay_event_want_read(c->ws) && !w) {
        release(c);
        return;
    }
    gw_loop_mod(c->ctx->loop, &c->w, (r ? EPOLLIN : 0) | (w ? EPOLLOUT : 0) | EPOLLRDHUP);
}

int gw_conn_send_text(gw_conn_t *c, const char *text, size_t len)
{
    if (c->state == GW_CLOSING || c->ws == NULL) {
        return PL_ERR_UNAVAIL;
    }
    if (wslay_event_get_queued_msg_length(c->ws) + len > c->ctx->sendq_max) {
        /* The client reads slower than it is written to: free it, let it resync. */
        pl_metric_inc(c->ctx->m_slow_closed);
        pl_log_fields(PL_LOG_WARN, "slow_consumer",
                      json_pack("{s:s,s:I}", "user", c->user, "conn", (json_int_t)c->id),
                      "send queue over its cap; closing with 1013");
        gw_conn_close(c, PL_WS_TRY_AGAIN, "send queue full: reconnect and sync");
        return PL_ERR_TOOBIG;
    }
    struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)text, len};
    if (wslay_event_queue_msg(c->ws, &m) != 0) {
        return PL_ERR_UNAVAIL;
    }
    mark_dirty(c);
    return PL_OK;
}

void gw_conn_close(gw_conn_t *c, uint16_t code, const char *reason)
{
    if (c->state == GW_CLOSING) {
        return;
    }
    c->state = GW_CLOSING;
    c->ping_ms = pl_now_ms(); /* the grace period for the close handshake starts now */
    wslay_event_queue_close(c->ws, code, (const uint8_t *)reason, reason ? strlen(reason) : 0);
    mark_dirty(c);
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

/* ---- wslay callbacks ---- */

static ssize_t on_recv(wslay_event_context_ptr ws, uint8_t *buf, size_t len, int flags, void *ud)
{
    gw_conn_t *c = ud;
    (void)flags;
    if (c->pre_off < c->pre_len) {
        size_t n = c->pre_len - c->pre_off;
        n = n < len ? n : len;
        memcpy(buf, c->pre + c->pre_off, n);
        c->pre_off += n;
        if (c->pre_off == c->pre_len) {
            free(c->pre);
            c->pre = NULL;
            c->pre_len = c->pre_off = 0;
        }
        return (ssize_t)n;
    }
    /* A socket throttled in the last second reads one small chunk a turn: what it sent past
     * its budget is parsed and refused a little at a time, not 64 KiB at each release. */
    size_t cap = c->throttled_at_ms != 0 && pl_now_ms() - c->throttled_at_ms < 1000 ? RX_TURN_SMALL
                                                                                    : RX_TURN_MAX;
    if (c->rx_turn >= cap || c->throttled_until_ms != 0) {
        /* Enough from this socket for one turn (the rest waits in the kernel and the loop
         * comes back to it, level-triggered), or it is throttled: others get their turn. */
        wslay_event_set_error(ws, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    ssize_t r;
    do {
        r = recv(c->w.fd, buf, len, 0);
    } while (r < 0 && errno == EINTR);
    if (r > 0) {
        c->rx_turn += (size_t)r;
    }
    if (r < 0) {
        int again = errno == EAGAIN || errno == EWOULDBLOCK;
        c->rx_failed = !again;
        wslay_event_set_error(ws, again ? WSLAY_ERR_WOULDBLOCK : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    if (r == 0) {
        c->rx_failed = 1;
        wslay_event_set_error(ws, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    c->last_rx_ms = pl_now_ms();
    return r;
}

static ssize_t on_send(wslay_event_context_ptr ws, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    gw_conn_t *c = ud;
    ssize_t r;
    /* MSG_MORE lets the kernel coalesce the frames wslay writes back to back. */
    int sflags = MSG_NOSIGNAL | ((flags & WSLAY_MSG_MORE) ? MSG_MORE : 0);
    do {
        r = send(c->w.fd, data, len, sflags);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        wslay_event_set_error(ws, (errno == EAGAIN || errno == EWOULDBLOCK)
                                      ? WSLAY_ERR_WOULDBLOCK
                                      : WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    c->tx_partial = (size_t)r < len || (flags & WSLAY_MSG_MORE);
    return r;
}

/*
 * Feeds c's socket to wslay. 0 to go on; otherwise c must be released. When wslay fails on a
 * frame-level violation (a control frame over 125 bytes or fragmented, ...) it only queues a
 * close without a status code, and the connection is dropped unsent: the peer is first told
 * 1002 with a best-effort write of the close frame itself (only between two frames, so the
 * stream it ends stays well-formed).
 */
static int recv_frames(gw_conn_t *c)
{
    if (wslay_event_recv(c->ws) == 0) {
        return 0;
    }
    if (!c->rx_failed && !c->tx_partial && c->w.fd >= 0) {
        static const unsigned char close_1002[] = {0x88, 0x02, 0x03, 0xea};
        ssize_t w = send(c->w.fd, close_1002, sizeof(close_1002), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    return -1;
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
    /* Frames that arrived during the check are still in the socket: read them now. */
    if (recv_frames(c) != 0) {
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

static void on_msg(wslay_event_context_ptr ws, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    gw_conn_t *c = ud;
    (void)ws;
    if (arg->opcode == WSLAY_PONG || arg->opcode == WSLAY_PING) {
        c->ping_ms = 0;
        return;
    }
    if (arg->opcode == WSLAY_CONNECTION_CLOSE && c->state != GW_CLOSING && arg->msg_length > 2 &&
        !pl_utf8_valid(arg->msg + 2, arg->msg_length - 2)) {
        /* wslay checks the close code; the reason must be UTF-8 too (RFC 6455 5.5.1). */
        gw_conn_close(c, PL_WS_INVALID_DATA, "close reason is not valid UTF-8");
        return;
    }
    if (arg->opcode == WSLAY_CONNECTION_CLOSE || c->state == GW_CLOSING) {
        return;
    }
    if (arg->opcode == WSLAY_BINARY_FRAME) {
        gw_conn_close(c, PL_WS_UNSUPPORTED, "binary frames are not supported");
        return;
    }
    pl_metric_inc(c->ctx->m_frames_in);
    if (!pl_utf8_valid(arg->msg, arg->msg_length)) {
        gw_conn_close(c, PL_WS_INVALID_DATA, "text frame is not valid UTF-8");
        return;
    }
    pl_frame_t f;
    const char *why = NULL;
    int rc = pl_frame_parse((const char *)arg->msg, arg->msg_length, &f, &why);
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
        json_t *j = json_loadb((const char *)arg->msg, arg->msg_length, 0, NULL);
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
        if (!c->read_paused && recv_frames(c) != 0) {
            release(c);
            return;
        }
        if ((events & (EPOLLHUP | EPOLLERR)) && c->w.cb != NULL) {
            release(c);
            return;
        }
    }
    if (c->w.cb != NULL && (events & EPOLLOUT) && wslay_event_send(c->ws) != 0) {
        release(c);
        return;
    }
    if (c->w.cb != NULL) {
        mark_dirty(c);
    }
}

static const struct wslay_event_callbacks callbacks = {
    on_recv, on_send, NULL, NULL, NULL, NULL, on_msg,
};

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
    if (c == NULL || wslay_event_context_server_init(&c->ws, &callbacks, c) != 0) {
        free(c);
        pl_http_upgraded_close(h->urh);
        free(h->extra);
        return;
    }
    c->magic = GW_MAGIC;
    c->ctx = ctx;
    c->urh = h->urh;
    c->id = ++ctx->next_id;
    c->state = GW_WAIT_AUTH;
    c->opened_ms = c->last_rx_ms = pl_now_ms();
    c->pre = h->extra;
    c->pre_len = h->extra_len;
    h->extra = NULL;
    wslay_event_config_set_max_recv_msg_length(c->ws, PL_MAX_FRAME);
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
    } else if (c->pre_len > 0 && recv_frames(c) != 0) {
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
        if (wslay_event_want_write(c->ws) && wslay_event_send(c->ws) != 0) {
            release(c);
            continue;
        }
        update_interest(c);
    }
    while (ctx->dead != NULL) {
        gw_conn_t *c = ctx->dead;
        ctx->dead = c->dead_next;
        c->magic = 0;
        wslay_event_context_free(c->ws);
        free(c->pre);
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
                struct wslay_event_msg m = {WSLAY_PING, (const uint8_t *)"hb", 2};
                wslay_event_queue_msg(c->ws, &m);
                c->ping_ms = now;
                mark_dirty(c);
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
