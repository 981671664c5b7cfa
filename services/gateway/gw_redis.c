/*
 * The gateway's two Redis connections, on the event loop through a hiredis async adapter:
 * one for commands (presence, liveness, revocation checks) and one subscribed to this
 * gateway's delivery channel and to parley:revoke. Either reconnects by itself after Redis
 * goes away, and the command connection then re-registers every live connection, so presence
 * heals within seconds of Redis losing its data.
 */
#include "gw.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define PRESENCE_TTL_S 60
#define GW_TTL_S       10
#define RETRY_MS       500

typedef struct rconn_s {
    gw_ctx_t *ctx;
    redisAsyncContext *ac;
    gw_watch_t w;
    int watching;
    int reading;
    int writing;
    int is_sub;
    int connected;
    long long retry_at;
} rconn_t;

struct gw_redis_s {
    rconn_t cmd;
    rconn_t sub;
    char host[128];
    int port;
};

static void update(rconn_t *r)
{
    uint32_t ev = (r->reading ? EPOLLIN : 0) | (r->writing ? EPOLLOUT : 0);
    if (!r->watching) {
        if (gw_loop_add(r->ctx->loop, &r->w, r->ac->c.fd, ev, r->w.cb, r) == PL_OK) {
            r->watching = 1;
        }
    } else {
        gw_loop_mod(r->ctx->loop, &r->w, ev);
    }
}

static void add_read(void *p)
{
    rconn_t *r = p;
    r->reading = 1;
    update(r);
}

static void del_read(void *p)
{
    rconn_t *r = p;
    r->reading = 0;
    update(r);
}

static void add_write(void *p)
{
    rconn_t *r = p;
    r->writing = 1;
    update(r);
}

static void del_write(void *p)
{
    rconn_t *r = p;
    r->writing = 0;
    update(r);
}

static void cleanup(void *p)
{
    rconn_t *r = p;
    if (r->watching) {
        gw_loop_del(r->ctx->loop, &r->w);
        r->watching = 0;
    }
    r->reading = r->writing = 0;
}

static void on_io(gw_watch_t *w, uint32_t events)
{
    rconn_t *r = w->ud;
    if (r->ac == NULL) {
        return;
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        redisAsyncHandleRead(r->ac);
    }
    if (r->ac != NULL && (events & EPOLLOUT)) {
        redisAsyncHandleWrite(r->ac);
    }
}

