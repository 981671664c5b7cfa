/*
 * Cursors (see st_cursor.h). The thread holds every record it consumed since the last flush
 * (at most HOLD_MAX); each chunk is announced at once, one receipt per (conv, user, kind) of
 * the chunk with its highest seq (as the reader sent it); the chunk's cursors are merged into a
 * pending table, one entry per (conv, user); every flush_ms the table is written, one update per
 * entry, and only then are the held records' offsets stored. A flush that fails keeps everything
 * and is tried again with a growing backoff; consuming pauses while the hold is full.
 *
 * Who sees a receipt: the reader's other devices always; the other members as st_share.h
 * decides.
 */
#include "st_cursor.h"
#include "parley/consume.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/kafka.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "parley/wire.h"
#include "st_group.h"
#include "st_share.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOLD_MAX      20000
#define CHUNK_MAX     500
#define PENDING_BKTS  4096
#define CONV_CACHE    65536
#define CONTACT_LISTS "contact_lists"

typedef struct pending_s {
    struct pending_s *next;
    char conv[PL_CONV_ID_LEN];
    char user[PL_USERNAME_LEN];
    long long read, delivered;
} pending_t;

/* A conversation's last seq as last read, the bound of its cursors. */
typedef struct conv_s {
    struct conv_s *next;
    char conv[PL_CONV_ID_LEN];
    long long last;
} conv_t;

struct st_cursors_s {
    st_cursors_cfg_t cfg;
    pl_kafka_t *consumer, *producer;
    pl_redis_t *redis; /* the thread's own connection, for policy tokens */
    st_share_t *share;
    pthread_t thread;
    int started;
    atomic_int stop;
    pl_kafka_rec_t *held;
    size_t nheld;
    pending_t *pending[PENDING_BKTS];
    size_t npending;
    int redo; /* a cursor could not be made pending: settle() re-reads the held records */
    conv_t *convs[PENDING_BKTS];
    size_t nconvs;
    pl_metric_t *m_cursors, *m_writes, *m_receipts, *m_invalid, *m_flush_failed;
};

/* ---- the conversations' bounds ---- */

static void convs_forget(st_cursors_t *c)
{
    for (size_t b = 0; b < PENDING_BKTS; b++) {
        while (c->convs[b] != NULL) {
            conv_t *v = c->convs[b];
            c->convs[b] = v->next;
            free(v);
        }
    }
    c->nconvs = 0;
}

/* The highest seq conv has (0: none), read again when seq is past what was known. */
static int conv_last(st_cursors_t *c, const char *conv, long long seq, long long *last)
{
    size_t b = pl_hash_str(conv) % PENDING_BKTS;
    conv_t *v = c->convs[b];
    while (v != NULL && strcmp(v->conv, conv) != 0) {
        v = v->next;
    }
    if (v != NULL && seq <= v->last) {
        *last = v->last;
        return PL_OK;
    }
    bson_t *doc = NULL;
    bson_iter_t it;
    int rc = pl_mongo_find_id(c->cfg.mongo, "conversations", conv, &doc);
    if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
        return rc;
    }
    *last = doc && bson_iter_init_find(&it, doc, "last_seq") && BSON_ITER_HOLDS_NUMBER(&it)
                ? bson_iter_as_int64(&it)
                : 0;
    bson_destroy(doc);
    if (v == NULL) {
        if (c->nconvs >= CONV_CACHE) {
            convs_forget(c);
            b = pl_hash_str(conv) % PENDING_BKTS;
        }
        if ((v = calloc(1, sizeof(*v))) == NULL) {
            return PL_OK;
        }
        snprintf(v->conv, sizeof(v->conv), "%s", conv);
        v->next = c->convs[b];
        c->convs[b] = v;
        c->nconvs++;
    }
    v->last = *last;
    return PL_OK;
}

/* Produces cur's receipt to parley.committed for the router. Best effort: the cursor itself
 * is durable, and a device that missed the push reads read_seq in the conversation list. */
