/*
 * Sessions: what a connected device is to the gateway, independent of its transport. A
 * session moves WAIT_AUTH -> CHECKING -> OPEN -> CLOSING: its token is verified (at the
 * handshake, or from a first "auth" frame), then its session id is checked against the
 * revocation list before it may send or receive. Sends take a token from the user's budget,
 * wait for the recipient lookup, go to Kafka, and are acked from the delivery report only.
 *
 * Ownership: the layer allocates each gw_sess_t in on_open and frees it in on_closed; a
 * transport holds the pointer in between. Asynchronous answers name sessions by id, never
 * by pointer, because the session may be gone when they come.
 */
#include "gw_session.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "parley/wire.h"
#include "parley/ws.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SESS_MAGIC   0x67777331u
#define ID_BUCKETS   65536
#define USER_BUCKETS 65536

enum sess_state { WAIT_AUTH = 1, CHECKING, OPEN, CLOSING };

typedef struct user_s user_t;

struct gw_sess_s {
    uint32_t magic;
    enum sess_state state;
    uint64_t id;
    void *link;
    const gw_link_ops_t *ops;
    char user[PL_USERNAME_LEN];
    char sid[PL_SESSION_ID_LEN];
    long token_exp;
    long long opened_ms;
    unsigned inflight; /* sends and cursors awaiting a lookup or a delivery report */
    float ctokens;     /* the cursor frames' bucket (cfg.cursor_rate, burst twice that) */
    long long crefill_ms;
    float ttokens; /* the typing frames' bucket (cfg.typing_rate, burst five times that) */
    long long trefill_ms;
    unsigned char in_presence;
    gw_sess_t *id_next;         /* in the id table */
    gw_sess_t *u_prev, *u_next; /* among the user's open sessions */
    gw_sess_t *prev, *next;     /* among all sessions */
};

/* A user with open sessions here, and the user's send budget on this gateway: a token bucket
 * of user_burst refilled at user_rate per second, shared by the user's devices here. */
struct user_s {
    char name[PL_USERNAME_LEN];
    gw_sess_t *sessions;
    double tokens;
    long long refilled_ms;
    user_t *next;
};

/* What a delivery report names: a send or a cursor (each begins with its kind). */
enum produced { PRODUCED_SEND = 1, PRODUCED_CURSOR };

/* A send between its frame and its delivery report. */
typedef struct send_s {
    enum produced what;
    gw_sessions_t *S;
    uint64_t sess_id;
    char client_id[PL_MAX_CLIENT_ID + 1];
    char msg_id[PL_MSG_ID_LEN];
    char sender[PL_USERNAME_LEN];
    char to[PL_USERNAME_LEN];
    char group[PL_CONV_ID_LEN]; /* a group's conversation id, or "" */
    char kind[PL_KIND_LEN];     /* text, edit or recall */
    long long target_seq;       /* edit, recall */
    char *content;
    size_t content_len;
    long long ts_ms;
    struct timespec started;
} send_t;

/* A read or delivered frame between its frame and its delivery report. */
typedef struct cursor_s {
    enum produced what;
    gw_sessions_t *S;
    uint64_t sess_id;
    pl_cursor_t c;
} cursor_t;

struct gw_sessions_s {
    gw_sessions_cfg_t cfg;
    char gw_id[PL_GATEWAY_ID_LEN];
    uint64_t next_id;
    long count;
    int draining;
    gw_sess_t *all;
    gw_sess_t *by_id[ID_BUCKETS];
    user_t *users[USER_BUCKETS];
    pl_metric_t *m_opened, *m_frames_in, *m_acks, *m_pushes, *m_replay_acks, *m_produce_seconds;
};

#define CHECK(s) assert((s) != NULL && (s)->magic == SESS_MAGIC)

