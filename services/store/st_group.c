/*
 * The store's groups (see st_group.h). A group is loaded once (its `groups` document and its
 * current members) and then kept up to date by the membership changes this store applies: as
 * long as it owns the group's partition it is the only writer, so memory stays exact. When a
 * partition's offsets do not follow on from the last batch (a rebalance, a restart), its groups
 * are forgotten and read again; so are the groups of a batch that failed after being checked.
 *
 * Events (the `event` of a system item in a g: stream, made by parley-auth, sender = by):
 *   group_created {by, name, members}    by becomes owner, members members
 *   members_added {by, users}            by an admin or the owner
 *   member_removed {by, user}            by an admin (a member) or the owner; by == user: leave
 *   group_updated {by, name?, post_policy?}  by an admin or the owner
 *   role_changed {by, user, role}        by the owner; role "admin" or "member"
 */
#include "st_group.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "parley/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GROUP_BUCKETS 1024
#define NAME_MAX_LEN  256

enum role { NONE = 0, MEMBER, ADMIN, OWNER };
static const char *const role_names[] = {"none", "member", "admin", "owner"};

typedef struct member_s {
    struct member_s *next;
    long long joined; /* 0 until the change that added it is numbered */
    int role;
    char user[PL_USERNAME_LEN];
} member_t;

typedef struct group_s {
    struct group_s *next;
    char conv[PL_CONV_ID_LEN];
    char owner[PL_USERNAME_LEN];
    char name[NAME_MAX_LEN];
    int32_t partition;
    int exists;        /* the groups document was found */
    int admins_only;   /* post_policy "admins" */
    long long mver;    /* seq of the latest membership change applied */
    long long applied; /* seq of the latest change of any kind applied */
    long count;        /* current members */
    member_t **members;
    size_t nbuckets;
    double tokens; /* slow mode */
    long long refilled_ms;
    unsigned long touched; /* the batch that last used it */
    unsigned long changed; /* the batch that last changed its membership or settings */
} group_t;

struct st_group_s {
    pl_mongo_t *mongo;
    st_group_cfg_t cfg;
    group_t *table[GROUP_BUCKETS];
    size_t cached; /* members and groups held */
    unsigned long batch;
    long long next_offset[ST_MAX_PARTITIONS]; /* 0: unknown */
    unsigned char *applied;                   /* per record of the batch: a change applied */
    json_t **added;                           /* per record: users a change added */
    size_t cap;
};

st_group_t *st_group_new(pl_mongo_t *mg, const st_group_cfg_t *cfg)
{
    st_group_t *g = calloc(1, sizeof(*g));
    if (g != NULL) {
        g->mongo = mg;
        g->cfg = *cfg;
    }
    return g;
}

static void group_free(group_t *gr)
{
    for (size_t b = 0; b < gr->nbuckets; b++) {
        while (gr->members[b] != NULL) {
            member_t *m = gr->members[b];
            gr->members[b] = m->next;
            free(m);
        }
    }
    free(gr->members);
    free(gr);
}

/* Forgets the groups for which drop(gr, arg) is true. */
static void forget(st_group_t *g, int (*drop)(const group_t *, const void *), const void *arg)
{
    for (size_t b = 0; b < GROUP_BUCKETS; b++) {
        for (group_t **pp = &g->table[b]; *pp != NULL;) {
            group_t *gr = *pp;
            if (drop(gr, arg)) {
                *pp = gr->next;
                g->cached -= (size_t)gr->count + 1;
                group_free(gr);
            } else {
                pp = &gr->next;
            }
        }
    }
}

static int drop_all(const group_t *gr, const void *arg)
{
    (void)gr;
    (void)arg;
    return 1;
}

static int drop_partition(const group_t *gr, const void *arg)
{
    return gr->partition == *(const int32_t *)arg;
}

static int drop_touched(const group_t *gr, const void *arg)
{
    return gr->touched == *(const unsigned long *)arg;
}

