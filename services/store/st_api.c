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

/* A conversation document as a list entry: conv, kind, name, members, last_seq,
 * last_timestamp, last_item (the item at last_seq, previewed), and "_ts" (ms) to sort by. */
static json_t *conv_entry(const bson_t *doc)
{
    bson_iter_t it, arr;
    json_t *members = json_array();
    json_t *o = json_object();
    json_t *item = json_object();
    char when[32] = "";
    if (o == NULL || members == NULL || item == NULL || !bson_iter_init(&it, doc)) {
        json_decref(o);
        json_decref(members);
        json_decref(item);
        return NULL;
    }
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        uint32_t len = 0;
        if (BSON_ITER_HOLDS_UTF8(&it)) {
            const char *v = bson_iter_utf8(&it, &len);
            if (strcmp(k, "_id") == 0) {
                json_object_set_new(o, "conv", json_string(v));
            } else if (strcmp(k, "name") == 0) {
                json_object_set_new(o, "name", json_string(v));
            } else if (strcmp(k, "last_sender") == 0) {
                json_object_set_new(item, "sender", json_string(v));
            } else if (strcmp(k, "last_kind") == 0) {
                json_object_set_new(item, "kind", json_string(v));
            } else if (strcmp(k, "last_preview") == 0) {
                json_object_set_new(item, "content", json_stringn(v, len));
            }
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
            json_object_set_new(o, "_ts", json_integer(bson_iter_date_time(&it)));
        }
    }
    const char *conv = json_string_value(json_object_get(o, "conv"));
    char kind[2] = {conv ? (char)pl_conv_kind(conv) : 0, '\0'};
    json_object_set_new(o, "kind", json_string(kind));
    if (kind[0] != 'g') {
        json_object_set_new(o, "members", members);
    } else {
        json_decref(members);
    }
    if (json_object_get(item, "sender") != NULL) {
        json_object_set(item, "seq", json_object_get(o, "last_seq"));
        json_object_set(item, "timestamp", json_object_get(o, "last_timestamp"));
        json_object_set_new(o, "last_item", item);
    } else {
        json_decref(item);
    }
    return o;
}

static int on_conv(void *ud, const bson_t *doc)
{
    struct collect *c = ud;
    json_t *o = conv_entry(doc);
    if (o != NULL && json_object_get(o, "conv") != NULL) {
        json_array_append_new(c->arr, o);
    } else {
        json_decref(o);
    }
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

/* A user's window in a group: joined_seq and left_seq (0 while a member), from the members
 * document. PL_OK, PL_ERR_NOTFOUND (never a member), or the database's error. */
static int group_window(st_ctx_t *ctx, const char *conv, const char *user, long long *joined,
                        long long *left, long long *read)
{
    char id[2 * PL_CONV_ID_LEN];
    bson_t *doc = NULL;
    snprintf(id, sizeof(id), "%s|%.*s", conv, PL_USERNAME_MAX, user);
    int rc = pl_mongo_find_id(ctx->mongo, ST_MEMBERS, id, &doc);
    if (rc != PL_OK) {
        return rc;
    }
    bson_iter_t it;
    *joined = bson_iter_init_find(&it, doc, "joined_seq") && BSON_ITER_HOLDS_NUMBER(&it)
                  ? bson_iter_as_int64(&it)
                  : 0;
    *left = bson_iter_init_find(&it, doc, "left_seq") && BSON_ITER_HOLDS_NUMBER(&it)
                ? bson_iter_as_int64(&it)
                : 0;
    if (read != NULL) {
        *read = bson_iter_init_find(&it, doc, "read_seq") && BSON_ITER_HOLDS_NUMBER(&it)
                    ? bson_iter_as_int64(&it)
                    : 0;
    }
    bson_destroy(doc);
    return *joined > 0 ? PL_OK : PL_ERR_NOTFOUND;
}

struct window {
    char conv[PL_CONV_ID_LEN];
    long long joined, left, read;
};

struct windows {
    struct window *w;
    size_t n, cap;
};

static long long entry_num(const bson_t *entry, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, entry, key) && BSON_ITER_HOLDS_NUMBER(&it)
               ? bson_iter_as_int64(&it)
               : 0;
}

