/*
 * Contacts, blocks and privacy settings (DESIGN 7.2). One `contacts` document per pair of
 * users (_id = the pair's 1:1 conversation id) holds the relation: state (none, pending,
 * accepted), who asked, who blocked whom, a version, and the last change. Every change is one
 * compare-and-swap on the version (FerretDB has no transactions), then:
 *   1. the policy tokens of both users move (parley:policy:<user>), so the store re-reads who
 *      may message whom before it numbers another message between them (st_policy.h);
 *   2. the change goes out as `system` items on the users' own streams (u:<user>) through
 *      parley.messages, so it is numbered, stored, pushed live and synced like any message.
 * Only then is the request answered. A request that fails after step 0 is answered 503; its
 * retry finds the document already changed and announces its last change again, under the
 * same client_ids, which the store de-duplicates: no change is lost and none is shown twice.
 * A blocked user learns nothing of the blocker: blocks appear only on the blocker's stream.
 */
#include "auth.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"

#include <bson/bson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONTACTS     "contacts"
#define EMIT_WAIT_MS 10000
#define CAS_TRIES    8
#define POLICY_TTL_S (7L * 86400)

enum pair_state { NONE = 0, PENDING, ACCEPTED };
static const char *const state_names[] = {"none", "pending", "accepted"};

/* ---- system items on the users' own streams ---- */

/* Shared by a request and its records' delivery reports; the last one frees it. */
typedef struct waiter_s {
    atomic_int refs;
    atomic_int failed;
} waiter_t;

static void waiter_put(waiter_t *w)
{
    if (atomic_fetch_sub(&w->refs, 1) == 1) {
        free(w);
    }
}

/* Waits up to EMIT_WAIT_MS for w's delivery reports (rc: how the produce calls went), then
 * lets go of w. PL_OK only when every record was acknowledged. */
static int await_reports(auth_ctx_t *ctx, waiter_t *w, int rc)
{
    long long deadline = pl_now_ms() + EMIT_WAIT_MS;
    while (atomic_load(&w->refs) > 1 && pl_now_ms() < deadline) {
        pl_kafka_poll(ctx->producer, 20);
    }
    if (rc == PL_OK && (atomic_load(&w->refs) > 1 || atomic_load(&w->failed))) {
        rc = PL_ERR_UNAVAIL;
    }
    waiter_put(w);
    return rc;
}

void auth_social_delivered(void *ud, void *opaque, int err)
{
    (void)ud;
    waiter_t *w = opaque;
    if (err != PL_OK) {
        atomic_store(&w->failed, 1);
    }
    waiter_put(w);
}

/* Queues the item {owner, event} of change id to parley.messages. */
static int produce_item(auth_ctx_t *ctx, const char *id, json_t *item, waiter_t *w)
{
    const char *owner = json_string_value(json_object_get(item, "owner"));
    json_t *event = json_object_get(item, "event");
    pl_msg_t m;
    memset(&m, 0, sizeof(m));
    if (owner == NULL || !json_is_object(event)) {
        return PL_ERR_INTERNAL;
    }
    snprintf(m.client_id, sizeof(m.client_id), PL_SYSTEM_CLIENT_ID_PREFIX "%s", id);
    pl_msg_id(owner, m.client_id, m.msg_id);
    pl_user_conv(owner, m.conv);
    snprintf(m.sender, sizeof(m.sender), "%s", owner);
    snprintf(m.receiver, sizeof(m.receiver), "%s", owner);
    memcpy(m.kind, PL_KIND_SYSTEM, sizeof(PL_KIND_SYSTEM));
    m.event = event;
    m.content = "";
    m.ts_ms = pl_now_ms();
    snprintf(m.origin_gw, sizeof(m.origin_gw), "parley-auth");
    char *rec = pl_msg_record(&m);
    if (rec == NULL) {
        return PL_ERR_NOMEM;
    }
    atomic_fetch_add(&w->refs, 1);
    int rc = pl_kafka_produce(ctx->producer, PL_TOPIC_MESSAGES, m.conv, strlen(m.conv), rec,
                              strlen(rec), w);
    if (rc != PL_OK) {
        atomic_fetch_sub(&w->refs, 1); /* never queued: no report will come */
    }
    free(rec);
    return rc;
}