static void announce(st_cursors_t *c, const pl_cursor_t *cur)
{
    int share = 0;
    json_t *except = NULL;
    if (st_share_decide(c->share, cur, &share, &except) != PL_OK) {
        json_decref(except);
        return;
    }
    json_t *o =
        json_pack("{s:s,s:s,s:s,s:s,s:I,s:b,s:{s:s,s:I}}", "type", "receipt", "kind", cur->kind,
                  "conv", cur->conv, "user", cur->user, "seq", (json_int_t)cur->seq, "share", share,
                  "origin", "gateway", cur->origin_gw, "conn", (json_int_t)cur->origin_conn);
    if (o != NULL && json_array_size(except) > 0) {
        json_object_set(o, "except", except);
    }
    json_decref(except);
    char *rec = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (rec != NULL && pl_kafka_produce(c->producer, PL_TOPIC_COMMITTED, cur->conv,
                                        strlen(cur->conv), rec, strlen(rec), NULL) == PL_OK) {
        pl_metric_inc(c->m_receipts);
    }
    free(rec);
}

/* ---- the pending table ---- */

static void pending_clear(st_cursors_t *c)
{
    for (size_t b = 0; b < PENDING_BKTS; b++) {
        while (c->pending[b] != NULL) {
            pending_t *p = c->pending[b];
            c->pending[b] = p->next;
            free(p);
        }
    }
    c->npending = 0;
}

static size_t pending_bucket(const char *conv, const char *user)
{
    return (pl_hash_str(conv) * 31 + pl_hash_str(user)) % PENDING_BKTS;
}

static void pending_add(st_cursors_t *c, const pl_cursor_t *cur)
{
    size_t b = pending_bucket(cur->conv, cur->user);
    pending_t *p = c->pending[b];
    while (p != NULL && (strcmp(p->conv, cur->conv) != 0 || strcmp(p->user, cur->user) != 0)) {
        p = p->next;
    }
    if (p == NULL) {
        if ((p = calloc(1, sizeof(*p))) == NULL) {
            c->redo = 1; /* the next settle takes every held record again */
            return;
        }
        snprintf(p->conv, sizeof(p->conv), "%s", cur->conv);
        snprintf(p->user, sizeof(p->user), "%s", cur->user);
        p->next = c->pending[b];
        c->pending[b] = p;
        c->npending++;
    }
    long long *at = strcmp(cur->kind, PL_CURSOR_READ) == 0 ? &p->read : &p->delivered;
    if (cur->seq > *at) {
        *at = cur->seq;
    }
}

/* p's $max update into filter and upd (both new; *filter NULL when there is nothing to write),
 * bounded by the conversation's last seq. */
static int build_update(st_cursors_t *c, const pending_t *p, bson_t **filter, bson_t **upd)
{
    long long last = 0;
    long long top = p->read > p->delivered ? p->read : p->delivered;
    *filter = *upd = NULL;
    int rc = conv_last(c, p->conv, top, &last);
    if (rc != PL_OK) {
        return rc;
    }
    long long read = p->read < last ? p->read : last;
    long long delivered = p->delivered < last ? p->delivered : last;
    delivered = delivered > read ? delivered : read; /* read implies received */
    if (delivered <= 0) {
        return PL_OK;
    }
    char id[2 * PL_CONV_ID_LEN];
    snprintf(id, sizeof(id), "%s|%s", p->conv, p->user);
    bson_t max, set;
    *filter = BCON_NEW("_id", BCON_UTF8(id));
    *upd = bson_new();
    BSON_APPEND_DOCUMENT_BEGIN(*upd, "$max", &max);
    if (read > 0) {
        BSON_APPEND_INT64(&max, "read_seq", read);
    }
    BSON_APPEND_INT64(&max, "delivered_seq", delivered);
    bson_append_document_end(*upd, &max);
    if (pl_conv_kind(p->conv) != 'g') {
        BSON_APPEND_DOCUMENT_BEGIN(*upd, "$set", &set);
        BSON_APPEND_UTF8(&set, "conv", p->conv);
        BSON_APPEND_UTF8(&set, "user", p->user);
        bson_append_document_end(*upd, &set);
    }
    return PL_OK;
}

#define FLUSH_BULK 256

/* Writes every pending entry, one $max update of its members document each: upserted in bulk
 * for 1:1 conversations and own streams, one by one and never created for a group (its
 * documents are the store's membership records: a cursor of someone without one is dropped).
 * The table is emptied only when all are written (a retry writes them again: $max). */
