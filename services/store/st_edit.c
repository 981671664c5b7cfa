/*
 * Edits and recalls (see st_edit.h). The target is found by {conv, seq}: on MongoDB the unique
 * {conv:1, seq:1} index answers it; FerretDB on SQLite scans `messages` for it (edits are
 * rare next to sends; the database issue takes on query shapes).
 */
#include "st_edit.h"
#include "parley/err.h"
#include "parley/proto.h"
#include "st_mongo.h"

#include <stdio.h>
#include <string.h>

#define MESSAGES "messages"

static int is_change(const st_rec_t *r)
{
    return r->first &&
           (strcmp(r->m.kind, PL_KIND_EDIT) == 0 || strcmp(r->m.kind, PL_KIND_RECALL) == 0);
}

/* The target of r, or PL_ERR_NOTFOUND. */
static int find_target(pl_mongo_t *mg, const st_rec_t *r, pl_msg_t *t)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t *doc = NULL;
    BSON_APPEND_UTF8(&filter, "conv", r->m.conv);
    BSON_APPEND_INT64(&filter, "seq", r->m.target_seq);
    int rc = pl_mongo_find_one(mg, MESSAGES, &filter, NULL, &doc);
    bson_destroy(&filter);
    if (rc == PL_OK) {
        rc = st_msg_from_bson(doc, t) == PL_OK ? PL_OK : PL_ERR_NOTFOUND;
    }
    bson_destroy(doc);
    return rc;
}

/* 1 when r may change t: see st_edit.h. */
static int allowed(const st_edit_cfg_t *cfg, const st_rec_t *r, const pl_msg_t *t)
{
    if (strcmp(t->kind, PL_KIND_TEXT) != 0 || t->recalled) {
        return 0;
    }
    long long age = r->m.ts_ms - t->ts_ms;
    int own = strcmp(t->sender, r->m.sender) == 0;
    if (strcmp(r->m.kind, PL_KIND_EDIT) == 0) {
        return own && age <= cfg->edit_window_ms;
    }
    return (own && age <= cfg->recall_window_ms) || r->by_admin;
}

/* 1 when an earlier record of the batch recalls the same target (an edit after it fails). */
static int recalled_before(const st_rec_t *recs, size_t i)
{
    for (size_t k = 0; k < i; k++) {
        if (is_change(&recs[k]) && !recs[k].refused &&
            strcmp(recs[k].m.kind, PL_KIND_RECALL) == 0 &&
            strcmp(recs[k].m.conv, recs[i].m.conv) == 0 &&
            recs[k].m.target_seq == recs[i].m.target_seq) {
            return 1;
        }
    }
    return 0;
}

int st_edit_check(pl_mongo_t *mg, const st_edit_cfg_t *cfg, st_rec_t *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        st_rec_t *r = &recs[i];
        if (!is_change(r)) {
            continue;
        }
        pl_msg_t t;
        int rc = find_target(mg, r, &t);
        if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
            return rc;
        }
        int ok = rc == PL_OK && allowed(cfg, r, &t) && !recalled_before(recs, i);
        if (rc == PL_OK) {
            snprintf(r->target_id, sizeof(r->target_id), "%s", t.msg_id);
            pl_msg_clear(&t);
        }
        if (ok) {
            continue;
        }
        bson_t *doc = NULL;
        rc = pl_mongo_find_id(mg, MESSAGES, r->m.msg_id, &doc);
        bson_destroy(doc);
        if (rc == PL_ERR_NOTFOUND) {
            r->first = 0;
            r->refused = 1;
            r->refuse_code = PL_ERR_FORBIDDEN;
        } else if (rc != PL_OK) {
            return rc;
        }
        /* stored already: a replay keeps its place (and is applied again) */
    }
    return PL_OK;
}

static int apply_edit(pl_mongo_t *mg, const st_rec_t *r)
{
    bson_t filter = BSON_INITIALIZER, upd = BSON_INITIALIZER;
    bson_t ne, any, a, b, exists, lt, set;
    BSON_APPEND_UTF8(&filter, "_id", r->target_id);
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "recalled", &ne);
    BSON_APPEND_BOOL(&ne, "$ne", true);
    bson_append_document_end(&filter, &ne);
    /* the latest edit by seq wins, whatever order the writes come in */
    BSON_APPEND_ARRAY_BEGIN(&filter, "$or", &any);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "0", &a);
    BSON_APPEND_DOCUMENT_BEGIN(&a, "edit_seq", &exists);
    BSON_APPEND_BOOL(&exists, "$exists", false);
    bson_append_document_end(&a, &exists);
    bson_append_document_end(&any, &a);
    BSON_APPEND_DOCUMENT_BEGIN(&any, "1", &b);
    BSON_APPEND_DOCUMENT_BEGIN(&b, "edit_seq", &lt);
    BSON_APPEND_INT64(&lt, "$lt", r->m.seq);
    bson_append_document_end(&b, &lt);
    bson_append_document_end(&any, &b);
    bson_append_array_end(&filter, &any);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    bson_append_utf8(&set, "content", -1, r->m.content, (int)r->m.content_len);
    BSON_APPEND_DATE_TIME(&set, "edited_at", r->m.ts_ms);
    BSON_APPEND_INT64(&set, "edit_seq", r->m.seq);
    bson_append_document_end(&upd, &set);
    int rc = pl_mongo_update_one(mg, MESSAGES, &filter, &upd, 0, NULL);
    bson_destroy(&filter);
    bson_destroy(&upd);
    return rc;
}

static int apply_recall(pl_mongo_t *mg, const st_rec_t *r)
{
    bson_t filter = BSON_INITIALIZER, upd = BSON_INITIALIZER, set;
    BSON_APPEND_UTF8(&filter, "_id", r->target_id);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    BSON_APPEND_UTF8(&set, "content", "");
    BSON_APPEND_BOOL(&set, "recalled", true);
    BSON_APPEND_DATE_TIME(&set, "recalled_at", r->m.ts_ms);
    bson_append_document_end(&upd, &set);
    int rc = pl_mongo_update_one(mg, MESSAGES, &filter, &upd, 0, NULL);
    bson_destroy(&filter);
    if (rc == PL_OK) {
        /* the edits of a recalled message held its words too */
        bson_t edits = BSON_INITIALIZER;
        BSON_APPEND_UTF8(&edits, "conv", r->m.conv);
        BSON_APPEND_INT64(&edits, "target_seq", r->m.target_seq);
        BSON_APPEND_UTF8(&edits, "kind", PL_KIND_EDIT);
        rc = pl_mongo_update_many(mg, MESSAGES, &edits, &upd, NULL);
        bson_destroy(&edits);
    }
    bson_destroy(&upd);
    return rc;
}

int st_edit_apply(pl_mongo_t *mg, const st_rec_t *recs, size_t n)
{
    int rc = PL_OK;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        const st_rec_t *r = &recs[i];
        if (!is_change(r) || r->target_id[0] == '\0' || r->m.seq <= 0) {
            continue;
        }
        rc = strcmp(r->m.kind, PL_KIND_EDIT) == 0 ? apply_edit(mg, r) : apply_recall(mg, r);
    }
    return rc;
}