/* Produces a change {id, items: [{owner, event}]} and waits until Kafka has every item under
 * acks=all. PL_OK, or PL_ERR_UNAVAIL (the caller answers 503; a retry announces it again). */
static int emit(auth_ctx_t *ctx, json_t *change)
{
    const char *id = json_string_value(json_object_get(change, "id"));
    json_t *items = json_object_get(change, "items");
    waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL || id == NULL) {
        free(w);
        return w == NULL ? PL_ERR_NOMEM : PL_OK;
    }
    atomic_init(&w->refs, 1);
    int rc = PL_OK;
    for (size_t i = 0; i < json_array_size(items) && rc == PL_OK; i++) {
        rc = produce_item(ctx, id, json_array_get(items, i), w);
    }
    return await_reports(ctx, w, rc);
}

int auth_produce_wait(auth_ctx_t *ctx, const char *key, const char *rec)
{
    waiter_t *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        return PL_ERR_NOMEM;
    }
    atomic_init(&w->refs, 2);
    int rc =
        pl_kafka_produce(ctx->producer, PL_TOPIC_MESSAGES, key, strlen(key), rec, strlen(rec), w);
    if (rc != PL_OK) {
        atomic_fetch_sub(&w->refs, 1); /* never queued: no report will come */
    }
    return await_reports(ctx, w, rc);
}

/* A new change id (also the items' client_id suffix, so a retry is de-duplicated). */
static json_t *new_change(void)
{
    char id[33];
    pl_random_hex(id, 16);
    return json_pack("{s:s,s:[]}", "id", id, "items");
}

static void add_item(json_t *change, const char *owner, json_t *event)
{
    json_array_append_new(json_object_get(change, "items"),
                          json_pack("{s:s,s:o}", "owner", owner, "event", event));
}

/* Moves the token the store's permission cache is keyed on (see st_policy.h), and tells the
 * gateways to forget their answers about messages to user (a lost notice costs only an ack
 * before the store's refusal, until their answers expire). */
static int bump_policy(auth_ctx_t *ctx, const char *user)
{
    char key[PL_KEY_LEN];
    char token[33];
    pl_random_hex(token, 16);
    int rc = pl_key_policy(key, user);
    rc = rc == PL_OK ? pl_redis_set_ex(ctx->redis, key, token, POLICY_TTL_S) : rc;
    if (rc == PL_OK) {
        auth_announce(ctx, json_pack("{s:s,s:b}", "user", user, "forget", 1));
    }
    return rc;
}

/* ---- the pair document ---- */

typedef struct pair_s {
    char conv[PL_CONV_ID_LEN]; /* the document's _id */
    const char *me, *other;
    int exists;
    long long version;
    enum pair_state state;
    char asked_by[PL_USERNAME_LEN];
    int i_blocked, they_blocked;
    json_t *last; /* the last change, to announce again on a repeat; owned */
} pair_t;

/* A BSON document as JSON (new reference), or NULL. */
static json_t *bson_to_json(const bson_t *doc)
{
    size_t len = 0;
    char *text = bson_as_relaxed_extended_json(doc, &len);
    json_t *j = text ? json_loadb(text, len, 0, NULL) : NULL;
    bson_free(text);
    return j;
}

