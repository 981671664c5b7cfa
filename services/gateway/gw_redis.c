/*
 * The gateway's Redis connections (see gw_redis.h). After Redis went away, on_resync asks the
 * session layer to register every live device again, so presence heals within seconds of Redis
 * losing its data. Revocation checks fail open while Redis is down (see check_revoked).
 */
#include "gw_redis.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/wire.h"

#include <stdatomic.h>
#include <stdint.h>

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
    gw_redis_t *g;
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
    gw_loop_t *loop;
    gw_redis_cbs_t cbs;
    char gw_id[PL_GATEWAY_ID_LEN];
    rconn_t cmd;
    rconn_t sub;
    char host[128];
    int port;
    atomic_int cmd_ok; /* the command connection is up */
    atomic_int sub_ok; /* the delivery channel is subscribed */
    int draining;      /* goodbye() was called: liveness is not renewed */
};

static void del_liveness(gw_redis_t *g);

static void update(rconn_t *r)
{
    uint32_t ev = (r->reading ? EPOLLIN : 0) | (r->writing ? EPOLLOUT : 0);
    if (!r->watching) {
        if (gw_loop_add(r->g->loop, &r->w, r->ac->c.fd, ev, r->w.cb, r) == PL_OK) {
            r->watching = 1;
        }
    } else {
        gw_loop_mod(r->g->loop, &r->w, ev);
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
        gw_loop_del(r->g->loop, &r->w);
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

/* A message on the revocation channel. */
static void on_revoke_msg(gw_redis_t *g, json_t *j)
{
    const char *user = json_string_value(json_object_get(j, "user"));
    const char *sid = json_string_value(json_object_get(j, "sid"));
    int forget =
        json_is_true(json_object_get(j, "disabled")) || json_is_true(json_object_get(j, "forget"));
    if (user != NULL && (sid != NULL || forget)) {
        g->cbs.on_revoke(g->cbs.ud, user, sid, forget);
    }
}

static void on_sub_msg(redisAsyncContext *ac, void *reply, void *priv)
{
    rconn_t *r = priv;
    gw_redis_t *g = r->g;
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
        pl_is_deliver_channel(rep->element[1]->str)) {
        /* Now pushes reach this gateway: it may say it is alive (see gw_redis_heartbeat). */
        pl_log_info("redis_subscribed", "listening on %s", rep->element[1]->str);
        atomic_store(&g->sub_ok, 1);
        gw_redis_heartbeat(g);
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
    if (strcmp(channel, PL_CHANNEL_REVOKE) == 0) {
        on_revoke_msg(g, j);
    } else if (strcmp(channel, PL_CHANNEL_PRESENCE) == 0) {
        g->cbs.on_presence(g->cbs.ud, j);
    } else {
        json_t *msgs = json_object_get(j, "msgs");
        size_t i;
        json_t *m;
        json_array_foreach(msgs, i, m)
        {
            g->cbs.on_push(g->cbs.ud, m);
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
        atomic_store(&r->g->cmd_ok, 1);
        gw_redis_heartbeat(r->g);
        r->g->cbs.on_resync(r->g->cbs.ud);
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
        atomic_store(&r->g->cmd_ok, 0);
    } else {
        /* Deaf until subscribed again: stop saying this gateway is alive, so the router
         * neither publishes to nobody nor waits for it. */
        atomic_store(&r->g->sub_ok, 0);
        del_liveness(r->g);
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
        char ch[PL_KEY_LEN];
        pl_key_deliver(ch, g->gw_id);
        redisAsyncCommand(ac, on_sub_msg, r, "SUBSCRIBE %s %s %s", ch, PL_CHANNEL_REVOKE,
                          PL_CHANNEL_PRESENCE);
    } else {
        redisAsyncCommand(ac, NULL, NULL, "PING");
    }
    return PL_OK;
}

gw_redis_t *gw_redis_new(gw_loop_t *loop, const char *host, int port, const char *gw_id,
                         const gw_redis_cbs_t *cbs)
{
    gw_redis_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return NULL;
    }
    g->loop = loop;
    g->cbs = *cbs;
    snprintf(g->gw_id, sizeof(g->gw_id), "%s", gw_id);
    snprintf(g->host, sizeof(g->host), "%s", host);
    g->port = port;
    g->cmd.g = g->sub.g = g;
    g->sub.is_sub = 1;
    connect_one(g, &g->cmd);
    connect_one(g, &g->sub);
    return g;
}

void gw_redis_free(gw_redis_t **pg)
{
    if (pg == NULL || *pg == NULL) {
        return;
    }
    gw_redis_t *g = *pg;
    if (g->cmd.ac != NULL) {
        redisAsyncFree(g->cmd.ac);
    }
    if (g->sub.ac != NULL) {
        redisAsyncFree(g->sub.ac);
    }
    free(g);
    *pg = NULL;
}

int gw_redis_ready(const gw_redis_t *g)
{
    return atomic_load(&g->cmd_ok) && atomic_load(&g->sub_ok);
}

void gw_redis_tick(gw_redis_t *g)
{
    long long now = pl_now_ms();
    if (g->cmd.ac == NULL && now >= g->cmd.retry_at) {
        connect_one(g, &g->cmd);
    }
    if (g->sub.ac == NULL && now >= g->sub.retry_at) {
        connect_one(g, &g->sub);
    }
}

static redisAsyncContext *cmd_ac(gw_redis_t *g)
{
    return g->cmd.connected ? g->cmd.ac : NULL;
}

/* The presence field of device id: "<gateway>:<id>". */
static void presence_field(const gw_redis_t *g, uint64_t id, char *out, size_t len)
{
    snprintf(out, len, "%s:%llu", g->gw_id, (unsigned long long)id);
}

void gw_redis_presence_add(gw_redis_t *g, const char *user, uint64_t id)
{
    redisAsyncContext *ac = cmd_ac(g);
    char key[PL_KEY_LEN], field[PL_GATEWAY_ID_LEN + 24];
    if (ac == NULL || pl_key_presence(key, user) != PL_OK) {
        return; /* registered again through on_resync once Redis is back */
    }
    presence_field(g, id, field, sizeof(field));
    redisAsyncCommand(ac, NULL, NULL, "HSET %s %s %s", key, field, g->gw_id);
    redisAsyncCommand(ac, NULL, NULL, "EXPIRE %s %d", key, PRESENCE_TTL_S);
}

void gw_redis_presence_del(gw_redis_t *g, const char *user, uint64_t id)
{
    redisAsyncContext *ac = cmd_ac(g);
    char key[PL_KEY_LEN], field[PL_GATEWAY_ID_LEN + 24];
    if (ac == NULL || pl_key_presence(key, user) != PL_OK) {
        return;
    }
    presence_field(g, id, field, sizeof(field));
    redisAsyncCommand(ac, NULL, NULL, "HDEL %s %s", key, field);
}

void gw_redis_interest(gw_redis_t *g, const char *conv, long long until_ms)
{
    redisAsyncContext *ac = cmd_ac(g);
    char key[PL_KEY_LEN];
    if (ac == NULL || pl_key_convgw(key, conv) != PL_OK) {
        return; /* renewed through on_resync once Redis is back */
    }
    if (until_ms > 0) {
        redisAsyncCommand(ac, NULL, NULL, "ZADD %s %lld %s", key, until_ms, g->gw_id);
        /* Entries of gateways that stopped renewing (killed) go with the next renewal. */
        redisAsyncCommand(ac, NULL, NULL, "ZREMRANGEBYSCORE %s -inf %lld", key, pl_now_ms());
    } else {
        redisAsyncCommand(ac, NULL, NULL, "ZREM %s %s", key, g->gw_id);
    }
}

void gw_redis_heartbeat(gw_redis_t *g)
{
    redisAsyncContext *ac = cmd_ac(g);
    char key[PL_KEY_LEN];
    /* Alive means reachable: the liveness key is set only while the delivery channel is
     * subscribed, and the router skips a gateway without it. */
    if (ac != NULL && !g->draining && atomic_load(&g->sub_ok) &&
        pl_key_gateway(key, g->gw_id) == PL_OK) {
        redisAsyncCommand(ac, NULL, NULL, "SET %s %lld EX %d", key, pl_now_ms(), GW_TTL_S);
        /* Listed for the presence reaper, which announces a dead gateway's users offline. */
        redisAsyncCommand(ac, NULL, NULL, "SADD %s %s", PL_KEY_GATEWAYS, g->gw_id);
    }
}

static void del_liveness(gw_redis_t *g)
{
    redisAsyncContext *ac = cmd_ac(g);
    char key[PL_KEY_LEN];
    if (ac != NULL && pl_key_gateway(key, g->gw_id) == PL_OK) {
        redisAsyncCommand(ac, NULL, NULL, "DEL %s", key);
    }
}

void gw_redis_goodbye(gw_redis_t *g)
{
    g->draining = 1;
    del_liveness(g);
}

/* A revocation question in flight: hiredis hands it back with the reply. */
struct question {
    gw_redis_answer_fn fn;
    void *arg;
};

static void on_revoked_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct question *q = priv;
    redisReply *rep = reply;
    (void)ac;
    /* No answer (Redis went away): fail open, as when it is down; see gw_redis_check_revoked. */
    int rc = rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer > 0 ? PL_ERR_REVOKED
                                                                                 : PL_OK;
    q->fn(q->arg, rc);
    free(q);
}

void gw_redis_check_revoked(gw_redis_t *g, const char *sid, gw_redis_answer_fn fn, void *arg)
{
    redisAsyncContext *ac = cmd_ac(g);
    char key[PL_KEY_LEN];
    struct question *q = NULL;
    if (pl_key_revoked(key, sid) != PL_OK) {
        fn(arg, PL_ERR_REVOKED); /* not a session id parley-auth makes */
        return;
    }
    if (ac == NULL || (q = malloc(sizeof(*q))) == NULL) {
        /* Redis is down: the token's signature and expiry were checked, and access tokens
         * live minutes. Refusing every connection during a Redis outage would turn a
         * presence hiccup into a full outage, so the check fails open. */
        pl_log_warn("revocation_unchecked", "Redis unavailable; token accepted on signature");
        fn(arg, PL_OK);
        return;
    }
    q->fn = fn;
    q->arg = arg;
    if (redisAsyncCommand(ac, on_revoked_reply, q, "EXISTS %s", key) != REDIS_OK) {
        free(q);
        fn(arg, PL_OK);
    }
}

/* ---- presence as people see it (DESIGN 7.3) ----
 * Each change is one script, so deciding it and recording it are one atomic step: two
 * gateways racing on one user's first and last device cannot both announce, nor lose the
 * change. parley:pstate:<user> holds what was last announced ("on:<ms>" or "off:<ms>"); a
 * missing one (Redis lost its data) announces nothing until a device comes or goes. Keys built
 * inside a script get their prefixes from wire.h through ARGV. Standalone Redis only (the
 * scripts touch keys they do not declare). */

#define PSTATE_TTL "2592000" /* an offline user's last_seen, kept 30 days in Redis */

/* HSET the device, SADD the user to this gateway's users, and say "on" unless it was. */
static const char ONLINE_LUA[] = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) "
                                 "redis.call('EXPIRE', KEYS[1], ARGV[3]) "
                                 "redis.call('SADD', KEYS[3], ARGV[5]) "
                                 "local st = redis.call('GET', KEYS[2]) "
                                 "if st and string.sub(st, 1, 3) == 'on:' then return 0 end "
                                 "redis.call('SET', KEYS[2], 'on:' .. ARGV[4]) "
                                 "if ARGV[6] == '1' and not st then return 0 end "
                                 "return 1";

