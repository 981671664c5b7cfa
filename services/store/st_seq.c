/*
 * Sequence allocation (see st_seq.h). The hot path reads nothing: a batch is numbered from
 * the in-memory sequences and written with one ordered bulk insert, and the unique indexes
 * tell what was already there. Only records that may already be stored (a replay after a
 * crash or a rebalance, inside a partition's write intent, or a resend the memory does not
 * know during a partition's cold window) take the careful path: looked up by _id, the query
 * shape every MongoDB-compatible server answers from an index (FerretDB on SQLite scans for
 * $in-less ranges and sorts), and written one at a time.
 */
#include "st_seq.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SEQCACHE_MAX 100000
#define SEQ_BUCKETS  4096

/*
 * Messages this store wrote lately, by msg_id: a client's resend that reaches the store in a
 * later batch than its first copy is recognised here without a query, so it never takes a
 * number in a bulk (a refused resend in mid-bulk costs renumbering what the server stored
 * after it). Direct-mapped and bounded: a collision forgets the older entry, and a resend
 * missed here (after a restart, say) is still caught by the unique _id, only more slowly.
 */
#define RECENT_SLOTS 131072

struct seq_entry {
    char conv[PL_CONV_ID_LEN];
    long long last;
    struct seq_entry *next;
};

struct recent {
    char id[PL_MSG_ID_LEN];
    long long seq;
    long long ts_ms;
    /* Its batch was announced to everyone: a later copy needs only its sender answered. */
    unsigned char announced;
};

/* What the allocator knows of one partition of parley.messages. */
struct part {
    long long last_offset;   /* of the last record seen: a jump means a rebalance or restart */
    long long careful_until; /* records up to here may already be stored (the intent read) */
    long long intent_end;    /* the intent as last read or written */
    unsigned char intent_known;
    /* Until this time (CLOCK_MONOTONIC seconds), a record the table of recent msg_ids does
     * not know is looked up by _id before it takes a number: the table is empty after a start
     * and knows nothing of what another store wrote before a rebalance. */
    double cold_until;
};

struct st_seq_s {
    st_db_t db;
    int cold_check_s;
    struct seq_entry *b[SEQ_BUCKETS];
    size_t n;
    struct recent *recent; /* RECENT_SLOTS entries */
    struct part parts[ST_MAX_PARTITIONS];
    pl_metric_t *m_conflicts, *m_cold_checks, *m_write_seconds;
};

st_seq_t *st_seq_new(const st_db_t *db, int cold_check_s, pl_metrics_t *metrics)
{
    st_seq_t *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->recent = calloc(RECENT_SLOTS, sizeof(*s->recent))) == NULL) {
        free(s);
        return NULL;
    }
    s->db = *db;
    s->cold_check_s = cold_check_s;
    if (metrics != NULL) {
        s->m_conflicts = pl_metrics_counter(metrics, "parley_store_seq_conflicts_total",
                                            "Sequence numbers fenced by the unique index", NULL);
        s->m_cold_checks =
            pl_metrics_counter(metrics, "parley_store_cold_checks_total",
                               "Records looked up by msg_id before numbering (after a start or "
                               "a rebalance)",
                               NULL);
        s->m_write_seconds =
            pl_metrics_histogram(metrics, "parley_store_write_seconds", "MongoDB bulk write time",
                                 NULL, pl_metrics_latency_bounds, pl_metrics_latency_nbounds);
    }
    return s;
}

static void cache_clear(st_seq_t *s)
{
    for (size_t i = 0; i < SEQ_BUCKETS; i++) {
        for (struct seq_entry *e = s->b[i], *next; e != NULL; e = next) {
            next = e->next;
            free(e);
        }
        s->b[i] = NULL;
    }
    s->n = 0;
}

void st_seq_free(st_seq_t **ps)
{
    if (ps == NULL || *ps == NULL) {
        return;
    }
    cache_clear(*ps);
    free((*ps)->recent);
    free(*ps);
    *ps = NULL;
}

static double monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- what this store remembers: sequences and recent msg_ids ---- */