static void pair_parse(pair_t *p, const bson_t *doc)
{
    json_t *j = bson_to_json(doc);
    const char *state = json_string_value(json_object_get(j, "state"));
    const char *asked = json_string_value(json_object_get(j, "asked_by"));
    json_t *blocks = json_object_get(j, "blocks");
    json_t *v;
    size_t i;
    p->state = NONE;
    for (int s = NONE; state != NULL && s <= ACCEPTED; s++) {
        p->state = strcmp(state, state_names[s]) == 0 ? (enum pair_state)s : p->state;
    }
    snprintf(p->asked_by, sizeof(p->asked_by), "%s", asked ? asked : "");
    json_array_foreach(blocks, i, v)
    {
        p->i_blocked |= json_is_string(v) && strcmp(json_string_value(v), p->me) == 0;
        p->they_blocked |= json_is_string(v) && strcmp(json_string_value(v), p->other) == 0;
    }
    p->version = json_integer_value(json_object_get(j, "version"));
    p->last = json_incref(json_object_get(j, "last_change"));
    json_decref(j);
}

static int pair_read(auth_ctx_t *ctx, const char *me, const char *other, pair_t *p)
{
    bson_t *doc = NULL;
    json_decref(p->last);
    memset(p, 0, sizeof(*p));
    p->me = me;
    p->other = other;
    pl_conv_id(me, other, p->conv);
    int rc = pl_mongo_find_id(ctx->mongo, CONTACTS, p->conv, &doc);
    if (rc == PL_OK) {
        p->exists = 1;
        pair_parse(p, doc);
        bson_destroy(doc);
    }
    return rc == PL_ERR_NOTFOUND ? PL_OK : rc;
}

/* The document's fields after a change (everything but _id). */
static void pair_fields(const pair_t *p, json_t *change, bson_t *d)
{
    bson_t users, blocks;
    const char *a = strcmp(p->me, p->other) < 0 ? p->me : p->other;
    const char *b = a == p->me ? p->other : p->me;
    BSON_APPEND_ARRAY_BEGIN(d, "users", &users);
    BSON_APPEND_UTF8(&users, "0", a);
    BSON_APPEND_UTF8(&users, "1", b);
    bson_append_array_end(d, &users);
    BSON_APPEND_UTF8(d, "state", state_names[p->state]);
    BSON_APPEND_UTF8(d, "asked_by", p->state == PENDING ? p->asked_by : "");
    BSON_APPEND_ARRAY_BEGIN(d, "blocks", &blocks);
    if (p->i_blocked) {
        BSON_APPEND_UTF8(&blocks, "0", p->me);
    }
    if (p->they_blocked) {
        BSON_APPEND_UTF8(&blocks, p->i_blocked ? "1" : "0", p->other);
    }
    bson_append_array_end(d, &blocks);
    BSON_APPEND_INT64(d, "version", p->version + 1);
    BSON_APPEND_DATE_TIME(d, "updated_at", pl_now_ms());
    char *text = json_dumps(change, JSON_COMPACT);
    bson_t *ch = text ? bson_new_from_json((const uint8_t *)text, -1, NULL) : NULL;
    if (ch != NULL) {
        BSON_APPEND_DOCUMENT(d, "last_change", ch);
    }
    bson_destroy(ch);
    free(text);
}

/* Writes p if nobody changed the document since it was read: PL_OK, PL_ERR_EXISTS (someone
 * did: read again), or the database's error. */
static int pair_write(auth_ctx_t *ctx, const pair_t *p, json_t *change)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t set;
    int rc;
    if (!p->exists) {
        BSON_APPEND_UTF8(&upd, "_id", p->conv);
        pair_fields(p, change, &upd);
        rc = pl_mongo_insert_one(ctx->mongo, CONTACTS, &upd);
    } else {
        long matched = 0;
        BSON_APPEND_UTF8(&filter, "_id", p->conv);
        BSON_APPEND_INT64(&filter, "version", p->version);
        BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
        pair_fields(p, change, &set);
        bson_append_document_end(&upd, &set);
        rc = pl_mongo_update_one(ctx->mongo, CONTACTS, &filter, &upd, 0, &matched);
        rc = rc == PL_OK && matched == 0 ? PL_ERR_EXISTS : rc;
    }
    bson_destroy(&filter);
    bson_destroy(&upd);
    return rc;
}

/* ---- transitions ---- */

