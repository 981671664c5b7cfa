/*
 * The single writer of conversation sequences. One Kafka partition has one consumer, and a
 * conversation's records share a partition (key = conversation id), so only this thread
 * numbers a conversation while it owns the partition. During a rebalance two instances may
 * briefly overlap; the unique index on {conv, seq} fences them: a refused number means
 * someone else took it, so the cached sequence is reloaded and the message renumbered.
 */
#include "store.h"
#include "parley/err.h"
#include "parley/log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SEQCACHE_MAX 100000

struct seq_entry {
    char conv[72];
    long long last;
    struct seq_entry *next;
};

#define SEQ_BUCKETS 4096

struct st_seqcache_s {
    struct seq_entry *b[SEQ_BUCKETS];
    size_t n;
};

st_seqcache_t *st_seqcache_new(void)
{
    return calloc(1, sizeof(st_seqcache_t));
}

static void seqcache_clear(st_seqcache_t *c)
{
    for (size_t i = 0; i < SEQ_BUCKETS; i++) {
        for (struct seq_entry *e = c->b[i], *next; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
        c->b[i] = NULL;
    }
    c->n = 0;
}

void st_seqcache_free(st_seqcache_t **pc)
{
    if (pc == NULL || *pc == NULL) {
        return;
    }
    seqcache_clear(*pc);
    free(*pc);
    *pc = NULL;
}

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    while (*s) {
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    }
    return h % SEQ_BUCKETS;
}

static struct seq_entry *seq_find(st_seqcache_t *c, const char *conv)
{
    for (struct seq_entry *e = c->b[hash(conv)]; e != NULL; e = e->next) {
        if (strcmp(e->conv, conv) == 0) {
            return e;
        }
    }
    return NULL;
}

static void seq_forget(st_seqcache_t *c, const char *conv)
{
    struct seq_entry **pp = &c->b[hash(conv)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->conv, conv) == 0) {
            struct seq_entry *e = *pp;
            *pp = e->next;
            free(e);
            c->n--;
            return;
        }
    }
}

/* The highest stored seq of conv, read from MongoDB. */
static int load_last_seq(st_ctx_t *ctx, const char *conv, long long *last)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t sort, proj;
    bson_t *doc = NULL;
    BSON_APPEND_UTF8(&filter, "conv", conv);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "sort", &sort);
    BSON_APPEND_INT32(&sort, "seq", -1);
    bson_append_document_end(&opts, &sort);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "seq", 1);
    bson_append_document_end(&opts, &proj);
    int rc = pl_mongo_find_one(ctx->mongo, "messages", &filter, &opts, &doc);
    *last = 0;
    if (rc == PL_OK) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, doc, "seq") && BSON_ITER_HOLDS_NUMBER(&it)) {
            *last = bson_iter_as_int64(&it);
        }
        bson_destroy(doc);
    } else if (rc == PL_ERR_NOTFOUND) {
        rc = PL_OK;
    }
    bson_destroy(&filter);
    bson_destroy(&opts);
    return rc;
}

/* The next seq for conv. seq_commit() advances the cache as numbers are handed out, and
 * seq_forget() drops it when a write fails or is fenced, so the next use reloads it. */
static int seq_next(st_ctx_t *ctx, const char *conv, long long *next)
{
    struct seq_entry *e = seq_find(ctx->seqs, conv);
    if (e == NULL) {
        long long last;
        int rc = load_last_seq(ctx, conv, &last);
        if (rc != PL_OK) {
            return rc;
        }
        if (ctx->seqs->n >= SEQCACHE_MAX) {
            seqcache_clear(ctx->seqs); /* Bounded: reloading costs one query per conversation. */
        }
        e = calloc(1, sizeof(*e));
        if (e == NULL) {
            return PL_ERR_NOMEM;
        }
        snprintf(e->conv, sizeof(e->conv), "%s", conv);
        e->last = last;
        size_t h = hash(conv);
        e->next = ctx->seqs->b[h];
        ctx->seqs->b[h] = e;
        ctx->seqs->n++;
    }
    *next = e->last + 1;
    return PL_OK;
}

