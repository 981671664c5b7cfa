/*
 * parley-gateway: holds WebSocket connections. libmicrohttpd answers HTTP (the /ws handshake,
 * /healthz, /readyz, /metrics) on its own thread and hands each upgraded socket to the event
 * loop on the main thread, which runs everything else. SIGTERM drains: the listener stops,
 * acks still owed are delivered, every client gets close 1001 and moves to another gateway.
 */
#include "gw.h"
#include "parley/cfg.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/ws.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void free_handoff(void *p)
{
    gw_handoff_t *h = p;
    free(h->extra);
    free(h);
}

static void on_upgraded(void *arg, int fd, const char *extra, size_t extra_len)
{
    gw_handoff_t *h = arg;
    gw_ctx_t *ctx = (gw_ctx_t *)h->next;
    h->next = NULL;
    h->fd = fd;
    if (fd < 0) {
        free_handoff(h);
        return;
    }
    if (extra_len > 0) {
        h->extra = malloc(extra_len);
        if (h->extra != NULL) {
            memcpy(h->extra, extra, extra_len);
            h->extra_len = extra_len;
        }
    }
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    /* Frames are written whole once per loop turn, so Nagle would only add delay (an ack
     * followed by a push would wait for the peer's delayed ACK, 40 ms). */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    gw_handoff(ctx, h);
}

static void h_ws(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    gw_ctx_t *ctx = ud;
    const char *why = NULL;
    const char *key = pl_http_header(req, "Sec-WebSocket-Key");
    if (pl_ws_check_request(pl_http_method(req), pl_http_header(req, "Upgrade"),
                            pl_http_header(req, "Connection"),
                            pl_http_header(req, "Sec-WebSocket-Version"), key, &why) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, why);
        return;
    }
    if (!pl_ws_origin_allowed(pl_http_header(req, "Origin"), ctx->origins)) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "origin not allowed");
        return;
    }
    if (atomic_load(&ctx->draining)) {
        pl_http_fail(resp, PL_ERR_UNAVAIL, "gateway is shutting down");
        resp->retry_after_s = 1;
        return;
    }
    gw_handoff_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        pl_http_fail(resp, PL_ERR_INTERNAL, "out of memory");
        return;
    }
    /* A token in the Authorization header is checked now; browsers send it in a first frame. */
    const char *token = pl_http_bearer(req);
    if (token != NULL) {
        int rc = pl_jwt_verify(ctx->verifier, token, (long)(pl_now_ms() / 1000), &h->claims);
        if (rc != PL_OK) {
            free(h);
            pl_http_fail(resp, PL_ERR_UNAUTH,
                         rc == PL_ERR_EXPIRED ? "access token expired" : "invalid access token");
            return;
        }
        h->authed = 1;
    }
    /* The context rides in next until the upgrade callback links the handoff for real. */
    h->next = (gw_handoff_t *)(void *)ctx;
    /* Thread-local: the server copies the headers on this thread right after we return. */
    static _Thread_local char accept[29];
    pl_ws_accept(key, accept);
    const char *headers[] = {"Upgrade", "websocket", "Sec-WebSocket-Accept", accept, NULL};
    pl_http_upgrade(resp, headers, on_upgraded, h, free_handoff);
}

static int ready(void *ud, json_t *detail)
{
    gw_ctx_t *ctx = ud;
    int kafka = pl_kafka_ping(ctx->producer, 1000);
    /* Both Redis connections: without the subscription, pushes for this gateway's clients
     * would be published to nobody. */
    int redis =
        atomic_load(&ctx->redis_ok) && atomic_load(&ctx->redis_sub_ok) ? PL_OK : PL_ERR_UNAVAIL;
    int draining = atomic_load(&ctx->draining);
    json_object_set_new(detail, "kafka", json_string(kafka == PL_OK ? "ok" : "unavailable"));
    json_object_set_new(detail, "redis", json_string(redis == PL_OK ? "ok" : "unavailable"));
    json_object_set_new(detail, "draining", json_boolean(draining));
    return kafka == PL_OK && redis == PL_OK && !draining ? PL_OK : PL_ERR_UNAVAIL;
}

static const pl_http_route_t routes[] = {
    {"GET", "/ws", h_ws},
};