/* What a transition decided: a change of p (with its items), or an answer alone. */
typedef struct outcome_s {
    json_t *change; /* NULL: the document stays as it is (a repeat is announced again) */
    int status;     /* on success */
    const char *state;
    int err; /* PL_OK, or an error answered with why and nothing written */
    const char *why;
} outcome_t;

typedef void (*transition_fn)(pair_t *p, outcome_t *o);

static json_t *contact_event(const char *user, const char *state, const char *by)
{
    return json_pack("{s:s,s:s,s:s,s:s}", "type", "contact", "user", user, "state", state, "by",
                     by);
}

static void become_accepted(pair_t *p, outcome_t *o)
{
    p->state = ACCEPTED;
    o->change = new_change();
    add_item(o->change, p->me, contact_event(p->other, "accepted", p->me));
    add_item(o->change, p->other, contact_event(p->me, "accepted", p->me));
    o->status = 200;
    o->state = "accepted";
}

static void t_request(pair_t *p, outcome_t *o)
{
    if (p->i_blocked) {
        o->err = PL_ERR_EXISTS;
        o->why = "you blocked this user; unblock them first";
    } else if (p->state == ACCEPTED) {
        o->status = 200;
        o->state = "accepted";
    } else if (p->state == PENDING && strcmp(p->asked_by, p->other) == 0) {
        become_accepted(p, o);
    } else if (p->state == PENDING) {
        o->status = 201;
        o->state = "outgoing";
    } else {
        p->state = PENDING;
        snprintf(p->asked_by, sizeof(p->asked_by), "%s", p->me);
        o->change = new_change();
        add_item(o->change, p->me, contact_event(p->other, "outgoing", p->me));
        if (!p->they_blocked) { /* a blocker does not hear from the user it blocked */
            add_item(o->change, p->other, contact_event(p->me, "incoming", p->me));
        }
        o->status = 201;
        o->state = "outgoing";
    }
}

static void t_accept(pair_t *p, outcome_t *o)
{
    if (p->state == ACCEPTED) {
        o->status = 200;
        o->state = "accepted";
    } else if (p->state == PENDING && strcmp(p->asked_by, p->other) == 0) {
        become_accepted(p, o);
    } else {
        o->err = PL_ERR_NOTFOUND;
        o->why = "no contact request from this user";
    }
}

static void t_delete(pair_t *p, outcome_t *o)
{
    o->status = 204;
    if (p->state != NONE) {
        p->state = NONE;
        o->change = new_change();
        add_item(o->change, p->me, contact_event(p->other, "none", p->me));
        if (!p->they_blocked) {
            add_item(o->change, p->other, contact_event(p->me, "none", p->me));
        }
    }
}

static void t_block_to(pair_t *p, outcome_t *o, int blocked)
{
    o->status = 204;
    if (p->i_blocked != blocked) {
        p->i_blocked = blocked;
        o->change = new_change();
        add_item(o->change, p->me,
                 json_pack("{s:s,s:s,s:b}", "type", "block", "user", p->other, "blocked", blocked));
    }
}

static void t_block(pair_t *p, outcome_t *o)
{
    t_block_to(p, o, 1);
}

static void t_unblock(pair_t *p, outcome_t *o)
{
    t_block_to(p, o, 0);
}

/* Puts other in me's list of open contacts (accepted, no block) or takes it out, and in me's
 * list of users with a block either way (the store leaves them out of a group's receipts). */
static int list_one(auth_ctx_t *ctx, const char *me, const char *other, int open, int blocked)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t op;
    BSON_APPEND_UTF8(&filter, "_id", me);
    if (open == blocked) { /* both out (open and blocked cannot both hold) */
        BSON_APPEND_DOCUMENT_BEGIN(&upd, "$pull", &op);
        BSON_APPEND_UTF8(&op, "open", other);
        BSON_APPEND_UTF8(&op, "blocked", other);
        bson_append_document_end(&upd, &op);
    } else {
        BSON_APPEND_DOCUMENT_BEGIN(&upd, "$addToSet", &op);
        BSON_APPEND_UTF8(&op, open ? "open" : "blocked", other);
        bson_append_document_end(&upd, &op);
        BSON_APPEND_DOCUMENT_BEGIN(&upd, "$pull", &op);
        BSON_APPEND_UTF8(&op, open ? "blocked" : "open", other);
        bson_append_document_end(&upd, &op);
    }
    int rc = pl_mongo_update_one(ctx->mongo, AUTH_CONTACT_LISTS, &filter, &upd, 1, NULL);
    bson_destroy(&filter);
    bson_destroy(&upd);
    return rc;
}