static int drop_untouched(const group_t *gr, const void *arg)
{
    return gr->touched != *(const unsigned long *)arg;
}

void st_group_free(st_group_t **pg)
{
    if (pg == NULL || *pg == NULL) {
        return;
    }
    forget(*pg, drop_all, NULL);
    for (size_t i = 0; i < (*pg)->cap; i++) {
        json_decref((*pg)->added[i]);
    }
    free((*pg)->applied);
    free((*pg)->added);
    free(*pg);
    *pg = NULL;
}

void st_group_abort(st_group_t *g)
{
    forget(g, drop_touched, &g->batch);
}

/* ---- members in memory ---- */

static member_t *member_find(const group_t *gr, const char *user)
{
    for (member_t *m = gr->members[pl_hash_str(user) % gr->nbuckets]; m != NULL; m = m->next) {
        if (strcmp(m->user, user) == 0) {
            return m;
        }
    }
    return NULL;
}

static int role_of(const group_t *gr, const char *user)
{
    const member_t *m = member_find(gr, user);
    return m ? m->role : NONE;
}

/* Doubles the buckets when the chains grow long (groups reach 10,000 members). */
static void maybe_grow(group_t *gr)
{
    if ((size_t)gr->count < gr->nbuckets * 4) {
        return;
    }
    size_t nb = gr->nbuckets * 2;
    member_t **t = calloc(nb, sizeof(*t));
    if (t == NULL) {
        return; /* longer chains, still correct */
    }
    for (size_t b = 0; b < gr->nbuckets; b++) {
        while (gr->members[b] != NULL) {
            member_t *m = gr->members[b];
            gr->members[b] = m->next;
            size_t h = pl_hash_str(m->user) % nb;
            m->next = t[h];
            t[h] = m;
        }
    }
    free(gr->members);
    gr->members = t;
    gr->nbuckets = nb;
}

static int member_add(st_group_t *g, group_t *gr, const char *user, int role, long long joined)
{
    member_t *m = member_find(gr, user);
    if (m != NULL) {
        m->role = role;
        return PL_OK;
    }
    if ((m = calloc(1, sizeof(*m))) == NULL) {
        return PL_ERR_NOMEM;
    }
    snprintf(m->user, sizeof(m->user), "%s", user);
    m->role = role;
    m->joined = joined;
    size_t h = pl_hash_str(user) % gr->nbuckets;
    m->next = gr->members[h];
    gr->members[h] = m;
    gr->count++;
    g->cached++;
    maybe_grow(gr);
    return PL_OK;
}

static void member_del(st_group_t *g, group_t *gr, const char *user)
{
    for (member_t **pp = &gr->members[pl_hash_str(user) % gr->nbuckets]; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->user, user) == 0) {
            member_t *m = *pp;
            *pp = m->next;
            free(m);
            gr->count--;
            g->cached--;
            return;
        }
    }
}

static int role_parse(const char *s)
{
    for (int r = MEMBER; s != NULL && r <= OWNER; r++) {
        if (strcmp(s, role_names[r]) == 0) {
            return r;
        }
    }
    return NONE;
}

/* ---- loading ---- */

static const char *bson_str(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)
               ? bson_iter_utf8(&it, NULL)
               : NULL;
}

static long long bson_num(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_NUMBER(&it)
               ? bson_iter_as_int64(&it)
               : 0;
}

struct loading {
    st_group_t *g;
    group_t *gr;
    int rc;
};

static int on_member(void *ud, const bson_t *doc)
{
    struct loading *l = ud;
    const char *user = bson_str(doc, "user");
    int role = role_parse(bson_str(doc, "role"));
    if (user != NULL && role != NONE && bson_num(doc, "left_seq") == 0) {
        l->rc = member_add(l->g, l->gr, user, role, bson_num(doc, "joined_seq"));
    }
    return l->rc == PL_OK;
}

