/*
 * Long-poll sessions on the gateway's loop (see gw_lp.h for the protocol). Each session keeps
 * its unacknowledged server frames in order, numbered from 1, under cfg.buf_max bytes (over
 * it the session ends with 1013, as a socket's send queue does), and at most one held poll:
 * a second poll answers the first at once (empty) and is held in its place.
 *
 * Threads: gw_lp_http() runs on the HTTP thread and only checks a request and queues it
 * (mutex + eventfd); the loop thread owns every session and answers every held request.
 *
 * A session the session layer closes keeps its frames until a poll takes them with a
 * "closed" note ({"code","reason"}, as a WebSocket close would carry), or until it idles
 * out; then its sid is gone and answers 404.
 */
#include "gw_lp.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "parley/wire.h"
#include "parley/ws.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define LP_MAGIC    0x67776c70u
#define SID_BUCKETS 4096
#define INBOX_MAX   (2 * GW_LP_SEND_MAX) /* client frames waiting while a session is held */

typedef struct lp_sess_s lp_sess_t;

/* One server frame, or one client frame waiting in an inbox. */
typedef struct lp_frame_s {
    struct lp_frame_s *next;
    uint64_t num;
    size_t len;
    char text[];
} lp_frame_t;

enum lp_kind { LP_OPEN = 1, LP_POLL, LP_SEND };

/* A request checked on the HTTP thread, for the loop. */
typedef struct lp_req_s {
    enum lp_kind kind;
    pl_http_req_t *http;
    char sid[GW_LP_SID_MAX + 1]; /* empty: the open did not propose one */
    pl_jwt_claims_t claims;
    int has_ack;
    uint64_t ack;
    lp_frame_t *frames; /* a send's frames, in order */
    size_t nframes;
    struct lp_req_s *next;
} lp_req_t;

/* A user's sessions on this gateway (the per-user cap). */
typedef struct lp_user_s {
    struct lp_user_s *next;
    long n;
    char name[PL_USERNAME_LEN];
} lp_user_t;

struct lp_sess_s {
    uint32_t magic;
    gw_lp_t *lp;
    gw_sess_t *sess; /* the session layer's; NULL once on_closed was reported */
    char sid[GW_LP_SID_MAX + 1];
    char user[PL_USERNAME_LEN];
    lp_frame_t *head, *tail; /* unacknowledged server frames */
    size_t bytes;
    uint64_t next_num;             /* the number the next frame gets */
    lp_frame_t *in_head, *in_tail; /* client frames waiting for resume */
    size_t in_count;
    pl_http_req_t *poll; /* the held poll */
    long long poll_deadline, last_poll_ms, throttled_until;
    unsigned char held, closing, close_sent, dirty, dead;
    uint16_t close_code;
    char close_reason[96];
    lp_sess_t *hnext;       /* in the sid table */
    lp_sess_t *prev, *next; /* among all sessions */
    lp_sess_t *dirty_next;  /* on the end-of-turn list, then the free list */
};

struct gw_lp_s {
    gw_lp_cfg_t cfg;
    lp_sess_t *by_sid[SID_BUCKETS];
    lp_user_t *users[SID_BUCKETS];
    lp_sess_t *all, *dirty, *dead;
    long count, open_count;
    atomic_int draining;
    int stopped; /* gw_lp_shutdown() ran: nothing more is queued (under q_lock) */
    pthread_mutex_t q_lock;
    lp_req_t *q_head, *q_tail;
    int q_fd;
    gw_watch_t q_w;
    pl_metric_t *m_sessions, *m_held, *m_overflow;
};

static const gw_link_ops_t ops;

#define CHECK(s) assert((s) != NULL && (s)->magic == LP_MAGIC)

static unsigned hash(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h % SID_BUCKETS;
}

static lp_sess_t *find(gw_lp_t *lp, const char *sid)
{
    for (lp_sess_t *s = lp->by_sid[hash(sid)]; s != NULL; s = s->hnext) {
        if (strcmp(s->sid, sid) == 0) {
            return s;
        }
    }
    return NULL;
}

