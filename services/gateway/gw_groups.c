/*
 * Group views (see gw_groups.h). A local user's groups are fetched from parley-auth when its
 * first device opens here (GET /internal/groups?user=); each group it is in gets a view, and
 * the gateway says in Redis that it is interested in the group (a sorted-set entry scored with
 * a lapse time, renewed every INTEREST_RENEW_MS), so the router sends it the group's items.
 *
 * An item carries the group's membership version (mver: the seq of the latest membership
 * change at or before it). A view current to that version delivers the item to each local
 * member whose window holds its seq. A membership change whose previous version (pmver) is the
 * view's own is applied to the view from its event; any other newer version makes the view
 * ask parley-auth for the windows that changed since its version (POST
 * /internal/groups/members) and hold the group's items until the answer, in order. Held items are
 * capped: past the cap they are dropped, and the devices repair the gap by seq like any missed
 * push.
 */
#include "gw_groups.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VIEW_BUCKETS      4096
#define USER_BUCKETS      4096
#define INTEREST_TTL_MS   (120 * 1000)
#define INTEREST_RENEW_MS (60 * 1000)
#define HELD_MAX          10000 /* items held per view while it catches up */

typedef struct entry_s {
    struct entry_s *next;
    long long joined, left; /* left 0: a member now */
    char user[PL_USERNAME_LEN];
} entry_t;

typedef struct view_s {
    struct view_s *next;
    char conv[PL_CONV_ID_LEN];
    long long mver;
    int asking; /* a question to parley-auth is out: items are held */
    int stale;  /* the next item asks */
    entry_t **entries;
    size_t nbuckets;
    long count;
    json_t *held;
    uint64_t gen; /* tells a view from one that replaced it while a question was out */
} view_t;

typedef struct luser_s {
    struct luser_s *next;
    char name[PL_USERNAME_LEN];
    uint64_t *ids;
    size_t nids, capids;
    json_t *convs; /* the groups it has a view entry in */
    int fetched;   /* its groups are known */
    int fetching;
    uint64_t gen;
} luser_t;

struct gw_groups_s {
    gw_groups_cfg_t cfg;
    view_t *views[VIEW_BUCKETS];
    luser_t *users[USER_BUCKETS];
    uint64_t next_gen;
    long long next_renew_ms;
    pl_metric_t *m_delivered, *m_no_view, *m_held, *m_dropped, *m_asked, *m_filtered;
};

/* What a question to parley-auth carries to its answer. */
struct question {
    gw_groups_t *g;
    char key[PL_CONV_ID_LEN]; /* the user or the group asked about */
    uint64_t gen;
};

gw_groups_t *gw_groups_new(const gw_groups_cfg_t *cfg)
{
    gw_groups_t *g = calloc(1, sizeof(*g));
    if (g == NULL) {
        return NULL;
    }
    g->cfg = *cfg;
    pl_metrics_t *m = cfg->metrics;
    g->m_delivered = pl_metrics_counter(m, "parley_gateway_group_deliveries_total",
                                        "Group items written to a member's devices", NULL);
    g->m_no_view = pl_metrics_counter(m, "parley_gateway_group_unheld_total",
                                      "Group items for a group with no member here", NULL);
    g->m_held = pl_metrics_counter(m, "parley_gateway_group_held_total",
                                   "Group items held while a view caught up", NULL);
    g->m_dropped = pl_metrics_counter(m, "parley_gateway_group_dropped_total",
                                      "Held group items dropped (devices repair by seq)", NULL);
    g->m_asked = pl_metrics_counter(m, "parley_gateway_group_refreshes_total",
                                    "Views caught up from parley-auth", NULL);
    g->m_filtered = pl_metrics_counter(m, "parley_gateway_group_filtered_total",
                                       "Group items not written: outside a member's window", NULL);
    return g;
}

static void view_free(view_t *v)
{
    for (size_t b = 0; b < v->nbuckets; b++) {
        while (v->entries[b] != NULL) {
            entry_t *e = v->entries[b];
            v->entries[b] = e->next;
            free(e);
        }
    }
    free(v->entries);
    json_decref(v->held);
    free(v);
}