static int flush(st_cursors_t *c)
{
    bson_t *f[FLUSH_BULK], *u[FLUSH_BULK];
    size_t n = 0;
    int rc = PL_OK;
    for (size_t b = 0; b < PENDING_BKTS && rc == PL_OK; b++) {
        for (pending_t *p = c->pending[b]; p != NULL && rc == PL_OK; p = p->next) {
            bson_t *filter, *upd;
            rc = build_update(c, p, &filter, &upd);
            if (rc != PL_OK || filter == NULL) {
                continue;
            }
            if (pl_conv_kind(p->conv) == 'g') {
                rc = pl_mongo_update_one(c->cfg.mongo, ST_MEMBERS, filter, upd, 0, NULL);
                bson_destroy(filter);
                bson_destroy(upd);
            } else {
                f[n] = filter;
                u[n++] = upd;
            }
            if (rc == PL_OK && n == FLUSH_BULK) {
                rc = pl_mongo_upsert_each(c->cfg.mongo, ST_MEMBERS, f, u, n);
                pl_metric_add(c->m_writes, rc == PL_OK ? n : 0);
                for (size_t i = 0; i < n; i++) {
                    bson_destroy(f[i]);
                    bson_destroy(u[i]);
                }
                n = 0;
            }
            pl_metric_add(c->m_writes, rc == PL_OK && pl_conv_kind(p->conv) == 'g' ? 1 : 0);
        }
    }
    if (rc == PL_OK && n > 0) {
        rc = pl_mongo_upsert_each(c->cfg.mongo, ST_MEMBERS, f, u, n);
        pl_metric_add(c->m_writes, rc == PL_OK ? n : 0);
    }
    for (size_t i = 0; i < n; i++) {
        bson_destroy(f[i]);
        bson_destroy(u[i]);
    }
    if (rc == PL_OK) {
        pending_clear(c);
    }
    return rc;
}

/* ---- the thread ---- */

static int by_key_seq(const void *a, const void *b)
{
    const pl_cursor_t *x = a, *y = b;
    int d = strcmp(x->conv, y->conv);
    d = d ? d : strcmp(x->user, y->user);
    d = d ? d : strcmp(x->kind, y->kind);
    return d ? d : (x->seq < y->seq ? -1 : x->seq > y->seq);
}

/* A chunk just consumed: parsed, bounded, announced (highest per key), made pending. */
static void take(st_cursors_t *c, const pl_kafka_rec_t *recs, size_t n)
{
    pl_cursor_t *cur = calloc(n, sizeof(*cur));
    size_t k = 0;
    if (cur == NULL) {
        c->redo = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (pl_cursor_parse(recs[i].value, recs[i].vlen, &cur[k]) != PL_OK) {
            pl_metric_inc(c->m_invalid);
            continue;
        }
        pl_metric_inc(c->m_cursors);
        pending_add(c, &cur[k]);
        k++;
    }
    qsort(cur, k, sizeof(*cur), by_key_seq);
    st_share_prepare(c->share, cur, k);
    for (size_t i = 0; i < k; i++) {
        int last_of_key = i + 1 == k || strcmp(cur[i].conv, cur[i + 1].conv) != 0 ||
                          strcmp(cur[i].user, cur[i + 1].user) != 0 ||
                          strcmp(cur[i].kind, cur[i + 1].kind) != 0;
        /* Announced as the reader said it, without a lookup per cursor (at 1,000 reads/s those
         * lookups were most of what receipts cost FerretDB): a seq past the conversation's end
         * is the reader's own claim, the same it could make by reading each item as it comes.
         * The stored cursor is bounded (build_update). */
        if (last_of_key) {
            announce(c, &cur[i]);
        }
    }
    free(cur);
}

/* Writes the pending cursors and, once all are written, stores the held records' offsets. */
static int settle(st_cursors_t *c)
{
    if (c->redo) {
        c->redo = 0;
        for (size_t i = 0; i < c->nheld; i++) {
            pl_cursor_t cur;
            if (pl_cursor_parse(c->held[i].value, c->held[i].vlen, &cur) == PL_OK) {
                pending_add(c, &cur);
            }
        }
        if (c->redo) {
            return PL_ERR_NOMEM;
        }
    }
    int rc = flush(c);
    if (rc == PL_OK) {
        pl_kafka_store_offsets(c->consumer, c->held, c->nheld);
        pl_kafka_release(c->held, c->nheld);
        c->nheld = 0;
    }
    return rc;
}

