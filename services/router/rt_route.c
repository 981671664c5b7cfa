/*
 * Routing. Presence (parley:presence:<user>, a hash of "<gateway>:<conn>" -> gateway) says
 * where a user's devices are; parley:gw:<gateway> says the gateway is alive, so entries of a
 * gateway that died are ignored within its liveness TTL. Each live gateway gets the messages
 * whose sender or receiver it holds, and delivers them to every one of their sockets there.
 *
 * A group item goes to the gateways that hold a member's socket, from the group's record of
 * interested gateways (parley:convgw:<conv>, kept by the gateways): one ZRANGEBYSCORE per
 * group of the batch, one MGET for the liveness of every gateway met, one publish per gateway,
 * whatever the number of members; each gateway filters by membership (gw_groups.h). A
 * membership change also goes to the gateways of the users it adds or removes, which may not
 * be interested yet.
 */
#include "router.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_GW_PER_USER 16

struct user {
    char name[PL_USERNAME_MAX + 1];
    int ngw;
    int gw[MAX_GW_PER_USER]; /* indexes into the batch's gateway list */
};

struct gateway {
    char id[PL_GATEWAY_ID_LEN];
    int alive;
    json_t *msgs;
};

#define MAX_GW_PER_GROUP 256

struct group {
    char conv[PL_CONV_ID_LEN];
    int ngw;
    int gw[MAX_GW_PER_GROUP];
};

struct batch {
    struct user *users;
    size_t nusers, capusers;
    struct group *groups;
    size_t ngroups;
    struct gateway *gws;
    size_t ngws, capgws;
};

static int cmp_user(const void *a, const void *b)
{
    return strcmp(((const struct user *)a)->name, ((const struct user *)b)->name);
}

static struct user *find_user(struct batch *b, const char *name)
{
    struct user key;
    snprintf(key.name, sizeof(key.name), "%s", name);
    return bsearch(&key, b->users, b->nusers, sizeof(key), cmp_user);
}

static int gw_index(struct batch *b, const char *id)
{
    for (size_t i = 0; i < b->ngws; i++) {
        if (strcmp(b->gws[i].id, id) == 0) {
            return (int)i;
        }
    }
    if (b->ngws == b->capgws) {
        size_t cap = b->capgws ? b->capgws * 2 : 8;
        struct gateway *g = realloc(b->gws, cap * sizeof(*g));
        if (g == NULL) {
            return -1;
        }
        b->gws = g;
        b->capgws = cap;
    }
    struct gateway *g = &b->gws[b->ngws];
    memset(g, 0, sizeof(*g));
    snprintf(g->id, sizeof(g->id), "%s", id);
    return (int)b->ngws++;
}

static void on_presence(void *ud, size_t idx, const char *field, const char *value)
{
    struct batch *b = ud;
    struct user *u = &b->users[idx];
    (void)field;
    int g = gw_index(b, value);
    if (g < 0) {
        return;
    }
    for (int i = 0; i < u->ngw; i++) {
        if (u->gw[i] == g) {
            return;
        }
    }
    if (u->ngw < MAX_GW_PER_USER) {
        u->gw[u->ngw++] = g;
    }
}

static void give(struct gateway *g, json_t *rec)
{
    if (g->msgs == NULL) {
        g->msgs = json_array();
    }
    json_array_append(g->msgs, rec);
}

/* Gives rec to gateway gw of the batch when it is alive and has not had it yet. */
static void give_once(struct batch *b, int gw, json_t *rec, int *seen)
{
    if (b->gws[gw].alive && !seen[gw]) {
        seen[gw] = 1;
        give(&b->gws[gw], rec);
    }
}

static void add_targets(struct batch *b, const char *name, json_t *rec, int *seen)
{
    struct user *u = find_user(b, name);
    for (int i = 0; u != NULL && i < u->ngw; i++) {
        give_once(b, u->gw[i], rec, seen);
    }
}

