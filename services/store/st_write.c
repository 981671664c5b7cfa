/*
 * A batch of parley.messages, from records to announcements: parse and check each record,
 * keep the first copy of each msg_id, have the sequence allocator (st_seq.c) number and store
 * the messages, bring each conversation document up to its latest message, and produce every
 * message of the batch to parley.committed, replays included, so a message whose
 * announcement was lost to a crash is announced again. Consumer thread only.
 */
#include "store.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double monotonic_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/*
 * Parses recs into out. A malformed record, or one whose conversation id does not match its
 * members, is logged and skipped (only gateways produce here; it must never block the
 * partition). The same message twice in one batch (a client's retry) is stored once: only its
 * first copy is marked first.
 */
static void parse_batch(st_ctx_t *ctx, const pl_kafka_rec_t *recs, st_rec_t *out, size_t n,
                        int attempt)
{
    for (size_t i = 0; i < n; i++) {
        st_rec_t *r = &out[i];
        char conv[PL_CONV_ID_LEN];
        r->partition = recs[i].partition;
        r->offset = recs[i].offset;
        if (pl_msg_parse(recs[i].value, recs[i].vlen, &r->m) != PL_OK) {
            continue;
        }
        if (pl_conv_kind(r->m.conv) == 'g') {
            /* A group item: its receiver is the group (st_group.h decides the rest). */
            snprintf(conv, sizeof(conv), "%s", r->m.receiver);
            r->valid = 1;
        } else if (strcmp(r->m.kind, PL_KIND_SYSTEM) == 0) {
            /* A user's own stream (made by parley-auth): its one member is both ends. */
            pl_user_conv(r->m.receiver, conv);
            r->valid = strcmp(r->m.sender, r->m.receiver) == 0;
        } else {
            pl_conv_id(r->m.sender, r->m.receiver, conv);
            r->valid = 1;
        }
        r->valid = r->valid && strcmp(conv, r->m.conv) == 0 && r->m.refused[0] == '\0';
        r->first = r->valid;
        for (size_t j = 0; r->first && j < i; j++) {
            r->first = !(out[j].first && strcmp(out[j].m.msg_id, r->m.msg_id) == 0);
        }
    }
    for (size_t i = 0; i < n && attempt == 0; i++) {
        if (!out[i].valid) {
            pl_metric_inc(ctx->m_invalid);
            pl_log_error("invalid_record", "partition %d offset %lld is not a valid message",
                         (int)out[i].partition, (long long)out[i].offset);
        }
    }
}

/* The conversation documents: one upsert per conversation of the batch, with its highest
 * seq and latest time, in one bulk write. */
static int upsert_conversations(st_ctx_t *ctx, const st_rec_t *recs, size_t n)
{
    pl_msg_t *tops = calloc(n ? n : 1, sizeof(*tops));
    const pl_msg_t **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    size_t k = 0;
    if (tops == NULL || ptrs == NULL) {
        free(tops);
        free(ptrs);
        return PL_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        if (!recs[i].first) {
            continue;
        }
        size_t t = 0;
        while (t < k && strcmp(tops[t].conv, recs[i].m.conv) != 0) {
            t++;
        }
        if (t == k) {
            tops[k++] = recs[i].m;
        } else if (recs[i].m.seq > tops[t].seq) {
            long long ts = tops[t].ts_ms;
            tops[t] = recs[i].m;
            tops[t].ts_ms = ts > recs[i].m.ts_ms ? ts : recs[i].m.ts_ms;
        } else if (recs[i].m.ts_ms > tops[t].ts_ms) {
            tops[t].ts_ms = recs[i].m.ts_ms;
        }
    }
    size_t w = 0;
    for (size_t t = 0; t < k; t++) {
        /* Only resends of older messages: a batch that completed already wrote a higher
         * last_seq, and naming an older message as last_msg_id would send the next load of
         * this conversation's sequence down its probing path. */
        if (tops[t].seq >= st_seq_last(ctx->seq, tops[t].conv)) {
            ptrs[w++] = &tops[t];
        }
    }
    double t0 = monotonic_s();
    int rc = st_mongo_upsert_conversations(ctx->mongo, ptrs, w);
    pl_metric_observe(ctx->m_upsert_seconds, monotonic_s() - t0);
    free(tops);
    free(ptrs);
    return rc;
}

/* Produces one record to topic, keyed by conv, waiting while the local queue is full. Takes
 * rec (freed here). */
static int produce_rec(st_ctx_t *ctx, const char *topic, const char *conv, char *rec)
{
    if (rec == NULL) {
        return PL_ERR_NOMEM;
    }
    int rc;
    for (int tries = 0;; tries++) {
        rc = pl_kafka_produce(ctx->producer, topic, conv, strlen(conv), rec, strlen(rec), NULL);
        if (rc != PL_ERR_UNAVAIL || tries >= 150) {
            break; /* a queue full for 15 s: the batch is retried */
        }
        pl_kafka_poll(ctx->producer, 100); /* local queue full: let it drain */
    }
    free(rec);
    return rc;
}

static int announce_one(st_ctx_t *ctx, const pl_msg_t *m)
{
    return produce_rec(ctx, PL_TOPIC_COMMITTED, m->conv, pl_msg_record(m));
}

/* Produces the batch's messages, and its refusals for their senders, and the items of its
 * group changes on the members' own streams (uitems, st_group_commit), and waits for every
 * acknowledgement. */
static int announce(st_ctx_t *ctx, st_rec_t *recs, size_t n, json_t *uitems)
{
    double t0 = monotonic_s();
    int rc = PL_OK;
    atomic_store(&ctx->batch_failed, 0);
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        if (recs[i].first) {
            /* A replay found without the careful path is a later copy (a client's resend):
             * its first copy, earlier in the same partition, was announced to everyone by a
             * batch that completed. Careful replays may be that first copy after a crash. */
            recs[i].m.replay = recs[i].replayed && !recs[i].careful;
            rc = announce_one(ctx, &recs[i].m);
        } else if (recs[i].refused) {
            snprintf(recs[i].m.refused, sizeof(recs[i].m.refused), "%s",
                     pl_errcode(recs[i].refuse_code ? recs[i].refuse_code : PL_ERR_FORBIDDEN));
            rc = announce_one(ctx, &recs[i].m);
        }
    }
    for (size_t i = 0; i < json_array_size(uitems) && rc == PL_OK; i++) {
        json_t *item = json_array_get(uitems, i);
        const char *conv = json_string_value(json_object_get(item, "conv"));
        rc = conv ? produce_rec(ctx, PL_TOPIC_MESSAGES, conv, json_dumps(item, JSON_COMPACT))
                  : PL_ERR_NOMEM;
    }
    if (rc == PL_OK) {
        rc = pl_kafka_flush(ctx->producer, 15000);
    }
    if (rc == PL_OK && atomic_load(&ctx->batch_failed)) {
        rc = PL_ERR_UNAVAIL; /* on_committed saw a failed delivery report */
    }
    pl_metric_observe(ctx->m_announce_seconds, monotonic_s() - t0);
    return rc;
}

