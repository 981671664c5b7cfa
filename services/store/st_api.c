/*
 * parley-store's history REST: a user's conversations, a conversation's messages by seq range
 * and a user's recent messages (the seed's getRecentMessages). Every request carries an
 * access token; a user reads only conversations they belong to (403 otherwise).
 */
#include "store.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define LIMIT_DEFAULT 50
#define LIMIT_MAX     200

long long st_query_num(const char *v, long long def)
{
    if (v == NULL || *v == '\0') {
        return def;
    }
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    return (errno || *end || n < 0) ? -1 : n;
}

static long long query_num(pl_http_req_t *req, const char *key, long long def)
{
    return st_query_num(pl_http_query(req, key), def);
}

struct collect {
    json_t *arr;
};

static int on_msg(void *ud, const bson_t *doc)
{
    struct collect *c = ud;
    pl_msg_t m;
    if (st_msg_from_bson(doc, &m) == PL_OK) {
        json_array_append_new(c->arr, pl_msg_json(&m, 0));
        pl_msg_clear(&m);
    }
    return 1;
}

static int on_conv(void *ud, const bson_t *doc)
{
    struct collect *c = ud;
    bson_iter_t it, arr;
    json_t *members = json_array();
    json_t *o = json_object();
    char when[32] = "";
    if (o == NULL || members == NULL || !bson_iter_init(&it, doc)) {
        json_decref(o);
        json_decref(members);
        return 1;
    }
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        if (strcmp(k, "_id") == 0 && BSON_ITER_HOLDS_UTF8(&it)) {
            json_object_set_new(o, "conv", json_string(bson_iter_utf8(&it, NULL)));
        } else if (strcmp(k, "members") == 0 && BSON_ITER_HOLDS_ARRAY(&it) &&
                   bson_iter_recurse(&it, &arr)) {
            while (bson_iter_next(&arr)) {
                if (BSON_ITER_HOLDS_UTF8(&arr)) {
                    json_array_append_new(members, json_string(bson_iter_utf8(&arr, NULL)));
                }
            }
        } else if (strcmp(k, "last_seq") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
            json_object_set_new(o, "last_seq", json_integer(bson_iter_as_int64(&it)));
        } else if (strcmp(k, "last_timestamp") == 0 && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            pl_iso8601_ms(bson_iter_date_time(&it), when);
            json_object_set_new(o, "last_timestamp", json_string(when));
        }
    }
    json_object_set_new(o, "members", members);
    json_array_append_new(c->arr, o);
    return 1;
}

/*
 * Runs the find, collects documents through fn into {key: [...]}, reversed when asked, and
 * replies; filter and opts are destroyed here.
 */
static void find_reply(st_ctx_t *ctx, pl_http_resp_t *resp, const char *coll, bson_t *filter,
                       bson_t *opts, pl_mongo_doc_fn fn, const char *key, int reverse)
{
    struct collect col = {json_array()};
    int rc = pl_mongo_find(ctx->mongo, coll, filter, opts, fn, &col);
    bson_destroy(filter);
    bson_destroy(opts);
    if (rc != PL_OK) {
        json_decref(col.arr);
        pl_http_fail_dep(resp, rc);
        return;
    }
    if (reverse) {
        json_t *rev = json_array();
        for (size_t i = json_array_size(col.arr); i > 0; i--) {
            json_array_append(rev, json_array_get(col.arr, i - 1));
        }
        json_decref(col.arr);
        col.arr = rev;
    }
    pl_http_reply(resp, 200, json_pack("{s:o}", key, col.arr));
}

static void h_conversations(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    st_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    long long limit = query_num(req, "limit", LIMIT_MAX);
    if (limit <= 0 || limit > 1000) {
        pl_http_fail(resp, PL_ERR_INVAL, "limit must be 1 to 1000");
        return;
    }
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t sort;
    BSON_APPEND_UTF8(&filter, "members", c.sub);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "last_timestamp", -1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", limit);
    find_reply(ctx, resp, "conversations", &filter, &opts, on_conv, "conversations", 0);
}

