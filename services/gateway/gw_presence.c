/*
 * Presence (see gw_presence.h). A user with devices here is a puser_t holding their session
 * ids; the first id makes the user "online" (a script in Redis says whether that is news), the
 * last one gone starts the grace, and a user still without a device here when it ends is
 * checked for "offline" the same way. What is news is announced: parley-auth names its viewers
 * (and keeps last_seen for an offline change), then one PUBLISH carries it to every gateway.
 */
#include "gw_presence.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS       16384
#define REAP_EVERY_MS 2000

typedef struct puser_s {
    char name[PL_USERNAME_LEN];
    uint64_t *ids;
    size_t n, cap;
    long long due_ms; /* the grace of the last device gone ends then; 0 when not running */
    struct puser_s *next;
} puser_t;

/* An offline check waiting for its grace to end, in the order they started. */
typedef struct due_s {
    char name[PL_USERNAME_LEN];
    long long at_ms;
    struct due_s *next;
} due_t;

struct gw_presence_s {
    gw_presence_cfg_t cfg;
    puser_t *table[BUCKETS];
    size_t count;
    due_t *due_head, *due_tail;
    long long reap_at_ms;
};

/* A change on its way to being announced. */
typedef struct change_s {
    gw_presence_t *p;
    char user[PL_USERNAME_LEN];
    char status[8];
} change_t;

gw_presence_t *gw_presence_new(const gw_presence_cfg_t *cfg)
{
    gw_presence_t *p = calloc(1, sizeof(*p));
    if (p != NULL) {
        p->cfg = *cfg;
    }
    return p;
}

void gw_presence_free(gw_presence_t **pp)
{
    if (pp == NULL || *pp == NULL) {
        return;
    }
    gw_presence_t *p = *pp;
    for (size_t b = 0; b < BUCKETS; b++) {
        for (puser_t *u = p->table[b], *next; u != NULL; u = next) {
            next = u->next;
            free(u->ids);
            free(u);
        }
    }
    for (due_t *d = p->due_head, *next; d != NULL; d = next) {
        next = d->next;
        free(d);
    }
    free(p);
    *pp = NULL;
}

size_t gw_presence_users(const gw_presence_t *p)
{
    return p->count;
}

static puser_t **slot(gw_presence_t *p, const char *name)
{
    puser_t **pp = &p->table[pl_hash_str(name) % BUCKETS];
    while (*pp != NULL && strcmp((*pp)->name, name) != 0) {
        pp = &(*pp)->next;
    }
    return pp;
}

/* ---- announcing ---- */

static void on_viewers(void *arg, int rc, json_t *viewers)
{
    change_t *c = arg;
    if (rc == PL_OK) {
        long long at = pl_now_ms();
        char when[32];
        pl_iso8601_ms(at, when);
        json_t *note = json_pack("{s:s,s:s,s:s,s:O}", "user", c->user, "status", c->status,
                                 "last_seen", when, "viewers", viewers);
        char *text = note ? json_dumps(note, JSON_COMPACT) : NULL;
        if (text != NULL && json_array_size(viewers) > 0) {
            gw_redis_publish(c->p->cfg.redis, PL_CHANNEL_PRESENCE, text);
        }
        free(text);
        json_decref(note);
    } else if (rc != PL_ERR_NOTFOUND) {
        pl_log_warn("presence_not_announced", "%s went %s; parley-auth did not answer", c->user,
                    c->status);
    }
    free(c);
}

/* The answer of Redis: news goes to parley-auth for its viewers, then out. */
static void on_change(void *arg, int announce, long long at_ms)
{
    change_t *c = arg;
    if (!announce) {
        free(c); /* may run while Redis is being freed: c->p is not touched */
        return;
    }
    gw_users_presence(c->p->cfg.users, c->user, c->status, at_ms, on_viewers, c);
}

static change_t *new_change(gw_presence_t *p, const char *user, const char *status)
{
    change_t *c = calloc(1, sizeof(*c));
    if (c != NULL) {
        c->p = p;
        snprintf(c->user, sizeof(c->user), "%s", user);
        snprintf(c->status, sizeof(c->status), "%s", status);
    }
    return c;
}

/* ---- devices ---- */

static int push_id(puser_t *u, uint64_t id)
{
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 2;
        uint64_t *ids = realloc(u->ids, cap * sizeof(*ids));
        if (ids == NULL) {
            return PL_ERR_NOMEM;
        }
        u->ids = ids;
        u->cap = cap;
    }
    u->ids[u->n++] = id;
    return PL_OK;
}

