/*
 * REST server over libmicrohttpd. Each request's body is gathered into a bounded buffer while
 * MHD streams it in, then parsed as JSON once, so handlers see either a complete document or
 * nothing; everything a client can get wrong is answered with a JSON error, never a 5xx.
 */
#include "parley/http.h"
#include "parley/buf.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <arpa/inet.h>
#include <assert.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

struct pl_http_s {
    struct MHD_Daemon *d;
    pl_http_cfg_t cfg;
    int port;
    int quiesced;
    pl_metric_t *latency;
};

struct pl_http_req_s {
    pl_http_t *h;
    struct MHD_Connection *conn;
    const char *method;
    const char *path;
    pl_buf_t body_raw;
    json_t *body;
    int too_big;
    char addr[INET6_ADDRSTRLEN];
    struct timespec start;
    pl_http_upgrade_fn upgrade;
    void *upgrade_arg;
    void (*upgrade_arg_free)(void *arg);
    /* A held request (pl_http_hold): the answer is written by whichever thread calls
     * pl_http_answer() and read here after MHD_resume_connection(), whose lock orders the two. */
    int held, answered;
    int ans_status;
    long ans_retry_s;
    char *ans_text;
    size_t ans_len;
};

int pl_http_status_of(int err)
{
    switch (err) {
    case PL_OK:
        return 200;
    case PL_ERR_INVAL:
    case PL_ERR_PROTO:
        return 400;
    case PL_ERR_UNAUTH:
    case PL_ERR_EXPIRED:
    case PL_ERR_REVOKED:
        return 401;
    case PL_ERR_FORBIDDEN:
        return 403;
    case PL_ERR_NOTFOUND:
        return 404;
    case PL_ERR_EXISTS:
        return 409;
    case PL_ERR_TOOBIG:
        return 413;
    case PL_ERR_RATELIMIT:
        return 429;
    case PL_ERR_UNAVAIL:
        return 503;
    default:
        return 500;
    }
}

void pl_http_reply(pl_http_resp_t *resp, int status, json_t *body)
{
    json_decref(resp->body);
    resp->status = status;
    resp->body = body;
}

void pl_http_fail(pl_http_resp_t *resp, int err, const char *message)
{
    json_t *e = json_pack("{s:{s:s,s:s}}", "error", "code", pl_errcode(err), "message",
                          message ? message : pl_strerror(err));
    pl_http_reply(resp, pl_http_status_of(err), e);
}

void pl_http_upgrade(pl_http_resp_t *resp, const char *const *headers, pl_http_upgrade_fn fn,
                     void *arg, void (*free_arg)(void *arg))
{
    json_decref(resp->body);
    resp->body = NULL;
    resp->status = 101;
    resp->upgrade = fn;
    resp->upgrade_arg = arg;
    resp->upgrade_arg_free = free_arg;
    size_t i = 0;
    for (; headers != NULL && headers[i] != NULL && i + 2 < 8; i += 2) {
        resp->headers[i] = headers[i];
        resp->headers[i + 1] = headers[i + 1];
    }
    resp->headers[i] = NULL;
}

static void on_upgraded(void *cls, struct MHD_Connection *conn, void *con_cls, const char *extra_in,
                        size_t extra_in_size, MHD_socket sock,
                        struct MHD_UpgradeResponseHandle *urh)
{
    (void)cls;
    (void)conn;
    pl_http_req_t *req = con_cls;
    void *arg = req->upgrade_arg;
    /* From here the callee owns arg. It gets a descriptor of its own for the socket, and
     * libmicrohttpd closes its one at once and frees the connection. The daemon runs with
     * MHD_USE_TURBO, under which closing does not shutdown() the socket (see pl_http_start),
     * so the duplicate stays usable. The connection is already suspended here, and closing
     * from inside this callback only queues its cleanup. */
    req->upgrade_arg = NULL;
    int own = fcntl(sock, F_DUPFD_CLOEXEC, 3);
    req->upgrade(arg, own, extra_in, extra_in_size);
    MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
}