int st_conv_parse(const char *conv, char *a, char *b)
{
    char tmp[PL_CONV_ID_LEN];
    if (strncmp(conv, "u:", 2) == 0) {
        /* A user's own stream: its one member is both a and b. */
        if (pl_username_normalize(conv + 2, a) != PL_OK || strcmp(conv + 2, a) != 0) {
            return 0;
        }
        memcpy(b, a, strlen(a) + 1);
        return 1;
    }
    if (strncmp(conv, "d:", 2) != 0 || strlen(conv) >= sizeof(tmp)) {
        return 0;
    }
    memcpy(tmp, conv + 2, strlen(conv + 2) + 1);
    char *colon = strchr(tmp, ':');
    if (colon == NULL) {
        return 0;
    }
    *colon = '\0';
    if (pl_username_normalize(tmp, a) != PL_OK || strcmp(tmp, a) != 0 ||
        pl_username_normalize(colon + 1, b) != PL_OK || strcmp(colon + 1, b) != 0 ||
        strcmp(a, b) > 0) {
        return 0;
    }
    return 1;
}

static void h_messages(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    st_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char a[PL_USERNAME_MAX + 1], b[PL_USERNAME_MAX + 1], conv[PL_CONV_ID_LEN];
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    /* /v1/conversations/<conv>/messages */
    const char *p = pl_http_path(req) + strlen("/v1/conversations/");
    const char *slash = strchr(p, '/');
    if (slash == NULL || strcmp(slash, "/messages") != 0 || (size_t)(slash - p) >= sizeof(conv)) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return;
    }
    memcpy(conv, p, (size_t)(slash - p));
    conv[slash - p] = '\0';
    if (!st_conv_parse(conv, a, b)) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such conversation");
        return;
    }
    if (strcmp(c.sub, a) != 0 && strcmp(c.sub, b) != 0) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "you are not a member of this conversation");
        return;
    }
    long long after = query_num(req, "after_seq", 0);
    long long before = query_num(req, "before_seq", 0);
    long long limit = query_num(req, "limit", LIMIT_DEFAULT);
    if (after < 0 || before < 0 || limit <= 0 || limit > LIMIT_MAX) {
        pl_http_fail(resp, PL_ERR_INVAL,
                     "after_seq and before_seq must be non-negative integers, limit 1 to 200");
        return;
    }
    /* With after_seq, the first messages after it; otherwise the last ones (before
     * before_seq when given). Both come back in seq order. */
    int forward = pl_http_query(req, "after_seq") != NULL;
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t range, sort;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "seq", &range);
    BSON_APPEND_INT64(&range, "$gt", after);
    if (before > 0) {
        BSON_APPEND_INT64(&range, "$lt", before);
    }
    bson_append_document_end(&filter, &range);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "seq", forward ? 1 : -1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", limit);
    find_reply(ctx, resp, "messages", &filter, &opts, on_msg, "messages", !forward);
}

static void h_recent(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    st_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    long long limit = query_num(req, "limit", LIMIT_DEFAULT);
    if (limit <= 0 || limit > LIMIT_MAX) {
        pl_http_fail(resp, PL_ERR_INVAL, "limit must be 1 to 200");
        return;
    }
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t any, one, two, notsys, sort;
    BSON_APPEND_ARRAY_BEGIN(&filter, "$or", &any);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "0", &one);
    BSON_APPEND_UTF8(&one, "sender", c.sub);
    bson_append_document_end(&any, &one);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "1", &two);
    BSON_APPEND_UTF8(&two, "receiver", c.sub);
    bson_append_document_end(&any, &two);
    bson_append_array_end(&filter, &any);
    /* The seed's recent messages: a user's own stream (u:) holds no messages. */
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "kind", &notsys);
    BSON_APPEND_UTF8(&notsys, "$ne", PL_KIND_SYSTEM);
    bson_append_document_end(&filter, &notsys);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    /* Messages accepted in the same millisecond keep their conversation order. */
    BSON_APPEND_INT32(&sort, "timestamp", -1);
    BSON_APPEND_INT32(&sort, "seq", -1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_INT64(&opts, "limit", limit);
    find_reply(ctx, resp, "messages", &filter, &opts, on_msg, "messages", 0);
}

const pl_http_route_t st_routes[] = {
    {"GET", "/v1/conversations", h_conversations},
    {"GET", "/v1/conversations/", h_messages},
    {"GET", "/v1/messages/recent", h_recent},
};
const size_t st_nroutes = sizeof(st_routes) / sizeof(st_routes[0]);
