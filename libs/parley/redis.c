/*
 * hiredis connection pool. A connection that saw an I/O or protocol error is closed rather
 * than returned, so the next command reconnects; that is all the recovery Redis restarts need.
 */
#include "parley/redis.h"
#include "parley/err.h"
#include "parley/log.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define POOL_MAX 16

struct pl_redis_s {
    pthread_mutex_t lock;
    char *host;
    int port;
    struct timeval timeout;
    redisContext *idle[POOL_MAX];
    int nidle;
};

int pl_redis_new(const char *host, int port, int timeout_ms, pl_redis_t **out)
{
    pl_redis_t *r = calloc(1, sizeof(*r));
    if (r == NULL || (r->host = strdup(host)) == NULL) {
        free(r);
        return PL_ERR_NOMEM;
    }
    r->port = port;
    r->timeout.tv_sec = timeout_ms / 1000;
    r->timeout.tv_usec = (timeout_ms % 1000) * 1000;
    pthread_mutex_init(&r->lock, NULL);
    *out = r;
    return PL_OK;
}

void pl_redis_free(pl_redis_t **pr)
{
    if (pr == NULL || *pr == NULL) {
        return;
    }
    pl_redis_t *r = *pr;
    for (int i = 0; i < r->nidle; i++) {
        redisFree(r->idle[i]);
    }
    pthread_mutex_destroy(&r->lock);
    free(r->host);
    free(r);
    *pr = NULL;
}

/*
 * Takes an idle connection or opens one; *pooled tells which. Returns NULL when Redis cannot
 * be reached.
 */