void gw_groups_free(gw_groups_t **pg)
{
    if (pg == NULL || *pg == NULL) {
        return;
    }
    gw_groups_t *g = *pg;
    for (size_t b = 0; b < VIEW_BUCKETS; b++) {
        while (g->views[b] != NULL) {
            view_t *v = g->views[b];
            g->views[b] = v->next;
            view_free(v);
        }
    }
    for (size_t b = 0; b < USER_BUCKETS; b++) {
        while (g->users[b] != NULL) {
            luser_t *u = g->users[b];
            g->users[b] = u->next;
            json_decref(u->convs);
            free(u->ids);
            free(u);
        }
    }
    free(g);
    *pg = NULL;
}

/* ---- views and entries ---- */

static view_t *view_find(gw_groups_t *g, const char *conv)
{
    for (view_t *v = g->views[pl_hash_str(conv) % VIEW_BUCKETS]; v != NULL; v = v->next) {
        if (strcmp(v->conv, conv) == 0) {
            return v;
        }
    }
    return NULL;
}

/* The view of conv, made (and this gateway's interest said) when new; NULL when out of
 * memory. A new view knows no version yet (mver 0), so its first item asks. */
static view_t *view_get(gw_groups_t *g, const char *conv)
{
    view_t *v = view_find(g, conv);
    if (v != NULL) {
        return v;
    }
    if ((v = calloc(1, sizeof(*v))) == NULL ||
        (v->entries = calloc(16, sizeof(entry_t *))) == NULL || (v->held = json_array()) == NULL) {
        if (v != NULL) {
            free(v->entries);
        }
        free(v);
        return NULL;
    }
    v->nbuckets = 16;
    v->gen = ++g->next_gen;
    snprintf(v->conv, sizeof(v->conv), "%s", conv);
    size_t h = pl_hash_str(conv) % VIEW_BUCKETS;
    v->next = g->views[h];
    g->views[h] = v;
    gw_redis_interest(g->cfg.redis, conv, pl_now_ms() + INTEREST_TTL_MS);
    return v;
}

static void view_drop(gw_groups_t *g, view_t *v)
{
    view_t **pp = &g->views[pl_hash_str(v->conv) % VIEW_BUCKETS];
    while (*pp != v) {
        pp = &(*pp)->next;
    }
    *pp = v->next;
    gw_redis_interest(g->cfg.redis, v->conv, 0);
    view_free(v);
}

static entry_t *entry_find(const view_t *v, const char *user)
{
    for (entry_t *e = v->entries[pl_hash_str(user) % v->nbuckets]; e != NULL; e = e->next) {
        if (strcmp(e->user, user) == 0) {
            return e;
        }
    }
    return NULL;
}

static void grow(view_t *v)
{
    size_t nb = v->nbuckets * 2;
    entry_t **t = calloc(nb, sizeof(*t));
    if (t == NULL) {
        return;
    }
    for (size_t b = 0; b < v->nbuckets; b++) {
        while (v->entries[b] != NULL) {
            entry_t *e = v->entries[b];
            v->entries[b] = e->next;
            e->next = t[pl_hash_str(e->user) % nb];
            t[pl_hash_str(e->user) % nb] = e;
        }
    }
    free(v->entries);
    v->entries = t;
    v->nbuckets = nb;
}

static luser_t *luser_find(gw_groups_t *g, const char *name)
{
    for (luser_t *u = g->users[pl_hash_str(name) % USER_BUCKETS]; u != NULL; u = u->next) {
        if (strcmp(u->name, name) == 0) {
            return u;
        }
    }
    return NULL;
}

/* Sets user's window in v (a local user only: others are never held), noting the view on
 * the user. */