static void on_sub_msg(redisAsyncContext *ac, void *reply, void *priv)
{
    rconn_t *r = priv;
    redisReply *rep = reply;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        /* SUBSCRIBE refused (Redis still loading its data, say): the connection would stay up
         * and hear nothing, so it is dropped and made again. */
        pl_log_warn("redis_subscribe_failed", "SUBSCRIBE refused: %.200s", rep->str);
        redisAsyncDisconnect(ac);
        return;
    }
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
        rep->element[0]->type != REDIS_REPLY_STRING) {
        return;
    }
    if (strcmp(rep->element[0]->str, "subscribe") == 0 &&
        rep->element[1]->type == REDIS_REPLY_STRING &&
        strncmp(rep->element[1]->str, "parley:deliver:", 15) == 0) {
        /* Now pushes reach this gateway: it may say it is alive (see gw_redis_refresh). */
        pl_log_info("redis_subscribed", "listening on %s", rep->element[1]->str);
        atomic_store(&r->ctx->redis_sub_ok, 1);
        gw_redis_refresh(r->ctx);
        return;
    }
    if (strcmp(rep->element[0]->str, "message") != 0) {
        return;
    }
    const char *channel = rep->element[1]->str;
    json_t *j = json_loadb(rep->element[2]->str, rep->element[2]->len, 0, NULL);
    if (j == NULL) {
        pl_log_warn("bad_pubsub_message", "unparseable message on %s", channel);
        return;
    }
    if (strcmp(channel, "parley:revoke") == 0) {
        const char *user = json_string_value(json_object_get(j, "user"));
        const char *sid = json_string_value(json_object_get(j, "sid"));
        if (user != NULL && sid != NULL) {
            gw_revoke(r->ctx, user, sid);
        }
        if (user != NULL && json_is_true(json_object_get(j, "disabled"))) {
            gw_users_forget(r->ctx, user);
        }
    } else {
        json_t *msgs = json_object_get(j, "msgs");
        size_t i;
        json_t *m;
        json_array_foreach(msgs, i, m)
        {
            gw_push(r->ctx, m);
        }
    }
    json_decref(j);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rconn_t *r = ac->ev.data;
    if (status != REDIS_OK) {
        pl_log_warn("redis_connect_failed", "redis: %s", ac->errstr);
        r->ac = NULL; /* hiredis frees the context after this callback */
        r->connected = 0;
        r->retry_at = pl_now_ms() + RETRY_MS;
        return;
    }
    r->connected = 1;
    pl_log_info("redis_connected", "%s connection up", r->is_sub ? "subscriber" : "command");
    if (!r->is_sub) {
        atomic_store(&r->ctx->redis_ok, 1);
        gw_redis_refresh(r->ctx);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rconn_t *r = ac->ev.data;
    (void)status;
    pl_log_warn("redis_disconnected", "%s connection lost: %s",
                r->is_sub ? "subscriber" : "command", ac->errstr[0] ? ac->errstr : "closed");
    r->ac = NULL;
    r->connected = 0;
    r->retry_at = pl_now_ms() + RETRY_MS;
    if (!r->is_sub) {
        atomic_store(&r->ctx->redis_ok, 0);
    } else {
        /* Deaf until subscribed again: stop saying this gateway is alive, so the router
         * neither publishes to nobody nor waits for it. */
        atomic_store(&r->ctx->redis_sub_ok, 0);
        gw_redis_goodbye(r->ctx);
    }
}

static int connect_one(gw_redis_t *g, rconn_t *r)
{
    redisAsyncContext *ac = redisAsyncConnect(g->host, g->port);
    if (ac == NULL) {
        return PL_ERR_NOMEM;
    }
    if (ac->err) {
        pl_log_warn("redis_connect_failed", "redis: %s", ac->errstr);
        redisAsyncFree(ac);
        r->retry_at = pl_now_ms() + RETRY_MS;
        return PL_ERR_UNAVAIL;
    }
    r->ac = ac;
    r->watching = r->reading = r->writing = 0;
    r->w.cb = on_io;
    ac->ev.data = r;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (r->is_sub) {
        char ch[128];
        snprintf(ch, sizeof(ch), "parley:deliver:%s", r->ctx->gw_id);
        redisAsyncCommand(ac, on_sub_msg, r, "SUBSCRIBE %s parley:revoke", ch);
    } else {
        redisAsyncCommand(ac, NULL, NULL, "PING");
    }
    return PL_OK;
}

int gw_redis_start(gw_ctx_t *ctx, const char *host, int port)
{
    gw_redis_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return PL_ERR_NOMEM;
    }
    snprintf(g->host, sizeof(g->host), "%s", host);
    g->port = port;
    g->cmd.ctx = g->sub.ctx = ctx;
    g->sub.is_sub = 1;
    ctx->redis = g;
    connect_one(g, &g->cmd);
    connect_one(g, &g->sub);
    return PL_OK;
}

void gw_redis_stop(gw_ctx_t *ctx)
{
    gw_redis_t *g = ctx->redis;
    if (g == NULL) {
        return;
    }
    if (g->cmd.ac != NULL) {
        redisAsyncFree(g->cmd.ac);
    }
    if (g->sub.ac != NULL) {
        redisAsyncFree(g->sub.ac);
    }
    free(g);
    ctx->redis = NULL;
}

