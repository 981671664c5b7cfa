/*
 * The single writer of conversation sequences. One Kafka partition has one consumer, and a
 * conversation's records share a partition (key = conversation id), so only this thread
 * numbers a conversation while it owns the partition. During a rebalance two instances may
 * briefly overlap; the unique index on {conv, seq} fences them: a refused number means
 * someone else took it, so the message is renumbered.
 *
 * The hot path reads nothing: a batch is numbered from the in-memory sequences and written
 * with one ordered bulk insert, and the unique indexes tell what was already there. Only
 * after a refusal (a replay after a crash or a rebalance, or a stale sequence) does the
 * careful path look messages up, one equality query at a time. Equality on _id is the one
 * query shape every MongoDB-compatible server answers without scanning much; FerretDB on
 * SQLite scans for $in and sort, which made the first version slow as history grew.
 */
#include "store.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SEQCACHE_MAX 100000

struct seq_entry {
    char conv[PL_CONV_ID_LEN];
    long long last;
    struct seq_entry *next;
};

#define SEQ_BUCKETS 4096

/*
 * Messages this store wrote lately, by msg_id: a client's resend that reaches the store in a
 * later batch than its first copy is recognised here without a query, so it never takes a
 * number in a bulk (a refused resend in mid-bulk costs renumbering what FerretDB stored after
 * it). Direct-mapped and bounded: a collision forgets the older entry, and a resend missed
 * here (after a restart, say) is still caught by the unique _id, only more slowly.
 */
#define RECENT_SLOTS 131072

struct recent {
    char id[PL_MSG_ID_LEN];
    long long seq;
    long long ts_ms;
};

struct st_seqcache_s {
    struct seq_entry *b[SEQ_BUCKETS];
    size_t n;
    struct recent *recent; /* RECENT_SLOTS entries */
};

st_seqcache_t *st_seqcache_new(void)
{
    st_seqcache_t *c = calloc(1, sizeof(st_seqcache_t));
    if (c != NULL && (c->recent = calloc(RECENT_SLOTS, sizeof(*c->recent))) == NULL) {
        free(c);
        c = NULL;
    }
    return c;
}

static struct recent *recent_slot(st_seqcache_t *c, const char *msg_id)
{
    return &c->recent[pl_hash_str(msg_id) % RECENT_SLOTS];
}

static void recent_put(st_seqcache_t *c, const pl_msg_t *m)
{
    struct recent *r = recent_slot(c, m->msg_id);
    snprintf(r->id, sizeof(r->id), "%s", m->msg_id);
    r->seq = m->seq;
    r->ts_ms = m->ts_ms;
}

/* 1 with the stored seq and time when msg_id was written lately, else 0. */
static int recent_get(st_seqcache_t *c, pl_msg_t *m)
{
    struct recent *r = recent_slot(c, m->msg_id);
    if (r->seq <= 0 || strcmp(r->id, m->msg_id) != 0) {
        return 0;
    }
    m->seq = r->seq;
    m->ts_ms = r->ts_ms;
    return 1;
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
    free((*pc)->recent);
    free(*pc);
    *pc = NULL;
}

static size_t hash(const char *conv)
{
    return pl_hash_str(conv) % SEQ_BUCKETS;
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

/* 1 when a message of conv with this seq is stored; 0 when not; < 0 on error. */
static int seq_taken(st_ctx_t *ctx, const char *conv, long long seq)
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
    int rc = pl_mongo_find_one(ctx->mongo, "messages", &filter, &opts, &doc);
    bson_destroy(&filter);
    bson_destroy(&opts);
    bson_destroy(doc);
    return rc == PL_OK ? 1 : rc == PL_ERR_NOTFOUND ? 0 : rc;
}

/* Looks up a stored message by msg_id. PL_OK with its seq and time, PL_ERR_NOTFOUND, or else. */
static int find_stored(st_ctx_t *ctx, pl_msg_t *m)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t *doc = NULL;
    BSON_APPEND_UTF8(&filter, "_id", m->msg_id);
    int rc = pl_mongo_find_one(ctx->mongo, "messages", &filter, NULL, &doc);
    bson_destroy(&filter);
    if (rc == PL_OK) {
        pl_msg_t found;
        if (st_msg_from_bson(doc, &found) == PL_OK) {
            /* A replay keeps the seq and timestamp it was stored with. */
            m->seq = found.seq;
            m->ts_ms = found.ts_ms;
        } else {
            rc = PL_ERR_INTERNAL;
        }
        bson_destroy(doc);
    }
    return rc;
}