/* Gives a refused message to the gateway it came from, if that one holds its sender. */
static void add_origin(struct batch *b, json_t *rec)
{
    const char *origin =
        json_string_value(json_object_get(json_object_get(rec, "origin"), "gateway"));
    struct user *u = find_user(b, json_string_value(json_object_get(rec, "sender")));
    for (int i = 0; origin != NULL && u != NULL && i < u->ngw; i++) {
        struct gateway *g = &b->gws[u->gw[i]];
        if (g->alive && strcmp(g->id, origin) == 0) {
            give(g, rec);
        }
    }
}

/* True while gateway g is remembered as deaf (see publish()). */
static int deaf(rt_ctx_t *ctx, const char *id, long long now)
{
    for (int i = 0; i < RT_DEAF_SLOTS; i++) {
        if (ctx->deaf[i].until_ms > now && strcmp(ctx->deaf[i].id, id) == 0) {
            return 1;
        }
    }
    return 0;
}

static void remember_deaf(rt_ctx_t *ctx, const char *id, long long now)
{
    int slot = 0;
    for (int i = 1; i < RT_DEAF_SLOTS; i++) {
        if (ctx->deaf[i].until_ms < ctx->deaf[slot].until_ms) {
            slot = i;
        }
    }
    snprintf(ctx->deaf[slot].id, sizeof(ctx->deaf[slot].id), "%s", id);
    ctx->deaf[slot].until_ms = now + RT_DEAF_FORGET_MS;
}

/*
 * Publishes one chunk to a gateway's channel. Pub/sub keeps nothing for a subscriber that is
 * away, so a live gateway that heard nothing (its subscriber reconnecting after a Redis
 * restart) is given the chunk again for up to RT_DEAF_WAIT_MS, while its liveness key says it
 * is alive. One that stays deaf is remembered, so it does not hold up every batch.
 */
static int publish_chunk(rt_ctx_t *ctx, struct gateway *g, const char *channel, const char *text,
                         size_t nmsgs)
{
    const char *ch[] = {channel};
    const char *msg[] = {text};
    long long start = pl_now_ms();
    for (;;) {
        long heard = 0;
        int rc = pl_redis_publish_multi(ctx->redis, ch, msg, 1, &heard);
        pl_metric_inc(ctx->m_published);
        if (rc != PL_OK || heard > 0) {
            return rc;
        }
        long long now = pl_now_ms();
        int known_deaf = deaf(ctx, g->id, now);
        if (known_deaf || now - start >= RT_DEAF_WAIT_MS) {
            if (!known_deaf) {
                remember_deaf(ctx, g->id, now);
                pl_log_warn("gateway_deaf",
                            "gateway %s heard no push for %lld ms; not waited for "
                            "during %d s",
                            g->id, now - start, RT_DEAF_FORGET_MS / 1000);
            }
            pl_metric_add(ctx->m_unheard, (uint64_t)nmsgs);
            return PL_OK;
        }
        char key[PL_KEY_LEN];
        int alive = 0;
        rc = pl_key_gateway(key, g->id);
        if (rc == PL_OK) {
            rc = pl_redis_exists(ctx->redis, key, &alive);
        }
        if (rc != PL_OK) {
            return rc;
        }
        if (!alive) {
            pl_metric_add(ctx->m_offline, (uint64_t)nmsgs);
            return PL_OK; /* gone: its clients reconnect elsewhere and sync */
        }
        usleep(50000);
    }
}

/* Publishes one gateway's messages, in chunks of at most RT_PUBLISH_MAX bytes. */
static int publish(rt_ctx_t *ctx, struct gateway *g)
{
    char channel[PL_KEY_LEN];
    if (pl_key_deliver(channel, g->id) != PL_OK) {
        return PL_OK; /* ids are PL_GATEWAY_ID_LEN long at most: never happens */
    }
    size_t total = json_array_size(g->msgs);
    size_t start = 0;
    int rc = PL_OK;
    while (start < total && rc == PL_OK) {
        json_t *chunk = json_array();
        size_t bytes = 0;
        size_t i = start;
        for (; i < total; i++) {
            json_t *m = json_array_get(g->msgs, i);
            size_t sz = json_string_length(json_object_get(m, "content")) + 512;
            if (i > start && bytes + sz > RT_PUBLISH_MAX) {
                break;
            }
            json_array_append(chunk, m);
            bytes += sz;
        }
        json_t *payload = json_pack("{s:o}", "msgs", chunk);
        char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
        json_decref(payload);
        rc = text ? publish_chunk(ctx, g, channel, text, i - start) : PL_ERR_NOMEM;
        free(text);
        start = i;
    }
    return rc;
}