/* No device on a live gateway any more: say "off" if it said "on". */
static const char OFFLINE_LUA[] =
    "redis.call('SREM', KEYS[3], ARGV[3]) "
    "local f = redis.call('HGETALL', KEYS[1]) "
    "for i = 2, #f, 2 do "
    "  if redis.call('EXISTS', ARGV[1] .. f[i]) == 1 then return 0 end "
    "end "
    "local st = redis.call('GET', KEYS[2]) "
    "if not st or string.sub(st, 1, 3) ~= 'on:' then return 0 end "
    "redis.call('SET', KEYS[2], 'off:' .. ARGV[2], 'EX', " PSTATE_TTL ") "
    "return 1";

/* Gateways dead for longer than the grace: their devices are dropped, and their users with no
 * device left on a live gateway go "off". Returns those users. */
static const char REAP_LUA[] =
    "local out = {} "
    "local now = tonumber(ARGV[6]) "
    "for _, g in ipairs(redis.call('SMEMBERS', KEYS[1])) do "
    "  if redis.call('EXISTS', ARGV[1] .. g) == 1 then "
    "    redis.call('DEL', ARGV[5] .. g) "
    "  else "
    "    local seen = redis.call('GET', ARGV[5] .. g) "
    "    if not seen then redis.call('SET', ARGV[5] .. g, ARGV[6], 'EX', 300) "
    "    elseif now - tonumber(seen) >= tonumber(ARGV[7]) then "
    "      for _, u in ipairs(redis.call('SMEMBERS', ARGV[2] .. g)) do "
    "        local pk = ARGV[3] .. u "
    "        local f = redis.call('HGETALL', pk) "
    "        local live = false "
    "        for i = 1, #f, 2 do "
    "          if f[i + 1] == g then redis.call('HDEL', pk, f[i]) "
    "          elseif redis.call('EXISTS', ARGV[1] .. f[i + 1]) == 1 then live = true end "
    "        end "
    "        local st = redis.call('GET', ARGV[4] .. u) "
    "        if not live and st and string.sub(st, 1, 3) == 'on:' then "
    "          redis.call('SET', ARGV[4] .. u, 'off:' .. ARGV[6], 'EX', " PSTATE_TTL ") "
    "          table.insert(out, u) "
    "        end "
    "      end "
    "      redis.call('DEL', ARGV[2] .. g, ARGV[5] .. g) "
    "      redis.call('SREM', KEYS[1], g) "
    "    end "
    "  end "
    "end "
    "return out";