/* Reads gr's groups document (exists, settings) and its current members. */
static int load(st_group_t *g, group_t *gr)
{
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(g->mongo, ST_GROUPS, gr->conv, &doc);
    if (rc == PL_ERR_NOTFOUND) {
        gr->exists = 0;
        return PL_OK;
    }
    if (rc != PL_OK) {
        return rc;
    }
    gr->exists = 1;
    snprintf(gr->owner, sizeof(gr->owner), "%s", bson_str(doc, "owner") ?: "");
    snprintf(gr->name, sizeof(gr->name), "%s", bson_str(doc, "name") ?: "");
    const char *policy = bson_str(doc, "post_policy");
    gr->admins_only = policy != NULL && strcmp(policy, "admins") == 0;
    gr->mver = bson_num(doc, "mver");
    bson_destroy(doc);
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "conv", gr->conv);
    struct loading l = {g, gr, PL_OK};
    rc = pl_mongo_find(g->mongo, ST_MEMBERS, &filter, NULL, on_member, &l);
    bson_destroy(&filter);
    return rc != PL_OK ? rc : l.rc;
}

/* The group conv, loaded when not held. *out NULL with PL_OK never happens. */
static int group_get(st_group_t *g, const st_rec_t *r, group_t **out)
{
    size_t h = pl_hash_str(r->m.conv) % GROUP_BUCKETS;
    for (group_t *gr = g->table[h]; gr != NULL; gr = gr->next) {
        if (strcmp(gr->conv, r->m.conv) == 0) {
            *out = gr;
            return PL_OK;
        }
    }
    group_t *gr = calloc(1, sizeof(*gr));
    if (gr == NULL || (gr->members = calloc(64, sizeof(*gr->members))) == NULL) {
        free(gr);
        return PL_ERR_NOMEM;
    }
    gr->nbuckets = 64;
    snprintf(gr->conv, sizeof(gr->conv), "%s", r->m.conv);
    gr->partition = r->partition;
    gr->tokens = g->cfg.burst;
    int rc = load(g, gr);
    if (rc != PL_OK) {
        g->cached -= (size_t)gr->count;
        group_free(gr);
        return rc;
    }
    gr->next = g->table[h];
    g->table[h] = gr;
    g->cached += 1;
    *out = gr;
    return PL_OK;
}

/* ---- checks and changes ---- */

/* Slow mode: one token per text item, refilled by the items' accept times. */
static int take_token(const st_group_t *g, group_t *gr, long long ts_ms)
{
    if (ts_ms > gr->refilled_ms) {
        if (gr->refilled_ms > 0) {
            gr->tokens += (double)(ts_ms - gr->refilled_ms) * g->cfg.rate / 1000.0;
        }
        gr->refilled_ms = ts_ms;
    }
    if (gr->tokens > g->cfg.burst) {
        gr->tokens = g->cfg.burst;
    }
    if (gr->tokens < 1.0) {
        return 0;
    }
    gr->tokens -= 1.0;
    return 1;
}

/* A username in ev's string member key, normalized, into out; 0 when absent or malformed. */
static int event_user(json_t *ev, const char *key, char out[PL_USERNAME_LEN])
{
    const char *s = json_string_value(json_object_get(ev, key));
    return s != NULL && pl_username_normalize(s, out) == PL_OK && strcmp(s, out) == 0;
}

/* Adds the users of list (not yet members) to gr as members; the new ones go to added. */
static int add_users(st_group_t *g, group_t *gr, json_t *list, json_t *added)
{
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        char u[PL_USERNAME_LEN];
        const char *s = json_string_value(v);
        if (s == NULL || pl_username_normalize(s, u) != PL_OK || role_of(gr, u) != NONE) {
            continue;
        }
        if (member_add(g, gr, u, MEMBER, 0) != PL_OK) {
            return PL_ERR_NOMEM;
        }
        json_array_append_new(added, json_string(u));
    }
    return PL_OK;
}

