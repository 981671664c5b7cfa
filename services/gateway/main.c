/*
 * parley-gateway: holds WebSocket connections and long-poll sessions. libmicrohttpd answers
 * HTTP (the /ws handshake, the /v1/lp/ requests, /healthz, /readyz, /metrics) on its own
 * thread and hands each upgraded socket and each long-poll request to the event loop on the
 * main thread, which runs everything else. SIGTERM drains: the listener stops, acks still owed
 * are delivered, every client gets close 1001 (a long-poll client in its poll's "closed") and
 * moves to another gateway.
 */
#include "gw_loop.h"
#include "gw_lp.h"
#include "gw_groups.h"
#include "gw_typing.h"
#include "gw_presence.h"
#include "gw_redis.h"
#include "gw_session.h"
#include "gw_users.h"
#include "gw_ws.h"
#include "parley/cfg.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/http.h"
#include "parley/kafka.h"
#include "parley/log.h"
#include "parley/ws.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

/* Everything main() wires together. The modules know nothing of each other; the adapters
 * below pass each one's reports to the one that acts on them. */
typedef struct gw_main_s {
    gw_loop_t *loop;
    char gw_id[PL_GATEWAY_ID_LEN];
    pl_jwt_verifier_t *verifier;
    pl_kafka_t *producer;
    pl_metrics_t *metrics;
    gw_redis_t *redis;
    gw_users_t *users;
    gw_presence_t *presence;
    gw_groups_t *groups;
    gw_typing_t *typing;
    gw_sessions_t *sessions;
    pl_metric_t *m_envelope[3]; /* items received from the router, by conversation kind */
    gw_ws_t *ws;
    gw_lp_t *lp;
    pl_http_t *http; /* quiesced when the drain starts */
    char *origins;
    int dr_pipe[2];
    gw_watch_t dr_w;
    atomic_int draining;
} gw_main_t;

/* ---- the session layer's outside: Kafka, Redis and parley-auth ---- */

static int out_produce(void *ud, const char *topic, const char *key, const char *value,
                       void *opaque)
{
    gw_main_t *g = ud;
    return pl_kafka_produce(g->producer, topic, key, strlen(key), value, strlen(value), opaque);
}

static void out_presence_add(void *ud, const char *user, uint64_t id)
{
    gw_presence_add(((gw_main_t *)ud)->presence, user, id);
    gw_groups_add(((gw_main_t *)ud)->groups, user, id);
}

static void out_presence_del(void *ud, const char *user, uint64_t id)
{
    gw_presence_del(((gw_main_t *)ud)->presence, user, id);
    gw_groups_del(((gw_main_t *)ud)->groups, user, id);
}

/* An asynchronous question of the session layer, carried to its answer. */
struct asked {
    gw_sessions_t *S;
    uint64_t sess_id;
    gw_done_fn done;
};

static struct asked *asked_new(gw_sessions_t *S, uint64_t id, gw_done_fn done)
{
    struct asked *a = malloc(sizeof(*a));
    if (a != NULL) {
        *a = (struct asked){S, id, done};
    }
    return a;
}

static void on_answer(void *arg, int rc)
{
    struct asked *a = arg;
    a->done(a->S, a->sess_id, rc);
    free(a);
}

static void out_check_revoked(void *ud, const char *sid, gw_sessions_t *S, uint64_t id,
                              gw_done_fn done)
{
    struct asked *a = asked_new(S, id, done);
    if (a == NULL) {
        done(S, id, PL_ERR_NOMEM);
        return;
    }
    gw_redis_check_revoked(((gw_main_t *)ud)->redis, sid, on_answer, a);
}

static void out_may_write(void *ud, const char *from, const char *to, gw_answer_fn done, void *arg)
{
    gw_users_ask(((gw_main_t *)ud)->users, to, from, done, arg);
}

struct post_question {
    gw_answer_fn done;
    void *arg;
};

