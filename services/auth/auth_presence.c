/*
 * Presence as people see it (DESIGN 7.3), parley-auth's part: who may see a user's presence
 * (accepted contacts with no block either way, and nobody when the user's `presence` setting
 * is "nobody"), `last_seen` kept durably in the user's document, and the REST reads
 * (GET /v1/presence, and presence in GET /v1/contacts). The live part is the gateways': they
 * decide when a user goes online or offline (parley:pstate:<user>), ask here who may see it,
 * and publish one notice that every gateway filters for the devices it holds.
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

#define PRESENCE_QUERY_MAX 100 /* users per GET /v1/presence */

/* The accepted contacts of user with no block between them, as a new array in *out: the
 * user's `contact_lists` document (kept by auth_social.c with every change of a pair), read
 * by _id rather than by scanning `contacts`, which a server without index pushdown would. */
static int open_contacts(auth_ctx_t *ctx, const char *user, json_t **out)
{
    bson_t *doc = NULL;
    bson_iter_t it, arr;
    *out = json_array();
    int rc = pl_mongo_find_id(ctx->mongo, AUTH_CONTACT_LISTS, user, &doc);
    if (rc == PL_OK && bson_iter_init_find(&it, doc, "open") && BSON_ITER_HOLDS_ARRAY(&it) &&
        bson_iter_recurse(&it, &arr)) {
        while (bson_iter_next(&arr)) {
            if (BSON_ITER_HOLDS_UTF8(&arr)) {
                json_array_append_new(*out, json_string(bson_iter_utf8(&arr, NULL)));
            }
        }
    }
    bson_destroy(doc);
    return rc == PL_ERR_NOTFOUND ? PL_OK : rc;
}

/* From the user's document: is its presence hidden, and its durable last_seen (0: never). */
static int presence_prefs(auth_ctx_t *ctx, const char *user, int *hidden, long long *last_seen)
{
    bson_t *doc = NULL;
    bson_iter_t root, it;
    *hidden = 0;
    *last_seen = 0;
    int rc = pl_mongo_find_id(ctx->mongo, "users", user, &doc);
    if (rc != PL_OK) {
        return rc;
    }
    if (bson_iter_init(&root, doc) && bson_iter_find_descendant(&root, "settings.presence", &it) &&
        BSON_ITER_HOLDS_UTF8(&it)) {
        *hidden = strcmp(bson_iter_utf8(&it, NULL), "nobody") == 0;
    }
    if (bson_iter_init_find(&it, doc, "last_seen") && BSON_ITER_HOLDS_DATE_TIME(&it)) {
        *last_seen = bson_iter_date_time(&it);
    }
    bson_destroy(doc);
    return PL_OK;
}

struct pstates {
    json_t *names;
    json_t *out; /* name -> "on:<ms>" | "off:<ms>" */
};

static void on_pstate(void *ud, size_t idx, const char *field, const char *value)
{
    struct pstates *p = ud;
    (void)field;
    json_object_set_new(p->out, json_string_value(json_array_get(p->names, idx)),
                        json_string(value));
}

/* The presence objects {user, status, last_seen} of names (all visible to the asker) into
 * out (name -> object). The live state is Redis's; a user it does not know is offline, seen
 * last when the database says. */
static int presence_objects(auth_ctx_t *ctx, json_t *names, json_t *out)
{
    size_t n = json_array_size(names);
    char(*keys)[PL_KEY_LEN] = calloc(n ? n : 1, PL_KEY_LEN);
    const char **kp = calloc(n ? n : 1, sizeof(*kp));
    struct pstates ps = {names, json_object()};
    int rc = keys && kp && ps.out ? PL_OK : PL_ERR_NOMEM;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        rc = pl_key_pstate(keys[i], json_string_value(json_array_get(names, i)));
        kp[i] = keys[i];
    }
    if (rc == PL_OK && pl_redis_get_multi(ctx->redis, kp, n, on_pstate, &ps) != PL_OK) {
        json_object_clear(ps.out); /* Redis away: everyone as the database last saw them */
    }
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        const char *name = json_string_value(json_array_get(names, i));
        const char *st = json_string_value(json_object_get(ps.out, name));
        int hidden;
        long long seen = 0;
        rc = presence_prefs(ctx, name, &hidden, &seen);
        if (rc == PL_ERR_NOTFOUND) {
            rc = PL_OK;
            continue;
        }
        if (rc != PL_OK || hidden) {
            continue;
        }
        int online = st != NULL && strncmp(st, "on:", 3) == 0;
        if (st != NULL && strchr(st, ':') != NULL) {
            long long at = strtoll(strchr(st, ':') + 1, NULL, 10);
            seen = at > seen || online ? at : seen;
        }
        char when[32];
        pl_iso8601_ms(seen, when);
        json_t *o = json_pack("{s:s,s:s}", "user", name, "status", online ? "online" : "offline");
        if (seen > 0) {
            json_object_set_new(o, "last_seen", json_string(when));
        }
        json_object_set_new(out, name, o);
    }
    free(keys);
    free(kp);
    json_decref(ps.out);
    return rc;
}

