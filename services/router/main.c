/*
 * parley-router: consumes parley.committed and hands each message to the gateways holding its
 * sender's and receiver's connections, storing offsets only after publishing. SIGTERM
 * finishes the batch in hand, commits, and stops.
 */
#include "router.h"
#include "parley/cfg.h"
#include "parley/consume.h"
#include "parley/err.h"
#include "parley/http.h"
#include "parley/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BATCH_MAX 500

static int ready(void *ud, json_t *detail)
{
    rt_ctx_t *ctx = ud;
    int redis = pl_redis_ping(ctx->redis);
    json_object_set_new(detail, "redis", json_string(redis == PL_OK ? "ok" : "unavailable"));
    return redis;
}

static int work(void *ud, const pl_kafka_rec_t *recs, size_t n, int attempt)
{
    return rt_route_batch(ud, recs, n, attempt);
}

int main(void)
{
    int rc = 1;
    rt_ctx_t ctx;
    pl_http_t *http = NULL;
    long port, redis_port, gather_ms;
    memset(&ctx, 0, sizeof(ctx));
    pl_log_init("router", pl_log_level_parse(pl_cfg_str("PARLEY_LOG_LEVEL", "info")));
    sigset_t sigs;
    pl_block_signals(&sigs);
    if (pl_cfg_int("PARLEY_ROUTER_PORT", 8083, 0, 65535, &port) ||
        pl_cfg_int("PARLEY_REDIS_PORT", 6379, 1, 65535, &redis_port) ||
        pl_cfg_int("PARLEY_ROUTER_GATHER_MS", 0, 0, 1000, &gather_ms)) {
        goto out;
    }
    if ((ctx.metrics = pl_metrics_new()) == NULL ||
        pl_redis_new(pl_cfg_str("PARLEY_REDIS_HOST", "127.0.0.1"), (int)redis_port, 1000,
                     &ctx.redis) != PL_OK ||
        pl_kafka_consumer_new(pl_cfg_str("PARLEY_KAFKA_BROKERS", "127.0.0.1:9092"),
                              pl_cfg_str("PARLEY_ROUTER_GROUP", "parley-router"),
                              PL_TOPIC_COMMITTED, NULL, &ctx.consumer) != PL_OK) {
        goto out;
    }
    pl_metrics_t *m = ctx.metrics;
    ctx.m_routed = pl_metrics_counter(m, "parley_router_routed_total", "Messages routed", NULL);
    ctx.m_offline = pl_metrics_counter(m, "parley_router_offline_total",
                                       "Messages whose receiver had no live connection", NULL);
    ctx.m_unheard =
        pl_metrics_counter(m, "parley_router_unheard_total",
                           "Messages published to a live gateway that no subscriber heard "
                           "(its clients sync them)",
                           NULL);
    ctx.m_published = pl_metrics_counter(m, "parley_router_publishes_total",
                                         "Publishes to gateway channels", NULL);
    ctx.m_invalid = pl_metrics_counter(m, "parley_router_invalid_records_total",
                                       "Records skipped as malformed", NULL);
    ctx.m_latency = pl_metrics_histogram(m, "parley_router_accept_to_route_seconds",
                                         "From acceptance at a gateway to routing", NULL,
                                         pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
    ctx.m_lag = pl_metrics_gauge(m, "parley_router_consumer_lag",
                                 "Records of parley.committed not yet routed", NULL);

    pl_http_cfg_t hc = {
        .bind_addr = pl_cfg_str("PARLEY_ROUTER_ADDR", "0.0.0.0"),
        .port = (int)port,
        .threads = 1,
        .body_max = 1024,
        .max_conns = 256,
        .ud = &ctx,
        .ready = ready,
        .metrics = ctx.metrics,
    };
    if (pl_http_start(&hc, &http) != PL_OK) {
        goto out;
    }
    pl_log_fields(PL_LOG_INFO, "started", json_pack("{s:i}", "port", pl_http_port(http)),
                  "parley-router listening on port %d", pl_http_port(http));
    pl_consume_cfg_t cc = {
        .consumer = ctx.consumer,
        .batch_max = BATCH_MAX,
        .poll_ms = 100,
        .gather_ms = (int)gather_ms,
        .stop = &sigs,
        .ud = &ctx,
        .work = work,
        .lag = ctx.m_lag,
    };
    if (pl_consume_run(&cc) != PL_OK) {
        goto out;
    }
    pl_log_info("stopping", "committing offsets and leaving the group");
    rc = 0;
out:
    pl_http_stop(&http);
    pl_kafka_free(&ctx.consumer);
    pl_redis_free(&ctx.redis);
    pl_metrics_free(&ctx.metrics);
    if (rc == 0) {
        pl_log_info("stopped", "parley-router stopped");
    }
    return rc;
}
