/*
 * Blocking Redis access for request-handling threads: a small pool of hiredis connections,
 * each reconnected after an error, behind a handful of commands the services need (rate-limit
 * windows, expiring flags, publish). Replies and hiredis errors stay inside; callers see
 * PL_ERR_UNAVAIL when Redis does not answer. Not for pub/sub subscriptions or the gateway's
 * event loop, which use hiredis's async API through an adapter. Thread-safe.
 */
#ifndef PARLEY_REDIS_H
#define PARLEY_REDIS_H

#include <stddef.h>

typedef struct pl_redis_s pl_redis_t;

/*
 * Creates a pool for host:port with a per-command timeout. No connection is made until the
 * first command, so a service can start while Redis is down. Returns PL_OK or PL_ERR_NOMEM.
 */
int pl_redis_new(const char *host, int port, int timeout_ms, pl_redis_t **out);

/* Closes every connection and frees the pool; sets *r to NULL. Accepts NULL. */
void pl_redis_free(pl_redis_t **r);

/* PL_OK when Redis answers PING, PL_ERR_UNAVAIL otherwise. */
int pl_redis_ping(pl_redis_t *r);

/*
 * Fixed-window counter: increments key, gives it a TTL of window_s when it has none, and
 * returns the new count in *count and the seconds left in the window in *ttl_s.
 * Returns PL_OK or PL_ERR_UNAVAIL.
 */
int pl_redis_incr_window(pl_redis_t *r, const char *key, long window_s, long *count, long *ttl_s);

/* SET key value EX ttl_s. Returns PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_set_ex(pl_redis_t *r, const char *key, const char *value, long ttl_s);

/* Sets *exists to 1 when key exists. Returns PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_exists(pl_redis_t *r, const char *key, int *exists);

/* DEL key. Returns PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_del(pl_redis_t *r, const char *key);

/* PUBLISH channel message; *receivers (may be NULL) gets the subscriber count. */
int pl_redis_publish(pl_redis_t *r, const char *channel, const char *msg, long *receivers);

/* Called for each field of each hash: idx is the key's index; strings valid during the call. */
typedef void (*pl_redis_field_fn)(void *ud, size_t idx, const char *field, const char *value);

/* HGETALL of n keys in one pipelined round trip. Returns PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_hgetall_multi(pl_redis_t *r, const char *const *keys, size_t n, pl_redis_field_fn fn,
                           void *ud);

/* GET of n keys in one pipelined round trip: fn(ud, idx, NULL, value) for each key holding a
 * string (absent keys are skipped). Returns PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_get_multi(pl_redis_t *r, const char *const *keys, size_t n, pl_redis_field_fn fn,
                       void *ud);

/* SET key value NX EX ttl_s: *set = 1 when the key was absent and is now value. */
int pl_redis_set_nx(pl_redis_t *r, const char *key, const char *value, long ttl_s, int *set);

/* EXISTS of n keys in one round trip; out[i] is 1 when keys[i] exists. */
/* The members of each sorted set keys[i] scored min_score or more (ZRANGEBYSCORE), through
 * fn(ud, i, NULL, member), pipelined. Errors as pl_redis_hgetall_multi(). */
int pl_redis_zlive_multi(pl_redis_t *r, const char *const *keys, size_t n, long long min_score,
                         pl_redis_field_fn fn, void *ud);

/* ZADD keys[i] score members[i] for each i, pipelined. PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_zadd_multi(pl_redis_t *r, const char *const *keys, const char *const *members,
                        size_t n, long long score);

/* out[i] = 1 when keys[i] holds a string: one MGET, whatever n. PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_mexists(pl_redis_t *r, const char *const *keys, size_t n, int *out);

int pl_redis_exists_multi(pl_redis_t *r, const char *const *keys, size_t n, int *out);

/* PUBLISH of n messages in one round trip; receivers[i] (when not NULL) gets how many
 * subscribers heard message i. Returns PL_OK or PL_ERR_UNAVAIL. */
int pl_redis_publish_multi(pl_redis_t *r, const char *const *channels, const char *const *msgs,
                           size_t n, long *receivers);

#endif