void gw_presence_add(gw_presence_t *p, const char *user, uint64_t id)
{
    puser_t **pp = slot(p, user);
    puser_t *u = *pp;
    if (u == NULL && (u = *pp = calloc(1, sizeof(*u))) != NULL) {
        snprintf(u->name, sizeof(u->name), "%s", user);
        p->count++;
    }
    for (size_t i = 0; u != NULL && i < u->n; i++) {
        if (u->ids[i] == id) {
            gw_redis_presence_add(p->cfg.redis, user, id); /* a renewal */
            return;
        }
    }
    if (u == NULL || push_id(u, id) != PL_OK) {
        gw_redis_presence_add(p->cfg.redis, user, id); /* out of memory: routing still works */
        return;
    }
    if (u->n > 1 || u->due_ms != 0) {
        u->due_ms = 0; /* back within the grace: nothing was announced, nothing is */
        gw_redis_presence_add(p->cfg.redis, user, id);
        return;
    }
    change_t *c = new_change(p, user, "online");
    if (c == NULL) {
        gw_redis_presence_add(p->cfg.redis, user, id);
        return;
    }
    gw_redis_went_online(p->cfg.redis, user, id, 0, on_change, c);
}

void gw_presence_del(gw_presence_t *p, const char *user, uint64_t id)
{
    gw_redis_presence_del(p->cfg.redis, user, id);
    puser_t *u = *slot(p, user);
    for (size_t i = 0; u != NULL && i < u->n; i++) {
        if (u->ids[i] == id) {
            u->ids[i] = u->ids[--u->n];
            break;
        }
    }
    if (u == NULL || u->n > 0) {
        return;
    }
    due_t *d = calloc(1, sizeof(*d));
    if (d == NULL) {
        return; /* the user stays "online" until a device comes and goes again */
    }
    snprintf(d->name, sizeof(d->name), "%s", user);
    u->due_ms = d->at_ms = pl_now_ms() + p->cfg.grace_ms;
    if (p->due_tail != NULL) {
        p->due_tail->next = d;
    } else {
        p->due_head = d;
    }
    p->due_tail = d;
}

void gw_presence_resync(gw_presence_t *p)
{
    for (size_t b = 0; b < BUCKETS; b++) {
        for (puser_t *u = p->table[b]; u != NULL; u = u->next) {
            change_t *c = u->n > 0 ? new_change(p, u->name, "online") : NULL;
            if (c != NULL) {
                gw_redis_went_online(p->cfg.redis, u->name, u->ids[0], 1, on_change, c);
            }
        }
    }
}

/* The grace of d ended: if its user still has no device here, it may be offline. */
static void grace_over(gw_presence_t *p, const due_t *d)
{
    puser_t **pp = slot(p, d->name);
    puser_t *u = *pp;
    if (u == NULL || u->n > 0 || u->due_ms != d->at_ms) {
        return; /* came back, or a later grace runs */
    }
    *pp = u->next;
    free(u->ids);
    free(u);
    p->count--;
    change_t *c = new_change(p, d->name, "offline");
    if (c != NULL) {
        gw_redis_went_offline(p->cfg.redis, d->name, on_change, c);
    }
}

static void on_reaped(void *arg, const char *user, long long at_ms)
{
    change_t *c = new_change(arg, user, "offline");
    if (c != NULL) {
        gw_users_presence(c->p->cfg.users, user, "offline", at_ms, on_viewers, c);
    }
}

void gw_presence_tick(gw_presence_t *p)
{
    long long now = pl_now_ms();
    while (p->due_head != NULL && p->due_head->at_ms <= now) {
        due_t *d = p->due_head;
        p->due_head = d->next;
        if (p->due_head == NULL) {
            p->due_tail = NULL;
        }
        grace_over(p, d);
        free(d);
    }
    if (now >= p->reap_at_ms) {
        p->reap_at_ms = now + REAP_EVERY_MS;
        gw_redis_reap(p->cfg.redis, p->cfg.grace_ms, on_reaped, p);
    }
}

void gw_presence_heard(gw_presence_t *p, json_t *note)
{
    const char *user = json_string_value(json_object_get(note, "user"));
    const char *status = json_string_value(json_object_get(note, "status"));
    const char *seen = json_string_value(json_object_get(note, "last_seen"));
    json_t *viewers = json_object_get(note, "viewers");
    if (user == NULL || status == NULL || seen == NULL || !json_is_array(viewers)) {
        pl_log_warn("bad_presence_note", "malformed presence notice");
        return;
    }
    json_t *frame = json_pack("{s:s,s:s,s:s,s:s}", "type", "presence", "user", user, "status",
                              status, "last_seen", seen);
    char *text = frame ? json_dumps(frame, JSON_COMPACT) : NULL;
    json_decref(frame);
    size_t i;
    json_t *v;
    json_array_foreach(viewers, i, v)
    {
        if (text != NULL && json_is_string(v)) {
            p->cfg.deliver(p->cfg.ud, json_string_value(v), text, strlen(text));
        }
    }
    free(text);
}
