/*
 * GET /v1/conversations/<conv>/receipts?seq=N (DESIGN 7.5): how many of the conversation's
 * current members have read and received its item N, for groups too large for receipts to be
 * pushed to every member. Counted from the `members` documents the cursor writer keeps
 * (st_cursor.c): a member counts when it had joined by N, and has read (received) it when its
 * read_seq (delivered_seq, or read_seq) is at least N. The caller is counted like any member.
 * A scan of the conversation's members: asked for on demand, not on every push.
 */
#include "store.h"
#include "parley/err.h"

#include <stdio.h>
#include <string.h>

struct tally {
    long long seq;
    long members, read, delivered;
};

static long long num(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_NUMBER(&it)
               ? bson_iter_as_int64(&it)
               : 0;
}

static int on_member(void *ud, const bson_t *doc)
{
    struct tally *t = ud;
    long long joined = num(doc, "joined_seq"), left = num(doc, "left_seq");
    long long read = num(doc, "read_seq"), delivered = num(doc, "delivered_seq");
    if (joined > t->seq || left != 0) {
        return 1;
    }
    t->members++;
    t->read += read >= t->seq;
    t->delivered += (delivered >= t->seq || read >= t->seq);
    return 1;
}

/* 1 when user is a current member of conv (a group's members document, or one of the two of
 * a 1:1 conversation); 0 when not; -1 on a database error (*rc). */
static int current_member(st_ctx_t *ctx, const char *conv, const char *user, int *rc)
{
    char a[PL_USERNAME_LEN], b[PL_USERNAME_LEN], id[2 * PL_CONV_ID_LEN];
    *rc = PL_OK;
    if (pl_conv_kind(conv) != 'g') {
        return pl_conv_kind(conv) == 'd' && st_conv_parse(conv, a, b) &&
               (strcmp(user, a) == 0 || strcmp(user, b) == 0);
    }
    bson_t *doc = NULL;
    snprintf(id, sizeof(id), "%s|%.*s", conv, PL_USERNAME_MAX, user);
    *rc = pl_mongo_find_id(ctx->mongo, ST_MEMBERS, id, &doc);
    int member = *rc == PL_OK && num(doc, "joined_seq") > 0 && num(doc, "left_seq") == 0;
    bson_destroy(doc);
    if (*rc == PL_ERR_NOTFOUND) {
        *rc = PL_OK;
    }
    return *rc == PL_OK ? member : -1;
}

void st_receipts_reply(st_ctx_t *ctx, pl_http_req_t *req, pl_http_resp_t *resp, const char *conv,
                       const char *user)
{
    long long seq = st_query_num(pl_http_query(req, "seq"), 0);
    if (seq <= 0) {
        pl_http_fail(resp, PL_ERR_INVAL, "seq must be a positive integer");
        return;
    }
    int rc;
    int member = current_member(ctx, conv, user, &rc);
    if (member < 0) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    if (!member) {
        /* The same answer whether the conversation exists or not. */
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "you are not a member of this conversation");
        return;
    }
    struct tally t = {seq, 0, 0, 0};
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    rc = pl_mongo_find(ctx->mongo, ST_MEMBERS, &filter, NULL, on_member, &t);
    bson_destroy(&filter);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    if (pl_conv_kind(conv) == 'd') {
        t.members = 2; /* a side that never read has no document yet */
    }
    pl_http_reply(resp, 200,
                  json_pack("{s:s,s:I,s:I,s:I,s:I}", "conv", conv, "seq", (json_int_t)seq, "read",
                            (json_int_t)t.read, "delivered", (json_int_t)t.delivered, "members",
                            (json_int_t)t.members));
}