static void on_may_post(void *arg, int rc, json_t *answer)
{
    (void)answer;
    struct post_question *q = arg;
    q->done(q->arg, rc == PL_OK || rc == PL_ERR_FORBIDDEN ? rc : PL_ERR_UNAVAIL);
    free(q);
}

/* A member by the gateway's own view may post (the store checks the post policy and any
 * change in flight); anyone else is asked about at parley-auth, so a non-member's send is
 * refused before it reaches Kafka rather than acked and refused after. member_only: whatever
 * the post policy (read, delivered, edit and recall frames). */
static void ask_group(gw_main_t *g, const char *user, const char *conv, int member_only,
                      gw_answer_fn done, void *arg)
{
    if (gw_groups_is_member(g->groups, conv, user)) {
        done(arg, PL_OK);
        return;
    }
    struct post_question *q = malloc(sizeof(*q));
    char path[180];
    if (q == NULL) {
        done(arg, PL_ERR_UNAVAIL);
        return;
    }
    q->done = done;
    q->arg = arg;
    snprintf(path, sizeof(path), "/internal/groups/may_post?conv=%s&user=%s%s", conv, user,
             member_only ? "&need=member" : "");
    gw_users_call(g->users, "GET", path, NULL, on_may_post, q);
}

static void out_may_post(void *ud, const char *user, const char *conv, gw_answer_fn done, void *arg)
{
    ask_group(ud, user, conv, 0, done, arg);
}

static void out_is_member(void *ud, const char *user, const char *conv, gw_answer_fn done,
                          void *arg)
{
    ask_group(ud, user, conv, 1, done, arg);
}

static void out_typing(void *ud, const char *user, const char *conv, int start, gw_answer_fn done,
                       void *arg)
{
    gw_typing_send(((gw_main_t *)ud)->typing, user, conv, start, done, arg);
}

/* ---- reports from below ---- */

static void on_delivery(void *ud, void *opaque, int err)
{
    gw_sessions_delivered(((gw_main_t *)ud)->sessions, opaque, err);
}

static void on_dr_pipe(gw_watch_t *w, uint32_t events)
{
    gw_main_t *g = w->ud;
    char buf[256];
    (void)events;
    while (read(g->dr_pipe[0], buf, sizeof(buf)) > 0) {
    }
    pl_kafka_poll(g->producer, 0);
}

/* A committed item from the router: a group's goes through the group views (membership
 * filter), anything else to the sender's and receiver's sessions; a user's own group notices
 * also update the views. */
static void on_receipt(gw_main_t *g, json_t *rec)
{
    gw_sessions_receipt(g->sessions, rec);
    const char *conv = json_string_value(json_object_get(rec, "conv"));
    const char *user = json_string_value(json_object_get(rec, "user"));
    if (pl_conv_kind(conv) == 'g' && user != NULL && json_is_true(json_object_get(rec, "share"))) {
        char *text = pl_frame_receipt(conv, user, json_string_value(json_object_get(rec, "kind")),
                                      (long long)json_integer_value(json_object_get(rec, "seq")));
        if (text != NULL) {
            gw_groups_send_members(g->groups, conv, text, strlen(text), user,
                                   json_object_get(rec, "except"));
        }
        free(text);
    }
}

static void on_push(void *ud, json_t *msg)
{
    gw_main_t *g = ud;
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (type != NULL && strcmp(type, "receipt") == 0) {
        on_receipt(g, msg);
        return;
    }
    if (type != NULL && strcmp(type, "typing") == 0) {
        gw_typing_heard(g->typing, msg); /* from a gateway, never through Kafka */
        return;
    }
    pl_msg_t m;
    if (pl_msg_from_json(msg, &m) != PL_OK) {
        gw_sessions_push(g->sessions, msg); /* logged there */
        return;
    }
    int kind = pl_conv_kind(m.conv);
    pl_metric_inc(g->m_envelope[kind == 'g' ? 1 : kind == 'u' ? 2 : 0]);
    if (kind == 'g' && m.refused[0] == '\0' && !m.replay) {
        gw_groups_push(g->groups, msg);
        return;
    }
    if (kind == 'u' && m.event != NULL) {
        gw_groups_own_item(g->groups, &m);
    }
    gw_sessions_push(g->sessions, msg);
}

