/*
 * GET /internal/typing?conv=&user= (DESIGN 7.5): who may see user typing in conv, for a
 * gateway that fans a typing frame out (gw_typing.h). 200 {"to":[…]}: in a 1:1 conversation
 * the other member when user may write to it (no block either way, and its who_can_message
 * lets user in); in a group of at most AUTH_TYPING_GROUP_MAX members its current members but
 * user and anyone with a block either way with user (user's contact_lists.blocked); in a
 * larger group nobody. 403 when user is not a member. The gateway caches the answer for
 * seconds; a group's members are a scan of `members` by conv on FerretDB, once per cache
 * lapse per typist.
 */
#include "auth.h"
#include "parley/err.h"
#include "parley/policy.h"
#include "parley/proto.h"

#include <bson/bson.h>
#include <stdio.h>
#include <string.h>

#define AUTH_TYPING_GROUP_MAX 100

static long long num(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return doc && bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_NUMBER(&it)
               ? bson_iter_as_int64(&it)
               : 0;
}

static int listed(const bson_t *doc, const char *key, const char *name)
{
    bson_iter_t it, arr;
    if (doc == NULL || !bson_iter_init_find(&it, doc, key) || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &arr)) {
        return 0;
    }
    while (bson_iter_next(&arr)) {
        if (BSON_ITER_HOLDS_UTF8(&arr) && strcmp(bson_iter_utf8(&arr, NULL), name) == 0) {
            return 1;
        }
    }
    return 0;
}

struct members {
    const char *me;
    const bson_t *lists; /* the typist's contact_lists, or NULL */
    json_t *to;
};

static int on_member(void *ud, const bson_t *doc)
{
    struct members *m = ud;
    bson_iter_t it;
    const char *user = bson_iter_init_find(&it, doc, "user") && BSON_ITER_HOLDS_UTF8(&it)
                           ? bson_iter_utf8(&it, NULL)
                           : NULL;
    if (user != NULL && strcmp(user, m->me) != 0 && num(doc, "joined_seq") > 0 &&
        num(doc, "left_seq") == 0 && !listed(m->lists, "blocked", user)) {
        json_array_append_new(m->to, json_string(user));
    }
    return 1;
}

/* The group's recipients into to; PL_ERR_FORBIDDEN when user is not a current member. */
static int group_to(auth_ctx_t *ctx, const char *conv, const char *user, json_t *to)
{
    char id[PL_CONV_ID_LEN + PL_USERNAME_LEN + 2];
    bson_t *doc = NULL, *lists = NULL;
    snprintf(id, sizeof(id), "%s|%s", conv, user);
    int rc = pl_mongo_find_id(ctx->mongo, "members", id, &doc);
    int member = rc == PL_OK && num(doc, "joined_seq") > 0 && num(doc, "left_seq") == 0;
    bson_destroy(doc);
    if (rc == PL_ERR_NOTFOUND || (rc == PL_OK && !member)) {
        return PL_ERR_FORBIDDEN;
    }
    doc = NULL;
    rc = rc == PL_OK ? pl_mongo_find_id(ctx->mongo, "groups", conv, &doc) : rc;
    long long count = num(doc, "member_count");
    bson_destroy(doc);
    if (rc != PL_OK || count > AUTH_TYPING_GROUP_MAX) {
        return rc == PL_ERR_NOTFOUND ? PL_ERR_FORBIDDEN : rc;
    }
    rc = pl_mongo_find_id(ctx->mongo, AUTH_CONTACT_LISTS, user, &lists);
    if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
        return rc;
    }
    struct members m = {user, lists, to};
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    rc = pl_mongo_find(ctx->mongo, "members", &filter, NULL, on_member, &m);
    bson_destroy(&filter);
    bson_destroy(lists);
    return rc;
}

void auth_h_internal_typing(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    const char *conv = pl_http_query(req, "conv"), *u = pl_http_query(req, "user");
    char user[PL_USERNAME_LEN], a[PL_USERNAME_LEN], b[PL_USERNAME_LEN];
    int kind = conv && strlen(conv) < PL_CONV_ID_LEN ? pl_conv_kind(conv) : 0;
    if ((kind != 'd' && kind != 'g') || u == NULL || pl_username_normalize(u, user) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, "conv (d: or g:) and user are needed");
        return;
    }
    json_t *to = json_array();
    int rc = PL_OK;
    if (kind == 'g') {
        rc = group_to(ctx, conv, user, to);
    } else if (sscanf(conv, "d:%32[^:]:%32s", a, b) != 2 ||
               (strcmp(a, user) != 0 && strcmp(b, user) != 0)) {
        rc = PL_ERR_FORBIDDEN;
    } else {
        const char *peer = strcmp(a, user) == 0 ? b : a;
        pl_policy_facts_t f;
        rc = pl_policy_read(ctx->mongo, user, peer, &f);
        if (rc == PL_OK && pl_policy_allows(&f) && !f.receiver_missing) {
            json_array_append_new(to, json_string(peer));
        }
    }
    if (rc == PL_ERR_FORBIDDEN) {
        json_decref(to);
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "you are not a member of this conversation");
    } else if (rc != PL_OK) {
        json_decref(to);
        pl_http_fail_dep(resp, rc);
    } else {
        pl_http_reply(resp, 200, json_pack("{s:o}", "to", to));
    }
}