static enum MHD_Result send_upgrade(pl_http_req_t *req, pl_http_resp_t *resp)
{
    struct MHD_Response *r = MHD_create_response_for_upgrade(on_upgraded, req);
    if (r == NULL) {
        return MHD_NO;
    }
    for (size_t i = 0; resp->headers[i] != NULL; i += 2) {
        MHD_add_response_header(r, resp->headers[i], resp->headers[i + 1]);
    }
    req->upgrade = resp->upgrade;
    req->upgrade_arg = resp->upgrade_arg;
    req->upgrade_arg_free = resp->upgrade_arg_free;
    resp->upgrade_arg = NULL;
    enum MHD_Result ok = MHD_queue_response(req->conn, MHD_HTTP_SWITCHING_PROTOCOLS, r);
    MHD_destroy_response(r);
    return ok;
}

pl_http_req_t *pl_http_hold(pl_http_req_t *req, pl_http_resp_t *resp)
{
    assert(req->h->cfg.allow_hold);
    /* Suspended here, inside the access handler, before anyone else can hold the handle: an
     * answer from another thread can then never come before the suspension. */
    MHD_suspend_connection(req->conn);
    req->held = 1;
    resp->held = 1;
    return req;
}

void pl_http_answer(pl_http_req_t *req, int status, char *text, size_t len, long retry_after_s)
{
    assert(req->held && !req->answered);
    req->ans_status = status;
    req->ans_text = text;
    req->ans_len = text != NULL ? len : 0;
    req->ans_retry_s = retry_after_s;
    req->answered = 1;
    MHD_resume_connection(req->conn);
}

void pl_http_answer_error(pl_http_req_t *req, int err, const char *message, long retry_ms)
{
    json_t *e = json_pack("{s:s,s:s}", "code", pl_errcode(err), "message",
                          message ? message : pl_strerror(err));
    if (e != NULL && retry_ms > 0) {
        json_object_set_new(e, "retry_after_ms", json_integer(retry_ms));
    }
    json_t *body = json_pack("{s:o*}", "error", e);
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    pl_http_answer(req, text != NULL ? pl_http_status_of(err) : 500, text,
                   text != NULL ? strlen(text) : 0, retry_ms > 0 ? (retry_ms + 999) / 1000 : 0);
}

static enum MHD_Result send_resp(pl_http_req_t *req, pl_http_resp_t *resp, const char *content_type,
                                 char *text, size_t len);

/* The call MHD makes for a held request once it is resumed: the stored answer goes out. A
 * resume that was not ours (the server stopping) gets a 503. */
static enum MHD_Result send_held(pl_http_req_t *req)
{
    pl_http_resp_t resp = {.status = 503, .retry_after_s = 1};
    char *text = NULL;
    size_t len = 0;
    if (req->answered) {
        resp.status = req->ans_status;
        resp.retry_after_s = req->ans_retry_s;
        text = req->ans_text;
        len = req->ans_len;
        req->ans_text = NULL;
    }
    if (text == NULL && (text = strdup("")) == NULL) {
        return MHD_NO;
    }
    req->held = 0;
    return send_resp(req, &resp, "application/json", text, len);
}

void pl_http_fail_dep(pl_http_resp_t *resp, int rc)
{
    if (rc == PL_ERR_UNAVAIL) {
        pl_http_fail(resp, PL_ERR_UNAVAIL, "service temporarily unavailable, retry shortly");
        resp->retry_after_s = 1;
    } else {
        pl_http_fail(resp, PL_ERR_INTERNAL, "internal error");
    }
}

const char *pl_http_method(const pl_http_req_t *req)
{
    return req->method;
}

const char *pl_http_path(const pl_http_req_t *req)
{
    return req->path;
}

const char *pl_http_header(const pl_http_req_t *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *pl_http_query(const pl_http_req_t *req, const char *key)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, key);
}

const char *pl_http_client_addr(const pl_http_req_t *req)
{
    return req->addr;
}

json_t *pl_http_body(const pl_http_req_t *req)
{
    return req->body;
}

const char *pl_http_bearer(const pl_http_req_t *req)
{
    const char *v = pl_http_header(req, MHD_HTTP_HEADER_AUTHORIZATION);
    if (v == NULL || strncasecmp(v, "Bearer ", 7) != 0) {
        return NULL;
    }
    v += 7;
    while (*v == ' ') {
        v++;
    }
    return *v ? v : NULL;
}