static redisContext *take_ex(pl_redis_t *r, int *pooled)
{
    redisContext *c = NULL;
    pthread_mutex_lock(&r->lock);
    if (r->nidle > 0) {
        c = r->idle[--r->nidle];
    }
    pthread_mutex_unlock(&r->lock);
    *pooled = c != NULL;
    if (c != NULL) {
        return c;
    }
    c = redisConnectWithTimeout(r->host, r->port, r->timeout);
    if (c == NULL || c->err) {
        pl_log_warn("redis_connect_failed", "redis %s:%d: %s", r->host, r->port,
                    c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, r->timeout);
    return c;
}

/* Returns c to the pool, or closes it when it has failed or the pool is full. */
static void give(pl_redis_t *r, redisContext *c)
{
    if (c == NULL) {
        return;
    }
    if (!c->err) {
        pthread_mutex_lock(&r->lock);
        if (r->nidle < POOL_MAX) {
            r->idle[r->nidle++] = c;
            c = NULL;
        }
        pthread_mutex_unlock(&r->lock);
    }
    redisFree(c);
}

/* Checks one reply; logs and maps errors. An error reply is a bug of ours, not an outage. */
static int check(redisContext *c, redisReply *rep)
{
    if (rep == NULL) {
        pl_log_warn("redis_io_error", "redis: %s", c->errstr);
        return PL_ERR_UNAVAIL;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        pl_log_error("redis_error_reply", "redis replied with an error: %.200s", rep->str);
        return PL_ERR_INTERNAL;
    }
    return PL_OK;
}

/*
 * Runs one command with argv and hands back the reply (freed by the caller). A pooled
 * connection that fails is retried once on a fresh one: after a Redis restart every idle
 * connection is dead, and that is not an outage.
 */
static int run(pl_redis_t *r, redisReply **out, int argc, const char **argv)
{
    int pooled;
    *out = NULL;
    redisContext *c = take_ex(r, &pooled);
    if (c == NULL) {
        return PL_ERR_UNAVAIL;
    }
    redisReply *rep = redisCommandArgv(c, argc, argv, NULL);
    while (rep == NULL && pooled) {
        redisFree(c);
        c = take_ex(r, &pooled);
        if (c == NULL) {
            return PL_ERR_UNAVAIL;
        }
        rep = redisCommandArgv(c, argc, argv, NULL);
    }
    int rc = check(c, rep);
    give(r, c);
    if (rc != PL_OK) {
        if (rep != NULL) {
            freeReplyObject(rep);
        }
        return rc;
    }
    *out = rep;
    return PL_OK;
}

int pl_redis_ping(pl_redis_t *r)
{
    const char *argv[] = {"PING"};
    redisReply *rep;
    int rc = run(r, &rep, 1, argv);
    if (rc == PL_OK) {
        freeReplyObject(rep);
    }
    return rc == PL_OK ? PL_OK : PL_ERR_UNAVAIL;
}

/* One attempt of pl_redis_incr_window() on connection c. */
static int incr_window_on(redisContext *c, const char *key, long window_s, long *count, long *ttl_s)
{
    int rc = PL_OK;
    redisReply *rep[3] = {NULL, NULL, NULL};
    /* Pipelined: one round trip. EXPIRE NX (Redis 7) only sets the TTL of a new window. */
    redisAppendCommand(c, "INCR %s", key);
    redisAppendCommand(c, "EXPIRE %s %ld NX", key, window_s);
    redisAppendCommand(c, "TTL %s", key);
    for (int i = 0; i < 3; i++) {
        void *p = NULL;
        if (redisGetReply(c, &p) != REDIS_OK) {
            p = NULL;
        }
        rep[i] = p;
        int one = check(c, rep[i]);
        if (one != PL_OK && rc == PL_OK) {
            rc = one;
        }
        if (one == PL_ERR_UNAVAIL) {
            break;
        }
    }
    if (rc == PL_OK) {
        *count = (long)rep[0]->integer;
        *ttl_s = rep[2]->integer > 0 ? (long)rep[2]->integer : window_s;
    }
    for (int i = 0; i < 3; i++) {
        if (rep[i] != NULL) {
            freeReplyObject(rep[i]);
        }
    }
    return rc;
}

int pl_redis_incr_window(pl_redis_t *r, const char *key, long window_s, long *count, long *ttl_s)
{
    int pooled;
    int rc = PL_ERR_UNAVAIL;
    /* A dead pooled connection (Redis restarted) is replaced and the pipeline sent again. */
    for (int attempt = 0; attempt < 2; attempt++) {
        redisContext *c = take_ex(r, &pooled);
        if (c == NULL) {
            return PL_ERR_UNAVAIL;
        }
        rc = incr_window_on(c, key, window_s, count, ttl_s);
        give(r, c);
        if (rc != PL_ERR_UNAVAIL || !pooled) {
            break;
        }
    }
    return rc == PL_OK ? PL_OK : PL_ERR_UNAVAIL;
}

int pl_redis_set_ex(pl_redis_t *r, const char *key, const char *value, long ttl_s)
{
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%ld", ttl_s);
    const char *argv[] = {"SET", key, value, "EX", ttl};
    redisReply *rep;
    int rc = run(r, &rep, 5, argv);
    if (rc == PL_OK) {
        freeReplyObject(rep);
    }
    return rc == PL_OK ? PL_OK : PL_ERR_UNAVAIL;
}

int pl_redis_exists(pl_redis_t *r, const char *key, int *exists)
{
    const char *argv[] = {"EXISTS", key};
    redisReply *rep;
    int rc = run(r, &rep, 2, argv);
    if (rc != PL_OK) {
        return PL_ERR_UNAVAIL;
    }
    *exists = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
    freeReplyObject(rep);
    return PL_OK;
}

int pl_redis_del(pl_redis_t *r, const char *key)
{
    const char *argv[] = {"DEL", key};
    redisReply *rep;
    int rc = run(r, &rep, 2, argv);
    if (rc == PL_OK) {
        freeReplyObject(rep);
    }
    return rc == PL_OK ? PL_OK : PL_ERR_UNAVAIL;
}

int pl_redis_publish(pl_redis_t *r, const char *channel, const char *msg, long *receivers)
{
    const char *argv[] = {"PUBLISH", channel, msg};
    redisReply *rep;
    int rc = run(r, &rep, 3, argv);
    if (rc != PL_OK) {
        return PL_ERR_UNAVAIL;
    }
    if (receivers != NULL) {
        *receivers = (long)rep->integer;
    }
    freeReplyObject(rep);
    return PL_OK;
}

/*
 * Sends argv-style commands for n items in one pipeline and hands each reply to fn. The
 * replies are read even after a failure so that the connection is left in step (or closed).
 */
typedef void (*reply_fn)(void *ud, size_t idx, redisReply *rep);

/* A pooled connection that Redis closed (a restart): nothing it was sent was run. A timeout
 * is not that case: the commands may have run, and are not sent again. */
static int closed_by_peer(const redisContext *c)
{
    return c->err == REDIS_ERR_EOF ||
           (c->err == REDIS_ERR_IO && strstr(c->errstr, "temporarily unavailable") == NULL);
}

/* Fills argv (argc entries) of command i of a pipeline. */
typedef void (*args_fn)(const void *arg, size_t i, const char **argv);

static int pipeline_args(pl_redis_t *r, size_t n, int argc, args_fn args, const void *arg,
                         reply_fn fn, void *ud)
{
    if (n == 0) {
        return PL_OK;
    }
    int pooled;
    redisContext *c = take_ex(r, &pooled);
    if (c == NULL) {
        return PL_ERR_UNAVAIL;
    }
    int rc = PL_OK;
    /* Every idle connection may be dead after a Redis restart: each one found closed is
     * dropped and the next tried, until a fresh connection (never retried) answers. */
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            const char *argv[8] = {NULL};
            args(arg, i, argv);
            redisAppendCommandArgv(c, argc, argv, NULL);
        }
        rc = PL_OK;
        int again = 0;
        for (size_t i = 0; i < n; i++) {
            void *p = NULL;
            if (redisGetReply(c, &p) != REDIS_OK) {
                p = NULL;
            }
            if (p == NULL && i == 0 && pooled && closed_by_peer(c)) {
                again = 1; /* a dead idle connection: on to the next */
                break;
            }
            int one = check(c, p);
            if (one == PL_OK) {
                fn(ud, i, p);
            } else if (rc == PL_OK) {
                rc = PL_ERR_UNAVAIL;
            }
            if (p != NULL) {
                freeReplyObject(p);
            }
            if (c->err) {
                break;
            }
        }
        if (!again) {
            break;
        }
        redisFree(c);
        c = take_ex(r, &pooled);
        if (c == NULL) {
            return PL_ERR_UNAVAIL;
        }
    }
    give(r, c);
    return rc;
}