/* Brings both users' contact_lists in line with the pair (idempotent: a repeat of a request
 * repairs what a crash between the pair's write and these left behind). */
static int sync_lists(auth_ctx_t *ctx, const pair_t *p)
{
    int blocked = p->i_blocked || p->they_blocked;
    int open = p->state == ACCEPTED && !blocked;
    int rc = list_one(ctx, p->me, p->other, open, blocked);
    return rc == PL_OK ? list_one(ctx, p->other, p->me, open, blocked) : rc;
}

/* Reads, decides and writes with a compare-and-swap, again if someone changed the pair in
 * between. The change to announce (new, or the last one on a repeat) is left in *announce. */
static int change_pair(auth_ctx_t *ctx, pair_t *p, const char *me, const char *other,
                       transition_fn fn, outcome_t *o, json_t **announce)
{
    int rc = PL_ERR_EXISTS;
    for (int tries = 0; tries < CAS_TRIES && rc == PL_ERR_EXISTS; tries++) {
        json_decref(o->change);
        memset(o, 0, sizeof(*o));
        rc = pair_read(ctx, me, other, p);
        if (rc != PL_OK) {
            return rc;
        }
        fn(p, o);
        if (o->err != PL_OK || o->change == NULL) {
            /* A repeat: its last change again, unless it is known to have gone out. */
            int out = json_is_true(json_object_get(p->last, "emitted"));
            *announce = o->err == PL_OK && !out ? json_incref(p->last) : NULL;
            return o->err == PL_OK && p->exists ? sync_lists(ctx, p) : PL_OK;
        }
        /* The request that wrote the pair's last change may still be producing it. Items go
         * out in version order only if this one puts that change out first (under its own
         * client_ids: the store keeps the first copy, the other request's is a duplicate). */
        if (p->last != NULL && !json_is_true(json_object_get(p->last, "emitted")) &&
            emit(ctx, p->last) != PL_OK) {
            return PL_ERR_UNAVAIL;
        }
        rc = pair_write(ctx, p, o->change);
    }
    if (rc == PL_OK) {
        rc = sync_lists(ctx, p);
    }
    if (rc == PL_OK) {
        rc = bump_policy(ctx, me);
    }
    if (rc == PL_OK) {
        rc = bump_policy(ctx, other);
    }
    *announce = rc == PL_OK ? json_incref(o->change) : NULL;
    return rc == PL_ERR_EXISTS ? PL_ERR_UNAVAIL : rc; /* contended beyond reason: retry later */
}

/* Notes on the pair's document that its last change went out, so a repeat of the request
 * does not announce it again (a failure here only costs a duplicate the store drops). */
static void mark_emitted(auth_ctx_t *ctx, const pair_t *p, json_t *change)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t set;
    BSON_APPEND_UTF8(&filter, "_id", p->conv);
    BSON_APPEND_UTF8(&filter, "last_change.id", json_string_value(json_object_get(change, "id")));
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    BSON_APPEND_BOOL(&set, "last_change.emitted", true);
    bson_append_document_end(&upd, &set);
    pl_mongo_update_one(ctx->mongo, CONTACTS, &filter, &upd, 0, NULL);
    bson_destroy(&filter);
    bson_destroy(&upd);
}