static void on_revoke(void *ud, const char *user, const char *sid, int forget)
{
    gw_main_t *g = ud;
    if (sid != NULL) {
        gw_sessions_revoke(g->sessions, user, sid);
    }
    if (forget) {
        gw_users_forget(g->users, user); /* the next send to user asks parley-auth again */
    }
}

static void on_resync(void *ud)
{
    gw_main_t *g = ud;
    if (!atomic_load(&g->draining)) {
        gw_sessions_refresh_presence(g->sessions);
        gw_presence_resync(g->presence);
        gw_groups_tick(g->groups, 1);
    }
}

static void on_presence_note(void *ud, json_t *note)
{
    gw_presence_heard(((gw_main_t *)ud)->presence, note);
}

static void deliver_presence(void *ud, const char *user, const char *text, size_t len)
{
    gw_sessions_send_user(((gw_main_t *)ud)->sessions, user, text, len);
}

/* ---- HTTP: the upgrade ---- */

/* What the handshake passes to the upgrade callback. */
struct upgrade {
    gw_main_t *g;
    int authed;
    pl_jwt_claims_t claims;
};

static void on_upgraded(void *arg, int fd, const char *extra, size_t extra_len)
{
    struct upgrade *u = arg;
    if (fd >= 0) {
        int fl = fcntl(fd, F_GETFL);
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
        /* Frames are written whole once per loop turn, so Nagle would only add delay (an ack
         * followed by a push would wait for the peer's delayed ACK, 40 ms). */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        gw_ws_handoff(u->g->ws, fd, extra, extra_len, u->authed ? &u->claims : NULL);
    }
    free(u);
}

static void h_ws(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    gw_main_t *g = ud;
    const char *why = NULL;
    const char *key = pl_http_header(req, "Sec-WebSocket-Key");
    if (pl_ws_check_request(pl_http_method(req), pl_http_header(req, "Upgrade"),
                            pl_http_header(req, "Connection"),
                            pl_http_header(req, "Sec-WebSocket-Version"), key, &why) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, why);
        return;
    }
    if (!pl_ws_origin_allowed(pl_http_header(req, "Origin"), g->origins)) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "origin not allowed");
        return;
    }
    if (atomic_load(&g->draining)) {
        pl_http_fail(resp, PL_ERR_UNAVAIL, "gateway is shutting down");
        resp->retry_after_s = 1;
        return;
    }
    struct upgrade *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        pl_http_fail(resp, PL_ERR_INTERNAL, "out of memory");
        return;
    }
    u->g = g;
    /* A token in the Authorization header is checked now; browsers send it in a first frame. */
    if (pl_http_bearer(req) != NULL) {
        if (pl_http_authenticate(req, resp, g->verifier, &u->claims) != PL_OK) {
            free(u);
            return;
        }
        u->authed = 1;
    }
    /* Thread-local: the server copies the headers on this thread right after we return. */
    static _Thread_local char accept[29];
    pl_ws_accept(key, accept);
    const char *headers[] = {"Upgrade", "websocket", "Sec-WebSocket-Accept", accept, NULL};
    pl_http_upgrade(resp, headers, on_upgraded, u, free);
}

static void h_lp(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    gw_lp_http(((gw_main_t *)ud)->lp, req, resp);
}

