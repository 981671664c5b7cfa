/*
 * The single writer of conversation sequences. One Kafka partition has one consumer, and a
 * conversation's records share a partition (key = conversation id), so only this thread
 * numbers a conversation while it owns the partition. During a rebalance two instances may
 * briefly overlap; the unique index on {conv, seq} fences them: a refused number means
 * someone else took it, so the message is renumbered. Numbers never skip and never repeat.
 *
 * It decides, for each record of a batch, whether it is already stored (a replay or a
 * client's resend: it keeps its seq) or new (it takes the next number), and writes the new
 * ones. It knows the database only through st_db_t and nothing of Kafka producing or the
 * conversation list. Consumer thread only.
 */
#ifndef PARLEY_ST_SEQ_H
#define PARLEY_ST_SEQ_H

#include "parley/metrics.h"
#include "parley/proto.h"
#include "st_db.h"

#include <stddef.h>
#include <stdint.h>

/* How far past a batch a write intent is declared (see write_intents in st_seq.c). */
#define ST_INTENT_AHEAD   128
#define ST_MAX_PARTITIONS 256

/* One record of parley.messages in a batch, and what the store decided about it. */
typedef struct st_rec_s {
    pl_msg_t m; /* parsed; seq and ts_ms are settled by st_seq_write() */
    int32_t partition;
    int64_t offset;
    unsigned char valid;    /* parsed, and its conversation id matches its members */
    unsigned char first;    /* valid and the first copy of its msg_id in the batch */
    unsigned char replayed; /* already stored before this batch: it keeps its seq */
    unsigned char refused;  /* not allowed (st_policy.h, st_group.h): not stored, its sender
                               is told refuse_code (PL_ERR_FORBIDDEN when 0) */
    int refuse_code;
    unsigned char by_admin;        /* an edit or recall in a group by an admin or its owner */
    char target_id[PL_MSG_ID_LEN]; /* an edit's or recall's target, found by st_edit_check */
    /* working state of one st_seq_write() call */
    unsigned char careful;   /* may already be stored: checked and written one at a time */
    unsigned char fast;      /* numbered from memory and bulk inserted */
    unsigned char looked_up; /* found or not by a lookup already */
} st_rec_t;

typedef struct st_seq_s st_seq_t;

/*
 * Creates the allocator over db (copied). cold_check_s: how long after it meets a partition
 * a record its memory does not know is looked up by _id before taking a number. metrics may
 * be NULL. NULL when out of memory.
 */
st_seq_t *st_seq_new(const st_db_t *db, int cold_check_s, pl_metrics_t *metrics);
void st_seq_free(st_seq_t **s);

/*
 * Settles every first record of recs: a stored one gets its stored seq and time and
 * replayed = 1; a new one gets the next number of its conversation and is inserted. attempt
 * 0 trusts the partitions' write intents; a retry (attempt > 0) treats every record as
 * possibly stored. Returns PL_OK, or the database's error (nothing is then known about what
 * was written: retry the batch with attempt + 1).
 */
int st_seq_write(st_seq_t *s, st_rec_t *recs, size_t n, int attempt);

/*
 * Notes that the first records of recs were announced to every member (their batch
 * completed): a later copy of one met on the careful path is then a client's resend, not a
 * first copy a crash left unannounced. Call after the batch's announcements were acknowledged.
 */
void st_seq_announced(st_seq_t *s, const st_rec_t *recs, size_t n);

/* The last number handed out in conv, or 0 when this allocator does not know it. */
long long st_seq_last(const st_seq_t *s, const char *conv);

#endif