/* Counts the users of list that are not members yet. */
static long newcomers(const group_t *gr, json_t *list)
{
    long n = 0;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        char u[PL_USERNAME_LEN];
        const char *s = json_string_value(v);
        n += s != NULL && pl_username_normalize(s, u) == PL_OK && role_of(gr, u) == NONE;
    }
    return n;
}

/*
 * Whether the change ev by `by` may happen to gr as it stands (force: it is already stored, so
 * it happened), and if so applies it. *ok = 1 when applied. added receives the new members.
 */
static int apply_event(st_group_t *g, group_t *gr, const char *by, json_t *ev, int force,
                       json_t *added, int *ok)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    int me = role_of(gr, by);
    char user[PL_USERNAME_LEN] = "";
    *ok = 0;
    if (type == NULL) {
        return PL_OK;
    }
    if (strcmp(type, "group_created") == 0) {
        json_t *list = json_object_get(ev, "members");
        if (!force && (gr->count > 0 || strcmp(by, gr->owner) != 0 ||
                       newcomers(gr, list) + 1 > g->cfg.member_limit)) {
            return PL_OK;
        }
        *ok = 1;
        if (member_add(g, gr, by, OWNER, 0) != PL_OK) {
            return PL_ERR_NOMEM;
        }
        json_array_append_new(added, json_string(by));
        return add_users(g, gr, list, added);
    }
    if (strcmp(type, "members_added") == 0) {
        json_t *list = json_object_get(ev, "users");
        if (!force && (me < ADMIN || gr->count + newcomers(gr, list) > g->cfg.member_limit)) {
            return PL_OK;
        }
        *ok = 1;
        return add_users(g, gr, list, added);
    }
    if (strcmp(type, "member_removed") == 0) {
        if (!event_user(ev, "user", user)) {
            return PL_OK;
        }
        int target = role_of(gr, user);
        int leave = strcmp(user, by) == 0;
        if (!force && (target == NONE || target == OWNER || (!leave && me <= target) ||
                       (!leave && me < ADMIN))) {
            return PL_OK;
        }
        *ok = 1;
        member_del(g, gr, user);
        return PL_OK;
    }
    if (strcmp(type, "group_updated") == 0) {
        const char *name = json_string_value(json_object_get(ev, "name"));
        const char *policy = json_string_value(json_object_get(ev, "post_policy"));
        if (!force && me < ADMIN) {
            return PL_OK;
        }
        *ok = 1;
        if (name != NULL) {
            snprintf(gr->name, sizeof(gr->name), "%s", name);
        }
        if (policy != NULL) {
            gr->admins_only = strcmp(policy, "admins") == 0;
        }
        return PL_OK;
    }
    if (strcmp(type, "role_changed") == 0) {
        int role = role_parse(json_string_value(json_object_get(ev, "role")));
        if (!event_user(ev, "user", user) ||
            (!force && (me != OWNER || role_of(gr, user) == NONE || role_of(gr, user) == OWNER ||
                        role == OWNER || role == NONE))) {
            return PL_OK;
        }
        *ok = 1;
        return role != NONE && role_of(gr, user) != NONE ? member_add(g, gr, user, role, 0) : PL_OK;
    }
    return PL_OK;
}

/* 1 when a change of type is one of membership (it moves mver). */
static int moves_membership(json_t *ev)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    return type != NULL &&
           (strcmp(type, "group_created") == 0 || strcmp(type, "members_added") == 0 ||
            strcmp(type, "member_removed") == 0 || strcmp(type, "role_changed") == 0);
}

static int ensure_cap(st_group_t *g, size_t n)
{
    for (size_t i = 0; i < g->cap; i++) {
        json_decref(g->added[i]);
        g->added[i] = NULL;
    }
    if (n > g->cap) {
        unsigned char *a = realloc(g->applied, n);
        if (a != NULL) {
            g->applied = a;
        }
        json_t **d = realloc(g->added, n * sizeof(*d));
        if (d != NULL) {
            g->added = d;
        }
        if (a == NULL || d == NULL) {
            return PL_ERR_NOMEM;
        }
        memset(g->added + g->cap, 0, (n - g->cap) * sizeof(*d));
        g->cap = n;
    }
    memset(g->applied, 0, n);
    return PL_OK;
}