/*
 * The last stored seq of conv. The conversation document says where to look, and names the
 * message at last_seq, so confirming it is one lookup by _id (the query shape every
 * MongoDB-compatible server answers from an index; FerretDB scans for anything else).
 *
 * The document is written after the messages, so it can only lag them, and only for
 * messages of a batch cut short by a crash: those lie inside their partition's write intent,
 * are replayed through the careful path first, and advance the sequence as they are found
 * (see note_stored). Any other lag is caught by the {conv, seq} unique index, which refuses
 * a taken number (store_one then moves on). A document ahead of the messages (only after the
 * database itself lost writes) fails the confirmation, and the sequence is then found by
 * probing the messages, in both directions, so a number is never skipped or reused.
 */
static int load_last_seq(st_ctx_t *ctx, const char *conv, long long *last)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t *doc = NULL;
    BSON_APPEND_UTF8(&filter, "_id", conv);
    int rc = pl_mongo_find_one(ctx->mongo, "conversations", &filter, NULL, &doc);
    bson_destroy(&filter);
    long long hint = 0;
    pl_msg_t at; /* the message the document names at last_seq */
    memset(&at, 0, sizeof(at));
    if (rc == PL_OK) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, doc, "last_seq") && BSON_ITER_HOLDS_NUMBER(&it)) {
            hint = bson_iter_as_int64(&it);
        }
        if (bson_iter_init_find(&it, doc, "last_msg_id") && BSON_ITER_HOLDS_UTF8(&it)) {
            snprintf(at.msg_id, sizeof(at.msg_id), "%s", bson_iter_utf8(&it, NULL));
        }
        bson_destroy(doc);
    } else if (rc != PL_ERR_NOTFOUND) {
        return rc;
    }
    if (hint == 0) {
        *last = 0; /* a new conversation: see above for why nothing is probed */
        return PL_OK;
    }
    if (at.msg_id[0] != '\0') {
        rc = find_stored(ctx, &at);
        if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
            return rc;
        }
        if (rc == PL_OK && at.seq == hint) {
            *last = hint;
            return PL_OK;
        }
    }
    long long l = hint;
    int t;
    while (l > 0 && (t = seq_taken(ctx, conv, l)) == 0) {
        l--; /* the hint is ahead of the messages */
    }
    while ((t = seq_taken(ctx, conv, l + 1)) == 1) {
        l++; /* the hint lags the messages */
    }
    if (t < 0) {
        return t;
    }
    pl_log_info("seq_hint_probed", "%s: conversation said %lld, messages say %lld", conv, hint, l);
    *last = l;
    return PL_OK;
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

/* A message found already stored (a replay): the sequence moves past it, so the numbers
 * handed out next do not collide with what a batch cut short by a crash had stored. */
