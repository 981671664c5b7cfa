/*
 * Groups over REST (DESIGN 7.4). parley-auth checks a request against the group as MongoDB
 * shows it, then turns it into a `system` item of the group's stream (sender = the user who
 * asks, receiver = the group) on parley.messages, and answers once the store has numbered and
 * applied it (the groups document's applied_seq reaches the item's seq): the store is the one
 * that decides, in stream order (st_group.h), so a change and the messages around it order
 * the same way on every device. Each item's client_id comes from the request's client_id when
 * given, so a retried request is one change. Only the store writes `members`; this module
 * writes a group's document once, at creation. Non-members get 403 whether the group exists
 * or not.
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
#include <unistd.h>

#define GROUPS         "groups"
#define MEMBERS        "members"
#define GROUP_LISTS    "group_lists" /* {_id: user, groups: {<conv>: window}} (st_group.h) */
#define NAME_MAX_BYTES 100
#define USERS_PER_CALL 1000 /* users named in one request */
#define APPLY_WAIT_MS  10000
#define LIST_LIMIT_MAX 200
#define NOT_A_MEMBER   "you are not a member of this group"

enum role { NONE = 0, MEMBER, ADMIN, OWNER };
static const char *const role_names[] = {"none", "member", "admin", "owner"};

static int role_parse(const char *s)
{
    for (int r = MEMBER; s != NULL && r <= OWNER; r++) {
        if (strcmp(s, role_names[r]) == 0) {
            return r;
        }
    }
    return NONE;
}

static long long bson_num(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_NUMBER(&it)
               ? bson_iter_as_int64(&it)
               : 0;
}

/* user's current role in conv (NONE when not a member now), and the joined seq. */
static int member_role(auth_ctx_t *ctx, const char *conv, const char *user, int *role,
                       long long *joined)
{
    char id[2 * PL_CONV_ID_LEN];
    bson_t *doc = NULL;
    snprintf(id, sizeof(id), "%s|%s", conv, user);
    *role = NONE;
    int rc = pl_mongo_find_id(ctx->mongo, MEMBERS, id, &doc);
    if (rc == PL_ERR_NOTFOUND) {
        return PL_OK;
    }
    if (rc == PL_OK && bson_num(doc, "left_seq") == 0 && bson_num(doc, "joined_seq") > 0) {
        *role = role_parse(auth_bson_str(doc, "role"));
        if (joined != NULL) {
            *joined = bson_num(doc, "joined_seq");
        }
    }
    bson_destroy(doc);
    return rc;
}

/* The conversation id of a path "/v1/groups/<conv>[/rest]" into conv; *rest points after it
 * ("" or "/members…"). 0 when malformed (the response is filled: 403, nothing leaks). */
static int path_group(pl_http_req_t *req, pl_http_resp_t *resp, char conv[PL_CONV_ID_LEN],
                      const char **rest)
{
    const char *p = pl_http_path(req) + strlen("/v1/groups/");
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (n >= PL_CONV_ID_LEN) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, NOT_A_MEMBER);
        return 0;
    }
    memcpy(conv, p, n);
    conv[n] = '\0';
    *rest = p + n;
    if (pl_conv_kind(conv) != 'g') {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, NOT_A_MEMBER);
        return 0;
    }
    return 1;
}

/* Authenticates, parses the path, and checks that the caller's role is at least min. */
static int caller(pl_http_req_t *req, pl_http_resp_t *resp, auth_ctx_t *ctx, pl_jwt_claims_t *c,
                  char conv[PL_CONV_ID_LEN], const char **rest, int min, int *role)
{
    if (pl_http_authenticate(req, resp, ctx->verifier, c) != PL_OK ||
        !path_group(req, resp, conv, rest)) {
        return 0;
    }
    int rc = member_role(ctx, conv, c->sub, role, NULL);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return 0;
    }
    if (*role == NONE) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, NOT_A_MEMBER);
        return 0;
    }
    if (*role < min) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN,
                     min == OWNER ? "only the owner may do that" : "only admins may do that");
        return 0;
    }
    return 1;
}