static int is_group(json_t *rec)
{
    return pl_conv_kind(json_string_value(json_object_get(rec, "conv"))) == 'g';
}

static void add_user(struct batch *b, const char *name)
{
    if (name != NULL && b->nusers < b->capusers) {
        snprintf(b->users[b->nusers++].name, sizeof(b->users[0].name), "%s", name);
    }
}

/* A receipt (DESIGN 7.5), made by the store from a read or delivered cursor: not a stream
 * item. It goes to the reader's gateways and, when shared, to the other member's (1:1) or to
 * the group's interested gateways. */
static int is_receipt(json_t *rec)
{
    const char *type = json_string_value(json_object_get(rec, "type"));
    return type != NULL && strcmp(type, "receipt") == 0;
}

/* The other member of a shared 1:1 receipt, into peer; 0 when there is none to tell. */
static int receipt_peer(json_t *rec, char peer[PL_USERNAME_LEN])
{
    const char *conv = json_string_value(json_object_get(rec, "conv"));
    const char *user = json_string_value(json_object_get(rec, "user"));
    char a[PL_USERNAME_LEN], b[PL_USERNAME_LEN];
    if (!json_is_true(json_object_get(rec, "share")) || pl_conv_kind(conv) != 'd' || user == NULL ||
        sscanf(conv, "d:%32[^:]:%32s", a, b) != 2) {
        return 0;
    }
    snprintf(peer, PL_USERNAME_LEN, "%s", strcmp(a, user) == 0 ? b : a);
    return strcmp(peer, user) != 0;
}

/* The users a membership change names (added, removed, or the members of a new group). */
static json_t *named_users(json_t *rec, json_t **one)
{
    json_t *ev = json_object_get(rec, "event");
    json_t *list = json_object_get(ev, "users");
    *one = json_object_get(ev, "user");
    return list ? list : json_object_get(ev, "members");
}

/* The users whose presence the batch needs, sorted and unique, in b->users: senders and
 * receivers of 1:1 and own-stream items, senders of refusals, users named by group changes. */
static int collect_users(struct batch *b, json_t **recs, size_t n)
{
    size_t need = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *one, *list = recs[i] ? named_users(recs[i], &one) : NULL;
        need += 2 + json_array_size(list);
    }
    b->capusers = need + 1;
    b->users = calloc(b->capusers, sizeof(*b->users));
    if (b->users == NULL) {
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (recs[i] == NULL) {
            continue;
        }
        char peer[PL_USERNAME_LEN];
        if (is_receipt(recs[i])) {
            add_user(b, json_string_value(json_object_get(recs[i], "user")));
            if (receipt_peer(recs[i], peer)) {
                add_user(b, peer);
            }
            continue;
        }
        add_user(b, json_string_value(json_object_get(recs[i], "sender")));
        if (!is_group(recs[i])) {
            add_user(b, json_string_value(json_object_get(recs[i], "receiver")));
            continue;
        }
        json_t *one, *list = named_users(recs[i], &one);
        add_user(b, json_string_value(one));
        for (size_t k = 0; k < json_array_size(list); k++) {
            add_user(b, json_string_value(json_array_get(list, k)));
        }
    }
    qsort(b->users, b->nusers, sizeof(*b->users), cmp_user);
    size_t uniq = 0;
    for (size_t i = 0; i < b->nusers; i++) {
        if (uniq == 0 || strcmp(b->users[uniq - 1].name, b->users[i].name) != 0) {
            b->users[uniq++] = b->users[i];
        }
    }
    b->nusers = uniq;
    return PL_OK;
}