static void client_addr(pl_http_req_t *req)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(req->addr, sizeof(req->addr), "unknown");
    if (req->h->cfg.trust_forwarded) {
        /* nginx sets X-Real-IP to the peer it saw; only trusted when configured so. */
        const char *fwd = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Real-IP");
        if (fwd != NULL && strlen(fwd) < sizeof(req->addr)) {
            snprintf(req->addr, sizeof(req->addr), "%s", fwd);
            return;
        }
    }
    if (ci == NULL || ci->client_addr == NULL) {
        return;
    }
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, req->addr,
                  sizeof(req->addr));
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, req->addr,
                  sizeof(req->addr));
    }
}

static enum MHD_Result send_resp(pl_http_req_t *req, pl_http_resp_t *resp, const char *content_type,
                                 char *text, size_t len)
{
    /* MHD frees text with free() once the response is sent. */
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (resp->retry_after_s > 0) {
        char ra[32];
        snprintf(ra, sizeof(ra), "%ld", resp->retry_after_s);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    enum MHD_Result ok = MHD_queue_response(req->conn, (unsigned)resp->status, r);
    MHD_destroy_response(r);

    if (req->h->cfg.metrics != NULL) {
        char labels[32];
        snprintf(labels, sizeof(labels), "code=\"%d\"", resp->status);
        pl_metric_inc(pl_metrics_counter(req->h->cfg.metrics, "parley_http_requests_total",
                                         "HTTP requests answered, by status", labels));
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        /* A held request's time is mostly the wait it asked for: not a latency. */
        if (!req->answered) {
            pl_metric_observe(req->h->latency,
                              (double)(now.tv_sec - req->start.tv_sec) +
                                  (double)(now.tv_nsec - req->start.tv_nsec) / 1e9);
        }
    }
    pl_log_fields(resp->status >= 500 ? PL_LOG_WARN : PL_LOG_DEBUG, "http_request",
                  json_pack("{s:s,s:s,s:i}", "method", req->method, "path", req->path, "status",
                            resp->status),
                  "%s %s %d", req->method, req->path, resp->status);
    return ok;
}

static enum MHD_Result send_json(pl_http_req_t *req, pl_http_resp_t *resp)
{
    char *text = NULL;
    size_t len = 0;
    if (resp->body != NULL) {
        text = json_dumps(resp->body, JSON_COMPACT);
        if (text == NULL) {
            resp->status = 500;
        } else {
            len = strlen(text);
        }
    }
    if (text == NULL) {
        text = strdup("");
    }
    return send_resp(req, resp, "application/json", text, len);
}

static void health(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    (void)req;
    (void)ud;
    pl_http_reply(resp, 200, json_pack("{s:s}", "status", "ok"));
}

static void ready(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    json_t *detail = json_object();
    int rc = req->h->cfg.ready ? req->h->cfg.ready(ud, detail) : PL_OK;
    json_object_set_new(detail, "status", json_string(rc == PL_OK ? "ready" : "unavailable"));
    pl_http_reply(resp, rc == PL_OK ? 200 : 503, detail);
}

static enum MHD_Result metrics(pl_http_req_t *req, pl_http_resp_t *resp)
{
    pl_buf_t out;
    pl_buf_init(&out, 16u << 20);
    resp->status = 200;
    if (req->h->cfg.metrics == NULL || pl_metrics_render(req->h->cfg.metrics, &out) != PL_OK) {
        pl_buf_reset(&out);
        resp->status = 500;
    }
    size_t len = out.len;
    char *text = pl_buf_detach(&out);
    if (text == NULL) {
        return MHD_NO;
    }
    return send_resp(req, resp, "text/plain; version=0.0.4", text, len);
}

static int route_match(const pl_http_route_t *r, const char *path)
{
    size_t n = strlen(r->path);
    if (n > 0 && r->path[n - 1] == '/') {
        return strncmp(path, r->path, n) == 0 && path[n] != '\0';
    }
    return strcmp(path, r->path) == 0;
}

static enum MHD_Result dispatch(pl_http_req_t *req)
{
    pl_http_t *h = req->h;
    pl_http_resp_t resp = {.status = 500, .body = NULL, .retry_after_s = 0};
    int is_get = strcmp(req->method, "GET") == 0;

    if (req->too_big) {
        pl_http_fail(&resp, PL_ERR_TOOBIG, "request body is too large");
        goto send;
    }
    if (req->body_raw.len > 0) {
        json_error_t jerr;
        req->body =
            json_loadb(req->body_raw.data, req->body_raw.len, JSON_REJECT_DUPLICATES, &jerr);
        if (req->body == NULL) {
            pl_http_fail(&resp, PL_ERR_INVAL, "request body is not valid JSON");
            goto send;
        }
    }
    if (is_get && strcmp(req->path, "/healthz") == 0) {
        health(req, &resp, h->cfg.ud);
        goto send;
    }
    if (is_get && strcmp(req->path, "/readyz") == 0) {
        ready(req, &resp, h->cfg.ud);
        goto send;
    }
    if (is_get && strcmp(req->path, "/metrics") == 0) {
        return metrics(req, &resp);
    }
    int path_known = 0;
    for (size_t i = 0; i < h->cfg.nroutes; i++) {
        const pl_http_route_t *r = &h->cfg.routes[i];
        if (!route_match(r, req->path)) {
            continue;
        }
        path_known = 1;
        if (strcmp(r->method, req->method) == 0) {
            resp.status = 200;
            r->handler(req, &resp, h->cfg.ud);
            goto send;
        }
    }
    if (path_known) {
        pl_http_reply(&resp, 405,
                      json_pack("{s:{s:s,s:s}}", "error", "code", "method_not_allowed", "message",
                                "method not allowed on this path"));
    } else {
        pl_http_fail(&resp, PL_ERR_NOTFOUND, "no such endpoint");
    }
send:;
    if (resp.held) {
        json_decref(resp.body);
        return MHD_YES; /* suspended; send_held() answers */
    }
    if (resp.upgrade != NULL) {
        if (h->cfg.allow_upgrade) {
            return send_upgrade(req, &resp);
        }
        if (resp.upgrade_arg_free != NULL) {
            resp.upgrade_arg_free(resp.upgrade_arg);
        }
        pl_http_fail(&resp, PL_ERR_INTERNAL, "upgrade not enabled");
    }
    enum MHD_Result ok = send_json(req, &resp);
    json_decref(resp.body);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    pl_http_t *h = cls;
    pl_http_req_t *req = *con_cls;
    (void)version;

    if (req == NULL) {
        req = calloc(1, sizeof(*req));
        if (req == NULL) {
            return MHD_NO;
        }
        req->h = h;
        req->conn = conn;
        req->method = method;
        req->path = url;
        clock_gettime(CLOCK_MONOTONIC, &req->start);
        pl_buf_init(&req->body_raw, h->cfg.body_max);
        client_addr(req);
        const char *cl =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl != NULL && strtoull(cl, NULL, 10) > h->cfg.body_max) {
            req->too_big = 1;
        }
        *con_cls = req;
        return MHD_YES;
    }
    if (req->held) {
        return send_held(req);
    }
    if (*upload_data_size > 0) {
        /* Past the cap the rest of the body is read and dropped, so the 413 can be sent. */
        if (!req->too_big &&
            pl_buf_append(&req->body_raw, upload_data, *upload_data_size) != PL_OK) {
            req->too_big = 1;
            pl_buf_free(&req->body_raw);
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    return dispatch(req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    pl_http_req_t *req = *con_cls;
    if (req == NULL) {
        return;
    }
    if (req->upgrade_arg != NULL && req->upgrade_arg_free != NULL) {
        req->upgrade_arg_free(req->upgrade_arg);
    }
    json_decref(req->body);
    pl_buf_free(&req->body_raw);
    free(req->ans_text);
    free(req);
    *con_cls = NULL;
}

/* libmicrohttpd's own printf-style messages: the format comes from the library. */
__attribute__((format(printf, 2, 0))) static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && msg[n - 1] == '\n') {
        msg[--n] = '\0';
    }
    pl_log_debug("http_server", "%s", msg);
}

int pl_http_start(const pl_http_cfg_t *cfg, pl_http_t **out)
{
    assert(cfg != NULL && out != NULL);
    *out = NULL;
    pl_http_t *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return PL_ERR_NOMEM;
    }
    h->cfg = *cfg;
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)cfg->port);
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    if (cfg->bind_addr != NULL && inet_pton(AF_INET, cfg->bind_addr, &sa.sin_addr) != 1) {
        free(h);
        return PL_ERR_INVAL;
    }
    if (cfg->metrics != NULL) {
        h->latency = pl_metrics_histogram(cfg->metrics, "parley_http_request_seconds",
                                          "Time to answer an HTTP request", NULL,
                                          pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
    }
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL_LINUX_ONLY | MHD_USE_ITC |
                         MHD_USE_ERROR_LOG;
    if (cfg->allow_upgrade) {
        /* TURBO: reads and writes before polling, and no shutdown(SHUT_WR) when a connection
         * is closed, which on_upgraded() needs: the socket lives on in its duplicate. */
        flags |= MHD_ALLOW_UPGRADE | MHD_USE_TURBO;
    }
    if (cfg->allow_hold) {
        flags |= MHD_ALLOW_SUSPEND_RESUME;
    }
    /* A pool of one is no pool: MHD wants the option only for two threads or more. */
    unsigned int threads = cfg->threads > 1 ? cfg->threads : 0;
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, NULL},
        {MHD_OPTION_SOCK_ADDR, 0, &sa},
        {threads ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_ARRAY, threads, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, cfg->max_conns ? cfg->max_conns : 1024, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, 30, NULL},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, h},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT,
         (intptr_t)(cfg->conn_memory ? cfg->conn_memory : 32 * 1024), NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    if (!threads) {
        /* Drop the pool entry by shifting the rest over it. */
        memmove(&opts[2], &opts[3], sizeof(opts) - 3 * sizeof(opts[0]));
    }
    h->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, h, MHD_OPTION_ARRAY,
                            opts, MHD_OPTION_END);
    if (h->d == NULL) {
        pl_log_error("http_bind_failed", "cannot listen on port %d", cfg->port);
        free(h);
        return PL_ERR_IO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : cfg->port;
    *out = h;
    return PL_OK;
}