static struct recent *recent_slot(st_seq_t *s, const char *msg_id)
{
    return &s->recent[pl_hash_str(msg_id) % RECENT_SLOTS];
}

static void recent_put(st_seq_t *s, const pl_msg_t *m)
{
    struct recent *r = recent_slot(s, m->msg_id);
    snprintf(r->id, sizeof(r->id), "%s", m->msg_id);
    r->seq = m->seq;
    r->ts_ms = m->ts_ms;
    r->announced = 0;
}

/* The entry of msg_id, or NULL when it was not written lately. */
static struct recent *recent_find(st_seq_t *s, const char *msg_id)
{
    struct recent *r = recent_slot(s, msg_id);
    return r->seq > 0 && strcmp(r->id, msg_id) == 0 ? r : NULL;
}

/* 1 with the stored seq and time when msg_id was written lately, else 0. */
static int recent_get(st_seq_t *s, pl_msg_t *m)
{
    struct recent *r = recent_find(s, m->msg_id);
    if (r == NULL) {
        return 0;
    }
    m->seq = r->seq;
    m->ts_ms = r->ts_ms;
    return 1;
}

void st_seq_announced(st_seq_t *s, const st_rec_t *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct recent *r = recs[i].first ? recent_find(s, recs[i].m.msg_id) : NULL;
        if (r != NULL) {
            r->announced = 1;
        }
    }
}

static size_t bucket(const char *conv)
{
    return pl_hash_str(conv) % SEQ_BUCKETS;
}

static struct seq_entry *seq_find(const st_seq_t *s, const char *conv)
{
    for (struct seq_entry *e = s->b[bucket(conv)]; e != NULL; e = e->next) {
        if (strcmp(e->conv, conv) == 0) {
            return e;
        }
    }
    return NULL;
}

long long st_seq_last(const st_seq_t *s, const char *conv)
{
    struct seq_entry *e = seq_find(s, conv);
    return e != NULL ? e->last : 0;
}

static void seq_forget(st_seq_t *s, const char *conv)
{
    for (struct seq_entry **pp = &s->b[bucket(conv)]; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->conv, conv) == 0) {
            struct seq_entry *e = *pp;
            *pp = e->next;
            free(e);
            s->n--;
            return;
        }
    }
}

/* Looks up a stored message by msg_id: PL_OK with its seq and time in m, PL_ERR_NOTFOUND. */
static int find_stored(st_seq_t *s, pl_msg_t *m)
{
    return s->db.find_msg(s->db.ud, m->msg_id, &m->seq, &m->ts_ms);
}

/* Walks from hint to the last seq of conv the messages themselves show. */
static int probe_last(st_seq_t *s, const char *conv, long long hint, long long *last)
{
    long long l = hint;
    int taken = 0, rc;
    while (l > 0 && (rc = s->db.seq_taken(s->db.ud, conv, l, &taken)) == PL_OK && !taken) {
        l--; /* the hint is ahead of the messages */
    }
    while ((rc = s->db.seq_taken(s->db.ud, conv, l + 1, &taken)) == PL_OK && taken) {
        l++; /* the hint lags the messages */
    }
    if (rc != PL_OK) {
        return rc;
    }
    pl_log_info("seq_hint_probed", "%s: conversation said %lld, messages say %lld", conv, hint, l);
    *last = l;
    return PL_OK;
}

/*
 * The last stored seq of conv. The conversation document says where to look, and names the
 * message at last_seq, so confirming it is one lookup by _id.
 *
 * The document is written after the messages, so it can only lag them, and only for
 * messages of a batch cut short by a crash: those lie inside their partition's write intent,
 * are replayed through the careful path first, and advance the sequence as they are found
 * (see note_stored). Any other lag is caught by the {conv, seq} unique index, which refuses
 * a taken number (store_one then moves on). A document ahead of the messages (only after the
 * database itself lost writes) fails the confirmation, and the sequence is then found by
 * probing the messages, in both directions, so a number is never skipped or reused.
 */