/* The groups of the batch, unique, in b->groups. */
static int collect_groups(struct batch *b, json_t **recs, size_t n)
{
    b->groups = calloc(n ? n : 1, sizeof(*b->groups));
    if (b->groups == NULL) {
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (recs[i] == NULL || !is_group(recs[i]) || json_object_get(recs[i], "refused") ||
            (is_receipt(recs[i]) && !json_is_true(json_object_get(recs[i], "share")))) {
            continue;
        }
        const char *conv = json_string_value(json_object_get(recs[i], "conv"));
        size_t g = 0;
        while (g < b->ngroups && strcmp(b->groups[g].conv, conv) != 0) {
            g++;
        }
        if (g == b->ngroups) {
            snprintf(b->groups[b->ngroups++].conv, sizeof(b->groups[0].conv), "%s", conv);
        }
    }
    return PL_OK;
}

static struct group *find_group(struct batch *b, const char *conv)
{
    for (size_t g = 0; conv != NULL && g < b->ngroups; g++) {
        if (strcmp(b->groups[g].conv, conv) == 0) {
            return &b->groups[g];
        }
    }
    return NULL;
}

static void on_interested(void *ud, size_t idx, const char *field, const char *value)
{
    struct batch *b = ud;
    struct group *g = &b->groups[idx];
    (void)field;
    int gw = gw_index(b, value);
    if (gw >= 0 && g->ngw < MAX_GW_PER_GROUP) {
        g->gw[g->ngw++] = gw;
    }
}

/* n buffers of PL_KEY_LEN bytes for Redis keys, or NULL. */
static char **make_keys(size_t n)
{
    char **keys = calloc(n ? n : 1, sizeof(*keys));
    for (size_t i = 0; keys != NULL && i < n; i++) {
        if ((keys[i] = malloc(PL_KEY_LEN)) == NULL) {
            for (size_t j = 0; j < i; j++) {
                free(keys[j]);
            }
            free(keys);
            return NULL;
        }
    }
    return keys;
}

static void free_keys(char **keys, size_t n)
{
    for (size_t i = 0; keys != NULL && i < n; i++) {
        free(keys[i]);
    }
    free(keys);
}

/* Where every user of the batch is connected (fills b->gws and each user's gateways), then
 * which of those gateways are alive. */
static int lookup_presence(rt_ctx_t *ctx, struct batch *b)
{
    char **keys = make_keys(b->nusers);
    if (keys == NULL) {
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < b->nusers; i++) {
        pl_key_presence(keys[i], b->users[i].name); /* usernames are short: it fits */
    }
    int rc =
        pl_redis_hgetall_multi(ctx->redis, (const char *const *)keys, b->nusers, on_presence, b);
    free_keys(keys, b->nusers);
    if (rc != PL_OK) {
        return rc;
    }
    char **ckeys = make_keys(b->ngroups);
    if (ckeys == NULL) {
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < b->ngroups; i++) {
        pl_key_convgw(ckeys[i], b->groups[i].conv);
    }
    /* Entries are scored with the time their interest lapses: live ones only. */
    rc = pl_redis_zlive_multi(ctx->redis, (const char *const *)ckeys, b->ngroups, pl_now_ms(),
                              on_interested, b);
    free_keys(ckeys, b->ngroups);
    if (rc != PL_OK) {
        return rc;
    }
    int *alive = calloc(b->ngws ? b->ngws : 1, sizeof(*alive));
    char **gkeys = make_keys(b->ngws);
    rc = alive != NULL && gkeys != NULL ? PL_OK : PL_ERR_NOMEM;
    for (size_t i = 0; i < b->ngws && rc == PL_OK; i++) {
        pl_key_gateway(gkeys[i], b->gws[i].id);
    }
    if (rc == PL_OK) {
        rc = pl_redis_mexists(ctx->redis, (const char *const *)gkeys, b->ngws, alive);
    }
    for (size_t i = 0; i < b->ngws && rc == PL_OK; i++) {
        b->gws[i].alive = alive[i];
    }
    free_keys(gkeys, b->ngws);
    free(alive);
    return rc;
}

/* Gives a group item to the live gateways interested in its group, and a membership change
 * also to those of the users it names. */