/* The optional client_id of a request (a retry names the same change), or a fresh one. */
static int change_id(json_t *body, pl_http_resp_t *resp, char out[PL_MAX_CLIENT_ID + 1])
{
    json_t *v = json_object_get(body, "client_id");
    if (v == NULL) {
        pl_random_hex(out, 16);
        return 1;
    }
    const char *s = json_string_value(v);
    size_t n = s ? json_string_length(v) : 0;
    int ok = s != NULL && n > 0 && n <= 40;
    for (size_t i = 0; ok && i < n; i++) {
        ok = s[i] > 0x20 && s[i] < 0x7f;
    }
    if (!ok) {
        pl_http_fail(resp, PL_ERR_INVAL, "client_id must be 1 to 40 printable ASCII characters");
        return 0;
    }
    memcpy(out, s, n + 1);
    return 1;
}

/* Waits until the store has applied the item msg_id of conv: its seq into *seq. PL_OK, or
 * PL_ERR_UNAVAIL (not applied within APPLY_WAIT_MS: refused by a change that won a race, or
 * the pipeline is slow; a retry with the same client_id is safe). */
static int wait_applied(auth_ctx_t *ctx, const char *conv, const char *msg_id, long long *seq)
{
    long long deadline = pl_now_ms() + APPLY_WAIT_MS;
    *seq = 0;
    for (int pause_us = 2000;; pause_us = pause_us < 50000 ? pause_us * 2 : pause_us) {
        bson_t *doc = NULL;
        int rc = PL_OK;
        if (*seq == 0 && (rc = pl_mongo_find_id(ctx->mongo, "messages", msg_id, &doc)) == PL_OK) {
            *seq = bson_num(doc, "seq");
        }
        bson_destroy(doc);
        doc = NULL;
        if (*seq > 0 && (rc = pl_mongo_find_id(ctx->mongo, GROUPS, conv, &doc)) == PL_OK &&
            bson_num(doc, "applied_seq") >= *seq) {
            bson_destroy(doc);
            return PL_OK;
        }
        bson_destroy(doc);
        if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
            return rc;
        }
        if (pl_now_ms() >= deadline) {
            return PL_ERR_UNAVAIL;
        }
        usleep((useconds_t)pause_us);
    }
}

/* Puts the change event (stolen) into conv's stream as a system item of by, and waits until
 * it is applied; *seq its seq. The response is filled on failure. */
static int change(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *conv, const char *by,
                  const char *cid, json_t *event, long long *seq)
{
    pl_msg_t m;
    memset(&m, 0, sizeof(m));
    /* The item's client_id names the group as well as the change: msg_id comes from (sender,
     * client_id) alone, so the same request id in two groups (a removal's default names only
     * its target and membership) would otherwise be one message, and the second group's change
     * would be taken for a replay of the first's. */
    char scoped[PL_MSG_ID_LEN];
    pl_msg_id(conv, cid, scoped);
    snprintf(m.client_id, sizeof(m.client_id), PL_SYSTEM_CLIENT_ID_PREFIX "%s", scoped);
    pl_msg_id(by, m.client_id, m.msg_id);
    snprintf(m.conv, sizeof(m.conv), "%s", conv);
    snprintf(m.sender, sizeof(m.sender), "%s", by);
    snprintf(m.receiver, sizeof(m.receiver), "%s", conv);
    memcpy(m.kind, PL_KIND_SYSTEM, sizeof(PL_KIND_SYSTEM));
    json_object_set_new(event, "by", json_string(by));
    m.event = event;
    m.content = "";
    m.ts_ms = pl_now_ms();
    snprintf(m.origin_gw, sizeof(m.origin_gw), "parley-auth");
    char *rec = event ? pl_msg_record(&m) : NULL;
    json_decref(event);
    int rc = rec ? auth_produce_wait(ctx, conv, rec) : PL_ERR_NOMEM;
    free(rec);
    if (rc == PL_OK) {
        rc = wait_applied(ctx, conv, m.msg_id, seq);
    }
    if (rc != PL_OK) {
        pl_http_fail(resp, PL_ERR_UNAVAIL,
                     "the change is not applied yet; retry with the same "
                     "client_id");
        return 0;
    }
    pl_metric_inc(ctx->m_social_changes);
    return 1;
}

/* The usernames of body's array key (1 to USERS_PER_CALL, each an active account other than
 * me), normalized and without repeats, as a new array; NULL with the response filled. */