static int ready(void *ud, json_t *detail)
{
    gw_main_t *g = ud;
    int kafka = pl_kafka_ping(g->producer, 1000);
    /* Both Redis connections: without the subscription, pushes for this gateway's clients
     * would be published to nobody. */
    int redis = gw_redis_ready(g->redis) ? PL_OK : PL_ERR_UNAVAIL;
    int draining = atomic_load(&g->draining);
    json_object_set_new(detail, "kafka", json_string(kafka == PL_OK ? "ok" : "unavailable"));
    json_object_set_new(detail, "redis", json_string(redis == PL_OK ? "ok" : "unavailable"));
    json_object_set_new(detail, "draining", json_boolean(draining));
    return kafka == PL_OK && redis == PL_OK && !draining ? PL_OK : PL_ERR_UNAVAIL;
}

static const pl_http_route_t routes[] = {
    {"GET", "/ws", h_ws},
    {"POST", "/v1/lp/open", h_lp},
    {"GET", "/v1/lp/poll", h_lp},
    {"POST", "/v1/lp/send", h_lp},
};

/* The gateway's settings (README, configuration table). */
struct settings {
    long port, redis_port, leeway, sendq, inflight, auth_port, auth_timeout, ping, dead, rate,
        burst, grace, cursor_rate, typing_rate, lp_hold, lp_idle, lp_max, lp_user_max;
    int trust;
};

static int read_settings(struct settings *c)
{
    return pl_cfg_int("PARLEY_GATEWAY_PORT", 8080, 0, 65535, &c->port) ||
                   pl_cfg_int("PARLEY_REDIS_PORT", 6379, 1, 65535, &c->redis_port) ||
                   pl_cfg_int("PARLEY_JWT_LEEWAY", 30, 0, PL_JWT_MAX_LEEWAY, &c->leeway) ||
                   pl_cfg_int("PARLEY_GATEWAY_SENDQ_MAX", 1 << 20, 65536, 1L << 30, &c->sendq) ||
                   pl_cfg_int("PARLEY_GATEWAY_INFLIGHT_MAX", 64, 1, 100000, &c->inflight) ||
                   pl_cfg_int("PARLEY_GATEWAY_USER_RATE", 20, 1, 10000000, &c->rate) ||
                   pl_cfg_int("PARLEY_GATEWAY_USER_BURST", 60, 1, 10000000, &c->burst) ||
                   pl_cfg_int("PARLEY_GATEWAY_CURSOR_RATE", 50, 1, 10000000, &c->cursor_rate) ||
                   pl_cfg_int("PARLEY_GATEWAY_TYPING_RATE", 2, 1, 10000, &c->typing_rate) ||
                   pl_cfg_int("PARLEY_GATEWAY_AUTH_TIMEOUT_MS", 10000, 100, 600000,
                              &c->auth_timeout) ||
                   pl_cfg_int("PARLEY_GATEWAY_PING_MS", 30000, 100, 600000, &c->ping) ||
                   pl_cfg_int("PARLEY_GATEWAY_DEAD_MS", 30000, 100, 600000, &c->dead) ||
                   pl_cfg_int("PARLEY_AUTH_PORT", 8081, 1, 65535, &c->auth_port) ||
                   pl_cfg_int("PARLEY_PRESENCE_GRACE_MS", 5000, 0, 600000, &c->grace) ||
                   pl_cfg_int("PARLEY_LP_HOLD_MS", 25000, 100, 120000, &c->lp_hold) ||
                   pl_cfg_int("PARLEY_LP_IDLE_MS", 60000, 1000, 3600000, &c->lp_idle) ||
                   pl_cfg_int("PARLEY_LP_MAX", 10000, 0, 1000000, &c->lp_max) ||
                   pl_cfg_int("PARLEY_LP_USER_MAX", 8, 1, 10000, &c->lp_user_max) ||
                   pl_cfg_bool("PARLEY_TRUST_FORWARDED", 0, &c->trust)
               ? PL_ERR_CONFIG
               : PL_OK;
}

