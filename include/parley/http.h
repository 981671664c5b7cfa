/*
 * The REST server every Parley service embeds: libmicrohttpd with a thread pool, a route
 * table, JSON request bodies read under a size cap, JSON error bodies of the DESIGN's form
 * ({"error":{"code":…,"message":…}}), and the operational endpoints /healthz, /readyz and
 * /metrics. Not for WebSocket traffic, which the gateway serves on its own event loop.
 * Handlers run on the server's pool threads, several at once, so they must be thread-safe.
 */
#ifndef PARLEY_HTTP_H
#define PARLEY_HTTP_H

#include "parley/jwt.h"
#include "parley/metrics.h"

#include <jansson.h>
#include <stddef.h>

typedef struct pl_http_s pl_http_t;
typedef struct pl_http_req_s pl_http_req_t;

/*
 * Called on the server's thread once a 101 response is sent: fd is the upgraded socket, now
 * the callee's to close (-1 when it could not be taken over: the client is already gone),
 * extra holds bytes the client sent after its request (valid during the call only), arg is
 * what the handler passed to pl_http_upgrade(). libmicrohttpd forgets the connection as soon
 * as this returns, so an upgraded socket costs it no memory (its connection and 16-32 KiB
 * buffer pool would otherwise live as long as the socket).
 */
typedef void (*pl_http_upgrade_fn)(void *arg, int fd, const char *extra, size_t extra_len);

/* What a handler fills in. Handlers normally use pl_http_reply() and pl_http_fail(). */
typedef struct pl_http_resp_s {
    int status;
    json_t *body;       /* owned by the response; NULL for an empty body */
    long retry_after_s; /* > 0 adds a Retry-After header */
    pl_http_upgrade_fn upgrade;
    void *upgrade_arg;
    void (*upgrade_arg_free)(void *arg); /* frees upgrade_arg if the upgrade never happens */
    const char *headers[8];              /* extra name/value pairs, NULL-terminated */
    int held;                            /* set by pl_http_hold(): answered later */
} pl_http_resp_t;

typedef void (*pl_http_handler_fn)(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);

typedef struct pl_http_route_s {
    const char *method; /* "GET", "POST", … */
    const char *path;   /* exact path, or a prefix when it ends with '/' */
    pl_http_handler_fn handler;
} pl_http_route_t;

typedef struct pl_http_cfg_s {
    const char *bind_addr;         /* numeric IPv4 address; NULL means all */
    int port;                      /* 0 picks a free port, see pl_http_port() */
    unsigned threads;              /* pool threads; handlers may block this many at once */
    size_t body_max;               /* larger bodies get 413 */
    unsigned max_conns;            /* connections beyond this are refused */
    int trust_forwarded;           /* take the client address from X-Real-IP (behind nginx) */
    int allow_upgrade;             /* handlers may answer with pl_http_upgrade() */
    int allow_hold;                /* handlers may answer later with pl_http_hold() */
    size_t conn_memory;            /* per-connection buffer limit; 0 keeps the default */
    const pl_http_route_t *routes; /* borrowed; must outlive the server */
    size_t nroutes;
    void *ud; /* passed to handlers and ready() */
    /* Returns PL_OK when every dependency answers; may add details to the object. */
    int (*ready)(void *ud, json_t *detail);
    pl_metrics_t *metrics; /* borrowed; may be NULL */
} pl_http_cfg_t;

/*
 * Starts serving in background threads. cfg is copied, but what it points to is borrowed.
 * Returns PL_OK and the server in *out, PL_ERR_INVAL for a bad address, or PL_ERR_IO when the
 * port cannot be bound (detail is logged).
 */
int pl_http_start(const pl_http_cfg_t *cfg, pl_http_t **out);

/* The port actually bound. */
int pl_http_port(const pl_http_t *h);

/* Stops accepting: the listening socket is closed (a proxy in front moves new connections to
 * another instance), connections already open are still served. Idempotent; accepts NULL. */
void pl_http_quiesce(pl_http_t *h);

/* Stops accepting, lets in-flight requests finish, frees the server, sets *h to NULL. */
void pl_http_stop(pl_http_t **h);

/* Request accessors; every returned pointer is borrowed and valid during the handler only. */
const char *pl_http_method(const pl_http_req_t *req);
const char *pl_http_path(const pl_http_req_t *req);
const char *pl_http_header(const pl_http_req_t *req, const char *name);
const char *pl_http_query(const pl_http_req_t *req, const char *key);
const char *pl_http_client_addr(const pl_http_req_t *req);
/* The parsed JSON body, or NULL when the request had none. */
json_t *pl_http_body(const pl_http_req_t *req);
/* The token of an "Authorization: Bearer <token>" header, or NULL. */
const char *pl_http_bearer(const pl_http_req_t *req);
/*
 * The identity of a request: verifies its bearer token with v at the current time. PL_OK with
 * the claims in *c; otherwise resp is filled with the error every service answers (401 for a
 * missing, invalid, expired or revoked token, each with its own message; 503 with Retry-After
 * when revocation cannot be checked) and its code is returned. Thread-safe.
 */
int pl_http_authenticate(const pl_http_req_t *req, pl_http_resp_t *resp, const pl_jwt_verifier_t *v,
                         pl_jwt_claims_t *c);

/* Sets status and body; steals body (which may be NULL). */
void pl_http_reply(pl_http_resp_t *resp, int status, json_t *body);

/* Sets the DESIGN's error body for err with its HTTP status; message is copied. */
void pl_http_fail(pl_http_resp_t *resp, int err, const char *message);

/*
 * Answers 101 Switching Protocols with the given header pairs (copied pointers: they must be
 * string literals or outlive the response) and, once sent, hands the socket to fn with arg.
 * free_arg releases arg if the client goes away first. Needs cfg.allow_upgrade.
 */
void pl_http_upgrade(pl_http_resp_t *resp, const char *const *headers, pl_http_upgrade_fn fn,
                     void *arg, void (*free_arg)(void *arg));

/*
 * Holds the request open without a thread: the connection is suspended (libmicrohttpd
 * neither reads it nor times it out) until pl_http_answer() is called for it, from any
 * thread, exactly once; the handler returns with nothing more set in resp. Returns the handle
 * to answer with. After the handler returns, the request's accessors may no longer be used.
 * Needs cfg.allow_hold, and every held request must be answered before pl_http_stop().
 */
pl_http_req_t *pl_http_hold(pl_http_req_t *req, pl_http_resp_t *resp);

/*
 * Answers a held request with status and a JSON text of len bytes (stolen: freed with free()
 * once sent; NULL for an empty body); retry_after_s > 0 adds Retry-After. Thread-safe. A
 * client that went away meanwhile is noticed by the server, not by the caller.
 */
void pl_http_answer(pl_http_req_t *req, int status, char *text, size_t len, long retry_after_s);

/* Answers a held request with the DESIGN's error body for err (message copied), adding
 * "retry_after_ms" and a Retry-After header when retry_ms > 0. Thread-safe. */
void pl_http_answer_error(pl_http_req_t *req, int err, const char *message, long retry_ms);

/*
 * The answer when a dependency failed with rc: 503 with Retry-After: 1 for PL_ERR_UNAVAIL (the
 * client may retry), 500 without detail otherwise.
 */
void pl_http_fail_dep(pl_http_resp_t *resp, int rc);

/* The HTTP status that stands for a PL_ERR_* code (400, 401, 403, 404, 409, 413, 429, 503, 500). */
int pl_http_status_of(int err);

#endif