static void seq_commit(st_ctx_t *ctx, const char *conv, long long seq)
{
    struct seq_entry *e = seq_find(ctx->seqs, conv);
    if (e != NULL && seq > e->last) {
        e->last = seq;
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
        }
    }
    return have == 7 ? PL_OK : PL_ERR_INVAL;
}

static bson_t *msg_doc(const pl_msg_t *m)
{
    bson_t *d = bson_new();
    BSON_APPEND_UTF8(d, "_id", m->msg_id);
    /* The seed's schema first: sender, receiver, content, timestamp. */
    BSON_APPEND_UTF8(d, "sender", m->sender);
    BSON_APPEND_UTF8(d, "receiver", m->receiver);
    bson_append_utf8(d, "content", -1, m->content, (int)m->content_len);
    BSON_APPEND_DATE_TIME(d, "timestamp", m->ts_ms);
    BSON_APPEND_UTF8(d, "conv", m->conv);
    BSON_APPEND_INT64(d, "seq", m->seq);
    BSON_APPEND_UTF8(d, "client_id", m->client_id);
    return d;
}

struct existing {
    pl_msg_t *msgs;
    size_t n;
    int *known;
};

static int on_existing(void *ud, const bson_t *doc)
{
    struct existing *ex = ud;
    pl_msg_t found;
    if (st_msg_from_bson(doc, &found) != PL_OK) {
        return 1;
    }
    for (size_t i = 0; i < ex->n; i++) {
        if (!ex->known[i] && strcmp(ex->msgs[i].msg_id, found.msg_id) == 0) {
            /* A replay keeps the seq and timestamp it was stored with. */
            ex->msgs[i].seq = found.seq;
            ex->msgs[i].ts_ms = found.ts_ms;
            ex->known[i] = 1;
        }
    }
    return 1;
}

/* Marks the messages whose msg_id is already stored, and takes their stored seq. */
static int find_existing(st_ctx_t *ctx, pl_msg_t *msgs, size_t n, int *known)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t id, in;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &id);
    BSON_APPEND_ARRAY_BEGIN(&id, "$in", &in);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!known[i]) {
            char idx[16];
            snprintf(idx, sizeof(idx), "%zu", k++);
            BSON_APPEND_UTF8(&in, idx, msgs[i].msg_id);
        }
    }
    bson_append_array_end(&id, &in);
    bson_append_document_end(&filter, &id);
    struct existing ex = {msgs, n, known};
    int rc = k ? pl_mongo_find(ctx->mongo, "messages", &filter, NULL, on_existing, &ex) : PL_OK;
    bson_destroy(&filter);
    return rc;
}

static int upsert_conversation(st_ctx_t *ctx, const pl_msg_t *m)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t set, max, members;
    const char *a = strcmp(m->sender, m->receiver) <= 0 ? m->sender : m->receiver;
    const char *b = a == m->sender ? m->receiver : m->sender;
    BSON_APPEND_UTF8(&filter, "_id", m->conv);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    BSON_APPEND_ARRAY_BEGIN(&set, "members", &members);
    BSON_APPEND_UTF8(&members, "0", a);
    BSON_APPEND_UTF8(&members, "1", b);
    bson_append_array_end(&set, &members);
    bson_append_document_end(&upd, &set);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$max", &max);
    BSON_APPEND_INT64(&max, "last_seq", m->seq);
    BSON_APPEND_DATE_TIME(&max, "last_timestamp", m->ts_ms);
    bson_append_document_end(&upd, &max);
    int rc = pl_mongo_update_one(ctx->mongo, "conversations", &filter, &upd, 1, NULL);
    bson_destroy(&filter);
    bson_destroy(&upd);
    return rc;
}

