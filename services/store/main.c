/*
 * parley-store: consumes parley.messages in batches, numbers and stores each message, produces
 * it to parley.committed, then stores the batch's offsets; and serves history over REST. The
 * consumer runs on the main thread, the REST server on its own pool. SIGTERM finishes the
 * batch in hand, commits, and stops.
 */
#include "store.h"
#include "st_cursor.h"
#include "parley/cfg.h"
#include "parley/consume.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BATCH_MAX 500

/* Revoked sessions are flagged in Redis by parley-auth. When Redis does not answer, the token
 * is accepted (fail open): access tokens live 15 minutes, and refusing every reader during a
 * Redis outage would turn a presence hiccup into a history outage. */
static int session_live(void *ud, const pl_jwt_claims_t *c)
{
    st_ctx_t *ctx = ud;
    char key[PL_KEY_LEN];
    int revoked = 0;
    if (pl_key_revoked(key, c->sid) != PL_OK) {
        return PL_ERR_REVOKED; /* cannot be a session parley-auth made */
    }
    if (pl_redis_exists(ctx->redis, key, &revoked) != PL_OK) {
        pl_log_warn("revocation_unchecked", "Redis unavailable; token accepted on signature");
        return PL_OK;
    }
    return revoked ? PL_ERR_REVOKED : PL_OK;
}

static int ready(void *ud, json_t *detail)
{
    st_ctx_t *ctx = ud;
    int mongo = pl_mongo_ping(ctx->mongo);
    int redis = pl_redis_ping(ctx->redis);
    if (mongo == PL_OK) {
        st_ensure_indexes(ctx);
    }
    json_object_set_new(detail, "mongodb", json_string(mongo == PL_OK ? "ok" : "unavailable"));
    json_object_set_new(detail, "redis", json_string(redis == PL_OK ? "ok" : "unavailable"));
    return mongo == PL_OK ? PL_OK : PL_ERR_UNAVAIL;
}

static void on_committed(void *ud, void *opaque, int err)
{
    st_ctx_t *ctx = ud;
    (void)opaque;
    if (err != PL_OK) {
        atomic_store(&ctx->batch_failed, 1);
    }
}

