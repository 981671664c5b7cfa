/*
 * The store's documents in MongoDB (see st_mongo.h). Lookups are equality on _id wherever
 * possible: it is the one query shape every MongoDB-compatible server answers from an index
 * (FerretDB on SQLite scans for most others).
 */
#include "st_mongo.h"
#include "parley/err.h"
#include "parley/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MESSAGES      "messages"
#define CONVERSATIONS "conversations"
#define INTENTS       "store_intents"

/* A system item's event document as JSON, owned by m (m->root). */
static void event_from_bson(bson_iter_t *it, pl_msg_t *m)
{
    uint32_t len = 0;
    const uint8_t *data = NULL;
    bson_t sub;
    bson_iter_document(it, &len, &data);
    if (!bson_init_static(&sub, data, len)) {
        return;
    }
    size_t jlen = 0;
    char *text = bson_as_relaxed_extended_json(&sub, &jlen);
    json_t *ev = text ? json_loadb(text, jlen, 0, NULL) : NULL;
    bson_free(text);
    if (json_is_object(ev)) {
        json_decref(m->root);
        m->root = ev;
        m->event = ev;
    } else {
        json_decref(ev);
    }
}

int st_msg_from_bson(const bson_t *doc, pl_msg_t *m)
{
    bson_iter_t it;
    memset(m, 0, sizeof(*m));
    if (!bson_iter_init(&it, doc)) {
        return PL_ERR_INVAL;
    }
    int have = 0;
    while (bson_iter_next(&it)) {
        const char *k = bson_iter_key(&it);
        uint32_t len = 0;
        if (BSON_ITER_HOLDS_UTF8(&it)) {
            const char *v = bson_iter_utf8(&it, &len);
            if (strcmp(k, "_id") == 0) {
                snprintf(m->msg_id, sizeof(m->msg_id), "%s", v);
                have |= 1;
            } else if (strcmp(k, "conv") == 0) {
                snprintf(m->conv, sizeof(m->conv), "%s", v);
            } else if (strcmp(k, "sender") == 0) {
                snprintf(m->sender, sizeof(m->sender), "%s", v);
            } else if (strcmp(k, "receiver") == 0) {
                snprintf(m->receiver, sizeof(m->receiver), "%s", v);
            } else if (strcmp(k, "client_id") == 0) {
                snprintf(m->client_id, sizeof(m->client_id), "%s", v);
            } else if (strcmp(k, "kind") == 0) {
                snprintf(m->kind, sizeof(m->kind), "%s", v);
            } else if (strcmp(k, "content") == 0) {
                m->content = v;
                m->content_len = len;
                have |= 2;
            }
        } else if (strcmp(k, "timestamp") == 0 && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            m->ts_ms = bson_iter_date_time(&it);
        } else if (strcmp(k, "seq") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
            m->seq = bson_iter_as_int64(&it);
            have |= 4;
        } else if (strcmp(k, "event") == 0 && BSON_ITER_HOLDS_DOCUMENT(&it)) {
            event_from_bson(&it, m);
        } else if (strcmp(k, "target_seq") == 0 && BSON_ITER_HOLDS_NUMBER(&it)) {
            m->target_seq = bson_iter_as_int64(&it);
        } else if (strcmp(k, "edited_at") == 0 && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            m->edited_at_ms = bson_iter_date_time(&it);
        } else if (strcmp(k, "recalled") == 0 && BSON_ITER_HOLDS_BOOL(&it)) {
            m->recalled = bson_iter_bool(&it);
        }
    }
    if (m->kind[0] == '\0') {
        memcpy(m->kind, PL_KIND_TEXT, sizeof(PL_KIND_TEXT)); /* stored before kinds existed */
    }
    if (have != 7) {
        pl_msg_clear(m);
        return PL_ERR_INVAL;
    }
    return PL_OK;
}