static int load_last_seq(st_seq_t *s, const char *conv, long long *last)
{
    long long hint = 0;
    pl_msg_t at; /* the message the document names at last_seq */
    memset(&at, 0, sizeof(at));
    int rc = s->db.conv_hint(s->db.ud, conv, &hint, at.msg_id);
    if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
        return rc;
    }
    if (hint == 0) {
        *last = 0; /* a new conversation: see above for why nothing is probed */
        return PL_OK;
    }
    if (at.msg_id[0] != '\0') {
        rc = find_stored(s, &at);
        if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
            return rc;
        }
        if (rc == PL_OK && at.seq == hint) {
            *last = hint;
            return PL_OK;
        }
    }
    return probe_last(s, conv, hint, last);
}

/* The next seq for conv. seq_commit() advances the cache as numbers are handed out, and
 * seq_forget() drops it when a write fails or is fenced, so the next use reloads it. */
static int seq_next(st_seq_t *s, const char *conv, long long *next)
{
    struct seq_entry *e = seq_find(s, conv);
    if (e == NULL) {
        long long last;
        int rc = load_last_seq(s, conv, &last);
        if (rc != PL_OK) {
            return rc;
        }
        if ((e = calloc(1, sizeof(*e))) == NULL) {
            return PL_ERR_NOMEM;
        }
        snprintf(e->conv, sizeof(e->conv), "%s", conv);
        e->last = last;
        size_t h = bucket(conv);
        e->next = s->b[h];
        s->b[h] = e;
        s->n++;
    }
    *next = e->last + 1;
    return PL_OK;
}

static void seq_commit(st_seq_t *s, const char *conv, long long seq)
{
    struct seq_entry *e = seq_find(s, conv);
    if (e != NULL && seq > e->last) {
        e->last = seq;
    }
}

/* A message found already stored (a replay): the sequence moves past it, so the numbers
 * handed out next do not collide with what a batch cut short by a crash had stored. */
static int note_stored(st_seq_t *s, const pl_msg_t *m)
{
    long long next;
    int rc = seq_next(s, m->conv, &next);
    if (rc == PL_OK) {
        seq_commit(s, m->conv, m->seq);
    }
    return rc;
}

/* ---- the careful path ---- */

/*
 * One message: already stored (keep its seq), or numbered and inserted alone, skipping
 * numbers the unique index says are taken. looked_up: the caller knows it is not stored.
 */
static int store_one(st_seq_t *s, pl_msg_t *m, int looked_up, unsigned char *replayed)
{
    /* A number handed out by a failed bulk is tried first: the bulk may have stored later
     * messages of the conversation, and only this one can fill the place it left. */
    long long first_try = m->seq;
    *replayed = 0;
    for (int attempt = 0; attempt < 100000; attempt++) {
        int rc = looked_up && attempt == 0 ? PL_ERR_NOTFOUND : find_stored(s, m);
        if (rc == PL_OK) {
            pl_log_debug("replay", "%s in %s keeps seq %lld", m->msg_id, m->conv, m->seq);
            *replayed = 1;
            return note_stored(s, m);
        }
        if (rc != PL_ERR_NOTFOUND) {
            return rc;
        }
        long long next = first_try;
        first_try = 0;
        if (next <= 0 && (rc = seq_next(s, m->conv, &next)) != PL_OK) {
            return rc;
        }
        m->seq = next;
        rc = s->db.insert(s->db.ud, m);
        if (rc == PL_OK) {
            pl_log_debug("stored_one", "%s in %s gets seq %lld", m->msg_id, m->conv, next);
            seq_commit(s, m->conv, next);
            return PL_OK;
        }
        if (rc != PL_ERR_EXISTS) {
            seq_forget(s, m->conv);
            return rc;
        }
        /* Refused: if not by its msg_id (checked again above), the number was taken. */
        seq_commit(s, m->conv, next);
        pl_metric_inc(s->m_conflicts);
    }
    return PL_ERR_INTERNAL;
}

struct found_ctx {
    st_rec_t *recs;
    size_t n;
};