static int window_add(struct windows *ws, const char *conv, const bson_t *entry)
{
    if (ws->n == ws->cap) {
        size_t cap = ws->cap ? ws->cap * 2 : 16;
        struct window *w = realloc(ws->w, cap * sizeof(*w));
        if (w == NULL) {
            return PL_ERR_NOMEM;
        }
        ws->w = w;
        ws->cap = cap;
    }
    struct window *w = &ws->w[ws->n];
    memset(w, 0, sizeof(*w));
    snprintf(w->conv, sizeof(w->conv), "%s", conv);
    w->joined = entry_num(entry, "joined_seq");
    w->left = entry_num(entry, "left_seq");
    ws->n += w->joined > 0;
    return PL_OK;
}

/* The groups user belongs or belonged to, with their windows: the user's group_lists document
 * (st_group.h), one lookup by _id. read is left 0 (it lives in the members documents). */
static int user_groups(st_ctx_t *ctx, const char *user, struct windows *ws)
{
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(ctx->mongo, ST_GROUP_LISTS, user, &doc);
    if (rc == PL_ERR_NOTFOUND) {
        return PL_OK;
    }
    bson_iter_t it, groups;
    if (rc == PL_OK && bson_iter_init_find(&it, doc, "groups") && BSON_ITER_HOLDS_DOCUMENT(&it) &&
        bson_iter_recurse(&it, &groups)) {
        while (rc == PL_OK && bson_iter_next(&groups)) {
            const char *conv = bson_iter_key(&groups);
            const uint8_t *data;
            uint32_t len;
            bson_t entry;
            if (BSON_ITER_HOLDS_DOCUMENT(&groups) && pl_conv_kind(conv) == 'g' &&
                strlen(conv) < PL_CONV_ID_LEN) {
                bson_iter_document(&groups, &len, &data);
                rc = bson_init_static(&entry, data, len) ? window_add(ws, conv, &entry) : rc;
            }
        }
    }
    bson_destroy(doc);
    return rc;
}

static int on_count(void *ud, const bson_t *doc)
{
    (void)doc;
    (*(long *)ud)++;
    return 1;
}

#define UNREAD_CAP 999

/* Adds to filter: text items only (system, edit and recall items are not messages to read;
 * items stored before kinds existed have none and are text). */
static void text_only(bson_t *filter)
{
    bson_t kind, nin;
    BSON_APPEND_DOCUMENT_BEGIN(filter, "kind", &kind);
    BSON_APPEND_ARRAY_BEGIN(&kind, "$nin", &nin);
    BSON_APPEND_UTF8(&nin, "0", PL_KIND_SYSTEM);
    BSON_APPEND_UTF8(&nin, "1", PL_KIND_EDIT);
    BSON_APPEND_UTF8(&nin, "2", PL_KIND_RECALL);
    bson_append_array_end(&kind, &nin);
    bson_append_document_end(filter, &kind);
}

/* Others' text items of conv in (from, to], counted up to UNREAD_CAP. */
static int count_unread(st_ctx_t *ctx, const char *conv, const char *me, long long from,
                        long long to, long *n)
{
    *n = 0;
    if (to <= from) {
        return PL_OK;
    }
    bson_t filter = BSON_INITIALIZER, opts = BSON_INITIALIZER;
    bson_t range, notme, proj;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "seq", &range);
    BSON_APPEND_INT64(&range, "$gt", from);
    BSON_APPEND_INT64(&range, "$lte", to);
    bson_append_document_end(&filter, &range);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "sender", &notme);
    BSON_APPEND_UTF8(&notme, "$ne", me);
    bson_append_document_end(&filter, &notme);
    text_only(&filter);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "_id", 1);
    bson_append_document_end(&opts, &proj);
    BSON_APPEND_INT64(&opts, "limit", UNREAD_CAP);
    int rc = pl_mongo_find(ctx->mongo, "messages", &filter, &opts, on_count, n);
    bson_destroy(&filter);
    bson_destroy(&opts);
    return rc;
}