/* The message document: the seed's schema first (sender, receiver, content, timestamp). */
static bson_t *msg_doc(const pl_msg_t *m)
{
    bson_t *d = bson_new();
    BSON_APPEND_UTF8(d, "_id", m->msg_id);
    BSON_APPEND_UTF8(d, "sender", m->sender);
    BSON_APPEND_UTF8(d, "receiver", m->receiver);
    bson_append_utf8(d, "content", -1, m->content, (int)m->content_len);
    BSON_APPEND_DATE_TIME(d, "timestamp", m->ts_ms);
    BSON_APPEND_UTF8(d, "conv", m->conv);
    BSON_APPEND_INT64(d, "seq", m->seq);
    BSON_APPEND_UTF8(d, "client_id", m->client_id);
    BSON_APPEND_UTF8(d, "kind", m->kind[0] ? m->kind : PL_KIND_TEXT);
    if (m->target_seq > 0) {
        BSON_APPEND_INT64(d, "target_seq", m->target_seq);
    }
    if (m->event != NULL) {
        /* Events are small objects made by parley-auth: JSON → BSON once, at the write. */
        char *text = json_dumps(m->event, JSON_COMPACT);
        bson_t *ev = text ? bson_new_from_json((const uint8_t *)text, -1, NULL) : NULL;
        if (ev != NULL) {
            BSON_APPEND_DOCUMENT(d, "event", ev);
        }
        bson_destroy(ev);
        free(text);
    }
    return d;
}

static int db_find_msg(void *ud, const char *msg_id, long long *seq, long long *ts_ms)
{
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(ud, MESSAGES, msg_id, &doc);
    if (rc == PL_OK) {
        pl_msg_t found;
        rc = st_msg_from_bson(doc, &found) == PL_OK ? PL_OK : PL_ERR_INTERNAL;
        *seq = found.seq;
        *ts_ms = found.ts_ms;
        pl_msg_clear(&found);
        bson_destroy(doc);
    }
    return rc;
}

struct found_ctx {
    st_found_fn fn;
    void *arg;
};

static int on_found(void *ud, const bson_t *doc)
{
    struct found_ctx *f = ud;
    pl_msg_t m;
    if (st_msg_from_bson(doc, &m) == PL_OK) {
        f->fn(f->arg, m.msg_id, m.seq, m.ts_ms);
        pl_msg_clear(&m);
    }
    return 1;
}

static int db_find_msgs(void *ud, const char *const *ids, size_t n, st_found_fn fn, void *arg)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t id, in;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &id);
    BSON_APPEND_ARRAY_BEGIN(&id, "$in", &in);
    for (size_t i = 0; i < n; i++) {
        char key[24];
        snprintf(key, sizeof(key), "%zu", i);
        BSON_APPEND_UTF8(&in, key, ids[i]);
    }
    bson_append_array_end(&id, &in);
    bson_append_document_end(&filter, &id);
    struct found_ctx f = {fn, arg};
    int rc = pl_mongo_find(ud, MESSAGES, &filter, NULL, on_found, &f);
    bson_destroy(&filter);
    return rc;
}

static int db_seq_taken(void *ud, const char *conv, long long seq, int *taken)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t proj;
    bson_t *doc = NULL;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    BSON_APPEND_INT64(&filter, "seq", seq);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "_id", 1);
    bson_append_document_end(&opts, &proj);
    int rc = pl_mongo_find_one(ud, MESSAGES, &filter, &opts, &doc);
    bson_destroy(&filter);
    bson_destroy(&opts);
    bson_destroy(doc);
    *taken = rc == PL_OK;
    return rc == PL_ERR_NOTFOUND ? PL_OK : rc;
}

static int db_conv_hint(void *ud, const char *conv, long long *last_seq, char *last_msg_id)
{
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(ud, CONVERSATIONS, conv, &doc);
    *last_seq = 0;
    last_msg_id[0] = '\0';
    if (rc == PL_OK) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, doc, "last_seq") && BSON_ITER_HOLDS_NUMBER(&it)) {
            *last_seq = bson_iter_as_int64(&it);
        }
        if (bson_iter_init_find(&it, doc, "last_msg_id") && BSON_ITER_HOLDS_UTF8(&it)) {
            snprintf(last_msg_id, PL_MSG_ID_LEN, "%s", bson_iter_utf8(&it, NULL));
        }
        bson_destroy(doc);
    }
    return rc;
}