static void on_found(void *arg, const char *msg_id, long long seq, long long ts_ms)
{
    struct found_ctx *f = arg;
    for (size_t i = 0; i < f->n; i++) {
        st_rec_t *r = &f->recs[i];
        if (r->first && r->careful && !r->replayed && strcmp(r->m.msg_id, msg_id) == 0) {
            /* A replay keeps the seq and timestamp it was stored with. */
            r->m.seq = seq;
            r->m.ts_ms = ts_ms;
            r->replayed = 1;
        }
    }
}

/* Marks replayed every careful record whose msg_id is stored, in one query: a server that
 * scans pays one scan for the batch, not one per record. */
static int find_careful(st_seq_t *s, st_rec_t *recs, size_t n)
{
    const char **ids = calloc(n ? n : 1, sizeof(*ids));
    size_t k = 0;
    if (ids == NULL) {
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (recs[i].first && recs[i].careful) {
            ids[k++] = recs[i].m.msg_id;
        }
    }
    struct found_ctx f = {recs, n};
    int rc = k > 0 ? s->db.find_msgs(s->db.ud, ids, k, on_found, &f) : PL_OK;
    free(ids);
    return rc;
}

/* Reads the write intent of partition p again and starts its cold window. */
static int meet_partition(st_seq_t *s, int32_t p, long long first_offset)
{
    long long end;
    int rc = s->db.read_intent(s->db.ud, (int)p, &end);
    if (rc != PL_OK) {
        s->parts[p].intent_known = 0;
        return rc;
    }
    s->parts[p].careful_until = end;
    s->parts[p].intent_end = end;
    s->parts[p].intent_known = 1;
    /* Offsets that do not follow on mean a start, a rebalance or a retry: whatever this store
     * remembers of the partition's recent writes may be incomplete. */
    s->parts[p].cold_until = monotonic_s() + s->cold_check_s;
    if (end >= first_offset) {
        pl_log_info("careful_replay", "partition %d: offsets %lld..%lld may be stored", (int)p,
                    first_offset, end);
    }
    return PL_OK;
}

/*
 * Marks the records that may already be stored: those at or below their partition's write
 * intent, read again whenever the partition's offsets do not follow on from the last batch
 * (after a start, a rebalance or a retry from an earlier offset).
 */
static int mark_careful(st_seq_t *s, st_rec_t *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int32_t p = recs[i].partition;
        if (p < 0 || p >= ST_MAX_PARTITIONS) {
            recs[i].careful = 1;
            continue;
        }
        struct part *pt = &s->parts[p];
        if (!pt->intent_known || recs[i].offset != pt->last_offset + 1) {
            int rc = meet_partition(s, p, recs[i].offset);
            if (rc != PL_OK) {
                return rc;
            }
        }
        pt->last_offset = recs[i].offset;
        recs[i].careful = recs[i].offset <= pt->careful_until;
    }
    return PL_OK;
}

/* 1 while partition p is in its cold window. */
static int is_cold(const st_seq_t *s, int32_t p, double now)
{
    return p < 0 || p >= ST_MAX_PARTITIONS || now < s->parts[p].cold_until;
}

/*
 * Sorts the fast records out: a resend this store wrote lately keeps its seq without a
 * query, and one it may not know (its partition is cold) is looked up by _id, since a resend
 * refused in mid-bulk costs renumbering (see settle_refused). One lookup now is far cheaper.
 */
static int check_fast(st_seq_t *s, st_rec_t *recs, size_t n)
{
    double now = monotonic_s();
    for (size_t i = 0; i < n; i++) {
        st_rec_t *r = &recs[i];
        r->replayed = r->looked_up = 0;
        r->fast = r->first && !r->careful;
        struct recent *seen = r->first && r->careful ? recent_find(s, r->m.msg_id) : NULL;
        if (seen != NULL && seen->announced) {
            /* Careful only because the partition's intent covers it (a restart claims a
             * range ahead), but this process stored and announced its first copy: a
             * client's resend, answered on its device like any other. */
            r->m.seq = seen->seq;
            r->m.ts_ms = seen->ts_ms;
            r->replayed = 1;
            r->careful = 0;
        } else if (r->fast && recent_get(s, &r->m)) {
            r->replayed = 1;
            r->fast = 0;
        } else if (r->fast && is_cold(s, r->partition, now)) {
            pl_metric_inc(s->m_cold_checks);
            pl_msg_t probe = r->m;
            int rc = find_stored(s, &probe);
            if (rc == PL_OK) {
                r->m.seq = probe.seq;
                r->m.ts_ms = probe.ts_ms;
                r->replayed = 1;
                r->fast = 0;
                r->looked_up = 1;
            } else if (rc != PL_ERR_NOTFOUND) {
                return rc;
            }
        }
    }
    return PL_OK;
}