/* Forgets the groups of partitions whose offsets do not follow on from the last batch. */
static void follow_partitions(st_group_t *g, const st_rec_t *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int32_t p = recs[i].partition;
        if (p < 0 || p >= ST_MAX_PARTITIONS) {
            continue;
        }
        if (g->next_offset[p] != recs[i].offset) {
            forget(g, drop_partition, &p);
        }
        g->next_offset[p] = recs[i].offset + 1;
    }
}

/* Whether the record's message is stored already (a replay keeps its place). */
static int stored(st_group_t *g, const st_rec_t *r, int *yes)
{
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(g->mongo, "messages", r->m.msg_id, &doc);
    bson_destroy(doc);
    *yes = rc == PL_OK;
    return rc == PL_ERR_NOTFOUND ? PL_OK : rc;
}

/* Whether r may go into gr as it stands (force: it is stored already, so it did); a change
 * that may is applied. *ok = 1 when allowed. */
static int decide(st_group_t *g, group_t *gr, st_rec_t *r, size_t i, int force, int *ok)
{
    if (strcmp(r->m.kind, PL_KIND_SYSTEM) == 0) {
        if (!gr->exists) {
            *ok = 0;
            return PL_OK;
        }
        json_decref(g->added[i]);
        if ((g->added[i] = json_array()) == NULL) {
            return PL_ERR_NOMEM;
        }
        int rc = apply_event(g, gr, r->m.sender, r->m.event, force, g->added[i], ok);
        g->applied[i] = (unsigned char)*ok;
        return rc;
    }
    int role = role_of(gr, r->m.sender);
    if (strcmp(r->m.kind, PL_KIND_TEXT) != 0) {
        /* An edit or a recall: any current member (the post policy and slow mode are for new
         * messages); st_edit checks the target, with the author's role at this point. */
        r->by_admin = role >= ADMIN;
        *ok = force || role != NONE;
        return PL_OK;
    }
    *ok = force || (role != NONE && (!gr->admins_only || role >= ADMIN));
    if (*ok && !force && !take_token(g, gr, r->m.ts_ms)) {
        *ok = 0;
        r->refuse_code = PL_ERR_RATELIMIT;
    }
    return PL_OK;
}

/* Decides one record; see st_group_check. */
static int check_one(st_group_t *g, st_rec_t *r, size_t i)
{
    group_t *gr = NULL;
    int rc = group_get(g, r, &gr);
    if (rc == PL_OK && strcmp(r->m.kind, PL_KIND_SYSTEM) == 0 && !gr->exists) {
        rc = load(g, gr); /* made by parley-auth just before its creation item */
    }
    if (rc != PL_OK) {
        return rc;
    }
    gr->touched = g->batch;
    int ok = 0, yes = 0;
    rc = decide(g, gr, r, i, 0, &ok);
    if (rc == PL_OK && !ok) {
        rc = stored(g, r, &yes);
    }
    if (rc == PL_OK && yes) {
        r->refuse_code = 0;
        rc = decide(g, gr, r, i, 1, &ok);
    }
    if (rc != PL_OK || ok) {
        return rc;
    }
    r->first = 0;
    if (strcmp(r->m.kind, PL_KIND_SYSTEM) == 0) {
        /* parley-auth checked it before; another change won the race. Its request times out
         * waiting (503) and its client asks again. */
        pl_log_warn("group_change_refused", "%s: a change by %s is not allowed now", r->m.conv,
                    r->m.sender);
    } else {
        r->refused = 1;
        r->refuse_code = r->refuse_code ? r->refuse_code : PL_ERR_FORBIDDEN;
    }
    return PL_OK;
}

