/*
 * parley-gateway's internal interface. One event loop thread owns every WebSocket connection,
 * the Redis async connections and the Kafka delivery reports; libmicrohttpd's thread does the
 * HTTP handshake and hands upgraded sockets over through a queue and an eventfd; a worker
 * thread asks parley-auth whether recipients exist. Nothing else touches loop state.
 */
#ifndef PARLEY_GW_H
#define PARLEY_GW_H

#include "parley/http.h"
#include "parley/jwt.h"
#include "parley/kafka.h"
#include "parley/metrics.h"
#include "parley/proto.h"
#include "parley/ws.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define GW_MAGIC 0x67776331u

/* ---- event loop (gw_loop.c) ---- */

typedef struct gw_loop_s gw_loop_t;
typedef struct gw_watch_s gw_watch_t;
typedef void (*gw_io_fn)(gw_watch_t *w, uint32_t events);

/* A file descriptor watched by the loop; embedded in its owner, which must outlive it. */
struct gw_watch_s {
    int fd;
    uint32_t events;
    gw_io_fn cb;
    void *ud;
};

gw_loop_t *gw_loop_new(void);
void gw_loop_free(gw_loop_t **l);
int gw_loop_add(gw_loop_t *l, gw_watch_t *w, int fd, uint32_t events, gw_io_fn cb, void *ud);
int gw_loop_mod(gw_loop_t *l, gw_watch_t *w, uint32_t events);
void gw_loop_del(gw_loop_t *l, gw_watch_t *w);
/* Runs one turn: waits at most timeout_ms and dispatches ready watchers. */
void gw_loop_turn(gw_loop_t *l, int timeout_ms);

/* ---- connections (gw_conn.c) ---- */

enum gw_state { GW_WAIT_AUTH = 1, GW_CHECKING, GW_OPEN, GW_CLOSING };

typedef struct gw_conn_s gw_conn_t;

/* One frame waiting to be written: header and payload, written from off. */
typedef struct gw_out_s {
    struct gw_out_s *next;
    size_t len, off;
    unsigned char data[];
} gw_out_t;
typedef struct gw_ctx_s gw_ctx_t;

struct gw_conn_s {
    uint32_t magic;
    gw_watch_t w;
    uint64_t id;
    gw_ctx_t *ctx;
    int fd; /* the socket; -1 once released */
    enum gw_state state;
    char user[PL_USERNAME_MAX + 1];
    char sid[72];
    long token_exp;
    /* What an idle socket costs is this structure and nothing else: input is read into the
     * loop's buffer, and memory is taken only for what cannot be finished in one turn. */
    pl_ws_rx_t rx;       /* a fragmented message being received */
    unsigned char *pend; /* an incomplete frame, or unread frames, kept until the next read */
    size_t pend_len;
    gw_out_t *out_head, *out_tail; /* frames waiting to be written, in order */
    size_t out_bytes;              /* their size (the send-queue cap) */
    unsigned char close_queued;    /* our close frame is queued: nothing may follow it */
    unsigned char close_sent;      /* ... and written */
    unsigned char close_rcvd;      /* the peer's close arrived: nothing more is read */
    unsigned char in_presence;     /* registered in parley:presence (once it was open) */
    long long opened_ms, last_rx_ms, ping_ms;
    unsigned char rx_failed;  /* the socket itself failed or reached EOF (not a protocol error) */
    unsigned char tx_partial; /* the wire is inside a frame we are writing */
    unsigned inflight;        /* sends awaiting a lookup or a delivery report */
    size_t inflight_bytes;
    int dirty; /* queued frames to flush this turn */
    int read_paused;
    /* Over its user's send budget: nothing more is read from the socket until this time, so
     * a flood is held back by TCP instead of costing a parse and an error frame each. */
    long long throttled_until_ms;
    long long throttled_at_ms;  /* when it last went over budget */
    size_t rx_turn;             /* bytes read in this loop turn (fairness cap) */
    gw_conn_t *throttle_next;   /* on the throttled list */
    gw_conn_t *id_next;         /* in the id table */
    gw_conn_t *u_prev, *u_next; /* among the user's connections */
    gw_conn_t *prev, *next;     /* among all connections */
    gw_conn_t *flush_next;      /* on the flush list */
    gw_conn_t *dead_next;       /* on the free-at-end-of-turn list */
};