static void entry_set(gw_groups_t *g, view_t *v, const char *user, long long joined, long long left)
{
    luser_t *u = luser_find(g, user);
    if (u == NULL) {
        return;
    }
    entry_t *e = entry_find(v, user);
    if (e == NULL) {
        if ((e = calloc(1, sizeof(*e))) == NULL) {
            return;
        }
        snprintf(e->user, sizeof(e->user), "%s", user);
        size_t h = pl_hash_str(user) % v->nbuckets;
        e->next = v->entries[h];
        v->entries[h] = e;
        if (++v->count > (long)v->nbuckets * 4) {
            grow(v);
        }
        json_array_append_new(u->convs, json_string(v->conv));
    }
    e->joined = joined;
    e->left = left;
}

static void entry_del(gw_groups_t *g, view_t *v, const char *name)
{
    char user[sizeof(((entry_t *)0)->user)];
    snprintf(user, sizeof(user), "%s", name); /* name may be the entry's own, freed below */
    for (entry_t **pp = &v->entries[pl_hash_str(user) % v->nbuckets]; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->user, user) == 0) {
            entry_t *e = *pp;
            *pp = e->next;
            free(e);
            v->count--;
            break;
        }
    }
    luser_t *u = luser_find(g, user);
    for (size_t i = 0; u != NULL && i < json_array_size(u->convs); i++) {
        if (strcmp(json_string_value(json_array_get(u->convs, i)), v->conv) == 0) {
            json_array_remove(u->convs, i);
            break;
        }
    }
    if (v->count == 0 && !v->asking) {
        view_drop(g, v);
    }
}

int gw_groups_is_member(gw_groups_t *g, const char *conv, const char *user)
{
    view_t *v = view_find(g, conv);
    entry_t *e = v != NULL ? entry_find(v, user) : NULL;
    return e != NULL && e->left == 0;
}

static int listed(json_t *users, const char *name)
{
    for (size_t i = 0; i < json_array_size(users); i++) {
        const char *u = json_string_value(json_array_get(users, i));
        if (u != NULL && strcmp(u, name) == 0) {
            return 1;
        }
    }
    return 0;
}

void gw_groups_send_members(gw_groups_t *g, const char *conv, const char *text, size_t len,
                            const char *skip, json_t *except)
{
    view_t *v = view_find(g, conv);
    for (size_t b = 0; v != NULL && b < v->nbuckets; b++) {
        for (entry_t *e = v->entries[b]; e != NULL; e = e->next) {
            if (e->joined > 0 && e->left == 0 && strcmp(e->user, skip) != 0 &&
                !listed(except, e->user)) {
                g->cfg.deliver(g->cfg.ud, e->user, text, len);
            }
        }
    }
}

/* ---- delivering ---- */

static void deliver(gw_groups_t *g, view_t *v, json_t *rec)
{
    pl_msg_t m;
    if (pl_msg_from_json(rec, &m) != PL_OK || m.seq <= 0) {
        return;
    }
    char *text = pl_msg_frame_text(&m);
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    for (size_t b = 0; b < v->nbuckets; b++) {
        for (entry_t *e = v->entries[b]; e != NULL; e = e->next) {
            if (e->joined > 0 && e->joined <= m.seq && (e->left == 0 || m.seq <= e->left)) {
                g->cfg.deliver(g->cfg.ud, e->user, text, len);
                pl_metric_inc(g->m_delivered);
            } else {
                pl_metric_inc(g->m_filtered);
            }
        }
    }
    free(text);
}

/* Applies membership change rec (which follows on from v's version) to v's local users. */
static void apply_change(gw_groups_t *g, view_t *v, json_t *rec, long long seq)
{
    json_t *ev = json_object_get(rec, "event");
    const char *type = json_string_value(json_object_get(ev, "type"));
    json_t *list =
        json_object_get(ev, strcmp(type ? type : "", "group_created") == 0 ? "members" : "users");
    for (size_t i = 0; i < json_array_size(list); i++) {
        const char *u = json_string_value(json_array_get(list, i));
        entry_t *e = u ? entry_find(v, u) : NULL;
        if (u != NULL && (e == NULL || e->left > 0)) {
            entry_set(g, v, u, seq, 0);
        }
    }
    if (type != NULL && strcmp(type, "group_created") == 0) {
        const char *by = json_string_value(json_object_get(ev, "by"));
        if (by != NULL) {
            entry_set(g, v, by, seq, 0);
        }
    }
    const char *gone = json_string_value(json_object_get(ev, "user"));
    entry_t *e = gone && type && strcmp(type, "member_removed") == 0 ? entry_find(v, gone) : NULL;
    if (e != NULL && e->left == 0) {
        e->left = seq;
    }
    v->mver = seq;
}