static void add_group_targets(struct batch *b, json_t *rec, int *seen)
{
    struct group *g = find_group(b, json_string_value(json_object_get(rec, "conv")));
    for (int i = 0; g != NULL && i < g->ngw; i++) {
        give_once(b, g->gw[i], rec, seen);
    }
    json_t *one, *list = named_users(rec, &one);
    add_targets(b, json_string_value(one), rec, seen);
    for (size_t k = 0; k < json_array_size(list); k++) {
        add_targets(b, json_string_value(json_array_get(list, k)), rec, seen);
    }
    if (json_object_get(json_object_get(rec, "event"), "type") != NULL) {
        add_targets(b, json_string_value(json_object_get(rec, "sender")), rec, seen);
    }
}

static void assign_receipt(struct batch *b, json_t *rec, int *seen)
{
    char peer[PL_USERNAME_LEN];
    add_targets(b, json_string_value(json_object_get(rec, "user")), rec, seen);
    if (receipt_peer(rec, peer)) {
        add_targets(b, peer, rec, seen);
    }
    struct group *g = json_is_true(json_object_get(rec, "share"))
                          ? find_group(b, json_string_value(json_object_get(rec, "conv")))
                          : NULL;
    for (int k = 0; g != NULL && k < g->ngw; k++) {
        give_once(b, g->gw[k], rec, seen);
    }
}

/* Gives each message to the live gateways of its receiver and of its sender (once each). */
static int assign(rt_ctx_t *ctx, struct batch *b, json_t **recs, size_t n)
{
    int *seen = calloc(b->ngws ? b->ngws : 1, sizeof(*seen));
    if (seen == NULL) {
        return PL_ERR_NOMEM;
    }
    long long now = pl_now_ms();
    for (size_t i = 0; i < n; i++) {
        if (recs[i] == NULL) {
            continue;
        }
        memset(seen, 0, (b->ngws ? b->ngws : 1) * sizeof(*seen));
        if (is_receipt(recs[i])) {
            assign_receipt(b, recs[i], seen);
            continue;
        }
        if (json_object_get(recs[i], "refused") != NULL ||
            json_is_true(json_object_get(recs[i], "replay"))) {
            add_origin(b, recs[i]); /* a refusal or a resend goes back to the sender only */
            continue;
        }
        json_int_t ts = json_integer_value(json_object_get(recs[i], "timestamp"));
        pl_metric_observe(ctx->m_latency, (double)(now - ts) / 1000.0);
        if (is_group(recs[i])) {
            add_group_targets(b, recs[i], seen);
            continue;
        }
        add_targets(b, json_string_value(json_object_get(recs[i], "receiver")), recs[i], seen);
        int receiver_online = 0;
        for (size_t g = 0; g < b->ngws; g++) {
            receiver_online |= seen[g];
        }
        if (!receiver_online) {
            pl_metric_inc(ctx->m_offline);
        }
        add_targets(b, json_string_value(json_object_get(recs[i], "sender")), recs[i], seen);
    }
    free(seen);
    return PL_OK;
}

/* The interest the gateways will say for themselves, said first: a membership change that
 * adds users makes their gateways interested in the group before the change is published, so
 * the group's next item (later in the same partition, routed after this one) reaches them
 * even before those gateways renew it. It lapses unless they do. */
#define RT_INTEREST_MS 120000

/* 1 when rec adds users to a group (a new group's members, or members_added). */
static int adds_members(json_t *rec)
{
    const char *type =
        rec ? json_string_value(json_object_get(json_object_get(rec, "event"), "type")) : NULL;
    return type != NULL && is_group(rec) && json_object_get(rec, "refused") == NULL &&
           (strcmp(type, "group_created") == 0 || strcmp(type, "members_added") == 0);
}