/* ---- write intents ---- */

/*
 * Records a write intent for each partition of the fast records: "records up to this offset
 * may be stored", declared ST_INTENT_AHEAD records past the batch and only rewritten when a
 * batch goes beyond it, all partitions in one write. A restarted or newly assigned store takes
 * the careful path for them, because a bulk insert cut short is not guaranteed to have stored
 * a prefix (FerretDB splits large bulks and goes on after a refused document).
 */
static int write_intents(st_seq_t *s, const st_rec_t *recs, size_t n)
{
    int parts[ST_MAX_PARTITIONS];
    long long ends[ST_MAX_PARTITIONS];
    size_t k = 0;
    for (size_t i = 0; i < n && k < ST_MAX_PARTITIONS; i++) {
        int32_t p = recs[i].partition;
        if (!recs[i].fast || p < 0 || p >= ST_MAX_PARTITIONS) {
            continue;
        }
        int later = 0;
        for (size_t j = i + 1; j < n && !later; j++) {
            later = recs[j].fast && recs[j].partition == p;
        }
        if (later) {
            continue; /* the partition's last fast record carries it */
        }
        if (s->parts[p].intent_known && recs[i].offset <= s->parts[p].intent_end) {
            continue; /* inside what an earlier batch declared */
        }
        /* Declared ST_INTENT_AHEAD records ahead, so most batches write no intent at all; the
         * price is that many more records, at most, take the careful path after a crash. */
        parts[k] = (int)p;
        ends[k++] = recs[i].offset + ST_INTENT_AHEAD;
    }
    int rc = k > 0 ? s->db.write_intents(s->db.ud, parts, ends, k) : PL_OK;
    for (size_t j = 0; j < k && rc == PL_OK; j++) {
        s->parts[parts[j]].intent_end = ends[j];
    }
    return rc;
}

/* ---- a refused bulk ---- */

/* Settles one record of a refused bulk (see settle_refused). */
static int settle_one(st_seq_t *s, st_rec_t *r)
{
    long long assigned = r->m.seq;
    pl_msg_t probe = r->m;
    int rc = find_stored(s, &probe);
    if (rc == PL_OK && probe.seq != assigned) {
        r->m.seq = probe.seq; /* a resend of an earlier message: it keeps its seq */
        r->m.ts_ms = probe.ts_ms;
        r->replayed = 1;
        return PL_OK;
    }
    struct seq_entry *e = seq_find(s, r->m.conv);
    if (rc == PL_OK) {
        if (e != NULL && assigned == e->last + 1) {
            e->last = assigned; /* stored by this bulk, in its place */
            return PL_OK;
        }
        /* Stored by this bulk past a number that stayed unused: numbered again. */
        pl_log_info("renumbered", "%s in %s: seq %lld left a gap; numbered again", r->m.msg_id,
                    r->m.conv, assigned);
        if ((rc = s->db.delete_msg(s->db.ud, r->m.msg_id)) != PL_OK) {
            return rc;
        }
    } else if (rc != PL_ERR_NOTFOUND) {
        return rc;
    }
    r->m.seq = 0;
    return store_one(s, &r->m, 1, &r->replayed);
}

/*
 * After a bulk insert was refused at bulk[stored]. The ones before it are in, numbered
 * contiguously. The rest may or may not be: FerretDB goes on after a refusal, and a refused
 * one may be a client's resend of a message stored by an earlier batch, whose number in this
 * bulk then stays unused. So each conversation's sequence is rewound to its last number known
 * stored, and the rest go one at a time, in order: a resend keeps its earlier seq; one this
 * bulk stored keeps its number when it is the next one, or else is taken out and numbered
 * again (nothing of this batch has been announced yet); one not stored takes the next free
 * number. No gap opens, and the order of the partition is kept.
 */