static void ask_members(gw_groups_t *g, view_t *v);

/* One item for v: delivered now, or held while v catches up. */
static void take(gw_groups_t *g, view_t *v, json_t *rec)
{
    if (v->asking) {
        if (json_array_size(v->held) >= HELD_MAX) {
            pl_metric_inc(g->m_dropped);
        } else {
            json_array_append(v->held, rec);
            pl_metric_inc(g->m_held);
        }
        return;
    }
    long long seq = json_integer_value(json_object_get(rec, "seq"));
    long long mver = json_integer_value(json_object_get(rec, "mver"));
    long long pmver = json_integer_value(json_object_get(rec, "pmver"));
    if (mver > v->mver || v->stale) {
        if (!v->stale && mver == seq && pmver == v->mver) {
            apply_change(g, v, rec, seq);
        } else {
            json_array_append(v->held, rec);
            pl_metric_inc(g->m_held);
            ask_members(g, v);
            return;
        }
    }
    deliver(g, v, rec);
}

/* 1 when rec is a change that adds a user who has a device here. */
static int adds_local(gw_groups_t *g, json_t *rec)
{
    json_t *ev = json_object_get(rec, "event");
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (type == NULL ||
        (strcmp(type, "group_created") != 0 && strcmp(type, "members_added") != 0)) {
        return 0;
    }
    json_t *list = json_object_get(ev, strcmp(type, "group_created") == 0 ? "members" : "users");
    for (size_t i = 0; i < json_array_size(list); i++) {
        const char *u = json_string_value(json_array_get(list, i));
        if (u != NULL && luser_find(g, u) != NULL) {
            return 1;
        }
    }
    const char *by = json_string_value(json_object_get(ev, "by"));
    return strcmp(type, "group_created") == 0 && by != NULL && luser_find(g, by) != NULL;
}

void gw_groups_push(gw_groups_t *g, json_t *rec)
{
    const char *conv = json_string_value(json_object_get(rec, "conv"));
    view_t *v = view_find(g, conv);
    if (v == NULL && adds_local(g, rec)) {
        v = view_get(g, conv); /* a group this gateway's users were just added to */
    }
    if (v == NULL) {
        pl_metric_inc(g->m_no_view);
        return;
    }
    take(g, v, rec);
    /* Windows that ended before this item are not needed again. */
    long long seq = json_integer_value(json_object_get(rec, "seq"));
    for (size_t b = 0; v != NULL && !v->asking && b < v->nbuckets; b++) {
        for (entry_t *e = v->entries[b], *next; e != NULL; e = next) {
            next = e->next;
            if (e->left > 0 && e->left < seq) {
                long before = v->count;
                entry_del(g, v, e->user);
                if (before == 1) {
                    return; /* the view went with its last entry */
                }
            }
        }
    }
}

/* ---- questions to parley-auth ---- */

static struct question *question_new(gw_groups_t *g, const char *key, uint64_t gen)
{
    struct question *q = calloc(1, sizeof(*q));
    if (q != NULL) {
        q->g = g;
        q->gen = gen;
        snprintf(q->key, sizeof(q->key), "%s", key);
    }
    return q;
}

static view_t *view_by_gen(gw_groups_t *g, const char *conv, uint64_t gen)
{
    view_t *v = view_find(g, conv);
    return v != NULL && v->gen == gen ? v : NULL;
}