/* A gateway id unique per process, so a restarted gateway never inherits presence. */
static void make_gateway_id(char *out, size_t len)
{
    char host[48] = "gw";
    char rnd[9];
    gethostname(host, sizeof(host) - 1);
    pl_random_hex(rnd, 4);
    snprintf(out, len, "%s-%s", pl_cfg_str("PARLEY_GATEWAY_ID", host), rnd);
}

static int load_verifier(gw_main_t *g, long leeway)
{
    char *pub = NULL;
    size_t pub_len = 0;
    const char *keyfile = pl_cfg_str("PARLEY_JWT_PUBLIC_KEY", "var/keys/jwt-public.pem");
    int rc = pl_read_file(keyfile, 64 * 1024, &pub, &pub_len);
    if (rc == PL_OK) {
        rc = pl_jwt_verifier_new(pub, pub_len, pl_cfg_str("PARLEY_JWT_ISSUER", "parley"),
                                 pl_cfg_str("PARLEY_JWT_AUDIENCE", "parley"), leeway, NULL, NULL,
                                 &g->verifier);
    }
    if (rc != PL_OK) {
        pl_log_error("config_invalid", "PARLEY_JWT_PUBLIC_KEY: cannot use %s", keyfile);
    }
    free(pub);
    return rc;
}

/* Creates every module and wires each one's reports to the module that acts on them. */
static int assemble(gw_main_t *g, const struct settings *c)
{
    if (load_verifier(g, c->leeway) != PL_OK || (g->metrics = pl_metrics_new()) == NULL ||
        (g->loop = gw_loop_new()) == NULL || pipe2(g->dr_pipe, O_NONBLOCK | O_CLOEXEC) != 0 ||
        pl_kafka_producer_new(pl_cfg_str("PARLEY_KAFKA_BROKERS", "127.0.0.1:9092"), NULL,
                              on_delivery, g, &g->producer) != PL_OK) {
        return PL_ERR_CONFIG;
    }
    pl_kafka_io_event(g->producer, g->dr_pipe[1]);
    gw_loop_add(g->loop, &g->dr_w, g->dr_pipe[0], EPOLLIN, on_dr_pipe, g);
    gw_sessions_cfg_t sc = {
        .gw_id = g->gw_id,
        .verifier = g->verifier,
        .outside = {g, out_produce, out_presence_add, out_presence_del, out_check_revoked,
                    out_may_write, out_may_post, out_is_member, out_typing},
        .metrics = g->metrics,
        .inflight_max = (unsigned)c->inflight,
        .user_rate = (double)c->rate,
        .user_burst = (double)c->burst,
        .cursor_rate = (double)c->cursor_rate,
        .typing_rate = (double)c->typing_rate,
        .auth_timeout_ms = c->auth_timeout,
    };
    gw_ws_cfg_t wc = {
        .loop = g->loop,
        .metrics = g->metrics,
        .cbs = gw_sessions_link_cbs,
        .sendq_max = (size_t)c->sendq,
        .ping_interval_ms = c->ping,
        .dead_after_ms = c->dead,
    };
    gw_redis_cbs_t rc = {g, on_push, on_revoke, on_presence_note, on_resync};
    if ((g->sessions = gw_sessions_new(&sc)) == NULL) {
        return PL_ERR_NOMEM;
    }
    wc.cbs_ud = g->sessions;
    gw_lp_cfg_t lc = {
        .loop = g->loop,
        .metrics = g->metrics,
        .cbs = gw_sessions_link_cbs,
        .cbs_ud = g->sessions,
        .verifier = g->verifier,
        .buf_max = (size_t)c->sendq, /* the socket send queue's cap, for the same reason */
        .hold_ms = c->lp_hold,
        .idle_ms = c->lp_idle,
        .max_sessions = c->lp_max,
        .user_max = c->lp_user_max,
    };
    if ((g->ws = gw_ws_new(&wc)) == NULL || (g->lp = gw_lp_new(&lc)) == NULL ||
        (g->users = gw_users_new(g->loop, pl_cfg_str("PARLEY_AUTH_HOST", "127.0.0.1"),
                                 (int)c->auth_port)) == NULL ||
        (g->redis = gw_redis_new(g->loop, pl_cfg_str("PARLEY_REDIS_HOST", "127.0.0.1"),
                                 (int)c->redis_port, g->gw_id, &rc)) == NULL) {
        return PL_ERR_IO;
    }
    gw_presence_cfg_t pc = {g->redis, g->users, c->grace, g, deliver_presence};
    gw_groups_cfg_t gc = {g->redis, g->users, g->metrics, g, deliver_presence};
    static const char *const kinds[] = {"kind=\"d\"", "kind=\"g\"", "kind=\"u\""};
    for (int i = 0; i < 3; i++) {
        g->m_envelope[i] =
            pl_metrics_counter(g->metrics, "parley_gateway_routed_items_total",
                               "Items the router sent here, by conversation kind", kinds[i]);
    }
    gw_typing_cfg_t tc = {g->redis, g->users, g->metrics, g, deliver_presence};
    return (g->presence = gw_presence_new(&pc)) != NULL &&
                   (g->groups = gw_groups_new(&gc)) != NULL &&
                   (g->typing = gw_typing_new(&tc)) != NULL
               ? PL_OK
               : PL_ERR_NOMEM;
}