int st_group_check(st_group_t *g, st_rec_t *recs, size_t n)
{
    g->batch++;
    follow_partitions(g, recs, n);
    int rc = ensure_cap(g, n);
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (recs[i].first && pl_conv_kind(recs[i].m.conv) == 'g') {
            rc = check_one(g, &recs[i], i);
        }
    }
    if (rc == PL_OK && g->cached > g->cfg.max_cached) {
        forget(g, drop_untouched, &g->batch);
    }
    return rc;
}

/* ---- after numbering: documents, versions, the users' own streams ---- */

/* A list of upserts of one collection, built as the batch is committed. */
struct upserts {
    bson_t **filters, **updates;
    size_t n, cap;
};

static bson_t *upsert_new(struct upserts *u, const char *id)
{
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 16;
        bson_t **f = realloc(u->filters, cap * sizeof(*f));
        if (f != NULL) {
            u->filters = f;
        }
        bson_t **d = realloc(u->updates, cap * sizeof(*d));
        if (d != NULL) {
            u->updates = d;
        }
        if (f == NULL || d == NULL) {
            return NULL;
        }
        u->cap = cap;
    }
    u->filters[u->n] = bson_new();
    u->updates[u->n] = bson_new();
    BSON_APPEND_UTF8(u->filters[u->n], "_id", id);
    return u->updates[u->n++];
}

static void upserts_clear(struct upserts *u)
{
    for (size_t i = 0; i < u->n; i++) {
        bson_destroy(u->filters[i]);
        bson_destroy(u->updates[i]);
    }
    free(u->filters);
    free(u->updates);
    memset(u, 0, sizeof(*u));
}

static int upserts_run(pl_mongo_t *mg, const char *coll, struct upserts *u)
{
    int rc = u->n ? pl_mongo_upsert_each(mg, coll, u->filters, u->updates, u->n) : PL_OK;
    upserts_clear(u);
    return rc;
}

/* The entry of gr in user's group_lists document: the same window as the members document.
 * A role change leaves it alone. */
static int list_entry(struct upserts *u, const group_t *gr, const char *user, long long seq,
                      int joining)
{
    char path[PL_CONV_ID_LEN + 32];
    if (!joining && role_of(gr, user) != NONE) {
        return PL_OK;
    }
    bson_t *upd = upsert_new(u, user);
    if (upd == NULL) {
        return PL_ERR_NOMEM;
    }
    bson_t set, entry;
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
    if (joining) {
        snprintf(path, sizeof(path), "groups.%s", gr->conv);
        BSON_APPEND_DOCUMENT_BEGIN(&set, path, &entry);
        BSON_APPEND_INT64(&entry, "joined_seq", seq);
        BSON_APPEND_INT64(&entry, "left_seq", 0);
        bson_append_document_end(&set, &entry);
    } else {
        snprintf(path, sizeof(path), "groups.%s.left_seq", gr->conv);
        BSON_APPEND_INT64(&set, path, seq);
    }
    bson_append_document_end(upd, &set);
    return PL_OK;
}

/* The members document of (conv, user): role, window, cursors; and user's group_lists entry. */
static int member_doc(struct upserts *u, struct upserts *lists, const group_t *gr, const char *user,
                      long long seq, int joining)
{
    int rc = list_entry(lists, gr, user, seq, joining);
    if (rc != PL_OK) {
        return rc;
    }
    char id[PL_CONV_ID_LEN + PL_USERNAME_LEN + 2];
    snprintf(id, sizeof(id), "%s|%s", gr->conv, user);
    bson_t *upd = upsert_new(u, id);
    if (upd == NULL) {
        return PL_ERR_NOMEM;
    }
    bson_t set, once;
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
    BSON_APPEND_UTF8(&set, "conv", gr->conv);
    BSON_APPEND_UTF8(&set, "user", user);
    if (joining) {
        BSON_APPEND_UTF8(&set, "role", role_names[role_of(gr, user)]);
        BSON_APPEND_INT64(&set, "joined_seq", seq);
        BSON_APPEND_INT64(&set, "left_seq", 0);
    } else if (role_of(gr, user) != NONE) {
        BSON_APPEND_UTF8(&set, "role", role_names[role_of(gr, user)]);
    } else {
        BSON_APPEND_INT64(&set, "left_seq", seq);
    }
    bson_append_document_end(upd, &set);
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$setOnInsert", &once);
    BSON_APPEND_INT64(&once, "read_seq", 0);
    BSON_APPEND_INT64(&once, "delivered_seq", 0);
    if (!joining && role_of(gr, user) == NONE) {
        BSON_APPEND_INT64(&once, "joined_seq", 0);
    }
    bson_append_document_end(upd, &once);
    return PL_OK;
}