static json_t *users_arg(auth_ctx_t *ctx, pl_http_resp_t *resp, json_t *body, const char *key,
                         const char *me, int allow_empty)
{
    json_t *in = json_object_get(body, key);
    size_t n = json_array_size(in);
    if (!json_is_array(in) || (n == 0 && !allow_empty) || n > USERS_PER_CALL) {
        pl_http_fail(resp, PL_ERR_INVAL, "a list of 1 to 1000 usernames is needed");
        return NULL;
    }
    json_t *out = json_array();
    for (size_t i = 0; i < n && out != NULL; i++) {
        char u[PL_USERNAME_LEN];
        const char *s = json_string_value(json_array_get(in, i));
        int dup = 0;
        if (s == NULL || pl_username_normalize(s, u) != PL_OK) {
            pl_http_fail(resp, PL_ERR_INVAL, "a list of usernames is needed");
            goto bad;
        }
        for (size_t j = 0; j < json_array_size(out) && !dup; j++) {
            dup = strcmp(json_string_value(json_array_get(out, j)), u) == 0;
        }
        if (dup || strcmp(u, me) == 0) {
            continue;
        }
        int rc = auth_user_active(ctx, u);
        if (rc == PL_ERR_NOTFOUND) {
            char msg[80];
            snprintf(msg, sizeof(msg), "no such user: %s", u);
            pl_http_fail(resp, PL_ERR_NOTFOUND, msg);
            goto bad;
        }
        if (rc != PL_OK) {
            pl_http_fail_dep(resp, rc);
            goto bad;
        }
        json_array_append_new(out, json_string(u));
    }
    return out;
bad:
    json_decref(out);
    return NULL;
}

/* A group name: 1 to NAME_MAX_BYTES bytes of text without control characters. */
static int name_ok(const char *s, size_t n)
{
    if (s == NULL || n == 0 || n > NAME_MAX_BYTES || strlen(s) != n) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* POST /v1/groups {name, members, client_id?} */
void auth_h_group_create(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char cid[PL_MAX_CLIENT_ID + 1], conv[PL_CONV_ID_LEN];
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    json_t *body = pl_http_body(req);
    json_t *name = json_object_get(body, "name");
    if (!name_ok(json_string_value(name), json_string_length(name))) {
        pl_http_fail(resp, PL_ERR_INVAL, "name must be 1 to 100 bytes of text");
        return;
    }
    if (!change_id(body, resp, cid) ||
        auth_rate_check(ctx, resp, "group:u", c.sub, ctx->limits.group_per_user) != PL_OK) {
        return;
    }
    json_t *users = users_arg(ctx, resp, body, "members", c.sub, 1);
    if (users == NULL) {
        return;
    }
    if ((long)json_array_size(users) + 1 > ctx->limits.member_limit) {
        pl_http_fail(resp, PL_ERR_INVAL, "more members than a group may have");
        json_decref(users);
        return;
    }
    pl_group_conv(c.sub, cid, conv);
    bson_t doc = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&doc, "_id", conv);
    BSON_APPEND_UTF8(&doc, "name", json_string_value(name));
    BSON_APPEND_UTF8(&doc, "owner", c.sub);
    BSON_APPEND_UTF8(&doc, "post_policy", "all");
    BSON_APPEND_DATE_TIME(&doc, "created_at", pl_now_ms());
    BSON_APPEND_INT64(&doc, "mver", 0);
    BSON_APPEND_INT64(&doc, "applied_seq", 0);
    BSON_APPEND_INT64(&doc, "member_count", 0);
    int rc = pl_mongo_insert_one(ctx->mongo, GROUPS, &doc);
    bson_destroy(&doc);
    if (rc != PL_OK && rc != PL_ERR_EXISTS) { /* exists: a retry; its item is de-duplicated */
        json_decref(users);
        pl_http_fail_dep(resp, rc);
        return;
    }
    long long seq = 0;
    json_t *ev =
        json_pack("{s:s,s:O,s:O}", "type", "group_created", "name", name, "members", users);
    if (change(ctx, resp, conv, c.sub, conv + 2, ev, &seq)) {
        json_array_insert_new(users, 0, json_string(c.sub));
        pl_http_reply(resp, 201,
                      json_pack("{s:s,s:O,s:s,s:O,s:I}", "conv", conv, "name", name, "owner", c.sub,
                                "members", users, "seq", (json_int_t)seq));
    }
    json_decref(users);
}

/* GET /v1/groups/<conv> and GET /v1/groups/<conv>/members?after=&limit= */
static void list_members(auth_ctx_t *ctx, pl_http_req_t *req, pl_http_resp_t *resp,
                         const char *conv);

