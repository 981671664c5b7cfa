/*
 * The store's sequence allocator against an in-memory database with MongoDB's unique indexes
 * ({_id} and {conv, seq}) and FerretDB's habit of going on after a refused document in a bulk.
 * Each scenario checks what guarantees 2 and 3 need: every message stored once, each
 * conversation numbered 1, 2, 3, … with no gap, a resend keeping its first seq.
 */
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "st_seq.h"

#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 512

/* ---- the fake database ---- */

static struct {
    struct {
        char id[PL_MSG_ID_LEN];
        char conv[PL_CONV_ID_LEN];
        long long seq, ts;
    } msg[MAX_MSGS];
    int nmsg;
    struct {
        char conv[PL_CONV_ID_LEN];
        long long last_seq;
        char last_id[PL_MSG_ID_LEN];
    } conv[16];
    int nconv;
    long long intent[8];
    int finds;      /* find_msg calls */
    int fail_after; /* insert_many stores this many, then the database "crashes" (-1: never) */
} db;

static int idx_of(const char *id)
{
    for (int i = 0; i < db.nmsg; i++) {
        if (strcmp(db.msg[i].id, id) == 0) {
            return i;
        }
    }
    return -1;
}

static int f_find_msg(void *ud, const char *id, long long *seq, long long *ts)
{
    (void)ud;
    db.finds++;
    int i = idx_of(id);
    if (i < 0) {
        return PL_ERR_NOTFOUND;
    }
    *seq = db.msg[i].seq;
    *ts = db.msg[i].ts;
    return PL_OK;
}

static int f_find_msgs(void *ud, const char *const *ids, size_t n, st_found_fn fn, void *arg)
{
    (void)ud;
    for (size_t k = 0; k < n; k++) {
        int i = idx_of(ids[k]);
        if (i >= 0) {
            fn(arg, db.msg[i].id, db.msg[i].seq, db.msg[i].ts);
        }
    }
    return PL_OK;
}

static int f_seq_taken(void *ud, const char *conv, long long seq, int *taken)
{
    (void)ud;
    *taken = 0;
    for (int i = 0; i < db.nmsg; i++) {
        *taken |= strcmp(db.msg[i].conv, conv) == 0 && db.msg[i].seq == seq;
    }
    return PL_OK;
}

static int f_conv_hint(void *ud, const char *conv, long long *last, char *last_id)
{
    (void)ud;
    for (int i = 0; i < db.nconv; i++) {
        if (strcmp(db.conv[i].conv, conv) == 0) {
            *last = db.conv[i].last_seq;
            snprintf(last_id, PL_MSG_ID_LEN, "%s", db.conv[i].last_id);
            return PL_OK;
        }
    }
    *last = 0;
    last_id[0] = '\0';
    return PL_ERR_NOTFOUND;
}

static int f_insert(void *ud, const pl_msg_t *m)
{
    int taken = 0;
    f_seq_taken(ud, m->conv, m->seq, &taken);
    if (taken || idx_of(m->msg_id) >= 0) {
        return PL_ERR_EXISTS;
    }
    CU_ASSERT_FATAL(db.nmsg < MAX_MSGS);
    snprintf(db.msg[db.nmsg].id, PL_MSG_ID_LEN, "%s", m->msg_id);
    snprintf(db.msg[db.nmsg].conv, PL_CONV_ID_LEN, "%s", m->conv);
    db.msg[db.nmsg].seq = m->seq;
    db.msg[db.nmsg].ts = m->ts_ms;
    db.nmsg++;
    return PL_OK;
}

/* Like FerretDB: a refused document does not stop the rest; *stored counts up to the first. */
static int f_insert_many(void *ud, const pl_msg_t *const *ms, size_t n, size_t *stored)
{
    int refused = 0;
    *stored = 0;
    for (size_t i = 0; i < n; i++) {
        if (db.fail_after >= 0 && (int)i >= db.fail_after) {
            db.fail_after = -1;
            return PL_ERR_UNAVAIL; /* cut short: what went in stays in */
        }
        if (f_insert(ud, ms[i]) != PL_OK) {
            refused = 1;
        } else if (!refused) {
            (*stored)++;
        }
    }
    return refused ? PL_ERR_EXISTS : PL_OK;
}

static int f_delete(void *ud, const char *id)
{
    (void)ud;
    int i = idx_of(id);
    if (i >= 0) {
        db.msg[i] = db.msg[--db.nmsg];
    }
    return PL_OK;
}

static int f_read_intent(void *ud, int p, long long *end)
{
    (void)ud;
    *end = db.intent[p];
    return PL_OK;
}