/* Runs the loop until a signal on sigfd has drained every socket (or the drain timed out). */
static void serve(gw_main_t *g, int sigfd)
{
    long long next_tick = pl_now_ms() + 1000;
    long long next_refresh = pl_now_ms() + 5000;
    long long drain_deadline = 0;
    int wait_ms = 100; /* shorter while a throttled socket is due sooner */
    for (;;) {
        gw_loop_turn(g->loop, wait_ms);
        wait_ms = gw_ws_unthrottle(g->ws, 100);
        gw_ws_end_turn(g->ws);
        gw_lp_end_turn(g->lp);
        long long now = pl_now_ms();
        struct signalfd_siginfo si;
        if (!atomic_load(&g->draining) && read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
            /* Drain: no new sockets, acks still owed go out, then everyone gets 1001. */
            pl_log_info("draining", "signal %u: draining %ld connections", si.ssi_signo,
                        gw_ws_count(g->ws));
            atomic_store(&g->draining, 1);
            /* No new connections from now on: the edge sends new sockets, opens and polls to
             * the other gateways instead of to a 503 here. Open ones are still served. */
            pl_http_quiesce(g->http);
            gw_lp_drain(g->lp);
            gw_sessions_drain(g->sessions);
            gw_redis_goodbye(g->redis);
            drain_deadline = now + 10000;
        }
        if (atomic_load(&g->draining)) {
            if (pl_kafka_outq_len(g->producer) == 0 || now > drain_deadline - 5000) {
                gw_sessions_close_all(g->sessions, PL_WS_GOING_AWAY,
                                      "gateway shutting down; reconnect");
            }
            if ((gw_ws_count(g->ws) == 0 && gw_lp_count(g->lp) == 0 &&
                 pl_kafka_outq_len(g->producer) == 0) ||
                now > drain_deadline) {
                break;
            }
        }
        /* Every turn (at most 100 ms): a lost Redis connection is made again soon after it
         * went, which keeps short the window in which this gateway hears no pushes. */
        gw_redis_tick(g->redis);
        if (now >= next_tick) {
            next_tick = now + 1000;
            gw_sessions_tick(g->sessions);
            gw_ws_tick(g->ws);
            gw_lp_tick(g->lp);
            if (!atomic_load(&g->draining)) {
                gw_presence_tick(g->presence);
                gw_groups_tick(g->groups, 0);
            }
            gw_typing_tick(g->typing);
        }
        if (now >= next_refresh && !atomic_load(&g->draining)) {
            next_refresh = now + 5000;
            gw_redis_heartbeat(g->redis);
            gw_sessions_refresh_presence(g->sessions);
        }
    }
}