void gw_redis_tick(gw_ctx_t *ctx)
{
    gw_redis_t *g = ctx->redis;
    long long now = pl_now_ms();
    if (g->cmd.ac == NULL && now >= g->cmd.retry_at) {
        connect_one(g, &g->cmd);
    }
    if (g->sub.ac == NULL && now >= g->sub.retry_at) {
        connect_one(g, &g->sub);
    }
}

static redisAsyncContext *cmd_ac(gw_ctx_t *ctx)
{
    gw_redis_t *g = ctx->redis;
    return g != NULL && g->cmd.connected ? g->cmd.ac : NULL;
}

void gw_presence_add(gw_ctx_t *ctx, gw_conn_t *c)
{
    redisAsyncContext *ac = cmd_ac(ctx);
    if (ac == NULL) {
        return; /* re-registered by gw_redis_refresh() once Redis is back */
    }
    char field[96];
    snprintf(field, sizeof(field), "%s:%llu", ctx->gw_id, (unsigned long long)c->id);
    redisAsyncCommand(ac, NULL, NULL, "HSET parley:presence:%s %s %s", c->user, field, ctx->gw_id);
    redisAsyncCommand(ac, NULL, NULL, "EXPIRE parley:presence:%s %d", c->user, PRESENCE_TTL_S);
}

void gw_presence_del(gw_ctx_t *ctx, gw_conn_t *c)
{
    redisAsyncContext *ac = cmd_ac(ctx);
    if (ac == NULL) {
        return;
    }
    char field[96];
    snprintf(field, sizeof(field), "%s:%llu", ctx->gw_id, (unsigned long long)c->id);
    redisAsyncCommand(ac, NULL, NULL, "HDEL parley:presence:%s %s", c->user, field);
}

void gw_redis_refresh(gw_ctx_t *ctx)
{
    redisAsyncContext *ac = cmd_ac(ctx);
    if (ac == NULL || atomic_load(&ctx->draining)) {
        return;
    }
    /* Alive means reachable: the liveness key is set only while the delivery channel is
     * subscribed, and the router skips a gateway without it. */
    if (atomic_load(&ctx->redis_sub_ok)) {
        redisAsyncCommand(ac, NULL, NULL, "SET parley:gw:%s %lld EX %d", ctx->gw_id, pl_now_ms(),
                          GW_TTL_S);
    }
    for (gw_conn_t *c = ctx->all; c != NULL; c = c->next) {
        if (c->state == GW_OPEN) {
            gw_presence_add(ctx, c);
        }
    }
}

void gw_redis_goodbye(gw_ctx_t *ctx)
{
    redisAsyncContext *ac = cmd_ac(ctx);
    if (ac != NULL) {
        redisAsyncCommand(ac, NULL, NULL, "DEL parley:gw:%s", ctx->gw_id);
    }
}

static void on_revoked_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    rconn_t *r = ac->ev.data;
    redisReply *rep = reply;
    uint64_t id = (uint64_t)(uintptr_t)priv;
    /* No answer (Redis went away): fail open, as when it is down; see gw_check_revoked(). */
    int rc = rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 ? PL_ERR_REVOKED
                                                                                 : PL_OK;
    gw_conn_auth_result(r->ctx, id, rc);
}

void gw_check_revoked(gw_ctx_t *ctx, gw_conn_t *c)
{
    redisAsyncContext *ac = cmd_ac(ctx);
    if (ac == NULL) {
        /* Redis is down: the token's signature and expiry were checked, and access tokens
         * live minutes. Refusing every connection during a Redis outage would turn a
         * presence hiccup into a full outage, so the check fails open. */
        pl_log_warn("revocation_unchecked", "Redis unavailable; token accepted on signature");
        gw_conn_auth_result(ctx, c->id, PL_OK);
        return;
    }
    redisAsyncCommand(ac, on_revoked_reply, (void *)(uintptr_t)c->id, "EXISTS parley:revoked:%s",
                      c->sid);
}