gw_sessions_t *gw_sessions_new(const gw_sessions_cfg_t *cfg)
{
    gw_sessions_t *S = calloc(1, sizeof(*S));
    if (S == NULL) {
        return NULL;
    }
    S->cfg = *cfg;
    snprintf(S->gw_id, sizeof(S->gw_id), "%s", cfg->gw_id);
    S->cfg.gw_id = S->gw_id;
    pl_metrics_t *m = cfg->metrics;
    S->m_opened = pl_metrics_counter(m, "parley_gateway_authenticated_total",
                                     "Connections authenticated", NULL);
    S->m_frames_in =
        pl_metrics_counter(m, "parley_gateway_frames_in_total", "Text frames received", NULL);
    S->m_acks = pl_metrics_counter(m, "parley_gateway_acks_total", "Sends acknowledged", NULL);
    S->m_pushes =
        pl_metrics_counter(m, "parley_gateway_pushes_total", "Messages pushed to sockets", NULL);
    S->m_replay_acks =
        pl_metrics_counter(m, "parley_gateway_replay_acks_total",
                           "Resends of stored messages answered with conv and seq", NULL);
    S->m_produce_seconds = pl_metrics_histogram(
        m, "parley_gateway_produce_seconds", "Send frame to Kafka acknowledgement", NULL,
        pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
    return S;
}

void gw_sessions_free(gw_sessions_t **pS)
{
    if (pS == NULL || *pS == NULL) {
        return;
    }
    gw_sessions_t *S = *pS;
    for (gw_sess_t *s = S->all, *next; s != NULL; s = next) {
        next = s->next;
        s->magic = 0;
        free(s);
    }
    for (size_t i = 0; i < USER_BUCKETS; i++) {
        for (user_t *u = S->users[i], *next; u != NULL; u = next) {
            next = u->next;
            free(u);
        }
    }
    free(S);
    *pS = NULL;
}

long gw_sessions_count(const gw_sessions_t *S)
{
    return S->count;
}

static gw_sess_t *find(gw_sessions_t *S, uint64_t id)
{
    for (gw_sess_t *s = S->by_id[id % ID_BUCKETS]; s != NULL; s = s->id_next) {
        if (s->id == id) {
            return s;
        }
    }
    return NULL;
}

static user_t *user_find(gw_sessions_t *S, const char *name)
{
    for (user_t *u = S->users[pl_hash_str(name) % USER_BUCKETS]; u != NULL; u = u->next) {
        if (strcmp(u->name, name) == 0) {
            return u;
        }
    }
    return NULL;
}

static void user_link(gw_sessions_t *S, gw_sess_t *s)
{
    user_t *u = user_find(S, s->user);
    if (u == NULL) {
        u = calloc(1, sizeof(*u));
        if (u == NULL) {
            return; /* the in-flight cap still bounds it; pushes miss it until it reconnects */
        }
        snprintf(u->name, sizeof(u->name), "%s", s->user);
        u->tokens = S->cfg.user_burst;
        u->refilled_ms = pl_now_ms();
        size_t h = pl_hash_str(s->user) % USER_BUCKETS;
        u->next = S->users[h];
        S->users[h] = u;
    }
    s->u_prev = NULL;
    s->u_next = u->sessions;
    if (u->sessions != NULL) {
        u->sessions->u_prev = s;
    }
    u->sessions = s;
}

static void user_unlink(gw_sessions_t *S, gw_sess_t *s)
{
    user_t *u = user_find(S, s->user);
    if (u == NULL) {
        return;
    }
    if (s->u_prev != NULL) {
        s->u_prev->u_next = s->u_next;
    } else if (u->sessions == s) {
        u->sessions = s->u_next;
    } else {
        return; /* not linked */
    }
    if (s->u_next != NULL) {
        s->u_next->u_prev = s->u_prev;
    }
    s->u_prev = s->u_next = NULL;
    if (u->sessions == NULL) {
        user_t **pp = &S->users[pl_hash_str(u->name) % USER_BUCKETS];
        while (*pp != u) {
            pp = &(*pp)->next;
        }
        *pp = u->next;
        free(u);
    }
}

/* ---- frames out ---- */

static void send_text(gw_sess_t *s, const char *text)
{
    if (text != NULL && s->state != CLOSING) {
        s->ops->send_text(s->link, text, strlen(text));
    }
}

static void close_sess(gw_sess_t *s, uint16_t status, const char *reason)
{
    if (s->state != CLOSING) {
        s->state = CLOSING;
        s->ops->close(s->link, status, reason);
    }
}

static void send_error(gw_sessions_t *S, gw_sess_t *s, int err, const char *msg,
                       const char *client_id, long retry_ms)
{
    char *f = pl_frame_error(pl_errcode(err), msg, client_id, retry_ms);
    send_text(s, f);
    free(f);
    char labels[64];
    snprintf(labels, sizeof(labels), "code=\"%s\"", pl_errcode(err));
    pl_metric_inc(pl_metrics_counter(S->cfg.metrics, "parley_gateway_errors_total",
                                     "Error frames sent, by code", labels));
}

/* ---- opening and authentication ---- */

static void on_revocation_checked(gw_sessions_t *S, uint64_t id, int rc);

static void start_auth(gw_sessions_t *S, gw_sess_t *s, const pl_jwt_claims_t *claims)
{
    /* Tokens come from parley-auth, whose subjects are usernames; anything else is refused. */
    if (pl_username_normalize(claims->sub, s->user) != PL_OK || strcmp(claims->sub, s->user) != 0) {
        close_sess(s, PL_WS_POLICY, "invalid token subject");
        return;
    }
    snprintf(s->sid, sizeof(s->sid), "%s", claims->sid);
    s->token_exp = claims->exp;
    s->state = CHECKING;
    /* Nothing more is taken from the client until the session is known to be live. */
    s->ops->hold(s->link);
    S->cfg.outside.check_revoked(S->cfg.outside.ud, s->sid, S, s->id, on_revocation_checked);
}

static void on_revocation_checked(gw_sessions_t *S, uint64_t id, int rc)
{
    gw_sess_t *s = find(S, id);
    if (s == NULL || s->state != CHECKING) {
        return;
    }
    if (rc != PL_OK) {
        close_sess(s, PL_WS_POLICY, "session revoked");
        return;
    }
    s->state = OPEN;
    user_link(S, s);
    S->cfg.outside.presence_add(S->cfg.outside.ud, s->user, s->id);
    s->in_presence = 1;
    pl_metric_inc(S->m_opened);
    json_t *ready =
        json_pack("{s:s,s:s,s:s}", "type", "ready", "user", s->user, "gateway", S->gw_id);
    char *f = ready ? json_dumps(ready, JSON_COMPACT) : NULL;
    json_decref(ready);
    send_text(s, f);
    free(f);
    /* Frames that arrived during the check are taken now (see gw_link_ops_t.resume). */
    s->ops->resume(s->link);
}

static gw_sess_t *on_open(void *ud, void *link, const gw_link_ops_t *ops,
                          const pl_jwt_claims_t *claims)
{
    gw_sessions_t *S = ud;
    gw_sess_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return NULL;
    }
    s->magic = SESS_MAGIC;
    s->state = WAIT_AUTH;
    s->id = ++S->next_id;
    s->link = link;
    s->ops = ops;
    s->opened_ms = pl_now_ms();
    s->id_next = S->by_id[s->id % ID_BUCKETS];
    S->by_id[s->id % ID_BUCKETS] = s;
    s->next = S->all;
    if (S->all != NULL) {
        S->all->prev = s;
    }
    S->all = s;
    S->count++;
    if (S->draining) {
        close_sess(s, PL_WS_GOING_AWAY, "gateway is shutting down");
    } else if (claims != NULL) {
        start_auth(S, s, claims);
    }
    return s;
}