static int note_stored(st_ctx_t *ctx, const pl_msg_t *m)
{
    long long next;
    int rc = seq_next(ctx, m->conv, &next);
    if (rc == PL_OK) {
        seq_commit(ctx, m->conv, m->seq);
    }
    return rc;
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

static double seconds_between(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

/*
 * The careful path for one message: already stored (keep its seq), or numbered and inserted
 * alone, skipping numbers the unique index says are taken.
 */
static int store_one(st_ctx_t *ctx, pl_msg_t *m, int looked_up, int *replayed)
{
    /* A number handed out by a failed bulk is tried first: the bulk may have stored later
     * messages of the conversation, and only this one can fill the place it left. */
    long long first_try = m->seq;
    *replayed = 0;
    for (int attempt = 0; attempt < 100000; attempt++) {
        /* The caller may already know the message is not stored (one lookup for many). */
        int rc = looked_up && attempt == 0 ? PL_ERR_NOTFOUND : find_stored(ctx, m);
        if (rc == PL_OK) {
            pl_log_debug("replay", "%s in %s keeps seq %lld", m->msg_id, m->conv, m->seq);
            *replayed = 1;
            return note_stored(ctx, m);
        }
        if (rc != PL_ERR_NOTFOUND) {
            return rc;
        }
        long long next = first_try;
        first_try = 0;
        if (next <= 0) {
            rc = seq_next(ctx, m->conv, &next);
            if (rc != PL_OK) {
                return rc;
            }
        }
        m->seq = next;
        bson_t *doc = msg_doc(m);
        rc = pl_mongo_insert_one(ctx->mongo, "messages", doc);
        bson_destroy(doc);
        if (rc == PL_OK) {
            pl_log_debug("stored_one", "%s in %s gets seq %lld", m->msg_id, m->conv, next);
            seq_commit(ctx, m->conv, next);
            return PL_OK;
        }
        pl_log_debug("store_one_refused", "%s in %s at seq %lld: %s", m->msg_id, m->conv, next,
                     pl_strerror(rc));
        if (rc != PL_ERR_EXISTS) {
            seq_forget(ctx->seqs, m->conv);
            return rc;
        }
        /* Refused: if not by its msg_id (checked again above), the number was taken. */
        seq_commit(ctx, m->conv, next);
        pl_metric_inc(ctx->m_retries);
    }
    return PL_ERR_INTERNAL;
}

/* Fills filter and upd with the upsert of m's conversation document. */
static void conversation_upsert(const pl_msg_t *m, bson_t *filter, bson_t *upd)
{
    bson_t set, max, members;
    const char *a = strcmp(m->sender, m->receiver) <= 0 ? m->sender : m->receiver;
    const char *b = a == m->sender ? m->receiver : m->sender;
    BSON_APPEND_UTF8(filter, "_id", m->conv);
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$set", &set);
    BSON_APPEND_ARRAY_BEGIN(&set, "members", &members);
    BSON_APPEND_UTF8(&members, "0", a);
    BSON_APPEND_UTF8(&members, "1", b);
    bson_append_array_end(&set, &members);
    /* The message at last_seq, for load_last_seq()'s check by _id. Replays can leave it
     * behind last_seq; the check then fails and falls back to probing. */
    BSON_APPEND_UTF8(&set, "last_msg_id", m->msg_id);
    bson_append_document_end(upd, &set);
    /* $max: a replayed or reordered batch never moves last_seq backwards. */
    BSON_APPEND_DOCUMENT_BEGIN(upd, "$max", &max);
    BSON_APPEND_INT64(&max, "last_seq", m->seq);
    BSON_APPEND_DATE_TIME(&max, "last_timestamp", m->ts_ms);
    bson_append_document_end(upd, &max);
}

/* One upsert per conversation of the batch, with its highest seq and latest time, all in one
 * bulk write (one round trip; each upsert is idempotent, so a retry after a partial bulk is
 * harmless). */
static int upsert_conversations(st_ctx_t *ctx, const pl_msg_t *msgs, const int *valid, size_t n)
{
    bson_t **filters = calloc(n ? n : 1, sizeof(*filters));
    bson_t **upds = calloc(n ? n : 1, sizeof(*upds));
    size_t k = 0;
    int rc = filters != NULL && upds != NULL ? PL_OK : PL_ERR_NOMEM;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (!valid[i]) {
            continue;
        }
        int later = 0;
        for (size_t j = i + 1; j < n && !later; j++) {
            later = valid[j] && strcmp(msgs[j].conv, msgs[i].conv) == 0;
        }
        if (later) {
            continue; /* the conversation's last message in the batch carries it */
        }
        pl_msg_t top = msgs[i];
        for (size_t j = 0; j < i; j++) {
            if (valid[j] && strcmp(msgs[j].conv, msgs[i].conv) == 0) {
                if (msgs[j].seq > top.seq) {
                    top.seq = msgs[j].seq;
                    memcpy(top.msg_id, msgs[j].msg_id, sizeof(top.msg_id));
                }
                top.ts_ms = msgs[j].ts_ms > top.ts_ms ? msgs[j].ts_ms : top.ts_ms;
            }
        }
        struct seq_entry *e = seq_find(ctx->seqs, top.conv);
        if (e != NULL && top.seq < e->last) {
            /* Only resends of older messages: a batch that completed already wrote a higher
             * last_seq, and naming an older message as last_msg_id would send the next
             * load_last_seq() of this conversation down its probing path. */
            continue;
        }
        filters[k] = bson_new();
        upds[k] = bson_new();
        conversation_upsert(&top, filters[k], upds[k]);
        k++;
    }
    if (rc == PL_OK) {
        rc = pl_mongo_upsert_each(ctx->mongo, "conversations", filters, upds, k);
    }
    for (size_t j = 0; j < k; j++) {
        bson_destroy(filters[j]);
        bson_destroy(upds[j]);
    }
    free(filters);
    free(upds);
    return rc;
}

struct found_ctx {
    pl_msg_t *msgs;
    const int *want;
    int *replayed;
    size_t n;
};

static int on_found(void *ud, const bson_t *doc)
{
    struct found_ctx *f = ud;
    pl_msg_t stored;
    if (st_msg_from_bson(doc, &stored) != PL_OK) {
        return 1;
    }
    for (size_t i = 0; i < f->n; i++) {
        if (f->want[i] && !f->replayed[i] && strcmp(f->msgs[i].msg_id, stored.msg_id) == 0) {
            /* A replay keeps the seq and timestamp it was stored with. */
            f->msgs[i].seq = stored.seq;
            f->msgs[i].ts_ms = stored.ts_ms;
            f->replayed[i] = 1;
        }
    }
    return 1;
}

/* Marks replayed[i] for every valid careful record whose msg_id is stored, in one query. */
static int find_many(st_ctx_t *ctx, pl_msg_t *msgs, const int *valid, const int *careful,
                     int *replayed, size_t n)
{
    int *want = calloc(n ? n : 1, sizeof(*want));
    if (want == NULL) {
        return PL_ERR_NOMEM;
    }
    bson_t filter = BSON_INITIALIZER;
    bson_t id, in;
    size_t k = 0;
    BSON_APPEND_DOCUMENT_BEGIN(&filter, "_id", &id);
    BSON_APPEND_ARRAY_BEGIN(&id, "$in", &in);
    for (size_t i = 0; i < n; i++) {
        want[i] = valid[i] && careful[i];
        if (want[i]) {
            char key[24];
            snprintf(key, sizeof(key), "%zu", k++);
            BSON_APPEND_UTF8(&in, key, msgs[i].msg_id);
        }
    }
    bson_append_array_end(&id, &in);
    bson_append_document_end(&filter, &id);
    struct found_ctx f = {msgs, want, replayed, n};
    int rc = k ? pl_mongo_find(ctx->mongo, "messages", &filter, NULL, on_found, &f) : PL_OK;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (replayed[i]) {
            pl_log_debug("replay", "%s in %s keeps seq %lld", msgs[i].msg_id, msgs[i].conv,
                         msgs[i].seq);
        }
    }
    bson_destroy(&filter);
    free(want);
    return rc;
}