static int lend_interest(rt_ctx_t *ctx, struct batch *b, json_t **recs, size_t n)
{
    size_t adds = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        adds += (size_t)adds_members(recs[i]);
    }
    if (adds == 0 || b->ngws == 0) {
        return PL_OK;
    }
    /* At most one entry per adding record and live gateway, however many users it names. */
    size_t cap = adds * b->ngws;
    char **keys = make_keys(cap);
    const char **members = calloc(cap, sizeof(*members));
    int *seen = calloc(b->ngws, sizeof(*seen));
    int rc = keys != NULL && members != NULL && seen != NULL ? PL_OK : PL_ERR_NOMEM;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (!adds_members(recs[i])) {
            continue;
        }
        memset(seen, 0, b->ngws * sizeof(*seen));
        json_t *one, *list = named_users(recs[i], &one);
        for (size_t j = 0; j < json_array_size(list) + 1; j++) {
            const char *name = j < json_array_size(list)
                                   ? json_string_value(json_array_get(list, j))
                                   : json_string_value(json_object_get(recs[i], "sender"));
            struct user *u = name ? find_user(b, name) : NULL;
            for (int g = 0; u != NULL && g < u->ngw; g++) {
                if (b->gws[u->gw[g]].alive && !seen[u->gw[g]]) {
                    seen[u->gw[g]] = 1;
                    pl_key_convgw(keys[k], json_string_value(json_object_get(recs[i], "conv")));
                    members[k++] = b->gws[u->gw[g]].id;
                }
            }
        }
    }
    if (rc == PL_OK) {
        rc = pl_redis_zadd_multi(ctx->redis, (const char *const *)keys, members, k,
                                 pl_now_ms() + RT_INTEREST_MS);
    }
    free_keys(keys, cap);
    free(members);
    free(seen);
    return rc;
}

static int route_once(rt_ctx_t *ctx, json_t **recs, size_t n)
{
    struct batch b;
    memset(&b, 0, sizeof(b));
    int rc = collect_users(&b, recs, n);
    if (rc == PL_OK) {
        rc = collect_groups(&b, recs, n);
    }
    if (rc == PL_OK) {
        rc = lookup_presence(ctx, &b);
    }
    if (rc == PL_OK) {
        rc = assign(ctx, &b, recs, n);
    }
    if (rc == PL_OK) {
        rc = lend_interest(ctx, &b, recs, n);
    }
    for (size_t g = 0; g < b.ngws && rc == PL_OK; g++) {
        if (b.gws[g].msgs != NULL) {
            rc = publish(ctx, &b.gws[g]);
        }
    }
    for (size_t g = 0; g < b.ngws; g++) {
        json_decref(b.gws[g].msgs);
    }
    free(b.users);
    free(b.groups);
    free(b.gws);
    return rc;
}

/* A receipt record with the fields routing needs, or NULL (not one, or malformed). */
static json_t *receipt_parse(const pl_kafka_rec_t *r)
{
    if (r->vlen < 2 || memmem(r->value, r->vlen, "\"receipt\"", 9) == NULL ||
        !pl_json_depth_ok(r->value, r->vlen, PL_MAX_JSON_DEPTH)) {
        return NULL;
    }
    json_t *o = json_loadb(r->value, r->vlen, 0, NULL);
    if (!is_receipt(o) || pl_conv_kind(json_string_value(json_object_get(o, "conv"))) == 0 ||
        !json_is_string(json_object_get(o, "user")) ||
        !json_is_integer(json_object_get(o, "seq"))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int rt_route_batch(rt_ctx_t *ctx, const pl_kafka_rec_t *recs, size_t n, int attempt)
{
    json_t **objs = calloc(n ? n : 1, sizeof(*objs));
    if (objs == NULL) {
        return PL_ERR_NOMEM;
    }
    size_t valid = 0;
    for (size_t i = 0; i < n; i++) {
        pl_msg_t m;
        json_t *receipt = receipt_parse(&recs[i]);
        if (receipt != NULL) {
            objs[i] = receipt;
            valid++;
            continue;
        }
        if (pl_msg_parse(recs[i].value, recs[i].vlen, &m) != PL_OK ||
            (m.seq <= 0 && m.refused[0] == '\0')) {
            if (attempt == 0) {
                pl_metric_inc(ctx->m_invalid);
                pl_log_error("invalid_record",
                             "partition %d offset %lld is not a committed message",
                             (int)recs[i].partition, (long long)recs[i].offset);
            }
            pl_msg_clear(&m);
            continue;
        }
        objs[i] = json_incref(m.root);
        pl_msg_clear(&m);
        valid++;
    }
    int rc = valid > 0 ? route_once(ctx, objs, n) : PL_OK;
    if (rc == PL_OK) {
        pl_metric_add(ctx->m_routed, valid);
    }
    for (size_t i = 0; i < n; i++) {
        json_decref(objs[i]);
    }
    free(objs);
    return rc;
}