static void on_closed(void *ud, gw_sess_t *s)
{
    gw_sessions_t *S = ud;
    CHECK(s);
    if (s->in_presence) {
        /* Whatever its state now: a session closed by either side was registered while it
         * was open, and its entry must not outlive it. */
        S->cfg.outside.presence_del(S->cfg.outside.ud, s->user, s->id);
    }
    user_unlink(S, s);
    gw_sess_t **pp = &S->by_id[s->id % ID_BUCKETS];
    while (*pp != NULL && *pp != s) {
        pp = &(*pp)->id_next;
    }
    if (*pp == s) {
        *pp = s->id_next;
    }
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else {
        S->all = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    S->count--;
    s->magic = 0;
    free(s);
}

/* ---- sends ---- */

/* Takes one send from u's bucket. 0 when allowed, else the milliseconds until one is. */
static long take_token(gw_sessions_t *S, user_t *u)
{
    if (u == NULL) {
        return 0; /* not linked (out of memory at open): the in-flight cap still holds */
    }
    long long now = pl_now_ms();
    u->tokens += (double)(now - u->refilled_ms) * S->cfg.user_rate / 1000.0;
    u->refilled_ms = now;
    if (u->tokens > S->cfg.user_burst) {
        u->tokens = S->cfg.user_burst;
    }
    if (u->tokens < 1.0) {
        return 1 + (long)((1.0 - u->tokens) * 1000.0 / S->cfg.user_rate);
    }
    u->tokens -= 1.0;
    return 0;
}

static void send_done(gw_sessions_t *S, send_t *d)
{
    gw_sess_t *s = find(S, d->sess_id);
    if (s != NULL) {
        s->inflight--;
    }
    free(d->content);
    free(d);
}

/* Refuses a send with an error frame (to its session, if still there) and drops it. */
static void send_fail(gw_sessions_t *S, send_t *d, int err, const char *msg, long retry_ms)
{
    gw_sess_t *s = find(S, d->sess_id);
    if (s != NULL) {
        send_error(S, s, err, msg, d->client_id, retry_ms);
    }
    send_done(S, d);
}

static void produce(gw_sessions_t *S, send_t *d)
{
    gw_sess_t *s = find(S, d->sess_id);
    if (s == NULL || s->state != OPEN) {
        /* The client went away before its send was produced: nothing was acked, it retries. */
        send_done(S, d);
        return;
    }
    pl_msg_t m;
    memset(&m, 0, sizeof(m));
    snprintf(m.msg_id, sizeof(m.msg_id), "%s", d->msg_id);
    if (d->group[0]) {
        /* A group item: its receiver is the group; the store decides who may post. */
        snprintf(m.conv, sizeof(m.conv), "%s", d->group);
        snprintf(m.receiver, sizeof(m.receiver), "%.*s", PL_USERNAME_MAX, d->group);
    } else {
        pl_conv_id(d->sender, d->to, m.conv);
        snprintf(m.receiver, sizeof(m.receiver), "%s", d->to);
    }
    snprintf(m.sender, sizeof(m.sender), "%s", d->sender);
    snprintf(m.client_id, sizeof(m.client_id), "%s", d->client_id);
    snprintf(m.origin_gw, sizeof(m.origin_gw), "%s", S->gw_id);
    m.origin_conn = s->id;
    m.content = d->content;
    m.content_len = d->content_len;
    m.ts_ms = d->ts_ms;
    snprintf(m.kind, sizeof(m.kind), "%s", d->kind);
    m.target_seq = d->target_seq;
    char *rec = pl_msg_record(&m);
    int rc = rec ? S->cfg.outside.produce(S->cfg.outside.ud, PL_TOPIC_MESSAGES, m.conv, rec, d)
                 : PL_ERR_NOMEM;
    free(rec);
    if (rc != PL_OK) {
        send_fail(S, d, PL_ERR_UNAVAIL, "message queue is full; retry", 1000);
    }
}

static void on_recipient(void *arg, int rc)
{
    send_t *d = arg;
    gw_sessions_t *S = d->S;
    if (rc == PL_OK) {
        produce(S, d);
    } else if (rc == PL_ERR_NOTFOUND) {
        send_fail(S, d, PL_ERR_NOTFOUND, "no such user", 0);
    } else if (rc == PL_ERR_FORBIDDEN) {
        /* The same words as the store's refusal (push_refusal): a blocked sender cannot tell
         * a block from a receiver who takes messages from contacts only. */
        send_fail(S, d, PL_ERR_FORBIDDEN, "you cannot message this user", 0);
    } else {
        send_fail(S, d, PL_ERR_UNAVAIL, "cannot check the recipient now; retry", 1000);
    }
}

static void on_poster(void *arg, int rc)
{
    send_t *d = arg;
    if (rc == PL_OK) {
        produce(d->S, d); /* the store still decides, in stream order */
    } else if (rc == PL_ERR_FORBIDDEN) {
        /* The words of the store's refusal (push_refusal). */
        send_fail(d->S, d, PL_ERR_FORBIDDEN, "you cannot post in this conversation", 0);
    } else {
        send_fail(d->S, d, PL_ERR_UNAVAIL, "cannot check the group now; retry", 1000);
    }
}

/* Holds a session over its budget back: see gw_link_ops_t.throttle. */
static void over_budget(gw_sessions_t *S, gw_sess_t *s)
{
    long retry_ms = take_token(S, user_find(S, s->user));
    if (retry_ms > 0) {
        s->ops->throttle(s->link, retry_ms);
    }
}

/* The other member of a 1:1 conversation named by a send's "conv", into to; 0 when user is
 * not one of its two members. */
static int conv_peer(const char *conv, const char *user, char to[PL_USERNAME_LEN])
{
    size_t n = strlen(user);
    const char *p = conv + 2; /* "d:<a>:<b>", checked by the parser */
    if (strncmp(p, user, n) == 0 && p[n] == ':') {
        snprintf(to, PL_USERNAME_LEN, "%s", p + n + 1);
        return 1;
    }
    const char *colon = strchr(p, ':');
    if (colon != NULL && strcmp(colon + 1, user) == 0 && (size_t)(colon - p) < PL_USERNAME_LEN) {
        memcpy(to, p, (size_t)(colon - p));
        to[colon - p] = '\0';
        return 1;
    }
    return 0;
}

static void on_send_frame(gw_sessions_t *S, gw_sess_t *s, const pl_frame_t *f)
{
    char to[PL_USERNAME_LEN];
    snprintf(to, sizeof(to), "%s", f->to);
    if (f->conv[0] == 'd' && !conv_peer(f->conv, s->user, to)) {
        send_error(S, s, PL_ERR_FORBIDDEN, "you are not a member of this conversation",
                   f->client_id, 0);
        return;
    }
    if (S->draining) {
        send_error(S, s, PL_ERR_UNAVAIL, "gateway is shutting down; reconnect", f->client_id, 500);
        return;
    }
    if (s->inflight >= S->cfg.inflight_max) {
        send_error(S, s, PL_ERR_RATELIMIT, "too many unacknowledged sends", f->client_id, 100);
        return;
    }
    long retry_ms = take_token(S, user_find(S, s->user));
    if (retry_ms > 0) {
        send_error(S, s, PL_ERR_RATELIMIT, "too many messages; slow down", f->client_id, retry_ms);
        s->ops->throttle(s->link, retry_ms);
        return;
    }
    send_t *d = calloc(1, sizeof(*d));
    if (d == NULL || (d->content = calloc(1, f->content_len ? f->content_len : 1)) == NULL) {
        free(d);
        send_error(S, s, PL_ERR_NOMEM, "out of memory", f->client_id, 1000);
        return;
    }
    if (f->content_len > 0) { /* a recall has none */
        memcpy(d->content, f->content, f->content_len);
    }
    d->content_len = f->content_len;
    d->what = PRODUCED_SEND;
    d->S = S;
    d->sess_id = s->id;
    snprintf(d->client_id, sizeof(d->client_id), "%s", f->client_id);
    snprintf(d->sender, sizeof(d->sender), "%s", s->user);
    snprintf(d->to, sizeof(d->to), "%s", to);
    if (f->conv[0] == 'g') {
        snprintf(d->group, sizeof(d->group), "%s", f->conv);
    }
    snprintf(d->kind, sizeof(d->kind), "%s",
             f->type == PL_FRAME_EDIT     ? PL_KIND_EDIT
             : f->type == PL_FRAME_RECALL ? PL_KIND_RECALL
                                          : PL_KIND_TEXT);
    d->target_seq = f->target_seq;
    pl_msg_id(s->user, f->client_id, d->msg_id);
    d->ts_ms = pl_now_ms();
    clock_gettime(CLOCK_MONOTONIC, &d->started);
    s->inflight++;
    if (d->group[0]) {
        /* An edit or a recall needs a member, not the post policy: the store checks the rest. */
        (strcmp(d->kind, PL_KIND_TEXT) == 0 ? S->cfg.outside.may_post : S->cfg.outside.is_member)(
            S->cfg.outside.ud, d->sender, d->group, on_poster, d);
        return;
    }
    S->cfg.outside.may_write(S->cfg.outside.ud, d->sender, d->to, on_recipient, d);
}

/* ---- read and delivered cursors, typing (DESIGN 7.5) ---- */

/* Takes one frame from a session's bucket of rate a second holding burst: 0 when allowed,
 * else the ms until one is. The bucket starts full. */
static long take_light_token(float *tokens, long long *refill_ms, double rate, double burst)
{
    long long now = pl_now_ms();
    double t = *refill_ms ? *tokens + (double)(now - *refill_ms) * rate / 1000.0 : burst;
    *refill_ms = now;
    *tokens = (float)(t > burst ? burst : t);
    if (*tokens < 1.0f) {
        return 1 + (long)((1.0 - *tokens) * 1000.0 / rate);
    }
    *tokens -= 1.0f;
    return 0;
}

static long take_cursor_token(gw_sessions_t *S, gw_sess_t *s)
{
    return take_light_token(&s->ctokens, &s->crefill_ms, S->cfg.cursor_rate,
                            2.0 * S->cfg.cursor_rate);
}

/* A typing frame's answer: only a refusal is worth a frame. */
struct typing_q {
    gw_sessions_t *S;
    uint64_t sess_id;
};

static void on_typing_told(void *arg, int rc)
{
    struct typing_q *q = arg;
    gw_sess_t *s = find(q->S, q->sess_id);
    if (s != NULL && rc == PL_ERR_FORBIDDEN) {
        send_error(q->S, s, PL_ERR_FORBIDDEN, "you are not a member of this conversation", NULL, 0);
    }
    free(q);
}

/* A typing frame: never stored and never in Kafka; the outside tells the other members. */
static void on_typing_frame(gw_sessions_t *S, gw_sess_t *s, const pl_frame_t *f)
{
    char peer[PL_USERNAME_LEN];
    if (f->conv[0] == 'd' && (!conv_peer(f->conv, s->user, peer) || strcmp(peer, s->user) == 0)) {
        send_error(S, s, PL_ERR_FORBIDDEN, "you are not a member of this conversation", NULL, 0);
        return;
    }
    long retry_ms =
        take_light_token(&s->ttokens, &s->trefill_ms, S->cfg.typing_rate, 5.0 * S->cfg.typing_rate);
    if (retry_ms > 0) {
        send_error(S, s, PL_ERR_RATELIMIT, "too many typing frames; slow down", NULL, retry_ms);
        return;
    }
    struct typing_q *q = malloc(sizeof(*q));
    if (q == NULL) {
        return; /* typing is a hint: nothing to answer */
    }
    *q = (struct typing_q){S, s->id};
    S->cfg.outside.typing(S->cfg.outside.ud, s->user, f->conv, f->typing, on_typing_told, q);
}

static void cursor_done(gw_sessions_t *S, cursor_t *c)
{
    gw_sess_t *s = find(S, c->sess_id);
    if (s != NULL) {
        s->inflight--;
    }
    free(c);
}

static void cursor_fail(gw_sessions_t *S, cursor_t *c, int err, const char *msg, long retry_ms)
{
    gw_sess_t *s = find(S, c->sess_id);
    if (s != NULL) {
        send_error(S, s, err, msg, NULL, retry_ms);
    }
    cursor_done(S, c);
}

static void produce_cursor(gw_sessions_t *S, cursor_t *c)
{
    gw_sess_t *s = find(S, c->sess_id);
    if (s == NULL || s->state != OPEN) {
        cursor_done(S, c);
        return;
    }
    char *rec = pl_cursor_record(&c->c);
    int rc = rec ? S->cfg.outside.produce(S->cfg.outside.ud, PL_TOPIC_CURSORS, c->c.conv, rec, c)
                 : PL_ERR_NOMEM;
    free(rec);
    if (rc != PL_OK) {
        cursor_fail(S, c, PL_ERR_UNAVAIL, "cursor queue is full; retry", 1000);
    }
}

static void on_cursor_member(void *arg, int rc)
{
    cursor_t *c = arg;
    if (rc == PL_OK) {
        produce_cursor(c->S, c);
    } else if (rc == PL_ERR_FORBIDDEN) {
        cursor_fail(c->S, c, PL_ERR_FORBIDDEN, "you are not a member of this conversation", 0);
    } else {
        cursor_fail(c->S, c, PL_ERR_UNAVAIL, "cannot check the group now; retry", 1000);
    }
}

static void cursor_delivered(gw_sessions_t *S, cursor_t *c, int err)
{
    if (err != PL_OK) {
        cursor_fail(S, c, PL_ERR_UNAVAIL, "cursor not accepted; send it again", 1000);
        return;
    }
    gw_sess_t *s = find(S, c->sess_id);
    if (s != NULL) {
        char *f = pl_frame_cursor_ack(c->c.kind, c->c.conv, c->c.seq);
        send_text(s, f);
        free(f);
    }
    cursor_done(S, c);
}

/* A read or delivered frame: a member's cursor goes to the store through PL_TOPIC_CURSORS
 * (it takes no seq); its ack comes from the delivery report, like a send's. */
static void on_cursor_frame(gw_sessions_t *S, gw_sess_t *s, const pl_frame_t *f)
{
    char peer[PL_USERNAME_LEN], own[PL_CONV_ID_LEN];
    int kind = pl_conv_kind(f->conv);
    pl_user_conv(s->user, own);
    if ((kind == 'd' && !conv_peer(f->conv, s->user, peer)) ||
        (kind == 'u' && strcmp(f->conv, own) != 0)) {
        send_error(S, s, PL_ERR_FORBIDDEN, "you are not a member of this conversation", NULL, 0);
        return;
    }
    if (s->inflight >= S->cfg.inflight_max) {
        send_error(S, s, PL_ERR_RATELIMIT, "too many unacknowledged frames", NULL, 100);
        return;
    }
    long retry_ms = take_cursor_token(S, s);
    if (retry_ms > 0) {
        send_error(S, s, PL_ERR_RATELIMIT, "too many read and delivered frames; slow down", NULL,
                   retry_ms);
        return;
    }
    cursor_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        send_error(S, s, PL_ERR_NOMEM, "out of memory", NULL, 1000);
        return;
    }
    c->what = PRODUCED_CURSOR;
    c->S = S;
    c->sess_id = s->id;
    snprintf(c->c.kind, sizeof(c->c.kind), "%s",
             f->type == PL_FRAME_READ ? PL_CURSOR_READ : PL_CURSOR_DELIVERED);
    snprintf(c->c.conv, sizeof(c->c.conv), "%s", f->conv);
    snprintf(c->c.user, sizeof(c->c.user), "%s", s->user);
    snprintf(c->c.origin_gw, sizeof(c->c.origin_gw), "%s", S->gw_id);
    c->c.origin_conn = s->id;
    c->c.seq = f->seq;
    c->c.ts_ms = pl_now_ms();
    s->inflight++;
    if (kind == 'g') {
        S->cfg.outside.is_member(S->cfg.outside.ud, s->user, f->conv, on_cursor_member, c);
        return;
    }
    produce_cursor(S, c);
}