/* The answer about a view's users: their windows and the version they are current to. */
static void on_members(void *arg, int rc, json_t *answer)
{
    struct question *q = arg;
    gw_groups_t *g = q->g;
    view_t *v = view_by_gen(g, q->key, q->gen);
    free(q);
    if (v == NULL) {
        return;
    }
    v->asking = 0;
    json_t *held = v->held;
    v->held = json_array();
    if (rc != PL_OK || v->held == NULL) {
        /* Nothing is delivered on a guess: the held items are dropped and the devices repair
         * the gap by seq; the next item asks again. */
        pl_metric_add(g->m_dropped, json_array_size(held));
        v->stale = 1;
        json_decref(held);
        return;
    }
    pl_metric_inc(g->m_asked);
    /* The windows that changed since the view's version; local users only are kept. */
    json_t *changes = json_object_get(answer, "members");
    for (size_t i = 0; i < json_array_size(changes); i++) {
        json_t *o = json_array_get(changes, i);
        const char *user = json_string_value(json_object_get(o, "user"));
        if (user != NULL) {
            entry_set(g, v, user, json_integer_value(json_object_get(o, "joined_seq")),
                      json_integer_value(json_object_get(o, "left_seq")));
        }
    }
    v->mver = json_integer_value(json_object_get(answer, "mver"));
    v->stale = 0;
    const char *conv = v->conv;
    uint64_t gen = v->gen;
    for (size_t i = 0; i < json_array_size(held); i++) {
        view_t *now = view_by_gen(g, conv, gen);
        if (now == NULL) {
            break;
        }
        take(g, now, json_array_get(held, i));
    }
    json_decref(held);
}

/* Asks parley-auth for the windows that changed since v's version. */
static void ask_members(gw_groups_t *g, view_t *v)
{
    struct question *q = question_new(g, v->conv, v->gen);
    if (q == NULL) {
        v->stale = 1;
        return;
    }
    v->asking = 1;
    gw_users_call(g->cfg.users, "POST", "/internal/groups/members",
                  json_pack("{s:s,s:I}", "conv", v->conv, "since", (json_int_t)v->mver), on_members,
                  q);
}

static luser_t *luser_by_gen(gw_groups_t *g, const char *name, uint64_t gen)
{
    luser_t *u = luser_find(g, name);
    return u != NULL && u->gen == gen ? u : NULL;
}

/* The answer about a local user's groups. */
static void on_groups(void *arg, int rc, json_t *answer)
{
    struct question *q = arg;
    gw_groups_t *g = q->g;
    luser_t *u = luser_by_gen(g, q->key, q->gen);
    free(q);
    if (u == NULL) {
        return; /* gone meanwhile */
    }
    u->fetching = 0;
    if (rc != PL_OK) {
        return; /* asked again at the next tick */
    }
    u->fetched = 1;
    json_t *groups = json_object_get(answer, "groups");
    for (size_t i = 0; i < json_array_size(groups); i++) {
        json_t *o = json_array_get(groups, i);
        const char *conv = json_string_value(json_object_get(o, "conv"));
        view_t *v = conv && pl_conv_kind(conv) == 'g' ? view_get(g, conv) : NULL;
        if (v == NULL) {
            continue;
        }
        /* A new view knows no version: its first item brings it up to date from parley-auth
         * (unless that item is the group's first change). A view that exists is caught up by
         * the item that names this membership, or by one after it. */
        entry_set(g, v, u->name, json_integer_value(json_object_get(o, "joined_seq")), 0);
    }
}

static void fetch(gw_groups_t *g, luser_t *u)
{
    char path[96];
    struct question *q = question_new(g, u->name, u->gen);
    if (q == NULL) {
        return;
    }
    u->fetching = 1;
    snprintf(path, sizeof(path), "/internal/groups?user=%s", u->name);
    gw_users_call(g->cfg.users, "GET", path, NULL, on_groups, q);
}

/* ---- devices ---- */