static void init_metrics(st_ctx_t *ctx)
{
    pl_metrics_t *m = ctx->metrics;
    ctx->m_stored =
        pl_metrics_counter(m, "parley_store_messages_total", "Messages stored and announced", NULL);
    ctx->m_replayed = pl_metrics_counter(m, "parley_store_replayed_total",
                                         "Records whose message was already stored", NULL);
    ctx->m_invalid = pl_metrics_counter(m, "parley_store_invalid_records_total",
                                        "Records skipped as malformed", NULL);
    ctx->m_refused =
        pl_metrics_counter(m, "parley_store_refused_total",
                           "Messages refused before numbering (blocked, or contacts only)", NULL);
    static const double sizes[] = {1, 2, 5, 10, 20, 50, 100, 200, 500};
    ctx->m_batch = pl_metrics_histogram(m, "parley_store_batch_size", "Records per batch", NULL,
                                        sizes, sizeof(sizes) / sizeof(sizes[0]));
    ctx->m_upsert_seconds = pl_metrics_histogram(
        m, "parley_store_conversation_upsert_seconds", "Conversation upserts per batch", NULL,
        pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
    ctx->m_announce_seconds = pl_metrics_histogram(
        m, "parley_store_announce_seconds", "Producing a batch to parley.committed", NULL,
        pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
    ctx->m_consume_delay = pl_metrics_histogram(
        m, "parley_store_accept_to_consume_seconds", "From acceptance at a gateway to the store",
        NULL, pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
    ctx->m_lag = pl_metrics_gauge(m, "parley_store_consumer_lag",
                                  "Records of parley.messages not yet stored", NULL);
}

static int work(void *ud, const pl_kafka_rec_t *recs, size_t n, int attempt)
{
    st_ctx_t *ctx = ud;
    pl_msg_t first;
    if (attempt == 0 && pl_msg_parse(recs[0].value, recs[0].vlen, &first) == PL_OK) {
        pl_metric_observe(ctx->m_consume_delay, (double)(pl_now_ms() - first.ts_ms) / 1000.0);
        pl_msg_clear(&first);
    }
    return st_write_batch(ctx, recs, n, attempt);
}

/* After every poll: delivery reports of parley.committed. */
static void idle(void *ud)
{
    pl_kafka_poll(((st_ctx_t *)ud)->producer, 0);
}

int main(void)
{
    int rc = 1;
    st_ctx_t ctx;
    pl_http_t *http = NULL;
    char *pub = NULL;
    size_t pub_len = 0;
    long port, threads, redis_port, leeway, cold, member_limit, group_rate, cursor_ms, share_max;
    long gather_ms;
    long edit_s, recall_s;
    st_cursors_t *cursors = NULL;
    int trust;
    memset(&ctx, 0, sizeof(ctx));

    pl_log_init("store", pl_log_level_parse(pl_cfg_str("PARLEY_LOG_LEVEL", "info")));
    sigset_t sigs;
    pl_block_signals(&sigs);
    if (pl_cfg_int("PARLEY_STORE_PORT", 8082, 0, 65535, &port) ||
        pl_cfg_int("PARLEY_STORE_THREADS", 4, 1, 256, &threads) ||
        pl_cfg_int("PARLEY_REDIS_PORT", 6379, 1, 65535, &redis_port) ||
        pl_cfg_int("PARLEY_JWT_LEEWAY", 30, 0, PL_JWT_MAX_LEEWAY, &leeway) ||
        pl_cfg_int("PARLEY_STORE_COLD_CHECK_S", 120, 0, 86400, &cold) ||
        pl_cfg_int("PARLEY_GROUP_MEMBER_LIMIT", 10000, 2, 1000000, &member_limit) ||
        pl_cfg_int("PARLEY_GROUP_RATE", 20, 1, 100000, &group_rate) ||
        pl_cfg_int("PARLEY_CURSOR_FLUSH_MS", 1000, 10, 60000, &cursor_ms) ||
        pl_cfg_int("PARLEY_EDIT_WINDOW_S", 48 * 3600, 0, 10L * 365 * 86400, &edit_s) ||
        pl_cfg_int("PARLEY_RECALL_WINDOW_S", 24 * 3600, 0, 10L * 365 * 86400, &recall_s) ||
        pl_cfg_int("PARLEY_RECEIPTS_GROUP_MAX", 100, 0, 1000000, &share_max) ||
        pl_cfg_int("PARLEY_STORE_GATHER_MS", 0, 0, 1000, &gather_ms) ||
        pl_cfg_bool("PARLEY_TRUST_FORWARDED", 0, &trust)) {
        goto out;
    }
    const char *keyfile = pl_cfg_str("PARLEY_JWT_PUBLIC_KEY", "var/keys/jwt-public.pem");
    if (pl_read_file(keyfile, 64 * 1024, &pub, &pub_len) != PL_OK ||
        pl_jwt_verifier_new(pub, pub_len, pl_cfg_str("PARLEY_JWT_ISSUER", "parley"),
                            pl_cfg_str("PARLEY_JWT_AUDIENCE", "parley"), leeway, session_live, &ctx,
                            &ctx.verifier) != PL_OK) {
        pl_log_error("config_invalid", "PARLEY_JWT_PUBLIC_KEY: cannot use %s", keyfile);
        goto out;
    }
    const char *brokers = pl_cfg_str("PARLEY_KAFKA_BROKERS", "127.0.0.1:9092");
    if (pl_mongo_new(pl_cfg_str("PARLEY_MONGO_URI", "mongodb://127.0.0.1:27017"),
                     pl_cfg_str("PARLEY_MONGO_DB", "parley"), &ctx.mongo) != PL_OK ||
        pl_redis_new(pl_cfg_str("PARLEY_REDIS_HOST", "127.0.0.1"), (int)redis_port, 1000,
                     &ctx.redis) != PL_OK ||
        (ctx.metrics = pl_metrics_new()) == NULL ||
        pl_kafka_producer_new(brokers, NULL, on_committed, &ctx, &ctx.producer) != PL_OK ||
        pl_kafka_consumer_new(brokers, pl_cfg_str("PARLEY_STORE_GROUP", "parley-store"),
                              PL_TOPIC_MESSAGES, NULL, &ctx.consumer) != PL_OK) {
        goto out;
    }
    init_metrics(&ctx);
    ctx.edit.edit_window_ms = edit_s * 1000LL;
    ctx.edit.recall_window_ms = recall_s * 1000LL;
    st_db_t db;
    st_mongo_db(ctx.mongo, &db);
    /* Slow mode: a group takes group_rate items a second, with two seconds' worth at once. */
    st_group_cfg_t gcfg = {member_limit, (double)group_rate, 2.0 * (double)group_rate, 2000000};
    if ((ctx.seq = st_seq_new(&db, (int)cold, ctx.metrics)) == NULL ||
        (ctx.policy = st_policy_new(ctx.mongo, ctx.redis, 200000)) == NULL ||
        (ctx.groups = st_group_new(ctx.mongo, &gcfg)) == NULL) {
        goto out;
    }

    pl_http_cfg_t hc = {
        .bind_addr = pl_cfg_str("PARLEY_STORE_ADDR", "0.0.0.0"),
        .port = (int)port,
        .threads = (unsigned)threads,
        .body_max = 4096,
        .max_conns = 4096,
        .trust_forwarded = trust,
        .routes = st_routes,
        .nroutes = st_nroutes,
        .ud = &ctx,
        .ready = ready,
        .metrics = ctx.metrics,
    };
    if (pl_http_start(&hc, &http) != PL_OK) {
        goto out;
    }
    pl_log_fields(PL_LOG_INFO, "started", json_pack("{s:i}", "port", pl_http_port(http)),
                  "parley-store listening on port %d", pl_http_port(http));
    while (st_ensure_indexes(&ctx) != PL_OK) {
        struct timespec zero = {0, 0};
        if (sigtimedwait(&sigs, NULL, &zero) > 0) {
            goto stop;
        }
        pl_log_warn("mongo_not_ready", "waiting for MongoDB to create indexes");
        sleep(1);
    }

    st_cursors_cfg_t kc = {
        .brokers = brokers,
        .group = pl_cfg_str("PARLEY_STORE_CURSOR_GROUP", "parley-store-cursors"),
        .redis_host = pl_cfg_str("PARLEY_REDIS_HOST", "127.0.0.1"),
        .redis_port = (int)redis_port,
        .mongo = ctx.mongo,
        .metrics = ctx.metrics,
        .flush_ms = cursor_ms,
        .share_max = share_max,
    };
    if (st_cursors_start(&kc, &cursors) != PL_OK) {
        goto out;
    }
    pl_consume_cfg_t cc = {
        .consumer = ctx.consumer,
        .batch_max = BATCH_MAX,
        .poll_ms = 100,
        .gather_ms = (int)gather_ms,
        .stop = &sigs,
        .ud = &ctx,
        .work = work,
        .idle = idle,
        .lag = ctx.m_lag,
    };
    if (pl_consume_run(&cc) != PL_OK) {
        goto out;
    }
stop:
    pl_log_info("stopping", "draining: committing offsets and leaving the group");
    rc = 0;
out:
    st_cursors_stop(&cursors); /* a last flush of the cursors, then their offsets */
    pl_http_stop(&http);
    pl_kafka_free(&ctx.consumer);
    pl_kafka_free(&ctx.producer);
    pl_jwt_verifier_free(&ctx.verifier);
    pl_mongo_free(&ctx.mongo);
    pl_redis_free(&ctx.redis);
    st_seq_free(&ctx.seq);
    st_policy_free(&ctx.policy);
    st_group_free(&ctx.groups);
    pl_metrics_free(&ctx.metrics);
    free(pub);
    if (rc == 0) {
        pl_log_info("stopped", "parley-store stopped");
    }
    return rc;
}