/* A removed member sees a group as it was at left_seq: last_seq and last_item move back. */
static int cut_at(st_ctx_t *ctx, json_t *o, long long left)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t *doc = NULL;
    BSON_APPEND_UTF8(&filter, "conv", json_string_value(json_object_get(o, "conv")));
    BSON_APPEND_INT64(&filter, "seq", left);
    int rc = pl_mongo_find_one(ctx->mongo, "messages", &filter, NULL, &doc);
    bson_destroy(&filter);
    json_object_set_new(o, "last_seq", json_integer(left));
    json_object_del(o, "last_item");
    if (rc == PL_OK) {
        pl_msg_t m;
        if (st_msg_from_bson(doc, &m) == PL_OK) {
            char when[32];
            pl_iso8601_ms(m.ts_ms, when);
            json_object_set_new(o, "last_timestamp", json_string(when));
            json_object_set_new(o, "_ts", json_integer(m.ts_ms));
            json_object_set_new(o, "last_item",
                                json_pack("{s:I,s:s,s:s,s:s%,s:s}", "seq", (json_int_t)m.seq,
                                          "sender", m.sender, "kind", m.kind, "content", m.content,
                                          m.content_len < 160 ? m.content_len : 160, "timestamp",
                                          when));
            pl_msg_clear(&m);
        }
        bson_destroy(doc);
    }
    return rc == PL_ERR_NOTFOUND ? PL_OK : rc;
}

/* Adds the user's groups to list, each within its window. */
static int add_groups(st_ctx_t *ctx, const char *me, json_t *list)
{
    struct windows ws = {0};
    int rc = user_groups(ctx, me, &ws);
    for (size_t i = 0; i < ws.n && rc == PL_OK; i++) {
        bson_t *doc = NULL;
        rc = pl_mongo_find_id(ctx->mongo, "conversations", ws.w[i].conv, &doc);
        if (rc == PL_ERR_NOTFOUND) {
            rc = PL_OK; /* its first item is being written */
            continue;
        }
        json_t *o = rc == PL_OK ? conv_entry(doc) : NULL;
        bson_destroy(doc);
        if (o == NULL) {
            continue;
        }
        long long joined, left;
        rc = group_window(ctx, ws.w[i].conv, me, &joined, &left, &ws.w[i].read);
        rc = rc == PL_ERR_NOTFOUND ? PL_OK : rc;
        json_object_set_new(o, "read_seq", json_integer(ws.w[i].read));
        json_object_set_new(
            o, "_from",
            json_integer(ws.w[i].read > ws.w[i].joined - 1 ? ws.w[i].read : ws.w[i].joined - 1));
        if (ws.w[i].left > 0) {
            json_object_set_new(o, "left_seq", json_integer(ws.w[i].left));
            if (json_integer_value(json_object_get(o, "last_seq")) > ws.w[i].left) {
                rc = cut_at(ctx, o, ws.w[i].left);
            }
        }
        json_array_append_new(list, o);
    }
    free(ws.w);
    return rc;
}

static int by_time_desc(const void *a, const void *b)
{
    json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "_ts"));
    json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "_ts"));
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The user's read cursor in a 1:1 conversation or its own stream: the `members` document
 * "<conv>|<user>" that parley-store's cursor writer keeps (0 before any read). */
static int own_cursor(st_ctx_t *ctx, const char *conv, const char *user, long long *read)
{
    char id[2 * PL_CONV_ID_LEN];
    bson_t *doc = NULL;
    bson_iter_t it;
    *read = 0;
    snprintf(id, sizeof(id), "%s|%.*s", conv, PL_USERNAME_MAX, user);
    int rc = pl_mongo_find_id(ctx->mongo, ST_MEMBERS, id, &doc);
    if (rc == PL_OK && bson_iter_init_find(&it, doc, "read_seq") && BSON_ITER_HOLDS_NUMBER(&it)) {
        *read = bson_iter_as_int64(&it);
    }
    bson_destroy(doc);
    return rc == PL_ERR_NOTFOUND ? PL_OK : rc;
}