static int db_insert(void *ud, const pl_msg_t *m)
{
    bson_t *doc = msg_doc(m);
    int rc = pl_mongo_insert_one(ud, MESSAGES, doc);
    bson_destroy(doc);
    return rc;
}

static int db_insert_many(void *ud, const pl_msg_t *const *ms, size_t n, size_t *stored)
{
    bson_t **docs = calloc(n ? n : 1, sizeof(*docs));
    if (docs == NULL) {
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        docs[i] = msg_doc(ms[i]);
    }
    *stored = 0;
    int rc = pl_mongo_insert_many(ud, MESSAGES, docs, n, stored);
    for (size_t i = 0; i < n; i++) {
        bson_destroy(docs[i]);
    }
    free(docs);
    return rc;
}

static int db_delete_msg(void *ud, const char *msg_id)
{
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "_id", msg_id);
    int rc = pl_mongo_delete_one(ud, MESSAGES, &filter);
    bson_destroy(&filter);
    return rc;
}

static int db_read_intent(void *ud, int partition, long long *end)
{
    char id[PL_KEY_LEN];
    bson_t *doc = NULL;
    pl_key_intent(id, partition);
    int rc = pl_mongo_find_id(ud, INTENTS, id, &doc);
    *end = -1;
    if (rc == PL_OK) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, doc, "end") && BSON_ITER_HOLDS_NUMBER(&it)) {
            *end = bson_iter_as_int64(&it);
        }
        bson_destroy(doc);
    }
    return rc == PL_ERR_NOTFOUND ? PL_OK : rc;
}

/* Fills the filter and update of upsert k of a bulk. */
typedef void (*fill_fn)(const void *arg, size_t k, bson_t *filter, bson_t *upd);

/* n upserts into coll in one bulk write, each built by fill. */
static int upsert_all(pl_mongo_t *mg, const char *coll, size_t n, fill_fn fill, const void *arg)
{
    bson_t **filters = calloc(n ? n : 1, sizeof(*filters));
    bson_t **upds = calloc(n ? n : 1, sizeof(*upds));
    int rc = filters != NULL && upds != NULL ? PL_OK : PL_ERR_NOMEM;
    for (size_t k = 0; k < n && rc == PL_OK; k++) {
        filters[k] = bson_new();
        upds[k] = bson_new();
        fill(arg, k, filters[k], upds[k]);
    }
    if (rc == PL_OK) {
        rc = pl_mongo_upsert_each(mg, coll, filters, upds, n);
    }
    for (size_t k = 0; k < n && filters != NULL && upds != NULL; k++) {
        bson_destroy(filters[k]);
        bson_destroy(upds[k]);
    }
    free(filters);
    free(upds);
    return rc;
}

struct intents {
    const int *partitions;
    const long long *ends;
};

static void fill_intent(const void *arg, size_t k, bson_t *filter, bson_t *upd)
{
    const struct intents *in = arg;
    char id[PL_KEY_LEN];
    bson_t set;
    pl_key_intent(id, in->partitions[k]);
    BSON_APPEND_UTF8(filter, "_id", id);
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
    BSON_APPEND_INT64(&set, "end", in->ends[k]);
    bson_append_document_end(upd, &set);
}

static int db_write_intents(void *ud, const int *partitions, const long long *ends, size_t n)
{
    struct intents in = {partitions, ends};
    return upsert_all(ud, INTENTS, n, fill_intent, &in);
}

void st_mongo_db(pl_mongo_t *m, st_db_t *out)
{
    *out = (st_db_t){
        .ud = m,
        .find_msg = db_find_msg,
        .find_msgs = db_find_msgs,
        .seq_taken = db_seq_taken,
        .conv_hint = db_conv_hint,
        .insert = db_insert,
        .insert_many = db_insert_many,
        .delete_msg = db_delete_msg,
        .read_intent = db_read_intent,
        .write_intents = db_write_intents,
    };
}

/* How many bytes of content the conversation document keeps as its last item's preview. */
#define PREVIEW_MAX 160

/* The length of the longest prefix of p[0..len) that is at most max bytes and does not cut
 * a UTF-8 sequence. */