static void on_auth_frame(gw_sessions_t *S, gw_sess_t *s, const pl_frame_t *f)
{
    pl_jwt_claims_t claims;
    int rc = pl_jwt_verify(S->cfg.verifier, f->token, (long)(pl_now_ms() / 1000), &claims);
    if (rc != PL_OK) {
        close_sess(s, PL_WS_POLICY, rc == PL_ERR_EXPIRED ? "token expired" : "invalid token");
        return;
    }
    start_auth(S, s, &claims);
}

/* A frame that does not parse: answered, echoing its client_id when it can be read. */
static void on_bad_frame(gw_sessions_t *S, gw_sess_t *s, const char *data, size_t len, int rc,
                         const char *why)
{
    json_t *j = json_loadb(data, len, 0, NULL);
    const char *cid = json_string_value(json_object_get(j, "client_id"));
    if (cid != NULL && strlen(cid) > PL_MAX_CLIENT_ID) {
        cid = NULL;
    }
    send_error(S, s, rc == PL_ERR_TOOBIG ? PL_ERR_TOOBIG : PL_ERR_INVAL, why, cid, 0);
    json_decref(j);
    /* A refused frame costs its sender a send from the budget too, so a stream of garbage
     * is held back like a flood of sends (each one costs a parse and an answer). */
    over_budget(S, s);
}