/*
 * Who may write to whom, before anything takes a seq (st_policy.h). A refused message that is
 * already stored (a replay of a batch cut short before a block) keeps its place: refusing it
 * now would take back what its receiver may have seen.
 */
static int check_policy(st_ctx_t *ctx, st_rec_t *r, size_t n)
{
    int rc = st_policy_check(ctx->policy, r, n);
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        bson_t *doc = NULL;
        if (!r[i].refused) {
            continue;
        }
        int found = pl_mongo_find_id(ctx->mongo, "messages", r[i].m.msg_id, &doc);
        bson_destroy(doc);
        if (found == PL_OK) {
            r[i].refused = 0;
            r[i].first = 1;
        } else if (found != PL_ERR_NOTFOUND) {
            rc = found;
        }
    }
    return rc;
}

int st_write_batch(st_ctx_t *ctx, const pl_kafka_rec_t *recs, size_t n, int attempt)
{
    st_rec_t *r = calloc(n ? n : 1, sizeof(*r));
    if (r == NULL) {
        return PL_ERR_NOMEM;
    }
    parse_batch(ctx, recs, r, n, attempt);
    json_t *uitems = json_array();
    int rc = uitems ? check_policy(ctx, r, n) : PL_ERR_NOMEM;
    if (rc == PL_OK) {
        rc = st_group_check(ctx->groups, r, n);
    }
    if (rc == PL_OK) {
        rc = st_edit_check(ctx->mongo, &ctx->edit, r, n);
    }
    if (rc == PL_OK) {
        rc = st_seq_write(ctx->seq, r, n, attempt);
    }
    if (rc == PL_OK) {
        rc = st_edit_apply(ctx->mongo, r, n);
    }
    if (rc == PL_OK) {
        rc = st_group_commit(ctx->groups, r, n, uitems);
    }
    if (rc == PL_OK) {
        rc = upsert_conversations(ctx, r, n);
    }
    if (rc == PL_OK) {
        rc = announce(ctx, r, n, uitems);
    }
    json_decref(uitems);
    if (rc == PL_OK) {
        st_seq_announced(ctx->seq, r, n);
        for (size_t i = 0; i < n; i++) {
            if (r[i].first) {
                pl_metric_inc(r[i].replayed ? ctx->m_replayed : ctx->m_stored);
            } else if (r[i].refused) {
                pl_metric_inc(ctx->m_refused);
            }
        }
        pl_metric_observe(ctx->m_batch, (double)n);
    } else {
        st_group_abort(ctx->groups);
        pl_log_warn("store_retry", "batch of %zu not stored yet: %s", n, pl_strerror(rc));
    }
    for (size_t i = 0; i < n; i++) {
        pl_msg_clear(&r[i].m);
    }
    free(r);
    return rc;
}

int st_ensure_indexes(st_ctx_t *ctx)
{
    if (atomic_load(&ctx->indexes_ready)) {
        return PL_OK;
    }
    int rc = st_mongo_ensure_indexes(ctx->mongo);
    if (rc == PL_OK) {
        rc = st_group_indexes(ctx->mongo);
    }
    if (rc == PL_OK) {
        atomic_store(&ctx->indexes_ready, 1);
    }
    return rc;
}