/* The system item on user's own stream telling of change r (type "group_added" or
 * "group_removed"), as a parley.messages record object. client_id "sys:<msg_id of r>" makes
 * a replayed change announce the same item, which the store then de-duplicates. */
static json_t *user_item(const group_t *gr, const st_rec_t *r, const char *user, const char *type)
{
    pl_msg_t m;
    memset(&m, 0, sizeof(m));
    snprintf(m.client_id, sizeof(m.client_id), PL_SYSTEM_CLIENT_ID_PREFIX "%s", r->m.msg_id);
    pl_msg_id(user, m.client_id, m.msg_id);
    pl_user_conv(user, m.conv);
    snprintf(m.sender, sizeof(m.sender), "%s", user);
    snprintf(m.receiver, sizeof(m.receiver), "%s", user);
    memcpy(m.kind, PL_KIND_SYSTEM, sizeof(PL_KIND_SYSTEM));
    m.event = json_pack("{s:s,s:s,s:s,s:s,s:I}", "type", type, "conv", gr->conv, "name", gr->name,
                        "by", r->m.sender, "seq", (json_int_t)r->m.seq);
    m.content = "";
    m.ts_ms = pl_now_ms();
    snprintf(m.origin_gw, sizeof(m.origin_gw), "parley-store");
    char *text = m.event ? pl_msg_record(&m) : NULL;
    json_decref(m.event);
    json_t *o = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return o;
}

static group_t *group_held(st_group_t *g, const char *conv)
{
    for (group_t *gr = g->table[pl_hash_str(conv) % GROUP_BUCKETS]; gr; gr = gr->next) {
        if (strcmp(gr->conv, conv) == 0) {
            return gr;
        }
    }
    return NULL;
}

/* The documents and items of applied change r (record i). */
static int commit_change(st_group_t *g, group_t *gr, st_rec_t *r, size_t i, struct upserts *mem,
                         struct upserts *lists, json_t *uitems)
{
    const char *type = json_string_value(json_object_get(r->m.event, "type"));
    int rc = PL_OK;
    size_t k;
    json_t *v;
    json_array_foreach(g->added[i], k, v)
    {
        member_t *m = member_find(gr, json_string_value(v));
        if (m != NULL) {
            m->joined = r->m.seq;
        }
        if (rc == PL_OK) {
            rc = member_doc(mem, lists, gr, json_string_value(v), r->m.seq, 1);
        }
        json_array_append_new(uitems, user_item(gr, r, json_string_value(v), "group_added"));
    }
    char user[PL_USERNAME_LEN];
    if (rc == PL_OK && (strcmp(type, "member_removed") == 0 || strcmp(type, "role_changed") == 0) &&
        event_user(r->m.event, "user", user)) {
        rc = member_doc(mem, lists, gr, user, r->m.seq, 0);
        if (strcmp(type, "member_removed") == 0) {
            json_array_append_new(uitems, user_item(gr, r, user, "group_removed"));
        }
    }
    return rc;
}