void auth_h_group_get(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char conv[PL_CONV_ID_LEN];
    const char *rest;
    int role;
    if (!caller(req, resp, ctx, &c, conv, &rest, MEMBER, &role)) {
        return;
    }
    if (strcmp(rest, "/members") == 0) {
        list_members(ctx, req, resp, conv);
        return;
    }
    if (*rest != '\0') {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return;
    }
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(ctx->mongo, GROUPS, conv, &doc);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc == PL_ERR_NOTFOUND ? PL_ERR_UNAVAIL : rc);
        return;
    }
    bson_iter_t it;
    char when[32] = "";
    if (bson_iter_init_find(&it, doc, "created_at") && BSON_ITER_HOLDS_DATE_TIME(&it)) {
        pl_iso8601_ms(bson_iter_date_time(&it), when);
    }
    const char *policy = auth_bson_str(doc, "post_policy");
    pl_http_reply(resp, 200,
                  json_pack("{s:s,s:s,s:s,s:s,s:I,s:s,s:s}", "conv", conv, "name",
                            auth_bson_str(doc, "name") ?: "", "owner",
                            auth_bson_str(doc, "owner") ?: "", "post_policy", policy ?: "all",
                            "member_count", (json_int_t)bson_num(doc, "member_count"), "role",
                            role_names[role], "created_at", when));
    bson_destroy(doc);
}

struct member_list {
    json_t *arr;
};

static int on_member(void *ud, const bson_t *doc)
{
    struct member_list *l = ud;
    const char *user = auth_bson_str(doc, "user");
    const char *role = auth_bson_str(doc, "role");
    if (user != NULL && role != NULL) {
        json_array_append_new(l->arr,
                              json_pack("{s:s,s:s,s:I}", "user", user, "role", role, "joined_seq",
                                        (json_int_t)bson_num(doc, "joined_seq")));
    }
    return 1;
}

static void list_members(auth_ctx_t *ctx, pl_http_req_t *req, pl_http_resp_t *resp,
                         const char *conv)
{
    const char *after = pl_http_query(req, "after");
    const char *lim = pl_http_query(req, "limit");
    char *end = NULL;
    long limit = lim ? strtol(lim, &end, 10) : 100;
    if ((lim && (*lim == '\0' || *end != '\0')) || limit < 1 || limit > LIST_LIMIT_MAX ||
        (after != NULL && strlen(after) > PL_USERNAME_MAX)) {
        pl_http_fail(resp, PL_ERR_INVAL, "limit must be 1 to 200, after a username");
        return;
    }
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    bson_t gt, sort;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    BSON_APPEND_INT64(&filter, "left_seq", 0);
    if (after != NULL) {
        BSON_APPEND_DOCUMENT_BEGIN(&filter, "user", &gt);
        BSON_APPEND_UTF8(&gt, "$gt", after);
        bson_append_document_end(&filter, &gt);
    }
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "user", 1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", limit);
    struct member_list l = {json_array()};
    int rc = pl_mongo_find(ctx->mongo, MEMBERS, &filter, &opts, on_member, &l);
    bson_destroy(&filter);
    bson_destroy(&opts);
    if (rc != PL_OK) {
        json_decref(l.arr);
        pl_http_fail_dep(resp, rc);
        return;
    }
    size_t n = json_array_size(l.arr);
    json_t *next = (long)n == limit ? json_object_get(json_array_get(l.arr, n - 1), "user") : NULL;
    pl_http_reply(resp, 200,
                  json_pack("{s:o,s:O}", "members", l.arr, "next", next ? next : json_null()));
}

/* PATCH /v1/groups/<conv> {name?, post_policy?, client_id?}: admins.
 * PATCH /v1/groups/<conv>/members/<user> {role, client_id?}: the owner. */
static void set_role(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *me, const char *conv,
                     const char *user, json_t *body);

static int path_member(pl_http_resp_t *resp, const char *rest, char user[PL_USERNAME_LEN])
{
    const char *prefix = "/members/";
    if (strncmp(rest, prefix, strlen(prefix)) != 0 ||
        pl_username_normalize(rest + strlen(prefix), user) != PL_OK) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return 0;
    }
    return 1;
}