static void on_text(void *ud, gw_sess_t *s, const char *data, size_t len)
{
    gw_sessions_t *S = ud;
    CHECK(s);
    if (s->state == CLOSING) {
        return;
    }
    pl_metric_inc(S->m_frames_in);
    pl_frame_t f;
    const char *why = NULL;
    int rc = pl_frame_parse(data, len, &f, &why);
    if (s->state == WAIT_AUTH) {
        if (rc != PL_OK || f.type != PL_FRAME_AUTH) {
            close_sess(s, PL_WS_POLICY, "authenticate first: {\"type\":\"auth\",\"token\":…}");
        } else {
            on_auth_frame(S, s, &f);
        }
    } else if (rc != PL_OK) {
        on_bad_frame(S, s, data, len, rc, why);
        return;
    } else if (f.type == PL_FRAME_SEND || f.type == PL_FRAME_EDIT || f.type == PL_FRAME_RECALL) {
        on_send_frame(S, s, &f);
    } else if (f.type == PL_FRAME_READ || f.type == PL_FRAME_DELIVERED) {
        on_cursor_frame(S, s, &f);
    } else if (f.type == PL_FRAME_TYPING) {
        on_typing_frame(S, s, &f);
    } else {
        send_error(S, s, PL_ERR_INVAL, "already authenticated", NULL, 0);
    }
    pl_frame_clear(&f);
}