/* Runs a transition of (me, other) and answers the request. */
static void run(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *me, const char *other,
                transition_fn fn)
{
    pair_t p;
    outcome_t o;
    json_t *announce = NULL;
    memset(&p, 0, sizeof(p));
    memset(&o, 0, sizeof(o));
    int rc = change_pair(ctx, &p, me, other, fn, &o, &announce);
    if (rc == PL_OK && announce != NULL) {
        rc = emit(ctx, announce);
        if (rc == PL_OK) {
            mark_emitted(ctx, &p, announce);
        }
    }
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
    } else if (o.err != PL_OK) {
        pl_http_fail(resp, o.err, o.why);
    } else if (o.status == 204) {
        pl_http_reply(resp, 204, NULL);
    } else {
        pl_http_reply(resp, o.status, json_pack("{s:s,s:s}", "user", other, "state", o.state));
    }
    if (rc == PL_OK && o.change != NULL) {
        pl_metric_inc(ctx->m_social_changes);
    }
    json_decref(announce);
    json_decref(o.change);
    json_decref(p.last);
}

/* ---- requests ---- */

/*
 * The user named in the path prefix<name>suffix, normalized into out. 0 (and a 404 answered)
 * when the path has no such name.
 */
static int path_user(pl_http_req_t *req, pl_http_resp_t *resp, const char *prefix,
                     const char *suffix, char out[PL_USERNAME_LEN])
{
    const char *p = pl_http_path(req) + strlen(prefix);
    size_t n = strlen(p), sl = strlen(suffix);
    char in[PL_USERNAME_LEN];
    if (n <= sl || strcmp(p + n - sl, suffix) != 0 || n - sl >= sizeof(in)) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return 0;
    }
    memcpy(in, p, n - sl);
    in[n - sl] = '\0';
    if (strchr(in, '/') != NULL) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return 0;
    }
    if (pl_username_normalize(in, out) != PL_OK) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
        return 0;
    }
    return 1;
}

/* The named user exists and is someone else; otherwise the answer is filled. */
static int other_user_ok(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *me, const char *other)
{
    if (strcmp(me, other) == 0) {
        pl_http_fail(resp, PL_ERR_INVAL, "that is you");
        return 0;
    }
    int rc = auth_user_active(ctx, other);
    if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
    } else if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
    }
    return rc == PL_OK;
}

void auth_h_contact_add(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char other[PL_USERNAME_LEN];
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    const char *name = json_string_value(json_object_get(pl_http_body(req), "user"));
    if (name == NULL || pl_username_normalize(name, other) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, "body must be {\"user\":\"<username>\"}");
        return;
    }
    if (auth_rate_check(ctx, resp, "contact:u", c.sub, ctx->limits.contact_per_user) != PL_OK ||
        !other_user_ok(ctx, resp, c.sub, other)) {
        return;
    }
    run(ctx, resp, c.sub, other, t_request);
}

/* A change of the pair (caller, the user named by prefix<name>suffix); exists: the named user
 * must exist (a block, unlike a removal, names a live account). */
static void path_change(pl_http_req_t *req, pl_http_resp_t *resp, auth_ctx_t *ctx,
                        const char *prefix, const char *suffix, int exists, transition_fn fn)
{
    pl_jwt_claims_t c;
    char other[PL_USERNAME_LEN];
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK ||
        !path_user(req, resp, prefix, suffix, other) ||
        (exists && !other_user_ok(ctx, resp, c.sub, other))) {
        return;
    }
    run(ctx, resp, c.sub, other, fn);
}

void auth_h_contact_accept(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    path_change(req, resp, ud, "/v1/contacts/", "/accept", 0, t_accept);
}

void auth_h_contact_delete(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    path_change(req, resp, ud, "/v1/contacts/", "", 0, t_delete);
}

void auth_h_block(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    path_change(req, resp, ud, "/v1/blocks/", "", 1, t_block);
}

void auth_h_unblock(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    path_change(req, resp, ud, "/v1/blocks/", "", 0, t_unblock);
}

/* ---- lists ---- */

struct listing {
    const char *me;
    json_t *out;
    int blocks; /* list blocks instead of contacts */
};