/* Handshake results handed from the HTTP thread to the loop. */
typedef struct gw_handoff_s {
    int fd;
    unsigned char *extra;
    size_t extra_len;
    int authed; /* token verified at upgrade (Authorization header) */
    pl_jwt_claims_t claims;
    struct gw_handoff_s *next;
} gw_handoff_t;

/* A send waiting for the recipient lookup or the delivery report. */
typedef struct gw_send_s {
    uint64_t conn_id;
    char client_id[PL_MAX_CLIENT_ID + 1];
    char msg_id[33];
    char to[PL_USERNAME_MAX + 1];
    char *content;
    size_t content_len;
    long long ts_ms;
    struct timespec started;
    struct gw_send_s *next;
} gw_send_t;

/* A recipient lookup: one per name in flight, with every send waiting on it. */
typedef struct gw_lookup_s {
    char name[PL_USERNAME_MAX + 1];
    int result; /* PL_OK exists, PL_ERR_NOTFOUND, PL_ERR_UNAVAIL */
    gw_send_t *waiting;
    struct gw_lookup_s *next;
} gw_lookup_t;

typedef struct gw_user_s {
    char name[PL_USERNAME_MAX + 1];
    gw_conn_t *conns;
    /* The user's send budget on this gateway: a token bucket of PARLEY_GATEWAY_USER_BURST
     * refilled at PARLEY_GATEWAY_USER_RATE per second, shared by the user's sockets here. */
    double tokens;
    long long refilled_ms;
    struct gw_user_s *next;
} gw_user_t;

#define GW_ID_BUCKETS    65536
#define GW_USER_BUCKETS  65536
#define GW_KNOWN_BUCKETS 4096

typedef struct gw_known_s {
    char name[PL_USERNAME_MAX + 1];
    int exists;
    long long until_ms;
    struct gw_known_s *next;
} gw_known_t;

typedef struct gw_redis_s gw_redis_t;

struct gw_ctx_s {
    gw_loop_t *loop;
    char gw_id[64];
    pl_jwt_verifier_t *verifier;
    pl_kafka_t *producer;
    pl_metrics_t *metrics;
    gw_redis_t *redis;
    char *origins;
    /* limits */
    size_t sendq_max;
    unsigned inflight_max;
    double user_rate;     /* sends per second per user (token bucket refill) */
    double user_burst;    /* bucket size */
    gw_conn_t *throttled; /* connections not read until their throttled_until_ms */
    long auth_timeout_ms;
    long ping_interval_ms;
    long dead_after_ms;
    /* handoff from the HTTP thread */
    pthread_mutex_t hand_lock;
    gw_handoff_t *hand_head;
    gw_watch_t hand_w;
    int hand_fd;
    /* lookups: loop -> worker -> loop */
    pthread_t worker;
    pthread_mutex_t look_lock;
    pthread_cond_t look_cond;
    gw_lookup_t *look_todo;    /* for the worker */
    gw_lookup_t *look_done;    /* for the loop */
    gw_lookup_t *look_pending; /* loop-owned: in flight */
    gw_watch_t look_w;
    int look_fd;
    gw_known_t *known[GW_KNOWN_BUCKETS];
    size_t nknown;
    char auth_host[128];
    int auth_port;
    /* Kafka delivery reports */
    int dr_pipe[2];
    gw_watch_t dr_w;
    /* connections */
    uint64_t next_id;
    gw_conn_t *by_id[GW_ID_BUCKETS];
    gw_user_t *users[GW_USER_BUCKETS];
    gw_conn_t *all;
    long nconns;
    gw_conn_t *flush;
    gw_conn_t *dead;
    atomic_int stopping;
    atomic_int draining;
    atomic_int redis_ok;     /* the command connection is up */
    atomic_int redis_sub_ok; /* the delivery channel is subscribed */
    /* metrics */
    pl_metric_t *m_conns, *m_opened, *m_frames_in, *m_acks, *m_pushes, *m_produce_seconds;
    pl_metric_t *m_slow_closed;
};