static int settle_refused(st_seq_t *s, st_rec_t **bulk, size_t stored, size_t k)
{
    for (size_t j = k; j-- > stored;) {
        /* Walking back, the last write per conversation is its first refused-or-later seq. */
        struct seq_entry *e = seq_find(s, bulk[j]->m.conv);
        if (e != NULL) {
            e->last = bulk[j]->m.seq - 1;
        }
    }
    int rc = PL_OK;
    for (size_t j = stored; j < k && rc == PL_OK; j++) {
        rc = settle_one(s, bulk[j]);
    }
    return rc;
}

/* ---- the batch ---- */

/* The careful records one at a time, then the replays found move the sequences past
 * themselves: a message missing among them first takes the lowest free number (the place a
 * crash left). */
static int write_careful(st_seq_t *s, st_rec_t *recs, size_t n)
{
    int rc = find_careful(s, recs, n);
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (recs[i].first && recs[i].careful && !recs[i].replayed) {
            recs[i].m.seq = 0;
            rc = store_one(s, &recs[i].m, 1, &recs[i].replayed);
        }
    }
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (recs[i].first && (recs[i].careful || recs[i].looked_up) && recs[i].replayed) {
            rc = note_stored(s, &recs[i].m);
        }
    }
    return rc;
}

/* The fast path: numbered from memory, one ordered insert. */
static int write_fast(st_seq_t *s, st_rec_t *recs, size_t n)
{
    st_rec_t **bulk = calloc(n ? n : 1, sizeof(*bulk));
    size_t k = 0, stored = 0;
    int rc = bulk != NULL ? PL_OK : PL_ERR_NOMEM;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        long long next;
        if (recs[i].fast && (rc = seq_next(s, recs[i].m.conv, &next)) == PL_OK) {
            pl_log_debug("assign", "%s in %s takes seq %lld", recs[i].m.msg_id, recs[i].m.conv,
                         next);
            recs[i].m.seq = next;
            seq_commit(s, recs[i].m.conv, next);
            bulk[k++] = &recs[i];
        }
    }
    if (rc == PL_OK && k > 0) {
        double t0 = monotonic_s();
        rc = s->db.insert_many(s->db.ud, (const pl_msg_t *const *)bulk, k, &stored);
        pl_metric_observe(s->m_write_seconds, monotonic_s() - t0);
    }
    if (rc == PL_ERR_EXISTS) {
        rc = settle_refused(s, bulk, stored, k);
    } else if (rc != PL_OK) {
        /* Nothing is known about this attempt: forget the numbers handed out. */
        for (size_t j = 0; j < k; j++) {
            seq_forget(s, bulk[j]->m.conv);
        }
    }
    free(bulk);
    return rc;
}

int st_seq_write(st_seq_t *s, st_rec_t *recs, size_t n, int attempt)
{
    if (s->n >= SEQCACHE_MAX) {
        /* Bounded, and only between batches (every number handed out is then in the
         * conversation documents): reloading costs two lookups by _id per conversation. */
        cache_clear(s);
    }
    int rc = PL_OK;
    for (size_t i = 0; i < n; i++) {
        /* Nothing is known about what a failed attempt stored: go carefully. */
        recs[i].careful = attempt > 0;
        recs[i].replayed = 0;
    }
    if (attempt == 0) {
        rc = mark_careful(s, recs, n);
    }
    if (rc == PL_OK) {
        rc = check_fast(s, recs, n);
    }
    if (rc == PL_OK) {
        rc = write_careful(s, recs, n);
    }
    if (rc == PL_OK) {
        rc = write_intents(s, recs, n);
    }
    if (rc == PL_OK) {
        rc = write_fast(s, recs, n);
    }
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (recs[i].first) {
            recent_put(s, &recs[i].m);
        }
    }
    return rc;
}