struct verb_args {
    const char *verb;
    const char *const *a1, *const *a2;
};

static void verb_args(const void *arg, size_t i, const char **argv)
{
    const struct verb_args *v = arg;
    argv[0] = v->verb;
    argv[1] = v->a1[i];
    argv[2] = v->a2 ? v->a2[i] : NULL;
}

static int pipeline(pl_redis_t *r, size_t n, int argc, const char *verb, const char *const *a1,
                    const char *const *a2, reply_fn fn, void *ud)
{
    struct verb_args v = {verb, a1, a2};
    return pipeline_args(r, n, argc, verb_args, &v, fn, ud);
}

struct fields {
    pl_redis_field_fn fn;
    void *ud;
};

static void on_hash(void *ud, size_t idx, redisReply *rep)
{
    struct fields *f = ud;
    if (rep->type != REDIS_REPLY_ARRAY) {
        return;
    }
    for (size_t k = 0; k + 1 < rep->elements; k += 2) {
        if (rep->element[k]->type == REDIS_REPLY_STRING &&
            rep->element[k + 1]->type == REDIS_REPLY_STRING) {
            f->fn(f->ud, idx, rep->element[k]->str, rep->element[k + 1]->str);
        }
    }
}

int pl_redis_hgetall_multi(pl_redis_t *r, const char *const *keys, size_t n, pl_redis_field_fn fn,
                           void *ud)
{
    struct fields f = {fn, ud};
    return pipeline(r, n, 2, "HGETALL", keys, NULL, on_hash, &f);
}

static void on_exists(void *ud, size_t idx, redisReply *rep)
{
    int *out = ud;
    out[idx] = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
}

int pl_redis_exists_multi(pl_redis_t *r, const char *const *keys, size_t n, int *out)
{
    memset(out, 0, n * sizeof(*out));
    return pipeline(r, n, 2, "EXISTS", keys, NULL, on_exists, out);
}

struct get_ctx {
    pl_redis_field_fn fn;
    void *ud;
};

