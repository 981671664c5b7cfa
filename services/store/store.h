/*
 * parley-store's internal interface: the writer that turns batches of parley.messages into
 * numbered, stored messages and parley.committed records, and the history REST handlers.
 * Not a public header.
 */
#ifndef PARLEY_STORE_H
#define PARLEY_STORE_H

#include "parley/http.h"
#include "parley/jwt.h"
#include "parley/kafka.h"
#include "parley/metrics.h"
#include "parley/mongo.h"
#include "parley/proto.h"
#include "parley/redis.h"
#include "parley/wire.h"

#include <stdatomic.h>

typedef struct st_seqcache_s st_seqcache_t;

#define ST_MAX_PARTITIONS 256

/* How far past a batch a write intent is declared (see write_intents in st_write.c). */
#define ST_INTENT_AHEAD 128

typedef struct st_ctx_s {
    pl_mongo_t *mongo;
    pl_redis_t *redis;
    pl_kafka_t *consumer;
    pl_kafka_t *producer;
    pl_jwt_verifier_t *verifier;
    pl_metrics_t *metrics;
    st_seqcache_t *seqs; /* conv -> last seq; touched by the consumer thread only */
    /* Per partition of parley.messages: the last offset seen (a jump means a rebalance or a
     * restart), and up to which offset records may already be stored (the write intent). */
    long long last_offset[ST_MAX_PARTITIONS];
    long long careful_until[ST_MAX_PARTITIONS];
    long long intent_end[ST_MAX_PARTITIONS]; /* the intent as last read or written */
    unsigned char intent_known[ST_MAX_PARTITIONS];
    /* Until this time (CLOCK_MONOTONIC seconds), a record of the partition that the table of
     * recent msg_ids does not know is looked up by _id before it takes a number: the table is
     * empty after a start and knows nothing of what another store wrote before a rebalance. */
    double cold_until[ST_MAX_PARTITIONS];
    int cold_check_s; /* PARLEY_STORE_COLD_CHECK_S */
    atomic_int stopping;
    atomic_int batch_failed; /* a committed record of the current batch was not delivered */
    atomic_int indexes_ready;
    pl_metric_t *m_stored;
    pl_metric_t *m_replayed;
    pl_metric_t *m_invalid;
    pl_metric_t *m_batch;
    pl_metric_t *m_write_seconds;
    pl_metric_t *m_upsert_seconds;
    pl_metric_t *m_consume_delay;
    pl_metric_t *m_announce_seconds;
    pl_metric_t *m_lag;
    pl_metric_t *m_retries;
    pl_metric_t *m_cold_checks;
} st_ctx_t;

st_seqcache_t *st_seqcache_new(void);
void st_seqcache_free(st_seqcache_t **c);

/*
 * Stores one batch of parley.messages records: de-duplicates by msg_id, numbers new messages
 * per conversation, writes messages and conversations, produces every message of the batch
 * (new or replayed) to parley.committed and waits for the broker's acks. Retries until done
 * or ctx->stopping; returns PL_OK when the caller may store the batch's offsets.
 */
int st_write_batch(st_ctx_t *ctx, const pl_kafka_rec_t *recs, size_t n);

/* Creates the indexes of DESIGN section 3. PL_OK when they exist. */
int st_ensure_indexes(st_ctx_t *ctx);

/* Fills m from a stored message document; strings are borrowed from doc. */
int st_msg_from_bson(const bson_t *doc, pl_msg_t *m);

/* A query parameter's value as a non-negative integer: def when v is NULL or empty, -1 when it
 * is not a number in range. Pure. */
long long st_query_num(const char *v, long long def);

/* Checks a conversation id "d:<a>:<b>" with a <= b, both lowercase usernames; fills a and b
 * (PL_USERNAME_MAX + 1 bytes each). 1 when well formed, else 0. Pure. */
int st_conv_parse(const char *conv, char *a, char *b);

extern const pl_http_route_t st_routes[];
extern const size_t st_nroutes;

#endif