/* The groups document of every group the batch changed: version, size, settings. */
static int group_docs(st_group_t *g, struct upserts *grp, struct upserts *conv)
{
    for (size_t b = 0; b < GROUP_BUCKETS; b++) {
        for (group_t *gr = g->table[b]; gr != NULL; gr = gr->next) {
            if (gr->changed != g->batch || !gr->exists) {
                continue;
            }
            bson_t *upd = upsert_new(grp, gr->conv);
            bson_t *cupd = upsert_new(conv, gr->conv);
            /* The conversation list shows a group by its conversation document. */
            if (upd == NULL || cupd == NULL) {
                return PL_ERR_NOMEM;
            }
            bson_t set, max, cset;
            BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
            BSON_APPEND_INT64(&set, "member_count", gr->count);
            BSON_APPEND_UTF8(&set, "name", gr->name);
            BSON_APPEND_UTF8(&set, "post_policy", gr->admins_only ? "admins" : "all");
            bson_append_document_end(upd, &set);
            BSON_APPEND_DOCUMENT_BEGIN(upd, "$max", &max);
            BSON_APPEND_INT64(&max, "mver", gr->mver);
            /* parley-auth answers a change's request once this reaches the change's seq. */
            BSON_APPEND_INT64(&max, "applied_seq", gr->applied);
            bson_append_document_end(upd, &max);
            BSON_APPEND_DOCUMENT_BEGIN(cupd, "$set", &cset);
            BSON_APPEND_UTF8(&cset, "name", gr->name);
            bson_append_document_end(cupd, &cset);
        }
    }
    return PL_OK;
}

int st_group_commit(st_group_t *g, st_rec_t *recs, size_t n, json_t *uitems)
{
    struct upserts mem = {0}, lists = {0}, grp = {0}, conv = {0};
    int rc = PL_OK;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        st_rec_t *r = &recs[i];
        group_t *gr = r->first && pl_conv_kind(r->m.conv) == 'g' ? group_held(g, r->m.conv) : NULL;
        if (gr == NULL) {
            continue;
        }
        if (i < g->cap && g->applied[i]) {
            if (moves_membership(r->m.event)) {
                r->m.pmver = gr->mver;
                gr->mver = r->m.seq > gr->mver ? r->m.seq : gr->mver;
            }
            gr->changed = g->batch;
            gr->applied = r->m.seq > gr->applied ? r->m.seq : gr->applied;
            rc = commit_change(g, gr, r, i, &mem, &lists, uitems);
        }
        r->m.mver = gr->mver;
    }
    if (rc == PL_OK) {
        rc = group_docs(g, &grp, &conv);
    }
    /* Members first: the groups document's mver says "applied up to here" to parley-auth,
     * which waits for it before answering the change's request. */
    int rc1 = rc == PL_OK ? upserts_run(g->mongo, ST_MEMBERS, &mem) : rc;
    rc1 = rc1 == PL_OK ? upserts_run(g->mongo, ST_GROUP_LISTS, &lists) : rc1;
    int rc2 = rc1 == PL_OK ? upserts_run(g->mongo, "conversations", &conv) : rc1;
    int rc3 = rc2 == PL_OK ? upserts_run(g->mongo, ST_GROUPS, &grp) : rc2;
    upserts_clear(&mem); /* what an earlier failure left */
    upserts_clear(&lists);
    upserts_clear(&conv);
    upserts_clear(&grp);
    return rc3;
}

int st_group_indexes(pl_mongo_t *mg)
{
    bson_t keys = BSON_INITIALIZER;
    BSON_APPEND_INT32(&keys, "user", 1);
    BSON_APPEND_INT32(&keys, "conv", 1);
    int rc = pl_mongo_create_index(mg, ST_MEMBERS, &keys, "user_1_conv_1", 0);
    bson_destroy(&keys);
    bson_init(&keys);
    BSON_APPEND_INT32(&keys, "conv", 1);
    BSON_APPEND_INT32(&keys, "user", 1);
    if (rc == PL_OK) {
        rc = pl_mongo_create_index(mg, ST_MEMBERS, &keys, "conv_1_user_1", 0);
    }
    bson_destroy(&keys);
    return rc;
}