struct change_q {
    gw_redis_change_fn fn;
    void *arg;
    long long at;
};

static void on_change_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct change_q *q = priv;
    redisReply *rep = reply;
    (void)ac;
    int announce = rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
    if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
        pl_log_warn("presence_script_failed", "%.200s", rep->str);
    }
    q->fn(q->arg, announce, q->at);
    free(q);
}

/* Runs a change script with argv (already holding EVAL, the script and its keys); the answer
 * comes to fn, or at once (nothing to announce) while Redis is away. */
static void run_change(gw_redis_t *g, int argc, const char **argv, gw_redis_change_fn fn, void *arg,
                       long long at)
{
    redisAsyncContext *ac = cmd_ac(g);
    struct change_q *q = ac ? malloc(sizeof(*q)) : NULL;
    if (q == NULL) {
        fn(arg, 0, at);
        return;
    }
    *q = (struct change_q){fn, arg, at};
    if (redisAsyncCommandArgv(ac, on_change_reply, q, argc, argv, NULL) != REDIS_OK) {
        free(q);
        fn(arg, 0, at);
    }
}

void gw_redis_went_online(gw_redis_t *g, const char *user, uint64_t id, int quiet,
                          gw_redis_change_fn fn, void *arg)
{
    char presence[PL_KEY_LEN], pstate[PL_KEY_LEN], gwusers[PL_KEY_LEN];
    char field[PL_GATEWAY_ID_LEN + 24], ttl[16], now[24];
    long long at = pl_now_ms();
    if (pl_key_presence(presence, user) != PL_OK || pl_key_pstate(pstate, user) != PL_OK ||
        pl_key_gwusers(gwusers, g->gw_id) != PL_OK) {
        fn(arg, 0, at);
        return;
    }
    presence_field(g, id, field, sizeof(field));
    snprintf(ttl, sizeof(ttl), "%d", PRESENCE_TTL_S);
    snprintf(now, sizeof(now), "%lld", at);
    const char *argv[] = {"EVAL", ONLINE_LUA, "3", presence, pstate, gwusers,
                          field,  g->gw_id,   ttl, now,      user,   quiet ? "1" : "0"};
    run_change(g, 12, argv, fn, arg, at);
}