static lp_user_t **user_slot(gw_lp_t *lp, const char *name)
{
    lp_user_t **pu = &lp->users[hash(name)];
    while (*pu != NULL && strcmp((*pu)->name, name) != 0) {
        pu = &(*pu)->next;
    }
    return pu;
}

static long user_sessions(gw_lp_t *lp, const char *name)
{
    lp_user_t *u = *user_slot(lp, name);
    return u != NULL ? u->n : 0;
}

static int user_add(gw_lp_t *lp, const char *name, long d)
{
    lp_user_t **pu = user_slot(lp, name);
    if (*pu == NULL) {
        if (d < 0 || (*pu = calloc(1, sizeof(**pu))) == NULL) {
            return PL_ERR_NOMEM;
        }
        snprintf((*pu)->name, sizeof((*pu)->name), "%s", name);
    }
    (*pu)->n += d;
    if ((*pu)->n <= 0) {
        lp_user_t *u = *pu;
        *pu = u->next;
        free(u);
    }
    return PL_OK;
}

static void free_frames(lp_frame_t *f)
{
    while (f != NULL) {
        lp_frame_t *n = f->next;
        free(f);
        f = n;
    }
}

static lp_frame_t *frame_new(const char *text, size_t len)
{
    lp_frame_t *f = malloc(sizeof(*f) + len + 1);
    if (f != NULL) {
        f->next = NULL;
        f->num = 0;
        f->len = len;
        memcpy(f->text, text, len);
        f->text[len] = '\0';
    }
    return f;
}

static void mark_dirty(lp_sess_t *s)
{
    if (!s->dirty && !s->dead) {
        s->dirty = 1;
        s->dirty_next = s->lp->dirty;
        s->lp->dirty = s;
    }
}

/* ---- answers ---- */

/* The answer to a poll: every unacknowledged frame, the number to acknowledge next, and, for
 * a session that ended, why. The frames are already JSON: they are joined, not parsed. */
static char *poll_body(const lp_sess_t *s, size_t *len)
{
    size_t need = 64;
    for (const lp_frame_t *f = s->head; f != NULL; f = f->next) {
        need += f->len + 1;
    }
    char *closed = NULL;
    if (s->closing) {
        json_t *c = json_pack("{s:i,s:s}", "code", s->close_code, "reason", s->close_reason);
        closed = c != NULL ? json_dumps(c, JSON_COMPACT) : NULL;
        json_decref(c);
        need += closed != NULL ? strlen(closed) + 16 : 0;
    }
    char *t = malloc(need);
    if (t == NULL) {
        free(closed);
        return NULL;
    }
    size_t n = (size_t)snprintf(t, need, "{\"frames\":[");
    for (const lp_frame_t *f = s->head; f != NULL; f = f->next) {
        memcpy(t + n, f->text, f->len);
        n += f->len;
        if (f->next != NULL) {
            t[n++] = ',';
        }
    }
    n += (size_t)snprintf(t + n, need - n, "],\"next\":%llu", (unsigned long long)s->next_num);
    if (closed != NULL) {
        n += (size_t)snprintf(t + n, need - n, ",\"closed\":%s", closed);
    }
    n += (size_t)snprintf(t + n, need - n, "}");
    free(closed);
    *len = n;
    return t;
}

static void answer_poll(lp_sess_t *s)
{
    size_t len = 0;
    char *text = poll_body(s, &len);
    if (text == NULL) {
        pl_http_answer_error(s->poll, PL_ERR_NOMEM, "out of memory", 1000);
    } else {
        pl_http_answer(s->poll, 200, text, len, 0);
        s->close_sent = s->closing;
    }
    s->poll = NULL;
    s->last_poll_ms = pl_now_ms(); /* idle counts from the answer: the client polls again now */
    pl_metric_gauge_add(s->lp->m_held, -1);
}

static void answer_json(pl_http_req_t *http, int status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        pl_http_answer_error(http, PL_ERR_NOMEM, "out of memory", 1000);
        return;
    }
    pl_http_answer(http, status, text, strlen(text), 0);
}

/* ---- the session's end ---- */

static void report_closed(lp_sess_t *s)
{
    if (s->sess != NULL) {
        gw_sess_t *sess = s->sess;
        s->sess = NULL;
        s->lp->cfg.cbs.on_closed(s->lp->cfg.cbs_ud, sess);
    }
}