static int on_pair(void *ud, const bson_t *doc)
{
    struct listing *l = ud;
    json_t *j = bson_to_json(doc);
    json_t *users = json_object_get(j, "users");
    const char *a = json_string_value(json_array_get(users, 0));
    const char *b = json_string_value(json_array_get(users, 1));
    const char *other = a && strcmp(a, l->me) == 0 ? b : a;
    pair_t p;
    memset(&p, 0, sizeof(p));
    p.me = l->me;
    p.other = other ? other : "";
    pair_parse(&p, doc);
    json_decref(p.last);
    if (other != NULL && l->blocks && p.i_blocked) {
        json_array_append_new(l->out, json_pack("{s:s}", "user", other));
    }
    if (other == NULL || l->blocks) {
        json_decref(j);
        return 1;
    }
    const char *state = p.state == ACCEPTED              ? "accepted"
                        : p.state != PENDING             ? NULL
                        : strcmp(p.asked_by, l->me) == 0 ? "outgoing"
                        : p.i_blocked                    ? NULL /* hidden from its blocker */
                                                         : "incoming";
    if (state != NULL) {
        json_array_append_new(l->out, json_pack("{s:s,s:s}", "user", other, "state", state));
    }
    json_decref(j); /* other points into it */
    return 1;
}

static int list_pairs(auth_ctx_t *ctx, const char *me, int blocks, json_t **out)
{
    struct listing l = {me, json_array(), blocks};
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, blocks ? "blocks" : "users", me);
    int rc = pl_mongo_find(ctx->mongo, CONTACTS, &filter, NULL, on_pair, &l);
    bson_destroy(&filter);
    if (rc != PL_OK) {
        json_decref(l.out);
        l.out = NULL;
    }
    *out = l.out;
    return rc;
}

static int on_name(void *ud, const bson_t *doc)
{
    json_t *names = ud;
    const char *id = auth_bson_str(doc, "_id");
    const char *display = auth_bson_str(doc, "display_name");
    if (id != NULL) {
        json_object_set_new(names, id, json_string(display ? display : id));
    }
    return 1;
}

/* Adds display_name to every entry of list, in one query. */
static int add_display_names(auth_ctx_t *ctx, json_t *list)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t id, in, proj;
    json_t *names = json_object();
    size_t i;
    json_t *e;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &id);
    BSON_APPEND_ARRAY_BEGIN(&id, "$in", &in);
    json_array_foreach(list, i, e)
    {
        char key[24];
        snprintf(key, sizeof(key), "%zu", i);
        BSON_APPEND_UTF8(&in, key, json_string_value(json_object_get(e, "user")));
    }
    bson_append_array_end(&id, &in);
    bson_append_document_end(&filter, &id);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "display_name", 1);
    bson_append_document_end(&opts, &proj);
    int rc = json_array_size(list)
                 ? pl_mongo_find(ctx->mongo, "users", &filter, &opts, on_name, names)
                 : PL_OK;
    json_array_foreach(list, i, e)
    {
        json_t *d = json_object_get(names, json_string_value(json_object_get(e, "user")));
        json_object_set(e, "display_name", d ? d : json_object_get(e, "user"));
    }
    json_decref(names);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return rc;
}