/*
 * Records a write intent for each partition of the fast-path records: "records up to this
 * offset may be stored", declared ST_INTENT_AHEAD records past the batch and only rewritten
 * when a batch goes beyond it, all partitions in one bulk write. A restarted or newly assigned
 * store takes the careful path for them, because a bulk insert cut short is not guaranteed to have
 * stored a prefix (FerretDB splits large bulks and goes on after a refused document).
 */
static int write_intents(st_ctx_t *ctx, const pl_kafka_rec_t *recs, const int *fast, size_t n)
{
    bson_t *filters[ST_MAX_PARTITIONS] = {0};
    bson_t *upds[ST_MAX_PARTITIONS] = {0};
    int32_t parts[ST_MAX_PARTITIONS];
    long long ends[ST_MAX_PARTITIONS];
    size_t k = 0;
    for (size_t i = 0; i < n && k < ST_MAX_PARTITIONS; i++) {
        if (!fast[i]) {
            continue;
        }
        int32_t p = recs[i].partition;
        long long end = recs[i].offset;
        int later = 0;
        for (size_t j = i + 1; j < n && !later; j++) {
            later = fast[j] && recs[j].partition == p;
        }
        if (later) {
            continue; /* the partition's last fast record carries it */
        }
        if (p >= 0 && p < ST_MAX_PARTITIONS && ctx->intent_known[p] && end <= ctx->intent_end[p]) {
            continue; /* inside what an earlier batch declared */
        }
        /* Declared ST_INTENT_AHEAD records ahead, so most batches write no intent at all; the
         * price is that many more records, at most, take the careful path after a crash. */
        end += ST_INTENT_AHEAD;
        char id[PL_KEY_LEN];
        pl_key_intent(id, (int)p);
        bson_t set;
        filters[k] = bson_new();
        upds[k] = bson_new();
        BSON_APPEND_UTF8(filters[k], "_id", id);
        BSON_APPEND_DOCUMENT_BEGIN(upds[k], "$set", &set);
        BSON_APPEND_INT64(&set, "end", end);
        bson_append_document_end(upds[k], &set);
        parts[k] = p;
        ends[k] = end;
        k++;
    }
    int rc = pl_mongo_upsert_each(ctx->mongo, "store_intents", filters, upds, k);
    for (size_t j = 0; j < k; j++) {
        if (rc == PL_OK && parts[j] >= 0 && parts[j] < ST_MAX_PARTITIONS) {
            ctx->intent_end[parts[j]] = ends[j];
        }
        bson_destroy(filters[j]);
        bson_destroy(upds[j]);
    }
    return rc;
}