void gw_redis_went_offline(gw_redis_t *g, const char *user, gw_redis_change_fn fn, void *arg)
{
    char presence[PL_KEY_LEN], pstate[PL_KEY_LEN], gwusers[PL_KEY_LEN], gwp[PL_KEY_LEN], now[24];
    long long at = pl_now_ms();
    if (pl_key_presence(presence, user) != PL_OK || pl_key_pstate(pstate, user) != PL_OK ||
        pl_key_gwusers(gwusers, g->gw_id) != PL_OK || pl_key_gateway(gwp, "") != PL_OK) {
        fn(arg, 0, at);
        return;
    }
    snprintf(now, sizeof(now), "%lld", at);
    const char *argv[] = {"EVAL", OFFLINE_LUA, "3", presence, pstate, gwusers, gwp, now, user};
    run_change(g, 9, argv, fn, arg, at);
}

struct reap_q {
    gw_redis_user_fn fn;
    void *arg;
    long long at;
};

static void on_reap_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    struct reap_q *q = priv;
    redisReply *rep = reply;
    (void)ac;
    for (size_t i = 0; rep != NULL && rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        if (rep->element[i]->type == REDIS_REPLY_STRING) {
            q->fn(q->arg, rep->element[i]->str, q->at);
        }
    }
    free(q);
}

