/*
 * parley-auth: accounts, logins and sessions over REST. Reads its configuration from PARLEY_*
 * variables (see the README), serves until SIGTERM or SIGINT, then lets in-flight requests
 * finish. Holds the only copy of the JWT private key in the cluster.
 */
#include "auth.h"
#include "parley/cfg.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int ready(void *ud, json_t *detail)
{
    auth_ctx_t *ctx = ud;
    int mongo = pl_mongo_ping(ctx->mongo);
    int redis = pl_redis_ping(ctx->redis);
    if (mongo == PL_OK) {
        auth_ensure_indexes(ctx);
    }
    json_object_set_new(detail, "mongodb", json_string(mongo == PL_OK ? "ok" : "unavailable"));
    json_object_set_new(detail, "redis", json_string(redis == PL_OK ? "ok" : "unavailable"));
    return mongo == PL_OK && redis == PL_OK ? PL_OK : PL_ERR_UNAVAIL;
}

static int load_key(const char *var, const char *def, char **pem, size_t *len)
{
    const char *path = pl_cfg_str(var, def);
    int rc = pl_read_file(path, 64 * 1024, pem, len);
    if (rc != PL_OK) {
        pl_log_error("config_invalid", "%s: cannot read %s: %s", var, path, pl_strerror(rc));
    }
    return rc;
}

static void init_metrics(auth_ctx_t *ctx)
{
    pl_metrics_t *m = ctx->metrics;
    const char *logins = "parley_auth_logins_total";
    const char *help = "Login attempts by result";
    ctx->m_logins_ok = pl_metrics_counter(m, logins, help, "result=\"ok\"");
    ctx->m_logins_failed = pl_metrics_counter(m, logins, help, "result=\"failed\"");
    ctx->m_registered =
        pl_metrics_counter(m, "parley_auth_registrations_total", "Accounts created", NULL);
    ctx->m_refreshed =
        pl_metrics_counter(m, "parley_auth_refreshes_total", "Refresh tokens rotated", NULL);
    ctx->m_reuse = pl_metrics_counter(m, "parley_auth_refresh_reuse_total",
                                      "Rotated refresh tokens presented again", NULL);
    ctx->m_rate_limited = pl_metrics_counter(m, "parley_auth_rate_limited_total",
                                             "Requests refused by a rate limit", NULL);
    ctx->m_logouts =
        pl_metrics_counter(m, "parley_auth_logouts_total", "Sessions logged out", NULL);
    ctx->m_social_changes = pl_metrics_counter(m, "parley_auth_social_changes_total",
                                               "Contact, block and settings changes made", NULL);
}