static size_t utf8_prefix(const char *p, size_t len, size_t max)
{
    if (len <= max) {
        return len;
    }
    size_t n = max;
    while (n > 0 && ((unsigned char)p[n] & 0xc0) == 0x80) {
        n--;
    }
    return n;
}

/* Fills filter and upd with the upsert of the conversation document of tops[k]. */
static void fill_conversation(const void *arg, size_t k, bson_t *filter, bson_t *upd)
{
    const pl_msg_t *m = ((const pl_msg_t *const *)arg)[k];
    bson_t set, max, members;
    char kind[2] = {(char)pl_conv_kind(m->conv), '\0'};
    BSON_APPEND_UTF8(filter, "_id", m->conv);
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
    BSON_APPEND_UTF8(&set, "kind", kind);
    if (kind[0] != 'g') {
        /* A group's members are its members documents (st_group.h), not a list here. */
        const char *a = strcmp(m->sender, m->receiver) <= 0 ? m->sender : m->receiver;
        const char *b = a == m->sender ? m->receiver : m->sender;
        BSON_APPEND_ARRAY_BEGIN(&set, "members", &members);
        BSON_APPEND_UTF8(&members, "0", a);
        if (strcmp(a, b) != 0) {
            BSON_APPEND_UTF8(&members, "1", b); /* u:<user> has one member */
        }
        bson_append_array_end(&set, &members);
    }
    /* The message at last_seq, for the sequence allocator's check by _id. Replays can leave
     * it behind last_seq; the check then fails and falls back to probing. */
    BSON_APPEND_UTF8(&set, "last_msg_id", m->msg_id);
    /* The conversation list's last_item, without reading the message again. */
    BSON_APPEND_UTF8(&set, "last_sender", m->sender);
    BSON_APPEND_UTF8(&set, "last_kind", m->kind[0] ? m->kind : PL_KIND_TEXT);
    bson_append_utf8(&set, "last_preview", -1, m->content,
                     (int)utf8_prefix(m->content, m->content_len, PREVIEW_MAX));
    bson_append_document_end(upd, &set);
    /* $max: a replayed or reordered batch never moves last_seq backwards. */
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$max", &max);
    BSON_APPEND_INT64(&max, "last_seq", m->seq);
    BSON_APPEND_DATE_TIME(&max, "last_timestamp", m->ts_ms);
    bson_append_document_end(upd, &max);
}

int st_mongo_upsert_conversations(pl_mongo_t *mg, const pl_msg_t *const *tops, size_t n)
{
    /* Each upsert is idempotent, so a retry after a partial bulk is harmless. */
    return upsert_all(mg, CONVERSATIONS, n, fill_conversation, tops);
}

static int make_index(pl_mongo_t *mg, const char *coll, const char *name, int unique,
                      const char *k1, int d1, const char *k2, int d2)
{
    bson_t keys = BSON_INITIALIZER;
    BSON_APPEND_INT32(&keys, k1, d1);
    if (k2 != NULL) {
        BSON_APPEND_INT32(&keys, k2, d2);
    }
    int rc = pl_mongo_create_index(mg, coll, &keys, name, unique);
    bson_destroy(&keys);
    return rc;
}

int st_mongo_ensure_indexes(pl_mongo_t *mg)
{
    int rc = make_index(mg, MESSAGES, "conv_1_seq_1", 1, "conv", 1, "seq", 1);
    if (rc == PL_OK) {
        rc = make_index(mg, MESSAGES, "sender_1_client_id_1", 1, "sender", 1, "client_id", 1);
    }
    if (rc == PL_OK) {
        rc = make_index(mg, MESSAGES, "sender_1_timestamp_-1", 0, "sender", 1, "timestamp", -1);
    }
    if (rc == PL_OK) {
        rc = make_index(mg, MESSAGES, "receiver_1_timestamp_-1", 0, "receiver", 1, "timestamp", -1);
    }
    if (rc == PL_OK) {
        rc = make_index(mg, CONVERSATIONS, "members_1_last_timestamp_-1", 0, "members", 1,
                        "last_timestamp", -1);
    }
    return rc;
}