static void start_close(lp_sess_t *s, uint16_t code, const char *reason)
{
    if (s->closing) {
        return;
    }
    s->closing = 1;
    s->close_code = code;
    snprintf(s->close_reason, sizeof(s->close_reason), "%s", reason ? reason : "");
    s->lp->open_count--;
    free_frames(s->in_head);
    s->in_head = s->in_tail = NULL;
    s->in_count = 0;
    mark_dirty(s);
}

/* Takes s out of the table and lists (its sid answers 404 from now on) and tells the session
 * layer; freed at the end of the turn. */
static void end_session(lp_sess_t *s)
{
    gw_lp_t *lp = s->lp;
    if (s->dead) {
        return;
    }
    start_close(s, PL_WS_GOING_AWAY, "session ended");
    report_closed(s);
    if (s->poll != NULL) {
        answer_poll(s);
    }
    for (lp_sess_t **pp = &lp->by_sid[hash(s->sid)]; *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == s) {
            *pp = s->hnext;
            break;
        }
    }
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else {
        lp->all = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    user_add(lp, s->user, -1);
    lp->count--;
    pl_metric_gauge_add(lp->m_sessions, -1);
    s->dead = 1;
    /* Freed by the next gw_lp_end_turn(): s may still be on its dirty list (which skips dead
     * sessions); the sid table's link is free now and strings the dead ones together. */
    s->hnext = lp->dead;
    lp->dead = s;
}

static void free_dead(gw_lp_t *lp)
{
    while (lp->dead != NULL) {
        lp_sess_t *s = lp->dead;
        lp->dead = s->hnext;
        s->magic = 0;
        free_frames(s->head);
        free_frames(s->in_head);
        free(s);
    }
}

/* ---- what the session layer asks (gw_link_ops_t) ---- */

static int op_send_text(void *link, const char *text, size_t len)
{
    lp_sess_t *s = link;
    CHECK(s);
    if (s->closing) {
        return PL_ERR_UNAVAIL;
    }
    if (s->bytes + len > s->lp->cfg.buf_max) {
        /* The client polls too slowly for what it is sent: as a socket over its queue, the
         * session ends and the client syncs after opening a new one. */
        free_frames(s->head);
        s->head = s->tail = NULL;
        s->bytes = 0;
        pl_metric_inc(s->lp->m_overflow);
        start_close(s, PL_WS_TRY_AGAIN, "too slow: frames were dropped; open and sync");
        return PL_ERR_TOOBIG;
    }
    lp_frame_t *f = frame_new(text, len);
    if (f == NULL) {
        return PL_ERR_NOMEM;
    }
    f->num = s->next_num++;
    if (s->tail != NULL) {
        s->tail->next = f;
    } else {
        s->head = f;
    }
    s->tail = f;
    s->bytes += len;
    mark_dirty(s);
    return PL_OK;
}

static void op_close(void *link, uint16_t status, const char *reason)
{
    lp_sess_t *s = link;
    CHECK(s);
    start_close(s, status, reason);
}

static void op_hold(void *link)
{
    lp_sess_t *s = link;
    CHECK(s);
    s->held = 1;
}

static void op_resume(void *link)
{
    lp_sess_t *s = link;
    CHECK(s);
    s->held = 0;
    mark_dirty(s); /* frames that waited go up at the end of the turn, never in this call */
}

static void op_throttle(void *link, long ms)
{
    lp_sess_t *s = link;
    CHECK(s);
    long long until = pl_now_ms() + ms;
    if (until > s->throttled_until) {
        s->throttled_until = until;
    }
}

static const gw_link_ops_t ops = {
    .send_text = op_send_text,
    .close = op_close,
    .hold = op_hold,
    .resume = op_resume,
    .throttle = op_throttle,
};

/* ---- requests, on the loop ---- */