const gw_link_cbs_t gw_sessions_link_cbs = {
    .on_open = on_open,
    .on_text = on_text,
    .on_closed = on_closed,
};

/* ---- from the outside ---- */

static void cursor_delivered(gw_sessions_t *S, cursor_t *c, int err);

void gw_sessions_delivered(gw_sessions_t *S, void *opaque, int err)
{
    if (*(enum produced *)opaque == PRODUCED_CURSOR) {
        cursor_delivered(S, opaque, err);
        return;
    }
    send_t *d = opaque;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pl_metric_observe(S->m_produce_seconds, (double)(now.tv_sec - d->started.tv_sec) +
                                                (double)(now.tv_nsec - d->started.tv_nsec) / 1e9);
    if (err != PL_OK) {
        /* Failed or unknown outcome: never an ack. The client retries; the store
         * de-duplicates by msg_id if the record did land. */
        send_fail(S, d, PL_ERR_UNAVAIL, "message not accepted; retry with the same client_id",
                  1000);
        return;
    }
    gw_sess_t *s = find(S, d->sess_id);
    if (s != NULL) {
        char *f = pl_frame_ack(d->client_id, d->msg_id, NULL, 0);
        send_text(s, f);
        free(f);
        pl_metric_inc(S->m_acks);
    }
    send_done(S, d);
}