static int f_write_intents(void *ud, const int *parts, const long long *ends, size_t n)
{
    (void)ud;
    for (size_t i = 0; i < n; i++) {
        db.intent[parts[i]] = ends[i];
    }
    return PL_OK;
}

static const st_db_t fake = {NULL,     f_find_msg,    f_find_msgs, f_seq_taken,   f_conv_hint,
                             f_insert, f_insert_many, f_delete,    f_read_intent, f_write_intents};

static void db_reset(void)
{
    memset(&db, 0, sizeof(db));
    for (int p = 0; p < 8; p++) {
        db.intent[p] = -1;
    }
    db.fail_after = -1;
}

/* What the store's batch writer does after numbering: each conversation document names its
 * highest message. */
static void upsert_convs(const st_rec_t *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!r[i].first) {
            continue;
        }
        int c = 0;
        while (c < db.nconv && strcmp(db.conv[c].conv, r[i].m.conv) != 0) {
            c++;
        }
        if (c == db.nconv) {
            snprintf(db.conv[db.nconv++].conv, PL_CONV_ID_LEN, "%s", r[i].m.conv);
        }
        if (r[i].m.seq > db.conv[c].last_seq) {
            db.conv[c].last_seq = r[i].m.seq;
            snprintf(db.conv[c].last_id, PL_MSG_ID_LEN, "%s", r[i].m.msg_id);
        }
    }
}

/* ---- batches ---- */

static long long next_offset[8];

/* A record from sender to receiver with client_id cid, at the next offset of partition p. */
static void rec(st_rec_t *r, int p, const char *sender, const char *receiver, const char *cid)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->m.sender, sizeof(r->m.sender), "%s", sender);
    snprintf(r->m.receiver, sizeof(r->m.receiver), "%s", receiver);
    snprintf(r->m.client_id, sizeof(r->m.client_id), "%s", cid);
    pl_conv_id(sender, receiver, r->m.conv);
    pl_msg_id(sender, cid, r->m.msg_id);
    r->m.content = "x";
    r->m.content_len = 1;
    r->m.ts_ms = 1000 + next_offset[p];
    r->partition = p;
    r->offset = next_offset[p]++;
    r->valid = r->first = 1;
}

/* Writes recs as one batch, retrying like pl_consume_run, then the conversation documents. */
static void write(st_seq_t *s, st_rec_t *r, size_t n)
{
    int rc = PL_ERR_UNAVAIL;
    for (int attempt = 0; attempt < 5 && rc != PL_OK; attempt++) {
        rc = st_seq_write(s, r, n, attempt);
    }
    CU_ASSERT_EQUAL_FATAL(rc, PL_OK);
    upsert_convs(r, n);
}

/* Every conversation numbered 1..max with no gap, every msg_id once. */
static void assert_gapless(void)
{
    for (int i = 0; i < db.nmsg; i++) {
        CU_ASSERT_EQUAL(idx_of(db.msg[i].id), i);
        long long max = 0;
        int count = 0;
        for (int j = 0; j < db.nmsg; j++) {
            if (strcmp(db.msg[j].conv, db.msg[i].conv) == 0) {
                max = db.msg[j].seq > max ? db.msg[j].seq : max;
                count++;
                CU_ASSERT(j == i || db.msg[j].seq != db.msg[i].seq);
            }
        }
        CU_ASSERT_EQUAL(max, count);
    }
}

static long long seq_of(const char *sender, const char *cid)
{
    char id[PL_MSG_ID_LEN];
    pl_msg_id(sender, cid, id);
    int i = idx_of(id);
    return i < 0 ? -1 : db.msg[i].seq;
}

static st_seq_t *fresh(int cold_s)
{
    return st_seq_new(&fake, cold_s, NULL);
}

/* ---- tests ---- */

static void test_numbering(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(0);
    st_rec_t r[6];
    rec(&r[0], 0, "alice", "bob", "a1");
    rec(&r[1], 0, "carol", "dave", "c1");
    rec(&r[2], 0, "bob", "alice", "b1");
    rec(&r[3], 0, "alice", "bob", "a2");
    rec(&r[4], 0, "dave", "carol", "d1");
    rec(&r[5], 0, "alice", "bob", "a3");
    write(s, r, 6);
    CU_ASSERT_EQUAL(db.nmsg, 6);
    CU_ASSERT_EQUAL(seq_of("alice", "a1"), 1);
    CU_ASSERT_EQUAL(seq_of("bob", "b1"), 2);
    CU_ASSERT_EQUAL(seq_of("alice", "a3"), 4);
    CU_ASSERT_EQUAL(seq_of("dave", "d1"), 2);
    CU_ASSERT_EQUAL(st_seq_last(s, "d:alice:bob"), 4);
    CU_ASSERT_EQUAL(db.finds, 0);           /* the hot path reads nothing */
    CU_ASSERT(db.intent[0] >= r[5].offset); /* the intent covers what was written */
    assert_gapless();
    st_seq_free(&s);
}