/* Tears down in the order the wiring needs: sockets (their sessions leave presence), then
 * the questions still open (answered before their askers go), the producer (its last
 * delivery reports reach the sessions), and the sessions last. */
static void teardown(gw_main_t *g)
{
    if (g->sessions != NULL) {
        gw_sessions_close_all(g->sessions, PL_WS_GOING_AWAY, NULL);
    }
    if (g->ws != NULL) {
        gw_ws_end_turn(g->ws); /* writes the closes as far as the sockets take them */
    }
    gw_ws_free(&g->ws);
    gw_lp_free(&g->lp);
    gw_users_free(&g->users);
    gw_redis_free(&g->redis);
    gw_presence_free(&g->presence);
    gw_groups_free(&g->groups);
    gw_typing_free(&g->typing);
    pl_kafka_free(&g->producer);
    gw_sessions_free(&g->sessions);
    pl_jwt_verifier_free(&g->verifier);
    gw_loop_free(&g->loop);
    pl_metrics_free(&g->metrics);
    for (int i = 0; i < 2; i++) {
        if (g->dr_pipe[i] >= 0) {
            close(g->dr_pipe[i]);
        }
    }
    free(g->origins);
}

int main(void)
{
    int rc = 1;
    gw_main_t g;
    struct settings c;
    pl_http_t *http = NULL;
    int sigfd = -1;
    memset(&g, 0, sizeof(g));
    g.dr_pipe[0] = g.dr_pipe[1] = -1;
    pl_log_init("gateway", pl_log_level_parse(pl_cfg_str("PARLEY_LOG_LEVEL", "info")));
    sigset_t sigs;
    pl_block_signals(&sigs);
    if (read_settings(&c) != PL_OK) {
        goto out;
    }
    make_gateway_id(g.gw_id, sizeof(g.gw_id));
    g.origins =
        strdup(pl_cfg_str("PARLEY_GATEWAY_ORIGINS", "http://localhost:8000,http://127.0.0.1:8000"));
    if (assemble(&g, &c) != PL_OK ||
        (sigfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        goto out;
    }
    pl_http_cfg_t hc = {
        .bind_addr = pl_cfg_str("PARLEY_GATEWAY_ADDR", "0.0.0.0"),
        .port = (int)c.port,
        .threads = 1,
        .body_max = 256 * 1024, /* a long-poll send: GW_LP_SEND_MAX frames */
        .max_conns = 65536,
        .trust_forwarded = c.trust,
        .allow_upgrade = 1,
        .allow_hold = 1,
        .conn_memory = 16 * 1024,
        .routes = routes,
        .nroutes = sizeof(routes) / sizeof(routes[0]),
        .ud = &g,
        .ready = ready,
        .metrics = g.metrics,
    };
    if (pl_http_start(&hc, &http) != PL_OK) {
        goto out;
    }
    pl_log_fields(PL_LOG_INFO, "started",
                  json_pack("{s:i,s:s}", "port", pl_http_port(http), "gateway", g.gw_id),
                  "parley-gateway %s listening on port %d", g.gw_id, pl_http_port(http));
    g.http = http;
    serve(&g, sigfd);
    pl_log_info("stopping", "drained; %ld connections left", gw_ws_count(g.ws));
    rc = 0;
out:
    if (g.lp != NULL && http != NULL) {
        /* Every held poll is answered before the server stops (a suspended request must
         * not outlive it); a moment lets the answers go out. */
        gw_lp_shutdown(g.lp);
        usleep(100 * 1000);
    }
    pl_http_stop(&http);
    teardown(&g);
    if (sigfd >= 0) {
        close(sigfd);
    }
    if (rc == 0) {
        pl_log_info("stopped", "parley-gateway stopped");
    }
    return rc;
}