void auth_h_contacts(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    json_t *list = NULL;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    int rc = list_pairs(ctx, c.sub, 0, &list);
    if (rc == PL_OK) {
        rc = add_display_names(ctx, list);
    }
    if (rc == PL_OK) {
        rc = auth_presence_fill(ctx, c.sub, list);
    }
    if (rc != PL_OK) {
        json_decref(list);
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_http_reply(resp, 200, json_pack("{s:o}", "contacts", list));
}

void auth_h_blocks(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    json_t *list = NULL;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    int rc = list_pairs(ctx, c.sub, 1, &list);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_http_reply(resp, 200, json_pack("{s:o}", "blocks", list));
}

/* ---- settings ---- */

/* The user's settings with their defaults filled in (new reference), or NULL. */
static int read_settings(auth_ctx_t *ctx, const char *user, json_t **out)
{
    bson_t *doc = NULL;
    *out = NULL;
    int rc = pl_mongo_find_id(ctx->mongo, "users", user, &doc);
    if (rc != PL_OK) {
        return rc == PL_ERR_NOTFOUND ? PL_ERR_UNAUTH : rc;
    }
    json_t *j = bson_to_json(doc);
    bson_destroy(doc);
    json_t *s = json_pack("{s:s,s:s,s:b}", "who_can_message", "everyone", "presence", "contacts",
                          "read_receipts", 1);
    json_t *stored = json_object_get(j, "settings");
    if (json_is_object(stored)) {
        json_object_update_existing(s, stored);
    }
    json_decref(j);
    *out = s;
    return s ? PL_OK : PL_ERR_NOMEM;
}

/* Checks a PATCH body; fills set with the fields to change. NULL, or why it is refused. */
static const char *settings_parse(json_t *body, bson_t *set)
{
    const char *k;
    json_t *v;
    if (!json_is_object(body) || json_object_size(body) == 0) {
        return "body must be an object with who_can_message, presence or read_receipts";
    }
    json_object_foreach(body, k, v)
    {
        const char *s = json_string_value(v);
        if (strcmp(k, "who_can_message") == 0 && s &&
            (strcmp(s, "everyone") == 0 || strcmp(s, "contacts") == 0)) {
            BSON_APPEND_UTF8(set, "settings.who_can_message", s);
        } else if (strcmp(k, "presence") == 0 && s &&
                   (strcmp(s, "contacts") == 0 || strcmp(s, "nobody") == 0)) {
            BSON_APPEND_UTF8(set, "settings.presence", s);
        } else if (strcmp(k, "read_receipts") == 0 && json_is_boolean(v)) {
            BSON_APPEND_BOOL(set, "settings.read_receipts", json_is_true(v));
        } else {
            return "who_can_message is everyone|contacts, presence is contacts|nobody, "
                   "read_receipts is true|false; nothing else can be set";
        }
    }
    return NULL;
}

void auth_h_settings(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    json_t *s = NULL;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    int rc = read_settings(ctx, c.sub, &s);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_http_reply(resp, 200, s);
}

void auth_h_settings_patch(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    bson_t filter = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t set;
    json_t *s = NULL;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    BSON_APPEND_UTF8(&filter, "_id", c.sub);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    const char *why = settings_parse(pl_http_body(req), &set);
    bson_append_document_end(&upd, &set);
    int rc = why ? PL_ERR_INVAL : pl_mongo_update_one(ctx->mongo, "users", &filter, &upd, 0, NULL);
    bson_destroy(&filter);
    bson_destroy(&upd);
    if (rc == PL_OK) {
        rc = bump_policy(ctx, c.sub);
    }
    if (rc == PL_OK) {
        rc = read_settings(ctx, c.sub, &s);
    }
    json_t *change = rc == PL_OK ? new_change() : NULL;
    if (change != NULL) {
        add_item(change, c.sub, json_pack("{s:s,s:O}", "type", "settings", "settings", s));
        rc = emit(ctx, change);
        json_decref(change);
    }
    if (why != NULL) {
        pl_http_fail(resp, PL_ERR_INVAL, why);
    } else if (rc != PL_OK) {
        json_decref(s);
        pl_http_fail_dep(resp, rc);
    } else {
        pl_http_reply(resp, 200, s);
        pl_metric_inc(ctx->m_social_changes);
    }
}

int auth_social_indexes(auth_ctx_t *ctx)
{
    bson_t users = BSON_INITIALIZER;
    bson_t blocks = BSON_INITIALIZER;
    BSON_APPEND_INT32(&users, "users", 1);
    BSON_APPEND_INT32(&blocks, "blocks", 1);
    int rc = pl_mongo_create_index(ctx->mongo, CONTACTS, &users, "users_1", 0);
    if (rc == PL_OK) {
        rc = pl_mongo_create_index(ctx->mongo, CONTACTS, &blocks, "blocks_1", 0);
    }
    bson_destroy(&users);
    bson_destroy(&blocks);
    return rc;
}