void auth_h_group_patch(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char conv[PL_CONV_ID_LEN], cid[PL_MAX_CLIENT_ID + 1], user[PL_USERNAME_LEN];
    const char *rest;
    int role;
    if (!caller(req, resp, ctx, &c, conv, &rest, ADMIN, &role)) {
        return;
    }
    json_t *body = pl_http_body(req);
    if (*rest != '\0') {
        if (path_member(resp, rest, user)) {
            set_role(ctx, resp, c.sub, conv, user, body);
        }
        return;
    }
    json_t *name = json_object_get(body, "name");
    json_t *policy = json_object_get(body, "post_policy");
    const char *p = json_string_value(policy);
    if ((name == NULL && policy == NULL) ||
        (name != NULL && !name_ok(json_string_value(name), json_string_length(name))) ||
        (policy != NULL && (p == NULL || (strcmp(p, "all") != 0 && strcmp(p, "admins") != 0)))) {
        pl_http_fail(resp, PL_ERR_INVAL,
                     "give a name (1 to 100 bytes) and/or post_policy \"all\" or \"admins\"");
        return;
    }
    if (!change_id(body, resp, cid) ||
        auth_rate_check(ctx, resp, "group:u", c.sub, ctx->limits.group_per_user) != PL_OK) {
        return;
    }
    json_t *ev = json_pack("{s:s}", "type", "group_updated");
    if (name != NULL) {
        json_object_set(ev, "name", name);
    }
    if (policy != NULL) {
        json_object_set(ev, "post_policy", policy);
    }
    long long seq = 0;
    if (change(ctx, resp, conv, c.sub, cid, ev, &seq)) {
        pl_http_reply(resp, 200, json_pack("{s:s,s:I}", "conv", conv, "seq", (json_int_t)seq));
    }
}

static void set_role(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *me, const char *conv,
                     const char *user, json_t *body)
{
    char cid[PL_MAX_CLIENT_ID + 1];
    int mine = NONE, theirs = NONE;
    const char *r = json_string_value(json_object_get(body, "role"));
    if (r == NULL || (strcmp(r, "admin") != 0 && strcmp(r, "member") != 0)) {
        pl_http_fail(resp, PL_ERR_INVAL, "role must be \"admin\" or \"member\"");
        return;
    }
    int rc = member_role(ctx, conv, me, &mine, NULL);
    if (rc == PL_OK) {
        rc = member_role(ctx, conv, user, &theirs, NULL);
    }
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    if (mine != OWNER) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "only the owner may do that");
        return;
    }
    if (theirs == NONE || theirs == OWNER) {
        pl_http_fail(resp, theirs == NONE ? PL_ERR_NOTFOUND : PL_ERR_INVAL,
                     theirs == NONE ? "not a member" : "the owner's role does not change");
        return;
    }
    if (!change_id(body, resp, cid) ||
        auth_rate_check(ctx, resp, "group:u", me, ctx->limits.group_per_user) != PL_OK) {
        return;
    }
    long long seq = 0;
    json_t *ev = json_pack("{s:s,s:s,s:s}", "type", "role_changed", "user", user, "role", r);
    if (change(ctx, resp, conv, me, cid, ev, &seq)) {
        pl_http_reply(resp, 200,
                      json_pack("{s:s,s:s,s:I}", "user", user, "role", r, "seq", (json_int_t)seq));
    }
}

/* POST /v1/groups/<conv>/members {users, client_id?}: admins add members. */
void auth_h_group_post(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char conv[PL_CONV_ID_LEN], cid[PL_MAX_CLIENT_ID + 1];
    const char *rest;
    int role;
    if (!caller(req, resp, ctx, &c, conv, &rest, ADMIN, &role)) {
        return;
    }
    if (strcmp(rest, "/members") != 0) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return;
    }
    json_t *body = pl_http_body(req);
    if (!change_id(body, resp, cid) ||
        auth_rate_check(ctx, resp, "group:u", c.sub, ctx->limits.group_per_user) != PL_OK) {
        return;
    }
    json_t *users = users_arg(ctx, resp, body, "users", c.sub, 0);
    json_t *fresh = json_array();
    int rc = users != NULL && fresh != NULL ? PL_OK : PL_ERR_INVAL;
    for (size_t i = 0; i < json_array_size(users) && rc == PL_OK; i++) {
        int theirs = NONE;
        rc = member_role(ctx, conv, json_string_value(json_array_get(users, i)), &theirs, NULL);
        if (rc == PL_OK && theirs == NONE) {
            json_array_append(fresh, json_array_get(users, i));
        }
    }
    bson_t *g = NULL;
    if (rc == PL_OK && json_array_size(fresh) > 0 &&
        (rc = pl_mongo_find_id(ctx->mongo, GROUPS, conv, &g)) == PL_OK &&
        bson_num(g, "member_count") + (long long)json_array_size(fresh) >
            ctx->limits.member_limit) {
        pl_http_fail(resp, PL_ERR_INVAL, "the group would have more members than it may");
        rc = PL_ERR_INVAL;
    }
    bson_destroy(g);
    long long seq = 0;
    if (users == NULL || rc == PL_ERR_INVAL) {
        /* answered */
    } else if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
    } else if (json_array_size(fresh) == 0) {
        pl_http_reply(resp, 200, json_pack("{s:[]}", "added"));
    } else if (change(ctx, resp, conv, c.sub, cid,
                      json_pack("{s:s,s:O}", "type", "members_added", "users", fresh), &seq)) {
        pl_http_reply(resp, 200, json_pack("{s:O,s:I}", "added", fresh, "seq", (json_int_t)seq));
    }
    json_decref(users);
    json_decref(fresh);
}