static void push_to(gw_sessions_t *S, const char *user, const char *text, size_t len)
{
    user_t *u = user_find(S, user);
    for (gw_sess_t *s = u ? u->sessions : NULL; s != NULL; s = s->u_next) {
        if (s->state == OPEN && s->ops->send_text(s->link, text, len) == PL_OK) {
            pl_metric_inc(S->m_pushes);
        }
    }
}

/* The open session here that sent m, or NULL (another gateway's, or gone). */
static gw_sess_t *origin_session(gw_sessions_t *S, const pl_msg_t *m)
{
    gw_sess_t *s = strcmp(m->origin_gw, S->gw_id) == 0 ? find(S, m->origin_conn) : NULL;
    return s != NULL && s->state == OPEN && strcmp(s->user, m->sender) == 0 ? s : NULL;
}

/* The store refused a message this gateway accepted (st_policy.h): its device is told. */
static void push_refusal(gw_sessions_t *S, const pl_msg_t *m)
{
    gw_sess_t *s = origin_session(S, m);
    if (s == NULL) {
        return; /* gone: its retry after a reconnect is refused again */
    }
    int group = pl_conv_kind(m->conv) == 'g';
    if (strcmp(m->refused, pl_errcode(PL_ERR_RATELIMIT)) == 0) {
        send_error(S, s, PL_ERR_RATELIMIT, "the group is in slow mode; wait and retry",
                   m->client_id, 1000);
        return;
    }
    int err =
        strcmp(m->refused, pl_errcode(PL_ERR_FORBIDDEN)) == 0 ? PL_ERR_FORBIDDEN : PL_ERR_INTERNAL;
    const char *why =
        group ? "you cannot post in this conversation" : "you cannot message this user";
    if (strcmp(m->kind, PL_KIND_EDIT) == 0) {
        why = "you cannot edit this message (only its author, within the edit window)";
    } else if (strcmp(m->kind, PL_KIND_RECALL) == 0) {
        why = "you cannot recall this message (only its author within the recall window, or a "
              "group admin)";
    }
    send_error(S, s, err, why, m->client_id, 0);
}