int main(void)
{
    int rc = 1;
    auth_ctx_t ctx;
    pl_http_t *http = NULL;
    char *priv = NULL, *pub = NULL;
    size_t priv_len = 0, pub_len = 0;
    long port, threads, body_max, leeway, redis_port;
    int trust;
    memset(&ctx, 0, sizeof(ctx));

    pl_log_init("auth", pl_log_level_parse(pl_cfg_str("PARLEY_LOG_LEVEL", "info")));
    sigset_t sigs;
    pl_block_signals(&sigs);
    if (sodium_init() < 0) {
        pl_log_error("startup_failed", "libsodium failed to initialise");
        return 1;
    }
    if (pl_cfg_int("PARLEY_AUTH_PORT", 8081, 0, 65535, &port) ||
        pl_cfg_int("PARLEY_AUTH_THREADS", 4, 1, 256, &threads) ||
        pl_cfg_int("PARLEY_AUTH_BODY_MAX", 16384, 1024, 1 << 20, &body_max) ||
        pl_cfg_int("PARLEY_ACCESS_TTL", 900, 30, 86400, &ctx.access_ttl_s) ||
        pl_cfg_int("PARLEY_REFRESH_TTL", 30L * 86400, 60, 365L * 86400, &ctx.refresh_ttl_s) ||
        pl_cfg_int("PARLEY_JWT_LEEWAY", 30, 0, PL_JWT_MAX_LEEWAY, &leeway) ||
        pl_cfg_int("PARLEY_REDIS_PORT", 6379, 1, 65535, &redis_port) ||
        pl_cfg_int("PARLEY_RATE_WINDOW", 60, 1, 3600, &ctx.limits.window_s) ||
        pl_cfg_int("PARLEY_LOGIN_LIMIT_USER", 10, 1, 1000000, &ctx.limits.login_per_user) ||
        pl_cfg_int("PARLEY_LOGIN_LIMIT_ADDR", 60, 1, 1000000, &ctx.limits.login_per_addr) ||
        pl_cfg_int("PARLEY_REGISTER_LIMIT_ADDR", 20, 1, 1000000, &ctx.limits.register_per_addr) ||
        pl_cfg_int("PARLEY_CONTACT_LIMIT_USER", 30, 1, 1000000, &ctx.limits.contact_per_user) ||
        pl_cfg_int("PARLEY_GROUP_LIMIT_USER", 60, 1, 1000000, &ctx.limits.group_per_user) ||
        pl_cfg_int("PARLEY_GROUP_MEMBER_LIMIT", 10000, 2, 1000000, &ctx.limits.member_limit) ||
        pl_cfg_bool("PARLEY_TRUST_FORWARDED", 0, &trust)) {
        goto out;
    }
    const char *iss = pl_cfg_str("PARLEY_JWT_ISSUER", "parley");
    const char *aud = pl_cfg_str("PARLEY_JWT_AUDIENCE", "parley");
    if (load_key("PARLEY_JWT_PRIVATE_KEY", "var/keys/jwt-private.pem", &priv, &priv_len) ||
        load_key("PARLEY_JWT_PUBLIC_KEY", "var/keys/jwt-public.pem", &pub, &pub_len)) {
        goto out;
    }
    if (pl_jwt_signer_new(priv, priv_len, iss, aud, ctx.access_ttl_s, &ctx.signer) != PL_OK ||
        pl_jwt_verifier_new(pub, pub_len, iss, aud, leeway, auth_session_live, &ctx,
                            &ctx.verifier) != PL_OK ||
        pl_jwt_verifier_new(pub, pub_len, iss, aud, leeway, NULL, NULL, &ctx.verifier_lax) !=
            PL_OK) {
        pl_log_error("config_invalid", "the JWT key pair cannot sign and verify ES256");
        goto out;
    }
    /* Verify our own token with the public key: a mismatched pair fails here, not per login. */
    char *probe = NULL;
    pl_jwt_claims_t pc;
    long now_s = (long)(pl_now_ms() / 1000);
    int probe_rc = pl_jwt_sign(ctx.signer, "probe", "probe", now_s, &probe, NULL);
    if (probe_rc == PL_OK) {
        probe_rc = pl_jwt_verify(ctx.verifier_lax, probe, now_s, &pc);
    }
    free(probe);
    if (probe_rc != PL_OK) {
        pl_log_error("config_invalid", "the JWT public key does not match the private key");
        goto out;
    }
    if (pl_mongo_new(pl_cfg_str("PARLEY_MONGO_URI", "mongodb://127.0.0.1:27017"),
                     pl_cfg_str("PARLEY_MONGO_DB", "parley"), &ctx.mongo) != PL_OK ||
        pl_redis_new(pl_cfg_str("PARLEY_REDIS_HOST", "127.0.0.1"), (int)redis_port, 1000,
                     &ctx.redis) != PL_OK ||
        (ctx.metrics = pl_metrics_new()) == NULL ||
        pl_kafka_producer_new(pl_cfg_str("PARLEY_KAFKA_BROKERS", "127.0.0.1:9092"), NULL,
                              auth_social_delivered, &ctx, &ctx.producer) != PL_OK) {
        goto out;
    }
    init_metrics(&ctx);
    {
        /* The dummy hash that unknown users are checked against; its password is never kept. */
        char pw[33];
        if (pl_random_hex(pw, 16) != PL_OK ||
            auth_pw_hash(pw, strlen(pw), ctx.dummy_hash, sizeof(ctx.dummy_hash)) != PL_OK) {
            goto out;
        }
    }
    if (auth_ensure_indexes(&ctx) != PL_OK) {
        pl_log_warn("mongo_not_ready", "indexes will be created once MongoDB answers");
    }

    pl_http_cfg_t hc = {
        .bind_addr = pl_cfg_str("PARLEY_AUTH_ADDR", "0.0.0.0"),
        .port = (int)port,
        .threads = (unsigned)threads,
        .body_max = (size_t)body_max,
        .max_conns = 4096,
        .trust_forwarded = trust,
        .routes = auth_routes,
        .nroutes = auth_nroutes,
        .ud = &ctx,
        .ready = ready,
        .metrics = ctx.metrics,
    };
    if (pl_http_start(&hc, &http) != PL_OK) {
        goto out;
    }
    pl_log_fields(PL_LOG_INFO, "started", json_pack("{s:i}", "port", pl_http_port(http)),
                  "parley-auth listening on port %d", pl_http_port(http));
    int sig = 0;
    sigwait(&sigs, &sig);
    pl_log_info("stopping", "signal %d: draining", sig);
    pl_http_stop(&http);
    rc = 0;
out:
    pl_http_stop(&http);
    if (ctx.producer != NULL) {
        pl_kafka_flush(ctx.producer, 5000);
    }
    pl_kafka_free(&ctx.producer);
    pl_jwt_signer_free(&ctx.signer);
    pl_jwt_verifier_free(&ctx.verifier);
    pl_jwt_verifier_free(&ctx.verifier_lax);
    pl_mongo_free(&ctx.mongo);
    pl_redis_free(&ctx.redis);
    pl_metrics_free(&ctx.metrics);
    if (priv != NULL) {
        memset(priv, 0, priv_len);
    }
    free(priv);
    free(pub);
    if (rc == 0) {
        pl_log_info("stopped", "parley-auth stopped");
    }
    return rc;
}