static void test_resend_later_batch(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(0);
    st_rec_t a[2], b[3];
    rec(&a[0], 0, "alice", "bob", "a1");
    rec(&a[1], 0, "alice", "bob", "a2");
    write(s, a, 2);
    rec(&b[0], 0, "alice", "bob", "a3");
    rec(&b[1], 0, "alice", "bob", "a1"); /* the client's retry of a1 */
    rec(&b[2], 0, "alice", "bob", "a4");
    write(s, b, 3);
    CU_ASSERT_EQUAL(b[1].replayed, 1);
    CU_ASSERT_EQUAL(b[1].m.seq, 1);
    CU_ASSERT_EQUAL(b[1].m.ts_ms, a[0].m.ts_ms); /* the first copy's time, too */
    CU_ASSERT_EQUAL(seq_of("alice", "a4"), 4);
    CU_ASSERT_EQUAL(db.nmsg, 4);
    CU_ASSERT_EQUAL(db.finds, 0); /* recognised from memory */
    assert_gapless();
    st_seq_free(&s);
}

static void test_restart_replay(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(0);
    st_rec_t a[3];
    rec(&a[0], 1, "alice", "bob", "a1");
    rec(&a[1], 1, "alice", "bob", "a2");
    rec(&a[2], 1, "carol", "bob", "c1");
    write(s, a, 3);
    st_seq_free(&s);
    /* A restarted store reads the partition again from before those records (its offsets
     * were never stored) and gets new ones behind them. */
    s = fresh(0);
    next_offset[1] = 0;
    st_rec_t b[5];
    rec(&b[0], 1, "alice", "bob", "a1");
    rec(&b[1], 1, "alice", "bob", "a2");
    rec(&b[2], 1, "carol", "bob", "c1");
    rec(&b[3], 1, "alice", "bob", "a3");
    rec(&b[4], 1, "bob", "carol", "b1");
    write(s, b, 5);
    CU_ASSERT(b[0].replayed && b[1].replayed && b[2].replayed);
    CU_ASSERT_EQUAL(b[1].m.seq, 2);
    CU_ASSERT_EQUAL(b[3].m.seq, 3);
    CU_ASSERT_EQUAL(b[4].m.seq, 2);
    CU_ASSERT_EQUAL(db.nmsg, 5);
    assert_gapless();
    st_seq_free(&s);
}

/* After a restart the partition's intent covers records ahead of the last one written, so
 * new records there go the careful way. A resend of one of them that this process stored
 * and announced is a client's resend (answered on its device: careful 0); one whose batch
 * was not announced yet stays careful (it may be a first copy nobody was told of). */
static void test_careful_resend_after_announce(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(0);
    st_rec_t a[1];
    rec(&a[0], 2, "alice", "bob", "a0");
    write(s, a, 1);
    st_seq_free(&s);
    s = fresh(0);
    db.intent[2] = 100; /* the crashed process had claimed offsets up to 100 */
    st_rec_t b[2], c[2];
    rec(&b[0], 2, "alice", "bob", "a1");
    rec(&b[1], 2, "alice", "bob", "a2");
    write(s, b, 2);
    CU_ASSERT(b[0].careful && !b[0].replayed);
    st_seq_announced(s, b, 1); /* a1's batch was announced; a2's (say) not yet */
    rec(&c[0], 2, "alice", "bob", "a1");
    rec(&c[1], 2, "alice", "bob", "a2");
    write(s, c, 2);
    CU_ASSERT(c[0].replayed && !c[0].careful);
    CU_ASSERT_EQUAL(c[0].m.seq, 2);
    CU_ASSERT(c[1].replayed && c[1].careful);
    CU_ASSERT_EQUAL(c[1].m.seq, 3);
    CU_ASSERT_EQUAL(db.nmsg, 3);
    assert_gapless();
    st_seq_free(&s);
}

static void test_bulk_cut_short(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(0);
    st_rec_t r[5];
    for (int i = 0; i < 5; i++) {
        char cid[8];
        snprintf(cid, sizeof(cid), "m%d", i);
        rec(&r[i], 2, "alice", "bob", cid);
    }
    db.fail_after = 2; /* two go in, then the database fails: the attempt is retried */
    write(s, r, 5);
    CU_ASSERT_EQUAL(db.nmsg, 5);
    for (int i = 0; i < 5; i++) {
        char cid[8];
        snprintf(cid, sizeof(cid), "m%d", i);
        CU_ASSERT_EQUAL(seq_of("alice", cid), i + 1); /* in the partition's order */
    }
    assert_gapless();
    st_seq_free(&s);
}