static void do_open(gw_lp_t *lp, lp_req_t *r)
{
    char user[PL_USERNAME_LEN];
    if (atomic_load(&lp->draining)) {
        pl_http_answer_error(r->http, PL_ERR_UNAVAIL, "gateway is shutting down; open again", 1000);
        return;
    }
    if (pl_username_normalize(r->claims.sub, user) != PL_OK || strcmp(user, r->claims.sub) != 0) {
        pl_http_answer_error(r->http, PL_ERR_UNAUTH, "invalid token subject", 0);
        return;
    }
    if (lp->count >= lp->cfg.max_sessions) {
        pl_http_answer_error(r->http, PL_ERR_UNAVAIL,
                             "too many long-poll sessions on this gateway; retry", 1000);
        return;
    }
    if (user_sessions(lp, user) >= lp->cfg.user_max) {
        pl_http_answer_error(r->http, PL_ERR_RATELIMIT,
                             "too many long-poll sessions for this user; close one first", 5000);
        return;
    }
    if (r->sid[0] == '\0') {
        pl_random_hex(r->sid, 16);
    } else if (find(lp, r->sid) != NULL) {
        pl_http_answer_error(r->http, PL_ERR_EXISTS, "sid in use; propose another", 0);
        return;
    }
    lp_sess_t *s = calloc(1, sizeof(*s));
    if (s == NULL || user_add(lp, user, 1) != PL_OK) {
        free(s);
        pl_http_answer_error(r->http, PL_ERR_NOMEM, "out of memory", 1000);
        return;
    }
    s->magic = LP_MAGIC;
    s->lp = lp;
    s->next_num = 1;
    s->last_poll_ms = pl_now_ms();
    snprintf(s->sid, sizeof(s->sid), "%s", r->sid);
    snprintf(s->user, sizeof(s->user), "%s", user);
    unsigned b = hash(s->sid);
    s->hnext = lp->by_sid[b];
    lp->by_sid[b] = s;
    s->next = lp->all;
    if (lp->all != NULL) {
        lp->all->prev = s;
    }
    lp->all = s;
    lp->count++;
    lp->open_count++;
    pl_metric_gauge_add(lp->m_sessions, 1);
    s->sess = lp->cfg.cbs.on_open(lp->cfg.cbs_ud, s, &ops, &r->claims);
    if (s->sess == NULL) {
        end_session(s);
        pl_http_answer_error(r->http, PL_ERR_NOMEM, "out of memory", 1000);
        return;
    }
    answer_json(r->http, 200,
                json_pack("{s:s,s:I,s:I}", "sid", s->sid, "hold_ms", (json_int_t)lp->cfg.hold_ms,
                          "idle_ms", (json_int_t)lp->cfg.idle_ms));
}

/* The session of a poll or send: unknown, ended, or another user's all look the same. */
static lp_sess_t *session_of(gw_lp_t *lp, lp_req_t *r)
{
    lp_sess_t *s = find(lp, r->sid);
    if (s == NULL || strcmp(s->user, r->claims.sub) != 0) {
        pl_http_answer_error(r->http, PL_ERR_NOTFOUND,
                             "no such long-poll session; open a new one and sync", 0);
        return NULL;
    }
    return s;
}

static void do_poll(gw_lp_t *lp, lp_req_t *r)
{
    lp_sess_t *s = session_of(lp, r);
    if (s == NULL) {
        return;
    }
    if (r->has_ack) {
        if (r->ack > s->next_num) {
            pl_http_answer_error(r->http, PL_ERR_INVAL,
                                 "ack is ahead of the frames this session sent", 0);
            return;
        }
        while (s->head != NULL && s->head->num < r->ack) {
            lp_frame_t *f = s->head;
            s->head = f->next;
            s->bytes -= f->len;
            free(f);
        }
        if (s->head == NULL) {
            s->tail = NULL;
        }
    }
    if (s->poll != NULL) {
        /* The client gave up on its last poll (or has two): that one is answered now with
         * nothing, and this one waits in its place. */
        pl_http_req_t *old = s->poll;
        s->poll = NULL;
        uint64_t next = s->head != NULL ? s->head->num : s->next_num;
        answer_json(old, 200, json_pack("{s:[],s:I}", "frames", "next", (json_int_t)next));
        pl_metric_gauge_add(lp->m_held, -1);
    }
    s->poll = r->http;
    s->poll_deadline = pl_now_ms() + lp->cfg.hold_ms;
    s->last_poll_ms = pl_now_ms();
    pl_metric_gauge_add(lp->m_held, 1);
    if (s->head != NULL || s->closing) {
        mark_dirty(s); /* answered at the end of the turn */
    }
}

