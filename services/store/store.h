/*
 * parley-store's internal interface: the batch writer that turns parley.messages records into
 * numbered, stored messages and parley.committed records (st_write.c, on st_seq.c and
 * st_mongo.c), and the history REST handlers (st_api.c). Not a public header.
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
#include "st_mongo.h"
#include "st_edit.h"
#include "st_group.h"
#include "st_policy.h"
#include "st_seq.h"

#include <stdatomic.h>

typedef struct st_ctx_s {
    pl_mongo_t *mongo;
    pl_redis_t *redis;
    pl_kafka_t *consumer;
    pl_kafka_t *producer;
    pl_jwt_verifier_t *verifier;
    pl_metrics_t *metrics;
    st_seq_t *seq;           /* the sequence allocator; consumer thread only */
    st_policy_t *policy;     /* who may write to whom; consumer thread only */
    st_group_t *groups;      /* who may post to a group, membership; consumer thread only */
    st_edit_cfg_t edit;      /* edit and recall windows */
    atomic_int batch_failed; /* a committed record of the current batch was not delivered */
    atomic_int indexes_ready;
    pl_metric_t *m_stored;
    pl_metric_t *m_replayed;
    pl_metric_t *m_invalid;
    pl_metric_t *m_refused;
    pl_metric_t *m_batch;
    pl_metric_t *m_upsert_seconds;
    pl_metric_t *m_consume_delay;
    pl_metric_t *m_announce_seconds;
    pl_metric_t *m_lag;
} st_ctx_t;

/*
 * One attempt at a batch of parley.messages records (pl_consume_run retries with attempt + 1):
 * de-duplicates by msg_id, numbers new messages per conversation, writes messages and
 * conversations, produces every message of the batch (new or replayed) to parley.committed
 * and waits for the broker's acks. PL_OK when the batch's offsets may be stored.
 */
int st_write_batch(st_ctx_t *ctx, const pl_kafka_rec_t *recs, size_t n, int attempt);

/* Creates the indexes of DESIGN section 3 once. PL_OK when they exist. */
int st_ensure_indexes(st_ctx_t *ctx);

/* A query parameter's value as a non-negative integer: def when v is NULL or empty, -1 when it
 * is not a number in range. Pure. */
long long st_query_num(const char *v, long long def);

/* Checks a conversation id "d:<a>:<b>" with a <= b, both lowercase usernames, or a user's own
 * stream "u:<a>" (b = a); fills a and b (PL_USERNAME_LEN bytes each). 1 when well formed,
 * else 0. Pure. */
int st_conv_parse(const char *conv, char *a, char *b);

/* GET /v1/conversations/<conv>/receipts?seq=N for user (st_receipts.c). */
void st_receipts_reply(st_ctx_t *ctx, pl_http_req_t *req, pl_http_resp_t *resp, const char *conv,
                       const char *user);

extern const pl_http_route_t st_routes[];
extern const size_t st_nroutes;

#endif