static void test_refused_in_mid_bulk(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(0);
    st_rec_t a[2];
    rec(&a[0], 3, "alice", "bob", "x1");
    rec(&a[1], 3, "alice", "bob", "x2");
    write(s, a, 2);
    st_seq_free(&s);
    /* After a restart, past the write intent (so on the fast path) and with no cold window:
     * a resend of x1 lands in the middle of a bulk, is refused there, and the server goes on
     * storing the records after it. */
    s = fresh(0);
    next_offset[3] = 1000;
    st_rec_t b[3];
    rec(&b[0], 3, "alice", "bob", "y1");
    rec(&b[1], 3, "alice", "bob", "x1");
    rec(&b[2], 3, "alice", "bob", "y2");
    write(s, b, 3);
    CU_ASSERT_EQUAL(b[1].replayed, 1);
    CU_ASSERT_EQUAL(b[1].m.seq, 1);
    CU_ASSERT_EQUAL(seq_of("alice", "y1"), 3);
    CU_ASSERT_EQUAL(seq_of("alice", "y2"), 4); /* renumbered into the place x1 left */
    CU_ASSERT_EQUAL(db.nmsg, 4);
    assert_gapless();
    st_seq_free(&s);
}

static void test_cold_window(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(120);
    st_rec_t a[1];
    rec(&a[0], 4, "alice", "bob", "z1");
    write(s, a, 1);
    st_seq_free(&s);
    s = fresh(120);
    next_offset[4] = 1000;
    st_rec_t b[2];
    rec(&b[0], 4, "alice", "bob", "z1");
    rec(&b[1], 4, "alice", "bob", "z2");
    db.finds = 0;
    write(s, b, 2);
    /* In the cold window each record is looked up before it takes a number: the resend is
     * found without ever entering a bulk. */
    CU_ASSERT(db.finds >= 2);
    CU_ASSERT_EQUAL(b[0].replayed, 1);
    CU_ASSERT_EQUAL(b[0].m.seq, 1);
    CU_ASSERT_EQUAL(b[1].m.seq, 2);
    assert_gapless();
    st_seq_free(&s);
}

static void test_hints_off(void)
{
    db_reset();
    memset(next_offset, 0, sizeof(next_offset));
    st_seq_t *s = fresh(0);
    st_rec_t a[5];
    for (int i = 0; i < 5; i++) {
        char cid[8];
        snprintf(cid, sizeof(cid), "h%d", i);
        rec(&a[i], 5, "alice", "bob", cid);
    }
    write(s, a, 5);
    st_seq_free(&s);
    /* The conversation document lags (3) or runs ahead (9, after the database lost writes):
     * either way the next number follows the messages themselves. */
    for (int round = 0; round < 2; round++) {
        db.conv[0].last_seq = round == 0 ? 3 : 9;
        snprintf(db.conv[0].last_id, PL_MSG_ID_LEN, "%s", round == 0 ? a[2].m.msg_id : "gone");
        s = fresh(0);
        next_offset[5] = 1000 * (round + 1);
        st_rec_t b[1];
        char cid[8];
        snprintf(cid, sizeof(cid), "n%d", round);
        rec(&b[0], 5, "alice", "bob", cid);
        write(s, b, 1);
        CU_ASSERT_EQUAL(b[0].m.seq, 6 + round);
        assert_gapless();
        st_seq_free(&s);
    }
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    pl_log_init("test", PL_LOG_ERROR + 1);
    CU_pSuite s = CU_add_suite("store sequences", NULL, NULL);
    CU_add_test(s, "numbering from memory, gapless per conversation", test_numbering);
    CU_add_test(s, "a resend in a later batch keeps its seq", test_resend_later_batch);
    CU_add_test(s, "a restart replays what may be stored", test_restart_replay);
    CU_add_test(s, "a resend on the careful path after its batch was announced",
                test_careful_resend_after_announce);
    CU_add_test(s, "a bulk cut short, then retried", test_bulk_cut_short);
    CU_add_test(s, "a resend refused in mid-bulk leaves no gap", test_refused_in_mid_bulk);
    CU_add_test(s, "the cold window looks resends up", test_cold_window);
    CU_add_test(s, "conversation hints lagging or ahead", test_hints_off);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