/* Reads the write intent of partition p: the highest offset a store may have written. */
static int read_intent(st_ctx_t *ctx, int32_t p, long long *end)
{
    char id[PL_KEY_LEN];
    bson_t *doc = NULL;
    bson_t filter = BSON_INITIALIZER;
    pl_key_intent(id, (int)p);
    BSON_APPEND_UTF8(&filter, "_id", id);
    int rc = pl_mongo_find_one(ctx->mongo, "store_intents", &filter, NULL, &doc);
    bson_destroy(&filter);
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

/*
 * After a bulk insert was refused at docs[stored]. The docs before it are in, numbered
 * contiguously. The rest may or may not be: FerretDB goes on after a refusal, and a refused
 * one may be a client's resend of a message stored by an earlier batch, whose number in this
 * bulk then stays unused. So each conversation's sequence is rewound to its last number known
 * stored, and the rest go one at a time, in order: a resend keeps its earlier seq; one this
 * bulk stored keeps its number when it is the next one, or else is taken out and numbered
 * again (nothing of this batch has been announced yet); one not stored takes the next free
 * number. No gap opens, and the order of the partition is kept.
 */
static int settle_refused(st_ctx_t *ctx, pl_msg_t *msgs, const size_t *which, size_t stored,
                          size_t k, int *replayed)
{
    for (size_t j = k; j-- > stored;) {
        /* Walking back, the last write per conversation is its first refused-or-later seq. */
        struct seq_entry *e = seq_find(ctx->seqs, msgs[which[j]].conv);
        if (e != NULL) {
            e->last = msgs[which[j]].seq - 1;
        }
    }
    for (size_t j = stored; j < k; j++) {
        pl_msg_t *m = &msgs[which[j]];
        long long assigned = m->seq;
        pl_msg_t probe = *m;
        int rc = find_stored(ctx, &probe);
        if (rc == PL_OK && probe.seq != assigned) {
            pl_log_debug("replay", "%s in %s keeps seq %lld", m->msg_id, m->conv, probe.seq);
            m->seq = probe.seq;
            m->ts_ms = probe.ts_ms;
            replayed[which[j]] = 1;
            continue;
        }
        struct seq_entry *e = seq_find(ctx->seqs, m->conv);
        if (rc == PL_OK) {
            if (e != NULL && assigned == e->last + 1) {
                e->last = assigned; /* stored by this bulk, in its place */
                continue;
            }
            /* Stored by this bulk past a number that stayed unused: numbered again. */
            bson_t filter = BSON_INITIALIZER;
            BSON_APPEND_UTF8(&filter, "_id", m->msg_id);
            rc = pl_mongo_delete_one(ctx->mongo, "messages", &filter);
            bson_destroy(&filter);
            pl_log_info("renumbered", "%s in %s: seq %lld left a gap; numbered again", m->msg_id,
                        m->conv, assigned);
            if (rc != PL_OK) {
                return rc;
            }
        } else if (rc != PL_ERR_NOTFOUND) {
            return rc;
        }
        m->seq = 0;
        rc = store_one(ctx, m, 1, &replayed[which[j]]);
        if (rc != PL_OK) {
            return rc;
        }
    }
    return PL_OK;
}

static double monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* 1 while partition p is in its cold window (see cold_until in store.h). */
static int is_cold(const st_ctx_t *ctx, int32_t p, double now)
{
    return p < 0 || p >= ST_MAX_PARTITIONS || now < ctx->cold_until[p];
}

/*
 * Numbers and writes every valid message; fills replayed[i] for the ones already stored.
 * careful[i] sends a record down the one-at-a-time path (it may already be stored).
 */
static int write_batch(st_ctx_t *ctx, const pl_kafka_rec_t *recs, pl_msg_t *msgs, const int *valid,
                       const int *careful, int *replayed, size_t n)
{
    int rc = PL_OK;
    size_t k = 0, stored = 0;
    bson_t **docs = calloc(n, sizeof(*docs));
    size_t *which = calloc(n, sizeof(*which));
    int *fast = calloc(n, sizeof(*fast));
    int *looked_up = calloc(n, sizeof(*looked_up));
    if (docs == NULL || which == NULL || fast == NULL || looked_up == NULL) {
        rc = PL_ERR_NOMEM;
        goto out;
    }
    /* Records that may already be stored come first in their partition: one lookup for all
     * of them (a server that scans pays one scan, not one per record), then one at a time. */
    double now = monotonic_s();
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        replayed[i] = 0;
        fast[i] = valid[i] && !careful[i];
        if (fast[i] && recent_get(ctx->seqs, &msgs[i])) {
            pl_log_debug("replay", "%s in %s keeps seq %lld (recent)", msgs[i].msg_id, msgs[i].conv,
                         msgs[i].seq);
            replayed[i] = 1;
            fast[i] = 0;
        } else if (fast[i] && is_cold(ctx, recs[i].partition, now)) {
            /* A resend of a message written before this store knew the partition would be
             * refused in mid-bulk, and settling that costs renumbering (see settle_refused).
             * One lookup by _id now is far cheaper. */
            pl_metric_inc(ctx->m_cold_checks);
            pl_msg_t probe = msgs[i];
            rc = find_stored(ctx, &probe);
            if (rc == PL_OK) {
                pl_log_debug("replay", "%s in %s keeps seq %lld (looked up)", msgs[i].msg_id,
                             msgs[i].conv, probe.seq);
                msgs[i].seq = probe.seq;
                msgs[i].ts_ms = probe.ts_ms;
                replayed[i] = 1;
                fast[i] = 0;
                looked_up[i] = 1;
            } else if (rc == PL_ERR_NOTFOUND) {
                rc = PL_OK;
            }
        }
    }
    if (rc == PL_OK) {
        rc = find_many(ctx, msgs, valid, careful, replayed, n);
    }
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (valid[i] && careful[i] && !replayed[i]) {
            msgs[i].seq = 0;
            rc = store_one(ctx, &msgs[i], 1, &replayed[i]);
        }
    }
    /* Only now do the replays found above move the sequences past themselves: a message
     * missing among them first takes the lowest free number (the place a crash left). */
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (valid[i] && (careful[i] || looked_up[i]) && replayed[i]) {
            rc = note_stored(ctx, &msgs[i]);
        }
    }
    if (rc == PL_OK) {
        rc = write_intents(ctx, recs, fast, n);
    }
    /* Fast path: number from memory, one ordered insert. */
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (!fast[i]) {
            continue;
        }
        long long next;
        rc = seq_next(ctx, msgs[i].conv, &next);
        if (rc == PL_OK) {
            pl_log_debug("assign", "%s in %s takes seq %lld", msgs[i].msg_id, msgs[i].conv, next);
            msgs[i].seq = next;
            seq_commit(ctx, msgs[i].conv, next);
            docs[k] = msg_doc(&msgs[i]);
            which[k++] = i;
        }
    }
    if (rc == PL_OK && k > 0) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        rc = pl_mongo_insert_many(ctx->mongo, "messages", docs, k, &stored);
        pl_log_debug("bulk", "bulk of %zu: %s, %zu stored", k, pl_strerror(rc), stored);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        pl_metric_observe(ctx->m_write_seconds, seconds_between(&t0, &t1));
    }
    if (rc == PL_ERR_EXISTS) {
        pl_log_debug("bulk_refused", "bulk of %zu stopped at %zu (%s seq %lld)", k, stored,
                     msgs[which[stored]].msg_id, msgs[which[stored]].seq);
        rc = settle_refused(ctx, msgs, which, stored, k, replayed);
    } else if (rc != PL_OK) {
        /* Nothing is known about this attempt: forget the numbers handed out. */
        for (size_t j = 0; j < k; j++) {
            seq_forget(ctx->seqs, msgs[which[j]].conv);
        }
    }