/* Writes the not-yet-known messages; on a fenced seq, reloads and tries again. */
static int write_new(st_ctx_t *ctx, pl_msg_t *msgs, size_t n, int *known)
{
    bson_t **docs = calloc(n, sizeof(*docs));
    size_t *which = calloc(n, sizeof(*which));
    unsigned char *dup = calloc(n, 1);
    int rc = PL_OK;
    if (docs == NULL || which == NULL || dup == NULL) {
        rc = PL_ERR_NOMEM;
        goto out;
    }
    for (int attempt = 0; attempt < 20; attempt++) {
        size_t k = 0;
        for (size_t i = 0; i < n && rc == PL_OK; i++) {
            if (known[i]) {
                continue;
            }
            /* Several new messages of one conversation in a batch take consecutive numbers. */
            long long next;
            rc = seq_next(ctx, msgs[i].conv, &next);
            if (rc == PL_OK) {
                msgs[i].seq = next;
                seq_commit(ctx, msgs[i].conv, next);
                docs[k] = msg_doc(&msgs[i]);
                which[k++] = i;
            }
        }
        if (rc != PL_OK || k == 0) {
            break;
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        rc = pl_mongo_insert_many(ctx->mongo, "messages", docs, k, dup);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        pl_metric_observe(ctx->m_write_seconds, (double)(t1.tv_sec - t0.tv_sec) +
                                                    (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        int conflicts = 0;
        for (size_t j = 0; j < k; j++) {
            bson_destroy(docs[j]);
            docs[j] = NULL;
            if (rc == PL_OK && !dup[j]) {
                known[which[j]] = 1;
            } else if (rc == PL_OK) {
                conflicts++;
            }
        }
        if (rc != PL_OK) {
            /* Nothing is known about this attempt: forget the numbers handed out. */
            for (size_t j = 0; j < k; j++) {
                seq_forget(ctx->seqs, msgs[which[j]].conv);
            }
            break;
        }
        if (conflicts == 0) {
            break;
        }
        /* Refused: either the msg_id was stored meanwhile (a replay racing us) or another
         * writer took the number. Re-read both and go again. */
        pl_metric_add(ctx->m_retries, (uint64_t)conflicts);
        for (size_t j = 0; j < k; j++) {
            if (!known[which[j]]) {
                seq_forget(ctx->seqs, msgs[which[j]].conv);
            }
        }
        rc = find_existing(ctx, msgs, n, known);
    }
out:
    free(docs);
    free(which);
    free(dup);
    return rc;
}

int st_write_batch(st_ctx_t *ctx, const pl_kafka_rec_t *recs, size_t n)
{
    int rc = PL_OK;
    pl_msg_t *msgs = calloc(n ? n : 1, sizeof(*msgs));
    int *known = calloc(n ? n : 1, sizeof(*known));
    int *valid = calloc(n ? n : 1, sizeof(*valid));
    if (msgs == NULL || known == NULL || valid == NULL) {
        rc = PL_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char conv[72];
        if (pl_msg_parse(recs[i].value, recs[i].vlen, &msgs[i]) != PL_OK) {
            /* Only gateways produce here; a malformed record is logged and skipped, never
             * allowed to block the partition. */
            pl_metric_inc(ctx->m_invalid);
            pl_log_error("invalid_record", "partition %d offset %lld is not a message",
                         (int)recs[i].partition, (long long)recs[i].offset);
            known[i] = 1;
            continue;
        }
        pl_conv_id(msgs[i].sender, msgs[i].receiver, conv);
        if (strcmp(conv, msgs[i].conv) != 0) {
            pl_metric_inc(ctx->m_invalid);
            pl_log_error("invalid_record", "conversation id does not match its members");
            known[i] = 1;
            pl_msg_clear(&msgs[i]);
            continue;
        }
        valid[i] = 1;
    }
    for (int attempt = 0; !atomic_load(&ctx->stopping); attempt++) {
        if (attempt > 0) {
            usleep(attempt < 10 ? 100000 * attempt : 1000000);
        }
        rc = find_existing(ctx, msgs, n, known);
        if (rc == PL_OK) {
            for (size_t i = 0; i < n; i++) {
                if (valid[i] && known[i]) {
                    pl_metric_inc(ctx->m_replayed);
                }
            }
            rc = write_new(ctx, msgs, n, known);
        }
        for (size_t i = 0; rc == PL_OK && i < n; i++) {
            if (valid[i]) {
                rc = upsert_conversation(ctx, &msgs[i]);
            }
        }
        if (rc != PL_OK) {
            pl_log_warn("store_retry", "batch of %zu not stored yet: %s", n, pl_strerror(rc));
            continue;
        }
        /* Stored: now announce every message of the batch, replays included, so a message
         * whose announcement was lost to a crash is announced again. */
        atomic_store(&ctx->batch_failed, 0);
        for (size_t i = 0; rc == PL_OK && i < n; i++) {
            if (!valid[i]) {
                continue;
            }
            char *rec = pl_msg_record(&msgs[i]);
            rc = rec ? pl_kafka_produce(ctx->producer, "parley.committed", msgs[i].conv,
                                        strlen(msgs[i].conv), rec, strlen(rec), NULL)
                     : PL_ERR_NOMEM;
            free(rec);
            while (rc == PL_ERR_UNAVAIL && !atomic_load(&ctx->stopping)) {
                pl_kafka_poll(ctx->producer, 100); /* local queue full: let it drain */
                char *again = pl_msg_record(&msgs[i]);
                rc = pl_kafka_produce(ctx->producer, "parley.committed", msgs[i].conv,
                                      strlen(msgs[i].conv), again, strlen(again), NULL);
                free(again);
            }
        }
        if (rc == PL_OK && pl_kafka_flush(ctx->producer, 15000) == PL_OK &&
            !atomic_load(&ctx->batch_failed)) {
            for (size_t i = 0; i < n; i++) {
                if (valid[i]) {
                    pl_metric_inc(ctx->m_stored);
                }
            }
            pl_metric_observe(ctx->m_batch, (double)n);
            break;
        }
        rc = PL_ERR_UNAVAIL;
        pl_log_warn("store_retry", "parley.committed did not acknowledge the batch; retrying");
    }
out:
    for (size_t i = 0; msgs != NULL && i < n; i++) {
        pl_msg_clear(&msgs[i]);
    }
    free(msgs);
    free(known);
    free(valid);
    return atomic_load(&ctx->stopping) && rc != PL_OK ? PL_ERR_UNAVAIL : rc;
}

static int make_index(st_ctx_t *ctx, const char *coll, const char *name, int unique, const char *k1,
                      int d1, const char *k2, int d2)
{
    bson_t keys = BSON_INITIALIZER;
    BSON_APPEND_INT32(&keys, k1, d1);
    if (k2 != NULL) {
        BSON_APPEND_INT32(&keys, k2, d2);
    }
    int rc = pl_mongo_create_index(ctx->mongo, coll, &keys, name, unique);
    bson_destroy(&keys);
    return rc;
}

int st_ensure_indexes(st_ctx_t *ctx)
{
    if (atomic_load(&ctx->indexes_ready)) {
        return PL_OK;
    }
    int rc = make_index(ctx, "messages", "conv_1_seq_1", 1, "conv", 1, "seq", 1);
    if (rc == PL_OK) {
        rc = make_index(ctx, "messages", "sender_1_client_id_1", 1, "sender", 1, "client_id", 1);
    }
    if (rc == PL_OK) {
        rc = make_index(ctx, "messages", "sender_1_timestamp_-1", 0, "sender", 1, "timestamp", -1);
    }
    if (rc == PL_OK) {
        rc = make_index(ctx, "messages", "receiver_1_timestamp_-1", 0, "receiver", 1, "timestamp",
                        -1);
    }
    if (rc == PL_OK) {
        rc = make_index(ctx, "conversations", "members_1_last_timestamp_-1", 0, "members", 1,
                        "last_timestamp", -1);
    }
    if (rc == PL_OK) {
        atomic_store(&ctx->indexes_ready, 1);
    }
    return rc;
}