int pl_http_port(const pl_http_t *h)
{
    return h->port;
}

void pl_http_quiesce(pl_http_t *h)
{
    if (h != NULL && !h->quiesced) {
        MHD_socket fd = MHD_quiesce_daemon(h->d);
        if (fd != MHD_INVALID_SOCKET) {
            close(
                fd); /* MHD hands the listening socket back: closed, new connections are refused */
        }
        h->quiesced = 1;
    }
}

void pl_http_stop(pl_http_t **ph)
{
    if (ph == NULL || *ph == NULL) {
        return;
    }
    pl_http_t *h = *ph;
    pl_http_quiesce(h);
    MHD_stop_daemon(h->d);
    free(h);
    *ph = NULL;
}

int pl_http_authenticate(const pl_http_req_t *req, pl_http_resp_t *resp, const pl_jwt_verifier_t *v,
                         pl_jwt_claims_t *c)
{
    const char *token = pl_http_bearer(req);
    if (token == NULL) {
        pl_http_fail(resp, PL_ERR_UNAUTH, "missing Authorization: Bearer token");
        return PL_ERR_UNAUTH;
    }
    int rc = pl_jwt_verify(v, token, (long)(pl_now_ms() / 1000), c);
    switch (rc) {
    case PL_OK:
        break;
    case PL_ERR_EXPIRED:
        pl_http_fail(resp, rc, "access token expired; refresh it");
        break;
    case PL_ERR_REVOKED:
        pl_http_fail(resp, rc, "session was logged out");
        break;
    case PL_ERR_UNAVAIL:
        pl_http_fail_dep(resp, rc);
        break;
    default:
        pl_http_fail(resp, PL_ERR_UNAUTH, "invalid access token");
        rc = PL_ERR_UNAUTH;
        break;
    }
    return rc;
}