out:
    for (size_t j = 0; docs != NULL && j < k; j++) {
        bson_destroy(docs[j]);
    }
    free(docs);
    free(which);
    free(fast);
    free(looked_up);
    return rc;
}

/*
 * Marks the records that may already be stored: those at or below their partition's write
 * intent, read again whenever the partition's offsets do not follow on from the last batch
 * (after a start, a rebalance or a retry from an earlier offset).
 */
static int mark_careful(st_ctx_t *ctx, const pl_kafka_rec_t *recs, int *careful, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int32_t p = recs[i].partition;
        if (p < 0 || p >= ST_MAX_PARTITIONS) {
            careful[i] = 1;
            continue;
        }
        if (!ctx->intent_known[p] || recs[i].offset != ctx->last_offset[p] + 1) {
            long long end;
            int rc = read_intent(ctx, p, &end);
            if (rc != PL_OK) {
                ctx->intent_known[p] = 0;
                return rc;
            }
            ctx->careful_until[p] = end;
            ctx->intent_end[p] = end;
            ctx->intent_known[p] = 1;
            /* Offsets that do not follow on mean a start, a rebalance or a retry: whatever
             * this store remembers of the partition's recent writes may be incomplete. */
            ctx->cold_until[p] = monotonic_s() + ctx->cold_check_s;
            if (end >= recs[i].offset) {
                pl_log_info("careful_replay", "partition %d: offsets %lld..%lld may be stored",
                            (int)p, (long long)recs[i].offset, end);
            }
        }
        ctx->last_offset[p] = recs[i].offset;
        careful[i] = recs[i].offset <= ctx->careful_until[p];
    }
    return PL_OK;
}