int auth_presence_fill(auth_ctx_t *ctx, const char *me, json_t *contacts)
{
    json_t *open = NULL;
    json_t *objs = json_object();
    int rc = open_contacts(ctx, me, &open);
    if (rc == PL_OK) {
        rc = presence_objects(ctx, open, objs);
    }
    size_t i;
    json_t *e;
    json_array_foreach(contacts, i, e)
    {
        json_t *p = json_object_get(objs, json_string_value(json_object_get(e, "user")));
        if (p != NULL) {
            json_object_set_new(e, "presence",
                                json_pack("{s:O,s:O*}", "status", json_object_get(p, "status"),
                                          "last_seen", json_object_get(p, "last_seen")));
        }
    }
    json_decref(open);
    json_decref(objs);
    return rc;
}

/* GET /v1/presence?users=a,b: those the caller may see; the others are simply absent. */
void auth_h_presence(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    json_t *open = NULL, *objs = json_object(), *asked = json_array(), *list = json_array();
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        goto out;
    }
    const char *q = pl_http_query(req, "users");
    char buf[PRESENCE_QUERY_MAX * (PL_USERNAME_MAX + 1) + 1];
    if (q == NULL || strlen(q) >= sizeof(buf)) {
        pl_http_fail(resp, PL_ERR_INVAL, "users= must name 1 to 100 users, comma-separated");
        goto out;
    }
    memcpy(buf, q, strlen(q) + 1);
    int rc = open_contacts(ctx, c.sub, &open);
    for (char *p = buf, *end; rc == PL_OK && p != NULL && *p; p = end) {
        char name[PL_USERNAME_LEN];
        end = strchr(p, ',');
        if (end != NULL) {
            *end++ = '\0';
        }
        size_t i;
        json_t *v;
        json_array_foreach(open, i, v)
        {
            if (pl_username_normalize(p, name) == PL_OK &&
                strcmp(json_string_value(v), name) == 0) {
                json_array_append(asked, v);
            }
        }
    }
    rc = rc == PL_OK ? presence_objects(ctx, asked, objs) : rc;
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(objs, k, v)
    {
        json_array_append(list, v);
    }
    pl_http_reply(resp, 200, json_pack("{s:O}", "presence", list));
out:
    json_decref(open);
    json_decref(objs);
    json_decref(asked);
    json_decref(list);
}

/*
 * POST /internal/presence/<user> {"status":"online"|"offline","at":<ms>}: a gateway is about to
 * announce a change. An offline change keeps last_seen in the user's document ($max, so a
 * late notice never moves it back). Answers {"viewers":[…]}: who may see it.
 */
void auth_h_internal_presence(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    char name[PL_USERNAME_LEN];
    const char *p = pl_http_path(req) + strlen("/internal/presence/");
    json_t *body = pl_http_body(req);
    const char *status = json_string_value(json_object_get(body, "status"));
    json_t *at = json_object_get(body, "at");
    if (pl_username_normalize(p, name) != PL_OK || strcmp(p, name) != 0 || status == NULL ||
        !json_is_integer(at)) {
        pl_http_fail(resp, PL_ERR_INVAL, "body must be {\"status\":…,\"at\":<ms>}");
        return;
    }
    int rc = PL_OK;
    if (strcmp(status, "offline") == 0) {
        bson_t filter = BSON_INITIALIZER, upd = BSON_INITIALIZER, max;
        BSON_APPEND_UTF8(&filter, "_id", name);
        BSON_APPEND_DOCUMENT_BEGIN(&upd, "$max", &max);
        BSON_APPEND_DATE_TIME(&max, "last_seen", json_integer_value(at));
        bson_append_document_end(&upd, &max);
        rc = pl_mongo_update_one(ctx->mongo, "users", &filter, &upd, 0, NULL);
        bson_destroy(&filter);
        bson_destroy(&upd);
    }
    int hidden = 0;
    long long seen;
    json_t *viewers = NULL;
    rc = rc == PL_OK ? presence_prefs(ctx, name, &hidden, &seen) : rc;
    if (rc == PL_OK && !hidden) {
        rc = open_contacts(ctx, name, &viewers);
    }
    if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
    } else if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
    } else {
        pl_http_reply(resp, 200, json_pack("{s:o}", "viewers", viewers ? viewers : json_array()));
        viewers = NULL;
    }
    json_decref(viewers);
}