/* Hands a session's waiting client frames up, in order, while it takes them. */
static void deliver_inbox(lp_sess_t *s)
{
    while (s->in_head != NULL && !s->held && !s->closing && s->sess != NULL) {
        lp_frame_t *f = s->in_head;
        s->in_head = f->next;
        if (s->in_head == NULL) {
            s->in_tail = NULL;
        }
        s->in_count--;
        s->lp->cfg.cbs.on_text(s->lp->cfg.cbs_ud, s->sess, f->text, f->len);
        free(f);
    }
}

static void do_send(gw_lp_t *lp, lp_req_t *r)
{
    lp_sess_t *s = session_of(lp, r);
    if (s == NULL) {
        return;
    }
    if (s->closing) {
        pl_http_answer_error(r->http, PL_ERR_NOTFOUND,
                             "this long-poll session has ended; poll for its last frames", 0);
        return;
    }
    long long now = pl_now_ms();
    if (s->throttled_until > now) {
        pl_http_answer_error(r->http, PL_ERR_RATELIMIT, "too many frames; slow down",
                             (long)(s->throttled_until - now));
        return;
    }
    if (s->in_count + r->nframes > INBOX_MAX) {
        pl_http_answer_error(r->http, PL_ERR_UNAVAIL, "session is busy; retry", 200);
        return;
    }
    /* Appended to the inbox in order, then taken up at once unless the session holds it. */
    if (s->in_tail != NULL) {
        s->in_tail->next = r->frames;
    } else {
        s->in_head = r->frames;
    }
    for (lp_frame_t *f = r->frames; f != NULL; f = f->next) {
        s->in_tail = f;
    }
    s->in_count += r->nframes;
    size_t n = r->nframes;
    r->frames = NULL;
    deliver_inbox(s);
    answer_json(r->http, 202, json_pack("{s:I}", "accepted", (json_int_t)n));
}

static void on_queue(gw_watch_t *w, uint32_t events)
{
    gw_lp_t *lp = w->ud;
    uint64_t n;
    (void)events;
    ssize_t rd = read(lp->q_fd, &n, sizeof(n));
    (void)rd;
    pthread_mutex_lock(&lp->q_lock);
    lp_req_t *r = lp->q_head;
    lp->q_head = lp->q_tail = NULL;
    pthread_mutex_unlock(&lp->q_lock);
    while (r != NULL) {
        lp_req_t *next = r->next;
        if (r->kind == LP_OPEN) {
            do_open(lp, r);
        } else if (r->kind == LP_POLL) {
            do_poll(lp, r);
        } else {
            do_send(lp, r);
        }
        free_frames(r->frames);
        free(r);
        r = next;
    }
}

/* ---- the HTTP side (HTTP thread) ---- */

static int sid_valid(const char *sid)
{
    size_t n = strlen(sid);
    if (n < GW_LP_SID_MIN || n > GW_LP_SID_MAX) {
        return 0;
    }
    for (const char *p = sid; *p != '\0'; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-')) {
            return 0;
        }
    }
    return 1;
}

/* A send's body: a JSON array of at most GW_LP_SEND_MAX objects, each kept as its text. */
static int read_frames(pl_http_req_t *req, pl_http_resp_t *resp, lp_req_t *r)
{
    json_t *body = pl_http_body(req);
    if (!json_is_array(body)) {
        pl_http_fail(resp, PL_ERR_INVAL, "the body must be a JSON array of frames");
        return PL_ERR_INVAL;
    }
    size_t n = json_array_size(body);
    if (n > GW_LP_SEND_MAX) {
        char msg[96];
        snprintf(msg, sizeof(msg), "too many frames in one send: %zu (at most %d)", n,
                 GW_LP_SEND_MAX);
        pl_http_fail(resp, PL_ERR_TOOBIG, msg);
        return PL_ERR_TOOBIG;
    }
    lp_frame_t **tail = &r->frames;
    for (size_t i = 0; i < n; i++) {
        json_t *f = json_array_get(body, i);
        if (!json_is_object(f)) {
            char msg[64];
            snprintf(msg, sizeof(msg), "frame %zu is not a JSON object", i);
            pl_http_fail(resp, PL_ERR_INVAL, msg);
            return PL_ERR_INVAL;
        }
        char *text = json_dumps(f, JSON_COMPACT);
        lp_frame_t *fr = text != NULL ? frame_new(text, strlen(text)) : NULL;
        free(text);
        if (fr == NULL) {
            pl_http_fail(resp, PL_ERR_NOMEM, "out of memory");
            return PL_ERR_NOMEM;
        }
        *tail = fr;
        tail = &fr->next;
        r->nframes++;
    }
    return PL_OK;
}