void gw_sessions_push(gw_sessions_t *S, json_t *msg)
{
    pl_msg_t m;
    if (pl_msg_from_json(msg, &m) == PL_OK && m.refused[0]) {
        push_refusal(S, &m);
        return;
    }
    if (m.seq <= 0) {
        pl_log_warn("bad_push", "malformed message from the router");
        return;
    }
    if (m.replay) {
        /* A resend of a stored message: every device had its first copy pushed, the sending
         * one too. That device alone is answered, with an ack that names the conv and seq the
         * message was given, so it can tell whether it holds it (and pull if not) without the
         * whole message coming again. */
        gw_sess_t *s = origin_session(S, &m);
        char *ack = s != NULL ? pl_frame_ack(m.client_id, m.msg_id, m.conv, m.seq) : NULL;
        if (ack != NULL && s->ops->send_text(s->link, ack, strlen(ack)) == PL_OK) {
            pl_metric_inc(S->m_replay_acks);
        }
        free(ack);
        return;
    }
    char *text = pl_msg_frame_text(&m);
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    push_to(S, m.receiver, text, len);
    if (strcmp(m.sender, m.receiver) != 0) {
        push_to(S, m.sender, text, len);
    }
    free(text);
}

void gw_sessions_receipt(gw_sessions_t *S, json_t *rec)
{
    const char *conv = json_string_value(json_object_get(rec, "conv"));
    const char *user = json_string_value(json_object_get(rec, "user"));
    const char *kind = json_string_value(json_object_get(rec, "kind"));
    json_t *origin = json_object_get(rec, "origin");
    const char *ogw = json_string_value(json_object_get(origin, "gateway"));
    json_int_t oconn = json_integer_value(json_object_get(origin, "conn"));
    long long seq = (long long)json_integer_value(json_object_get(rec, "seq"));
    char *text = conv && user && kind && seq > 0 ? pl_frame_receipt(conv, user, kind, seq) : NULL;
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    user_t *u = user_find(S, user);
    for (gw_sess_t *s = u ? u->sessions : NULL; s != NULL; s = s->u_next) {
        int origin_here = ogw != NULL && strcmp(ogw, S->gw_id) == 0 && s->id == (uint64_t)oconn;
        if (s->state == OPEN && !origin_here) {
            s->ops->send_text(s->link, text, len);
        }
    }
    char peer[PL_USERNAME_LEN];
    if (json_is_true(json_object_get(rec, "share")) && pl_conv_kind(conv) == 'd' &&
        conv_peer(conv, user, peer) && strcmp(peer, user) != 0) {
        push_to(S, peer, text, len);
    }
    free(text);
}

void gw_sessions_send_user(gw_sessions_t *S, const char *user, const char *text, size_t len)
{
    push_to(S, user, text, len);
}

void gw_sessions_revoke(gw_sessions_t *S, const char *user, const char *sid)
{
    /* Sessions still checking their token are not linked to their user yet: all are seen. */
    for (gw_sess_t *s = S->all; s != NULL; s = s->next) {
        if ((s->state == OPEN || s->state == CHECKING) && strcmp(s->sid, sid) == 0 &&
            strcmp(s->user, user) == 0) {
            close_sess(s, PL_WS_POLICY, "session revoked");
        }
    }
}

void gw_sessions_refresh_presence(gw_sessions_t *S)
{
    for (gw_sess_t *s = S->all; s != NULL; s = s->next) {
        if (s->state == OPEN) {
            S->cfg.outside.presence_add(S->cfg.outside.ud, s->user, s->id);
        }
    }
}

void gw_sessions_tick(gw_sessions_t *S)
{
    long long now = pl_now_ms();
    long now_s = (long)(now / 1000);
    for (gw_sess_t *s = S->all; s != NULL; s = s->next) {
        if (s->state == WAIT_AUTH && now - s->opened_ms > S->cfg.auth_timeout_ms) {
            close_sess(s, PL_WS_POLICY, "authentication timed out");
        } else if (s->state == OPEN && s->token_exp + PL_JWT_MAX_LEEWAY < now_s) {
            close_sess(s, PL_WS_POLICY, "token expired; reconnect with a fresh one");
        }
    }
}

void gw_sessions_drain(gw_sessions_t *S)
{
    S->draining = 1;
}

void gw_sessions_close_all(gw_sessions_t *S, uint16_t status, const char *reason)
{
    for (gw_sess_t *s = S->all; s != NULL; s = s->next) {
        close_sess(s, status, reason);
    }
}