/* Sorts list newest first, keeps limit entries, and fills read_seq and unread. */
static int finish_list(st_ctx_t *ctx, const char *me, json_t *list, long long limit, json_t **out)
{
    size_t n = json_array_size(list);
    json_t **v = calloc(n ? n : 1, sizeof(*v));
    if (v == NULL) {
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        v[i] = json_array_get(list, i);
    }
    qsort(v, n, sizeof(*v), by_time_desc);
    *out = json_array();
    int rc = PL_OK;
    for (size_t i = 0; i < n && (long long)i < limit && rc == PL_OK; i++) {
        json_t *o = v[i];
        const char *conv = json_string_value(json_object_get(o, "conv"));
        long long from = json_integer_value(json_object_get(o, "_from"));
        long unread = 0;
        if (json_object_get(o, "read_seq") == NULL) {
            long long read = 0;
            rc = own_cursor(ctx, conv, me, &read);
            json_object_set_new(o, "read_seq", json_integer(read));
            from = read > from ? read : from;
        }
        if (pl_conv_kind(conv) != 'u') {
            rc = count_unread(ctx, conv, me, from,
                              json_integer_value(json_object_get(o, "last_seq")), &unread);
        }
        json_object_set_new(o, "unread", json_integer(unread));
        json_object_del(o, "_ts");
        json_object_del(o, "_from");
        json_array_append(*out, o);
    }
    free(v);
    return rc;
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
    struct collect col = {json_array()};
    int rc = pl_mongo_find(ctx->mongo, "conversations", &filter, &opts, on_conv, &col);
    bson_destroy(&filter);
    bson_destroy(&opts);
    json_t *out = NULL;
    if (rc == PL_OK) {
        rc = add_groups(ctx, c.sub, col.arr);
    }
    if (rc == PL_OK) {
        rc = finish_list(ctx, c.sub, col.arr, limit, &out);
    }
    json_decref(col.arr);
    if (rc != PL_OK) {
        json_decref(out);
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_http_reply(resp, 200, json_pack("{s:o}", "conversations", out));
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
    /* /v1/conversations/<conv>/messages or /receipts */
    const char *p = pl_http_path(req) + strlen("/v1/conversations/");
    const char *slash = strchr(p, '/');
    if (slash == NULL || (strcmp(slash, "/messages") != 0 && strcmp(slash, "/receipts") != 0) ||
        (size_t)(slash - p) >= sizeof(conv)) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return;
    }
    memcpy(conv, p, (size_t)(slash - p));
    conv[slash - p] = '\0';
    if (strcmp(slash, "/receipts") == 0) {
        st_receipts_reply(ctx, req, resp, conv, c.sub);
        return;
    }
    long long lo = 0, hi = 0; /* the caller's window in a group: (lo, hi], hi 0 = open */
    if (pl_conv_kind(conv) == 'g') {
        long long joined = 0, left = 0;
        int rc = group_window(ctx, conv, c.sub, &joined, &left, NULL);
        if (rc == PL_ERR_NOTFOUND) {
            /* The same answer whether the group exists or not: non-members learn nothing. */
            pl_http_fail(resp, PL_ERR_FORBIDDEN, "you are not a member of this conversation");
            return;
        }
        if (rc != PL_OK) {
            pl_http_fail_dep(resp, rc);
            return;
        }
        lo = joined - 1;
        hi = left;
    } else if (!st_conv_parse(conv, a, b)) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such conversation");
        return;
    } else if (strcmp(c.sub, a) != 0 && strcmp(c.sub, b) != 0) {
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
    after = after > lo ? after : lo;
    if (hi > 0 && (before == 0 || before > hi + 1)) {
        before = hi + 1;
    }
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
    bson_t any, one, two, sort;
    BSON_APPEND_ARRAY_BEGIN(&filter, "$or", &any);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "0", &one);
    BSON_APPEND_UTF8(&one, "sender", c.sub);
    bson_append_document_end(&any, &one);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "1", &two);
    BSON_APPEND_UTF8(&two, "receiver", c.sub);
    bson_append_document_end(&any, &two);
    struct windows ws = {0};
    int rc = user_groups(ctx, c.sub, &ws);
    if (rc != PL_OK) {
        free(ws.w);
        bson_destroy(&filter);
        bson_destroy(&opts);
        pl_http_fail_dep(resp, rc);
        return;
    }
    for (size_t i = 0; i < ws.n; i++) {
        /* A group's items within the caller's window (the seed's receiver is the group). */
        char key[24];
        bson_t g, range;
        snprintf(key, sizeof(key), "%zu", i + 2);
        BSON_APPEND_DOCUMENT_BEGIN(&any, key, &g);
        BSON_APPEND_UTF8(&g, "conv", ws.w[i].conv);
        BSON_APPEND_DOCUMENT_BEGIN(&g, "seq", &range);
        BSON_APPEND_INT64(&range, "$gte", ws.w[i].joined);
        if (ws.w[i].left > 0) {
            BSON_APPEND_INT64(&range, "$lte", ws.w[i].left);
        }
        bson_append_document_end(&g, &range);
        bson_append_document_end(&any, &g);
    }
    free(ws.w);
    bson_append_array_end(&filter, &any);
    /* The seed's recent messages: a user's own stream (u:) holds no messages. */
    text_only(&filter);
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