void gw_redis_reap(gw_redis_t *g, long long grace_ms, gw_redis_user_fn fn, void *arg)
{
    char gwp[PL_KEY_LEN], usersp[PL_KEY_LEN], presp[PL_KEY_LEN], statep[PL_KEY_LEN],
        reapp[PL_KEY_LEN], now[24], grace[24];
    redisAsyncContext *ac = cmd_ac(g);
    struct reap_q *q = ac ? malloc(sizeof(*q)) : NULL;
    if (q == NULL) {
        return;
    }
    *q = (struct reap_q){fn, arg, pl_now_ms()};
    pl_key_gateway(gwp, "");
    pl_key_gwusers(usersp, "");
    pl_key_presence(presp, "");
    pl_key_pstate(statep, "");
    pl_key_reap(reapp, "");
    snprintf(now, sizeof(now), "%lld", q->at);
    snprintf(grace, sizeof(grace), "%lld", grace_ms);
    const char *argv[] = {"EVAL", REAP_LUA, "1",  PL_KEY_GATEWAYS, gwp, usersp, presp, statep,
                          reapp,  now,      grace};
    if (redisAsyncCommandArgv(ac, on_reap_reply, q, 11, argv, NULL) != REDIS_OK) {
        free(q);
    }
}

/* The live gateways holding a device of any user in KEYS (presence hashes) each get ARGV[3] on
 * their delivery channel, once. */
static const char FANOUT_LUA[] = "local seen = {} "
                                 "for _, k in ipairs(KEYS) do "
                                 "  for _, gw in ipairs(redis.call('HVALS', k)) do "
                                 "    if not seen[gw] then "
                                 "      seen[gw] = true "
                                 "      if redis.call('EXISTS', ARGV[1] .. gw) == 1 then "
                                 "        redis.call('PUBLISH', ARGV[2] .. gw, ARGV[3]) "
                                 "      end "
                                 "    end "
                                 "  end "
                                 "end "
                                 "return 0";

void gw_redis_fanout(gw_redis_t *g, const char *const *users, size_t n, const char *text)
{
    redisAsyncContext *ac = cmd_ac(g);
    char gwp[PL_KEY_LEN], delp[PL_KEY_LEN], nkeys[24];
    size_t argc = 3 + n + 3;
    const char **argv = ac ? calloc(argc, sizeof(*argv)) : NULL;
    char(*keys)[PL_KEY_LEN] = argv ? calloc(n ? n : 1, PL_KEY_LEN) : NULL;
    if (keys == NULL || pl_key_gateway(gwp, "") != PL_OK || pl_key_deliver(delp, "") != PL_OK) {
        free(argv);
        free(keys);
        return; /* Redis away or no memory: a hint lost */
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (pl_key_presence(keys[k], users[i]) == PL_OK) {
            k++;
        }
    }
    snprintf(nkeys, sizeof(nkeys), "%zu", k);
    argv[0] = "EVAL";
    argv[1] = FANOUT_LUA;
    argv[2] = nkeys;
    for (size_t i = 0; i < k; i++) {
        argv[3 + i] = keys[i];
    }
    argv[3 + k] = gwp;
    argv[4 + k] = delp;
    argv[5 + k] = text;
    redisAsyncCommandArgv(ac, NULL, NULL, (int)(6 + k), argv, NULL);
    free(argv);
    free(keys);
}

void gw_redis_publish(gw_redis_t *g, const char *channel, const char *text)
{
    redisAsyncContext *ac = cmd_ac(g);
    if (ac != NULL) {
        redisAsyncCommand(ac, NULL, NULL, "PUBLISH %s %s", channel, text);
    }
}