/* DELETE /v1/groups/<conv>/members/<user>: an admin removes a member (the owner an admin too);
 * a member removes itself (leaves). */
void auth_h_group_delete(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char conv[PL_CONV_ID_LEN], cid[PL_MAX_CLIENT_ID + 1], user[PL_USERNAME_LEN];
    const char *rest;
    int role, theirs = NONE;
    if (!caller(req, resp, ctx, &c, conv, &rest, MEMBER, &role) || !path_member(resp, rest, user)) {
        return;
    }
    int leave = strcmp(user, c.sub) == 0;
    long long joined = 0;
    int rc = member_role(ctx, conv, user, &theirs, &joined);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    if (leave && role == OWNER) {
        pl_http_fail(resp, PL_ERR_EXISTS, "the owner cannot leave the group");
        return;
    }
    if (!leave && (role < ADMIN || (theirs != NONE && theirs >= role))) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "only admins may remove members, the owner admins");
        return;
    }
    if (theirs == NONE) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "not a member");
        return;
    }
    /* A removal names its target and the membership it ends: a retry without a client_id is
     * still one change, and a later membership's removal another. */
    json_t *body = pl_http_body(req);
    if (json_object_get(body, "client_id") == NULL) {
        snprintf(cid, sizeof(cid), "rm:%s:%lld", user, joined);
    } else if (!change_id(body, resp, cid)) {
        return;
    }
    if (auth_rate_check(ctx, resp, "group:u", c.sub, ctx->limits.group_per_user) != PL_OK) {
        return;
    }
    long long seq = 0;
    if (change(ctx, resp, conv, c.sub, cid,
               json_pack("{s:s,s:s}", "type", "member_removed", "user", user), &seq)) {
        pl_http_reply(resp, 204, NULL);
    }
}

/* ---- for the gateways (the edge never routes /internal) ---- */

/* GET /internal/groups?user=<u>: the groups user is a member of now, with joined_seq, from
 * the user's group_lists document (kept by the store with the members documents), one lookup
 * by _id: a gateway asks on every first socket of a user, and a filter on `members` by user
 * would scan every membership on FerretDB. No document: no groups yet. */
void auth_h_internal_groups(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    char user[PL_USERNAME_LEN];
    const char *u = pl_http_query(req, "user");
    if (u == NULL || pl_username_normalize(u, user) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, "user is needed");
        return;
    }
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(ctx->mongo, GROUP_LISTS, user, &doc);
    if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    json_t *arr = json_array();
    bson_iter_t it, groups;
    if (doc != NULL && bson_iter_init_find(&it, doc, "groups") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
        bson_iter_recurse(&it, &groups)) {
        while (bson_iter_next(&groups)) {
            const char *conv = bson_iter_key(&groups);
            bson_t entry;
            const uint8_t *data;
            uint32_t len;
            if (!BSON_ITER_HOLDS_DOCUMENT(&groups) || pl_conv_kind(conv) != 'g') {
                continue;
            }
            bson_iter_document(&groups, &len, &data);
            if (bson_init_static(&entry, data, len) && bson_num(&entry, "left_seq") == 0 &&
                bson_num(&entry, "joined_seq") > 0) {
                json_array_append_new(arr, json_pack("{s:s,s:I}", "conv", conv, "joined_seq",
                                                     (json_int_t)bson_num(&entry, "joined_seq")));
            }
        }
    }
    bson_destroy(doc);
    pl_http_reply(resp, 200, json_pack("{s:o}", "groups", arr));
}

