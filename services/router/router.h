/*
 * parley-router's internal interface: routing one batch of parley.committed records to the
 * gateways where the messages' senders and receivers are connected. Not a public header.
 */
#ifndef PARLEY_ROUTER_H
#define PARLEY_ROUTER_H

#include "parley/kafka.h"
#include "parley/metrics.h"
#include "parley/redis.h"
#include "parley/wire.h"

#include <stdatomic.h>

#define RT_PUBLISH_MAX    (512 * 1024) /* a gateway's share of a batch is split above this */
#define RT_DEAF_WAIT_MS   3000  /* how long a live gateway that hears nothing is waited for */
#define RT_DEAF_FORGET_MS 10000 /* and how long it is then not waited for again */
#define RT_DEAF_SLOTS     16

typedef struct rt_ctx_s {
    pl_redis_t *redis;
    pl_kafka_t *consumer;
    pl_metrics_t *metrics;
    struct {
        char id[PL_GATEWAY_ID_LEN];
        long long until_ms;
    } deaf[RT_DEAF_SLOTS]; /* gateways that stayed deaf lately; router thread only */
    pl_metric_t *m_routed;
    pl_metric_t *m_offline;
    pl_metric_t *m_unheard;
    pl_metric_t *m_published;
    pl_metric_t *m_latency;
    pl_metric_t *m_lag;
    pl_metric_t *m_invalid;
} rt_ctx_t;

/*
 * Routes a batch (one attempt; pl_consume_run retries): pipelined presence lookups of every
 * sender and receiver, liveness of their gateways, then one publish per live gateway. Returns
 * PL_OK when the batch's offsets may be stored, PL_ERR_UNAVAIL while Redis does not answer.
 */
int rt_route_batch(rt_ctx_t *ctx, const pl_kafka_rec_t *recs, size_t n, int attempt);

#endif