/* Takes an upgraded socket from the HTTP thread (thread-safe). */
void gw_handoff(gw_ctx_t *ctx, gw_handoff_t *h);
/* Loop side: adopts every queued handoff. */
void gw_adopt(gw_watch_t *w, uint32_t events);

/* Queues a text frame (copied) and marks the connection for flushing. */
int gw_conn_send_text(gw_conn_t *c, const char *text, size_t len);
/* Starts a close with code and reason; the socket is released once the close
 * handshake is done (or its grace period is over). */
void gw_conn_close(gw_conn_t *c, uint16_t code, const char *reason);
/* Writes every connection with queued frames; frees those closed this turn. */
void gw_end_turn(gw_ctx_t *ctx);
/* Lets throttled connections whose time has come be read again; returns the milliseconds
 * until the next one is due (at most max_ms), for the loop's wait. */
int gw_unthrottle(gw_ctx_t *ctx, int max_ms);
/* Once a second: auth timeouts, pings, dead peers, expired tokens. */
void gw_tick(gw_ctx_t *ctx);
gw_conn_t *gw_conn_find(gw_ctx_t *ctx, uint64_t id);
gw_user_t *gw_user_find(gw_ctx_t *ctx, const char *name);
/* The result of the revocation check of a connection in GW_CHECKING. */
void gw_conn_auth_result(gw_ctx_t *ctx, uint64_t conn_id, int rc);
/* Delivers a committed message to this gateway's connections of its sender and receiver. */
void gw_push(gw_ctx_t *ctx, json_t *msg);
/* Closes the connections of a revoked session. */
void gw_revoke(gw_ctx_t *ctx, const char *user, const char *sid);
/* Kafka delivery report for a send. */
void gw_on_delivery(void *ud, void *opaque, int err);
/* Serves queued delivery reports (the pipe became readable). */
void gw_on_dr_pipe(gw_watch_t *w, uint32_t events);
/* Closes every connection with 1001 (drain). */
void gw_close_all(gw_ctx_t *ctx, uint16_t code, const char *reason);

/* ---- recipients (gw_users.c) ---- */
int gw_users_start(gw_ctx_t *ctx);
void gw_users_stop(gw_ctx_t *ctx);
/* Continues s once its recipient is known to exist; takes ownership of s. */
void gw_users_check(gw_ctx_t *ctx, gw_send_t *s);
void gw_users_on_done(gw_watch_t *w, uint32_t events);
/* Drops what the cache knows of name (its account was disabled): the next send asks auth. */
void gw_users_forget(gw_ctx_t *ctx, const char *name);
/* Produces a send whose recipient exists (gw_conn.c). Takes ownership of s. */
void gw_produce(gw_ctx_t *ctx, gw_send_t *s);
/* Refuses a send with an error frame (gw_conn.c). Takes ownership of s. */
void gw_send_fail(gw_ctx_t *ctx, gw_send_t *s, const char *code, const char *msg, long retry_ms);

/* ---- Redis (gw_redis.c) ---- */
int gw_redis_start(gw_ctx_t *ctx, const char *host, int port);
void gw_redis_stop(gw_ctx_t *ctx);
/* Records a connection in presence, or removes it. */
void gw_presence_add(gw_ctx_t *ctx, gw_conn_t *c);
void gw_presence_del(gw_ctx_t *ctx, gw_conn_t *c);
/* Renews gateway liveness and every presence entry (call every few seconds). */
void gw_redis_refresh(gw_ctx_t *ctx);
/* Reconnects dropped connections (call every second). */
void gw_redis_tick(gw_ctx_t *ctx);
/* Asks whether c's session was revoked; answers through gw_conn_auth_result(). */
void gw_check_revoked(gw_ctx_t *ctx, gw_conn_t *c);
/* Removes this gateway's liveness key (drain). */
void gw_redis_goodbye(gw_ctx_t *ctx);

#endif