static void *run(void *arg)
{
    st_cursors_t *c = arg;
    long long first_ms = 0, retry_ms = 0;
    int failures = 0;
    while (!atomic_load(&c->stop)) {
        size_t room = HOLD_MAX - c->nheld;
        long n = room == 0 ? 0
                           : pl_kafka_consume(c->consumer, c->held + c->nheld,
                                              room < CHUNK_MAX ? room : CHUNK_MAX, 100);
        if (n > 0) {
            first_ms = c->nheld == 0 ? pl_now_ms() : first_ms;
            take(c, c->held + c->nheld, (size_t)n);
            c->nheld += (size_t)n;
        }
        pl_kafka_poll(c->producer, room == 0 ? 50 : 0);
        long long now = pl_now_ms();
        if (c->nheld > 0 && now - first_ms >= c->cfg.flush_ms && now >= retry_ms) {
            if (settle(c) == PL_OK) {
                failures = 0;
            } else {
                pl_metric_inc(c->m_flush_failed);
                retry_ms = now + pl_consume_backoff_ms(++failures);
                pl_log_warn("cursor_flush_failed", "%zu cursors not written; retrying",
                            c->npending);
            }
        }
    }
    if (c->nheld > 0 && settle(c) != PL_OK) {
        /* Unstored: read again after the restart and written then. */
        pl_kafka_release(c->held, c->nheld);
        c->nheld = 0;
    }
    pl_kafka_flush(c->producer, 5000);
    return NULL;
}

int st_cursors_start(const st_cursors_cfg_t *cfg, st_cursors_t **out)
{
    *out = NULL;
    st_cursors_t *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->held = calloc(HOLD_MAX, sizeof(*c->held))) == NULL) {
        free(c);
        return PL_ERR_NOMEM;
    }
    c->cfg = *cfg;
    c->cfg.flush_ms = cfg->flush_ms > 0 ? cfg->flush_ms : 1000;
    pl_metrics_t *m = cfg->metrics;
    c->m_cursors = pl_metrics_counter(m, "parley_store_cursors_total",
                                      "Read and delivered cursors consumed", NULL);
    c->m_writes = pl_metrics_counter(m, "parley_store_cursor_writes_total",
                                     "Cursor writes to members documents (coalesced)", NULL);
    c->m_receipts = pl_metrics_counter(m, "parley_store_receipts_total",
                                       "Receipts produced for the router", NULL);
    c->m_invalid = pl_metrics_counter(m, "parley_store_cursor_invalid_total",
                                      "Cursor records skipped as malformed", NULL);
    c->m_flush_failed = pl_metrics_counter(m, "parley_store_cursor_flush_failures_total",
                                           "Cursor flushes that failed (retried)", NULL);
    /* connects on first use and again after an error; while Redis is away every reader is
     * read from MongoDB (st_share.h) */
    if (pl_redis_new(cfg->redis_host, cfg->redis_port, 1000, &c->redis) != PL_OK) {
        c->redis = NULL; /* out of memory: the same, for good */
    }
    c->share = st_share_new(cfg->mongo, c->redis, cfg->share_max);
    int rc = c->share ? pl_kafka_producer_new(cfg->brokers, NULL, NULL, NULL, &c->producer)
                      : PL_ERR_NOMEM;
    if (rc == PL_OK) {
        rc = pl_kafka_consumer_new(cfg->brokers, cfg->group, PL_TOPIC_CURSORS, NULL, &c->consumer);
    }
    if (rc == PL_OK && pthread_create(&c->thread, NULL, run, c) != 0) {
        rc = PL_ERR_NOMEM;
    }
    if (rc != PL_OK) {
        st_cursors_stop(&c);
        return rc;
    }
    c->started = 1;
    *out = c;
    return PL_OK;
}

void st_cursors_stop(st_cursors_t **pc)
{
    if (pc == NULL || *pc == NULL) {
        return;
    }
    st_cursors_t *c = *pc;
    atomic_store(&c->stop, 1);
    if (c->started) {
        pthread_join(c->thread, NULL);
    }
    pl_kafka_release(c->held, c->nheld);
    pending_clear(c);
    convs_forget(c);
    st_share_free(&c->share);
    pl_redis_free(&c->redis);
    pl_kafka_free(&c->consumer);
    pl_kafka_free(&c->producer);
    free(c->held);
    free(c);
    *pc = NULL;
}