int st_write_batch(st_ctx_t *ctx, const pl_kafka_rec_t *recs, size_t n)
{
    int rc = PL_OK;
    if (ctx->seqs->n >= SEQCACHE_MAX) {
        /* Bounded, and only between batches (every number handed out is then in the
         * conversation documents): reloading costs two lookups by _id per conversation. */
        seqcache_clear(ctx->seqs);
    }
    pl_msg_t *msgs = calloc(n ? n : 1, sizeof(*msgs));
    int *valid = calloc(n ? n : 1, sizeof(*valid));
    int *replayed = calloc(n ? n : 1, sizeof(*replayed));
    if (msgs == NULL || valid == NULL || replayed == NULL) {
        rc = PL_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        char conv[PL_CONV_ID_LEN];
        if (pl_msg_parse(recs[i].value, recs[i].vlen, &msgs[i]) != PL_OK) {
            /* Only gateways produce here; a malformed record is logged and skipped, never
             * allowed to block the partition. */
            pl_metric_inc(ctx->m_invalid);
            pl_log_error("invalid_record", "partition %d offset %lld is not a message",
                         (int)recs[i].partition, (long long)recs[i].offset);
            continue;
        }
        pl_conv_id(msgs[i].sender, msgs[i].receiver, conv);
        if (strcmp(conv, msgs[i].conv) != 0) {
            pl_metric_inc(ctx->m_invalid);
            pl_log_error("invalid_record", "conversation id does not match its members");
            pl_msg_clear(&msgs[i]);
            continue;
        }
        valid[i] = 1;
    }
    /* The same message twice in one batch (a client retry) is stored once: later copies are
     * marked and take the first copy's seq after the write. */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; valid[i] && j < i; j++) {
            if (valid[j] == 1 && strcmp(msgs[i].msg_id, msgs[j].msg_id) == 0) {
                valid[i] = 2;
            }
        }
    }
    int *first = calloc(n ? n : 1, sizeof(*first));
    if (first == NULL) {
        rc = PL_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        first[i] = valid[i] == 1;
    }
    int *careful = calloc(n ? n : 1, sizeof(*careful));
    if (careful == NULL) {
        free(first);
        rc = PL_ERR_NOMEM;
        goto out;
    }
    for (int attempt = 0; !atomic_load(&ctx->stopping); attempt++) {
        if (attempt > 0) {
            /* SIGTERM and SIGINT are blocked and taken by the main loop between batches; a
             * batch that cannot be stored (a dependency down) must not hold a shutdown
             * hostage: its offsets stay unstored, and it is replayed after the restart. */
            sigset_t pending;
            if (sigpending(&pending) == 0 &&
                (sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1)) {
                atomic_store(&ctx->stopping, 1);
                break;
            }
            usleep(attempt < 10 ? 100000 * attempt : 1000000);
            /* Nothing is known about what a failed attempt stored: go carefully. */
            for (size_t i = 0; i < n; i++) {
                careful[i] = 1;
            }
        } else {
            rc = mark_careful(ctx, recs, careful, n);
            if (rc != PL_OK) {
                pl_log_warn("store_retry", "cannot read write intents: %s", pl_strerror(rc));
                continue;
            }
        }
        rc = write_batch(ctx, recs, msgs, first, careful, replayed, n);
        for (size_t i = 0; rc == PL_OK && i < n; i++) {
            if (first[i]) {
                recent_put(ctx->seqs, &msgs[i]);
            }
            if (first[i] && replayed[i]) {
                pl_metric_inc(ctx->m_replayed);
            }
            for (size_t j = 0; valid[i] == 2 && j < i; j++) {
                if (first[j] && strcmp(msgs[i].msg_id, msgs[j].msg_id) == 0) {
                    msgs[i].seq = msgs[j].seq;
                    msgs[i].ts_ms = msgs[j].ts_ms;
                    break;
                }
            }
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (rc == PL_OK) {
            rc = upsert_conversations(ctx, msgs, first, n);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        pl_metric_observe(ctx->m_upsert_seconds, seconds_between(&t0, &t1));
        if (rc != PL_OK) {
            pl_log_warn("store_retry", "batch of %zu not stored yet: %s", n, pl_strerror(rc));
            continue;
        }
        /* Stored: now announce every message of the batch, replays included, so a message
         * whose announcement was lost to a crash is announced again. */
        atomic_store(&ctx->batch_failed, 0);
        for (size_t i = 0; rc == PL_OK && i < n; i++) {
            if (!first[i]) {
                continue;
            }
            char *rec = pl_msg_record(&msgs[i]);
            rc = rec ? pl_kafka_produce(ctx->producer, PL_TOPIC_COMMITTED, msgs[i].conv,
                                        strlen(msgs[i].conv), rec, strlen(rec), NULL)
                     : PL_ERR_NOMEM;
            while (rc == PL_ERR_UNAVAIL && !atomic_load(&ctx->stopping)) {
                pl_kafka_poll(ctx->producer, 100); /* local queue full: let it drain */
                rc = pl_kafka_produce(ctx->producer, PL_TOPIC_COMMITTED, msgs[i].conv,
                                      strlen(msgs[i].conv), rec, strlen(rec), NULL);
            }
            free(rec);
        }
        int flushed = rc == PL_OK ? pl_kafka_flush(ctx->producer, 15000) : rc;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        pl_metric_observe(ctx->m_announce_seconds, seconds_between(&t1, &t0));
        if (rc == PL_OK && flushed == PL_OK && !atomic_load(&ctx->batch_failed)) {
            for (size_t i = 0; i < n; i++) {
                if (first[i] && !replayed[i]) {
                    pl_metric_inc(ctx->m_stored);
                }
            }
            pl_metric_observe(ctx->m_batch, (double)n);
            break;
        }
        rc = PL_ERR_UNAVAIL;
        pl_log_warn("store_retry", PL_TOPIC_COMMITTED " did not acknowledge the batch; retrying");
    }
    free(first);
    free(careful);
out:
    for (size_t i = 0; msgs != NULL && i < n; i++) {
        pl_msg_clear(&msgs[i]);
    }
    free(msgs);
    free(valid);
    free(replayed);
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