void gw_lp_http(gw_lp_t *lp, pl_http_req_t *req, pl_http_resp_t *resp)
{
    const char *path = pl_http_path(req);
    /* URLs end up in logs and histories: a token there is refused, whatever it is. */
    if (pl_http_query(req, "access_token") != NULL || pl_http_query(req, "token") != NULL) {
        pl_http_fail(resp, PL_ERR_INVAL,
                     "send the token in the Authorization header, never in the URL");
        return;
    }
    lp_req_t *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        pl_http_fail(resp, PL_ERR_NOMEM, "out of memory");
        return;
    }
    if (pl_http_authenticate(req, resp, lp->cfg.verifier, &r->claims) != PL_OK) {
        free(r);
        return;
    }
    const char *sid = pl_http_query(req, "sid");
    if (sid != NULL && !sid_valid(sid)) {
        pl_http_fail(resp, PL_ERR_INVAL, "sid must be 16-64 characters of A-Z a-z 0-9 _ -");
        goto refused;
    }
    snprintf(r->sid, sizeof(r->sid), "%s", sid != NULL ? sid : "");
    if (strcmp(path, "/v1/lp/open") == 0) {
        r->kind = LP_OPEN;
        if (atomic_load(&lp->draining)) {
            pl_http_fail(resp, PL_ERR_UNAVAIL, "gateway is shutting down; open again");
            resp->retry_after_s = 1;
            goto refused;
        }
    } else if (sid == NULL) {
        pl_http_fail(resp, PL_ERR_INVAL, "sid is required (from POST /v1/lp/open)");
        goto refused;
    } else if (strcmp(path, "/v1/lp/poll") == 0) {
        r->kind = LP_POLL;
        const char *ack = pl_http_query(req, "ack");
        if (ack != NULL) {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(ack, &end, 10);
            if (ack[0] < '0' || ack[0] > '9' || *end != '\0' || errno != 0) {
                pl_http_fail(resp, PL_ERR_INVAL, "ack must be a number (next from the last poll)");
                goto refused;
            }
            r->has_ack = 1;
            r->ack = v;
        }
    } else {
        r->kind = LP_SEND;
        if (read_frames(req, resp, r) != PL_OK) {
            goto refused;
        }
    }
    r->http = pl_http_hold(req, resp);
    pthread_mutex_lock(&lp->q_lock);
    if (lp->stopped) {
        /* The loop has stopped answering: nothing may be held past this point. */
        pthread_mutex_unlock(&lp->q_lock);
        pl_http_answer_error(r->http, PL_ERR_UNAVAIL, "gateway is shutting down; open again", 1000);
        goto refused;
    }
    if (lp->q_tail != NULL) {
        lp->q_tail->next = r;
    } else {
        lp->q_head = r;
    }
    lp->q_tail = r;
    pthread_mutex_unlock(&lp->q_lock);
    uint64_t one = 1;
    ssize_t w = write(lp->q_fd, &one, sizeof(one));
    (void)w;
    return;
refused:
    free_frames(r->frames);
    free(r);
}

/* ---- per turn, per second, and the end ---- */

void gw_lp_end_turn(gw_lp_t *lp)
{
    while (lp->dirty != NULL) {
        lp_sess_t *s = lp->dirty;
        lp->dirty = s->dirty_next;
        s->dirty = 0;
        if (s->dead) {
            continue;
        }
        deliver_inbox(s);
        if (s->closing) {
            report_closed(s);
        }
        if (s->poll != NULL && (s->head != NULL || s->closing)) {
            answer_poll(s);
        }
        if (s->close_sent) {
            end_session(s);
        }
    }
    free_dead(lp);
}