void gw_groups_add(gw_groups_t *g, const char *user, uint64_t id)
{
    luser_t *u = luser_find(g, user);
    if (u == NULL) {
        if ((u = calloc(1, sizeof(*u))) == NULL || (u->convs = json_array()) == NULL) {
            free(u);
            return;
        }
        snprintf(u->name, sizeof(u->name), "%s", user);
        u->gen = ++g->next_gen;
        size_t h = pl_hash_str(user) % USER_BUCKETS;
        u->next = g->users[h];
        g->users[h] = u;
    }
    for (size_t i = 0; i < u->nids; i++) {
        if (u->ids[i] == id) {
            return; /* registered again: nothing new */
        }
    }
    if (u->nids == u->capids) {
        size_t cap = u->capids ? u->capids * 2 : 4;
        uint64_t *ids = realloc(u->ids, cap * sizeof(*ids));
        if (ids == NULL) {
            return;
        }
        u->ids = ids;
        u->capids = cap;
    }
    u->ids[u->nids++] = id;
    if (!u->fetched && !u->fetching) {
        fetch(g, u);
    }
}

void gw_groups_del(gw_groups_t *g, const char *user, uint64_t id)
{
    luser_t *u = luser_find(g, user);
    if (u == NULL) {
        return;
    }
    for (size_t i = 0; i < u->nids; i++) {
        if (u->ids[i] == id) {
            u->ids[i] = u->ids[--u->nids];
            break;
        }
    }
    if (u->nids > 0) {
        return;
    }
    while (json_array_size(u->convs) > 0) {
        view_t *v = view_find(g, json_string_value(json_array_get(u->convs, 0)));
        if (v == NULL) {
            json_array_remove(u->convs, 0);
        } else {
            size_t before = json_array_size(u->convs);
            entry_del(g, v, u->name);
            if (json_array_size(u->convs) == before) {
                json_array_remove(u->convs, 0); /* never loop on a stale name */
            }
        }
    }
    luser_t **pp = &g->users[pl_hash_str(user) % USER_BUCKETS];
    while (*pp != u) {
        pp = &(*pp)->next;
    }
    *pp = u->next;
    json_decref(u->convs);
    free(u->ids);
    free(u);
}

void gw_groups_own_item(gw_groups_t *g, const pl_msg_t *m)
{
    const char *type = json_string_value(json_object_get(m->event, "type"));
    const char *conv = json_string_value(json_object_get(m->event, "conv"));
    long long seq = json_integer_value(json_object_get(m->event, "seq"));
    if (type == NULL || conv == NULL || seq <= 0 || pl_conv_kind(conv) != 'g' ||
        luser_find(g, m->receiver) == NULL) {
        return;
    }
    if (strcmp(type, "group_added") == 0) {
        view_t *v = view_get(g, conv);
        entry_t *e = v ? entry_find(v, m->receiver) : NULL;
        /* With no entry, a notice the view's version already covers is an old one again (the
         * router replays what it had not committed when it restarts): the user's window ended
         * and its entry was let go, and taking the notice would deliver to a removed member. */
        if (v != NULL &&
            ((e == NULL && seq > v->mver) || (e != NULL && e->left > 0 && e->left < seq))) {
            entry_set(g, v, m->receiver, seq, 0);
        }
    } else if (strcmp(type, "group_removed") == 0) {
        view_t *v = view_find(g, conv);
        entry_t *e = v ? entry_find(v, m->receiver) : NULL;
        if (e != NULL && e->joined < seq && (e->left == 0 || e->left > seq)) {
            e->left = seq;
        }
    }
}

void gw_groups_tick(gw_groups_t *g, int resync)
{
    long long now = pl_now_ms();
    for (size_t b = 0; b < USER_BUCKETS; b++) {
        for (luser_t *u = g->users[b]; u != NULL; u = u->next) {
            if (!u->fetched && !u->fetching) {
                fetch(g, u);
            }
        }
    }
    if (!resync && now < g->next_renew_ms) {
        return;
    }
    g->next_renew_ms = now + INTEREST_RENEW_MS;
    for (size_t b = 0; b < VIEW_BUCKETS; b++) {
        for (view_t *v = g->views[b]; v != NULL; v = v->next) {
            gw_redis_interest(g->cfg.redis, v->conv, now + INTEREST_TTL_MS);
        }
    }
}