static void on_get(void *ud, size_t idx, redisReply *rep)
{
    struct get_ctx *g = ud;
    if (rep->type == REDIS_REPLY_STRING) {
        g->fn(g->ud, idx, NULL, rep->str);
    }
}

int pl_redis_get_multi(pl_redis_t *r, const char *const *keys, size_t n, pl_redis_field_fn fn,
                       void *ud)
{
    struct get_ctx g = {fn, ud};
    return pipeline(r, n, 2, "GET", keys, NULL, on_get, &g);
}

struct zlive {
    const char *const *keys;
    char min[24];
};

static void zlive_args(const void *arg, size_t i, const char **argv)
{
    const struct zlive *z = arg;
    argv[0] = "ZRANGEBYSCORE";
    argv[1] = z->keys[i];
    argv[2] = z->min;
    argv[3] = "+inf";
}

static void on_members(void *ud, size_t idx, redisReply *rep)
{
    struct get_ctx *g = ud;
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++) {
        if (rep->element[i]->type == REDIS_REPLY_STRING) {
            g->fn(g->ud, idx, NULL, rep->element[i]->str);
        }
    }
}

int pl_redis_zlive_multi(pl_redis_t *r, const char *const *keys, size_t n, long long min_score,
                         pl_redis_field_fn fn, void *ud)
{
    struct zlive z = {keys, ""};
    struct get_ctx g = {fn, ud};
    snprintf(z.min, sizeof(z.min), "%lld", min_score);
    return pipeline_args(r, n, 4, zlive_args, &z, on_members, &g);
}

struct zadd {
    const char *const *keys, *const *members;
    char score[24];
};

static void zadd_args(const void *arg, size_t i, const char **argv)
{
    const struct zadd *z = arg;
    argv[0] = "ZADD";
    argv[1] = z->keys[i];
    argv[2] = z->score;
    argv[3] = z->members[i];
}

static void on_nothing(void *ud, size_t idx, redisReply *rep)
{
    (void)ud;
    (void)idx;
    (void)rep;
}

int pl_redis_zadd_multi(pl_redis_t *r, const char *const *keys, const char *const *members,
                        size_t n, long long score)
{
    struct zadd z = {keys, members, ""};
    snprintf(z.score, sizeof(z.score), "%lld", score);
    return pipeline_args(r, n, 4, zadd_args, &z, on_nothing, NULL);
}

int pl_redis_mexists(pl_redis_t *r, const char *const *keys, size_t n, int *out)
{
    memset(out, 0, n * sizeof(*out));
    if (n == 0) {
        return PL_OK;
    }
    const char **argv = calloc(n + 1, sizeof(*argv));
    if (argv == NULL) {
        return PL_ERR_NOMEM;
    }
    argv[0] = "MGET";
    memcpy(argv + 1, keys, n * sizeof(*keys));
    redisReply *rep;
    int rc = run(r, &rep, (int)(n + 1), argv);
    free(argv);
    if (rc != PL_OK) {
        return rc;
    }
    for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements && i < n; i++) {
        out[i] = rep->element[i]->type == REDIS_REPLY_STRING;
    }
    freeReplyObject(rep);
    return PL_OK;
}

int pl_redis_set_nx(pl_redis_t *r, const char *key, const char *value, long ttl_s, int *set)
{
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%ld", ttl_s);
    const char *argv[] = {"SET", key, value, "NX", "EX", ttl};
    redisReply *rep;
    int rc = run(r, &rep, 6, argv);
    if (rc != PL_OK) {
        return PL_ERR_UNAVAIL;
    }
    *set = rep->type == REDIS_REPLY_STATUS;
    freeReplyObject(rep);
    return PL_OK;
}

static void on_receivers(void *ud, size_t idx, redisReply *rep)
{
    long *out = ud;
    if (out != NULL) {
        out[idx] = rep->type == REDIS_REPLY_INTEGER ? (long)rep->integer : 0;
    }
}

int pl_redis_publish_multi(pl_redis_t *r, const char *const *channels, const char *const *msgs,
                           size_t n, long *receivers)
{
    return pipeline(r, n, 3, "PUBLISH", channels, msgs, on_receivers, receivers);
}