void gw_lp_tick(gw_lp_t *lp)
{
    long long now = pl_now_ms();
    for (lp_sess_t *s = lp->all, *next; s != NULL; s = next) {
        next = s->next;
        if (s->poll != NULL) {
            if (now >= s->poll_deadline) {
                answer_poll(s); /* nothing came: the client polls again */
            }
        } else if (now - s->last_poll_ms > lp->cfg.idle_ms) {
            end_session(s); /* the client went away without a word */
        }
    }
    /* Ended sessions are freed by the next gw_lp_end_turn(): they may be on its list. */
}

void gw_lp_drain(gw_lp_t *lp)
{
    atomic_store(&lp->draining, 1);
}

void gw_lp_shutdown(gw_lp_t *lp)
{
    atomic_store(&lp->draining, 1);
    pthread_mutex_lock(&lp->q_lock);
    lp->stopped = 1;
    lp_req_t *r = lp->q_head;
    lp->q_head = lp->q_tail = NULL;
    pthread_mutex_unlock(&lp->q_lock);
    /* Requests still queued are refused: a send taken now might never reach Kafka. */
    while (r != NULL) {
        lp_req_t *next = r->next;
        pl_http_answer_error(r->http, PL_ERR_UNAVAIL, "gateway is shutting down; open again", 1000);
        free_frames(r->frames);
        free(r);
        r = next;
    }
    for (lp_sess_t *s = lp->all, *next; s != NULL; s = next) {
        next = s->next;
        start_close(s, PL_WS_GOING_AWAY, "gateway shutting down; open again");
        if (s->poll != NULL) {
            answer_poll(s);
        }
    }
    lp->dirty = NULL;
}

long gw_lp_count(const gw_lp_t *lp)
{
    return lp->open_count;
}

gw_lp_t *gw_lp_new(const gw_lp_cfg_t *cfg)
{
    gw_lp_t *lp = calloc(1, sizeof(*lp));
    if (lp == NULL) {
        return NULL;
    }
    lp->cfg = *cfg;
    pthread_mutex_init(&lp->q_lock, NULL);
    lp->q_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (lp->q_fd < 0 ||
        gw_loop_add(cfg->loop, &lp->q_w, lp->q_fd, EPOLLIN, on_queue, lp) != PL_OK) {
        gw_lp_free(&lp);
        return NULL;
    }
    lp->m_sessions = pl_metrics_gauge(cfg->metrics, "parley_gateway_lp_sessions",
                                      "Long-poll sessions (DESIGN 7.6)", NULL);
    lp->m_held = pl_metrics_gauge(cfg->metrics, "parley_gateway_lp_held_polls",
                                  "Long polls held open waiting for frames", NULL);
    lp->m_overflow =
        pl_metrics_counter(cfg->metrics, "parley_gateway_lp_overflow_total",
                           "Long-poll sessions ended with 1013 at the buffer cap", NULL);
    return lp;
}

void gw_lp_free(gw_lp_t **plp)
{
    if (plp == NULL || *plp == NULL) {
        return;
    }
    gw_lp_t *lp = *plp;
    while (lp->all != NULL) {
        lp_sess_t *s = lp->all;
        s->poll = NULL; /* answered by gw_lp_shutdown(), or the server is gone */
        end_session(s);
    }
    lp->dirty = NULL;
    free_dead(lp);
    for (lp_req_t *r = lp->q_head, *n; r != NULL; r = n) {
        n = r->next;
        free_frames(r->frames);
        free(r);
    }
    for (size_t i = 0; i < SID_BUCKETS; i++) {
        for (lp_user_t *u = lp->users[i], *n; u != NULL; u = n) {
            n = u->next;
            free(u);
        }
    }
    if (lp->q_fd >= 0) {
        gw_loop_del(lp->cfg.loop, &lp->q_w);
        close(lp->q_fd);
    }
    pthread_mutex_destroy(&lp->q_lock);
    free(lp);
    *plp = NULL;
}