struct changed {
    json_t *arr;
};

static int on_changed(void *ud, const bson_t *doc)
{
    struct changed *c = ud;
    const char *user = auth_bson_str(doc, "user");
    if (user != NULL && bson_num(doc, "joined_seq") > 0) {
        json_array_append_new(c->arr, json_pack("{s:s,s:I,s:I}", "user", user, "joined_seq",
                                                (json_int_t)bson_num(doc, "joined_seq"), "left_seq",
                                                (json_int_t)bson_num(doc, "left_seq")));
    }
    return 1;
}

/* POST /internal/groups/members {conv, since}: the members whose window changed after seq
 * since (joined or left), and the group's mver, read first: the windows are at least that
 * new. A gateway's view catches up with it (gw_groups.h). */
void auth_h_internal_members(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    json_t *body = pl_http_body(req);
    const char *conv = json_string_value(json_object_get(body, "conv"));
    json_t *since = json_object_get(body, "since");
    if (conv == NULL || pl_conv_kind(conv) != 'g' || !json_is_integer(since)) {
        pl_http_fail(resp, PL_ERR_INVAL, "conv and since are needed");
        return;
    }
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(ctx->mongo, GROUPS, conv, &doc);
    long long mver = rc == PL_OK ? bson_num(doc, "mver") : 0;
    bson_destroy(doc);
    if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    bson_t filter = BSON_INITIALIZER;
    bson_t any, a, b, gt1, gt2;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    BSON_APPEND_ARRAY_BEGIN(&filter, "$or", &any);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "0", &a);
    BSON_APPEND_DOCUMENT_BEGIN(&a, "joined_seq", &gt1);
    BSON_APPEND_INT64(&gt1, "$gt", json_integer_value(since));
    bson_append_document_end(&a, &gt1);
    bson_append_document_end(&any, &a);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "1", &b);
    BSON_APPEND_DOCUMENT_BEGIN(&b, "left_seq", &gt2);
    BSON_APPEND_INT64(&gt2, "$gt", json_integer_value(since));
    bson_append_document_end(&b, &gt2);
    bson_append_document_end(&any, &b);
    bson_append_array_end(&filter, &any);
    struct changed c = {json_array()};
    rc = pl_mongo_find(ctx->mongo, MEMBERS, &filter, NULL, on_changed, &c);
    bson_destroy(&filter);
    if (rc != PL_OK) {
        json_decref(c.arr);
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_http_reply(resp, 200, json_pack("{s:I,s:o}", "mver", (json_int_t)mver, "members", c.arr));
}

/* GET /internal/groups/may_post?conv=&user=[&need=member]: 200 when user is a member now and
 * the post policy lets it post (with need=member: a member, whatever the policy; for read and
 * delivered frames), else 403 (the same for a group that does not exist). A gateway asks when
 * its view does not show the sender as a member, so a send that the store would refuse is
 * answered `forbidden` at once instead of an ack and a refusal after it. */
void auth_h_internal_may_post(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    const char *conv = pl_http_query(req, "conv"), *u = pl_http_query(req, "user");
    char user[PL_USERNAME_LEN];
    if (conv == NULL || pl_conv_kind(conv) != 'g' || strlen(conv) >= PL_CONV_ID_LEN || u == NULL ||
        pl_username_normalize(u, user) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, "conv and user are needed");
        return;
    }
    const char *need = pl_http_query(req, "need");
    int any_member = need != NULL && strcmp(need, "member") == 0;
    int role = NONE;
    int rc = member_role(ctx, conv, user, &role, NULL);
    bson_t *doc = NULL;
    if (rc == PL_OK && role != NONE && role < ADMIN && !any_member) {
        rc = pl_mongo_find_id(ctx->mongo, GROUPS, conv, &doc);
        const char *policy = rc == PL_OK ? auth_bson_str(doc, "post_policy") : NULL;
        role = policy != NULL && strcmp(policy, "admins") == 0 ? NONE : role;
        rc = rc == PL_ERR_NOTFOUND ? PL_OK : rc;
        bson_destroy(doc);
    }
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
    } else if (role == NONE) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "you cannot post in this conversation");
    } else {
        pl_http_reply(resp, 200, json_pack("{s:s}", "role", role_names[role]));
    }
}