static void init_metrics(gw_ctx_t *ctx)
{
    pl_metrics_t *m = ctx->metrics;
    ctx->m_conns = pl_metrics_gauge(m, "parley_gateway_connections", "Open WebSockets", NULL);
    ctx->m_opened = pl_metrics_counter(m, "parley_gateway_authenticated_total",
                                       "Connections authenticated", NULL);
    ctx->m_frames_in =
        pl_metrics_counter(m, "parley_gateway_frames_in_total", "Text frames received", NULL);
    ctx->m_acks = pl_metrics_counter(m, "parley_gateway_acks_total", "Sends acknowledged", NULL);
    ctx->m_pushes =
        pl_metrics_counter(m, "parley_gateway_pushes_total", "Messages pushed to sockets", NULL);
    ctx->m_slow_closed = pl_metrics_counter(m, "parley_gateway_slow_consumer_closes_total",
                                            "Connections closed with 1013 at the queue cap", NULL);
    ctx->m_produce_seconds = pl_metrics_histogram(
        m, "parley_gateway_produce_seconds", "Send frame to Kafka acknowledgement", NULL,
        pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
}

static int on_signal_fd = -1;

int main(void)
{
    int rc = 1;
    gw_ctx_t *ctx = calloc(1, sizeof(*ctx));
    pl_http_t *http = NULL;
    char *pub = NULL;
    size_t pub_len = 0;
    long port, redis_port, leeway, sendq, inflight, auth_port, auth_timeout, ping, dead, rate,
        burst;
    int trust;
    if (ctx == NULL) {
        return 1;
    }
    ctx->hand_fd = ctx->look_fd = -1;
    ctx->dr_pipe[0] = ctx->dr_pipe[1] = -1;

    pl_log_init("gateway", pl_log_level_parse(pl_cfg_str("PARLEY_LOG_LEVEL", "info")));
    sigset_t sigs;
    pl_block_signals(&sigs);
    if (pl_cfg_int("PARLEY_GATEWAY_PORT", 8080, 0, 65535, &port) ||
        pl_cfg_int("PARLEY_REDIS_PORT", 6379, 1, 65535, &redis_port) ||
        pl_cfg_int("PARLEY_JWT_LEEWAY", 30, 0, PL_JWT_MAX_LEEWAY, &leeway) ||
        pl_cfg_int("PARLEY_GATEWAY_SENDQ_MAX", 1 << 20, 65536, 1L << 30, &sendq) ||
        pl_cfg_int("PARLEY_GATEWAY_INFLIGHT_MAX", 64, 1, 100000, &inflight) ||
        pl_cfg_int("PARLEY_GATEWAY_USER_RATE", 20, 1, 10000000, &rate) ||
        pl_cfg_int("PARLEY_GATEWAY_USER_BURST", 60, 1, 10000000, &burst) ||
        pl_cfg_int("PARLEY_GATEWAY_AUTH_TIMEOUT_MS", 10000, 100, 600000, &auth_timeout) ||
        pl_cfg_int("PARLEY_GATEWAY_PING_MS", 30000, 100, 600000, &ping) ||
        pl_cfg_int("PARLEY_GATEWAY_DEAD_MS", 30000, 100, 600000, &dead) ||
        pl_cfg_int("PARLEY_AUTH_PORT", 8081, 1, 65535, &auth_port) ||
        pl_cfg_bool("PARLEY_TRUST_FORWARDED", 0, &trust)) {
        goto out;
    }
    ctx->sendq_max = (size_t)sendq;
    ctx->inflight_max = (unsigned)inflight;
    ctx->user_rate = (double)rate;
    ctx->user_burst = (double)burst;
    ctx->auth_timeout_ms = auth_timeout;
    ctx->ping_interval_ms = ping;
    ctx->dead_after_ms = dead;
    ctx->auth_port = (int)auth_port;
    snprintf(ctx->auth_host, sizeof(ctx->auth_host), "%s",
             pl_cfg_str("PARLEY_AUTH_HOST", "127.0.0.1"));
    ctx->origins =
        strdup(pl_cfg_str("PARLEY_GATEWAY_ORIGINS", "http://localhost:8000,http://127.0.0.1:8000"));
    {
        /* A gateway id unique per process, so a restarted gateway never inherits presence. */
        char host[48] = "gw";
        char rnd[9];
        gethostname(host, sizeof(host) - 1);
        pl_random_hex(rnd, 4);
        snprintf(ctx->gw_id, sizeof(ctx->gw_id), "%s-%s", pl_cfg_str("PARLEY_GATEWAY_ID", host),
                 rnd);
    }
    const char *keyfile = pl_cfg_str("PARLEY_JWT_PUBLIC_KEY", "var/keys/jwt-public.pem");
    if (pl_read_file(keyfile, 64 * 1024, &pub, &pub_len) != PL_OK ||
        pl_jwt_verifier_new(pub, pub_len, pl_cfg_str("PARLEY_JWT_ISSUER", "parley"),
                            pl_cfg_str("PARLEY_JWT_AUDIENCE", "parley"), leeway, NULL, NULL,
                            &ctx->verifier) != PL_OK) {
        pl_log_error("config_invalid", "PARLEY_JWT_PUBLIC_KEY: cannot use %s", keyfile);
        goto out;
    }
    if ((ctx->metrics = pl_metrics_new()) == NULL || (ctx->loop = gw_loop_new()) == NULL ||
        pipe2(ctx->dr_pipe, O_NONBLOCK | O_CLOEXEC) != 0 ||
        (ctx->hand_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        goto out;
    }
    init_metrics(ctx);
    pthread_mutex_init(&ctx->hand_lock, NULL);
    if (pl_kafka_producer_new(pl_cfg_str("PARLEY_KAFKA_BROKERS", "127.0.0.1:9092"), NULL,
                              gw_on_delivery, ctx, &ctx->producer) != PL_OK) {
        goto out;
    }
    pl_kafka_io_event(ctx->producer, ctx->dr_pipe[1]);
    gw_loop_add(ctx->loop, &ctx->dr_w, ctx->dr_pipe[0], EPOLLIN, gw_on_dr_pipe, ctx);
    gw_loop_add(ctx->loop, &ctx->hand_w, ctx->hand_fd, EPOLLIN, gw_adopt, ctx);
    if (gw_users_start(ctx) != PL_OK ||
        gw_redis_start(ctx, pl_cfg_str("PARLEY_REDIS_HOST", "127.0.0.1"), (int)redis_port) !=
            PL_OK) {
        goto out;
    }

    on_signal_fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);

    pl_http_cfg_t hc = {
        .bind_addr = pl_cfg_str("PARLEY_GATEWAY_ADDR", "0.0.0.0"),
        .port = (int)port,
        .threads = 1,
        .body_max = 1024,
        .max_conns = 65536,
        .trust_forwarded = trust,
        .allow_upgrade = 1,
        .conn_memory = 16 * 1024,
        .routes = routes,
        .nroutes = sizeof(routes) / sizeof(routes[0]),
        .ud = ctx,
        .ready = ready,
        .metrics = ctx->metrics,
    };
    if (pl_http_start(&hc, &http) != PL_OK) {
        goto out;
    }
    pl_log_fields(PL_LOG_INFO, "started",
                  json_pack("{s:i,s:s}", "port", pl_http_port(http), "gateway", ctx->gw_id),
                  "parley-gateway %s listening on port %d", ctx->gw_id, pl_http_port(http));

    long long next_tick = pl_now_ms() + 1000;
    long long next_refresh = pl_now_ms() + 5000;
    long long drain_deadline = 0;
    int wait_ms = 100; /* shorter while a throttled socket is due sooner */
    for (;;) {
        gw_loop_turn(ctx->loop, wait_ms);
        wait_ms = gw_unthrottle(ctx, 100);
        gw_end_turn(ctx);
        long long now = pl_now_ms();
        struct signalfd_siginfo si;
        if (!atomic_load(&ctx->draining) && on_signal_fd >= 0 &&
            read(on_signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
            /* Drain: no new sockets, acks still owed go out, then everyone gets 1001. */
            pl_log_info("draining", "signal %u: draining %ld connections", si.ssi_signo,
                        ctx->nconns);
            atomic_store(&ctx->draining, 1);
            gw_redis_goodbye(ctx);
            drain_deadline = now + 10000;
        }
        if (atomic_load(&ctx->draining)) {
            if (pl_kafka_outq_len(ctx->producer) == 0 || now > drain_deadline - 5000) {
                gw_close_all(ctx, PL_WS_GOING_AWAY, "gateway shutting down; reconnect");
            }
            if ((ctx->nconns == 0 && pl_kafka_outq_len(ctx->producer) == 0) ||
                now > drain_deadline) {
                break;
            }
        }
        /* Every turn (at most 100 ms): a lost Redis connection is made again RETRY_MS after
         * it went, which keeps short the window in which this gateway hears no pushes. */
        gw_redis_tick(ctx);
        if (now >= next_tick) {
            next_tick = now + 1000;
            gw_tick(ctx);
        }
        if (now >= next_refresh) {
            next_refresh = now + 5000;
            gw_redis_refresh(ctx);
        }
    }
    pl_log_info("stopping", "drained; %ld connections left", ctx->nconns);
    rc = 0;
out:
    pl_http_stop(&http);
    atomic_store(&ctx->stopping, 1);
    if (ctx->loop != NULL) {
        for (gw_conn_t *c = ctx->all; c != NULL; c = c->next) {
            gw_conn_close(c, PL_WS_GOING_AWAY, NULL);
        }
        while (ctx->all != NULL) {
            gw_conn_t *c = ctx->all;
            c->state = GW_CLOSING;
            gw_loop_del(ctx->loop, &c->w);
            ctx->all = c->next;
            ctx->flush = NULL;
            c->dead_next = ctx->dead;
            ctx->dead = c;
            if (c->fd >= 0) {
                close(c->fd);
                c->fd = -1;
            }
        }
        gw_end_turn(ctx);
        gw_users_stop(ctx);
        gw_redis_stop(ctx);
    }
    pl_kafka_free(&ctx->producer);
    pl_jwt_verifier_free(&ctx->verifier);
    gw_loop_free(&ctx->loop);
    pl_metrics_free(&ctx->metrics);
    if (on_signal_fd >= 0) {
        close(on_signal_fd);
    }
    if (ctx->hand_fd >= 0) {
        close(ctx->hand_fd);
    }
    if (ctx->dr_pipe[0] >= 0) {
        close(ctx->dr_pipe[0]);
        close(ctx->dr_pipe[1]);
    }
    free(ctx->origins);
    free(pub);
    free(ctx);
    if (rc == 0) {
        pl_log_info("stopped", "parley-gateway stopped");
    }
    return rc;
}
