/*
 * What the sequence allocator needs of the database, as a table of functions: the real one
 * is MongoDB (st_mongo.c), the unit tests' is an in-memory fake with the same unique indexes.
 * Every function returns PL_OK or a PL_ERR_* code (PL_ERR_UNAVAIL when the database does not
 * answer); none keeps a pointer it is given. Called from the consumer thread only.
 */
#ifndef PARLEY_ST_DB_H
#define PARLEY_ST_DB_H

#include "parley/proto.h"

#include <stddef.h>

/* Called by find_msgs for each stored message found; strings valid during the call only. */
typedef void (*st_found_fn)(void *arg, const char *msg_id, long long seq, long long ts_ms);

typedef struct st_db_s {
    void *ud;
    /* The stored message msg_id: PL_OK with its seq and time, or PL_ERR_NOTFOUND. */
    int (*find_msg)(void *ud, const char *msg_id, long long *seq, long long *ts_ms);
    /* Every stored message among ids, in one query, through found(). */
    int (*find_msgs)(void *ud, const char *const *ids, size_t n, st_found_fn found, void *arg);
    /* *taken = 1 when a message of conv has this seq. */
    int (*seq_taken)(void *ud, const char *conv, long long seq, int *taken);
    /* The conversation document's last_seq and last_msg_id ("" when absent): PL_OK, or
     * PL_ERR_NOTFOUND for a new conversation. */
    int (*conv_hint)(void *ud, const char *conv, long long *last_seq, char *last_msg_id);
    /* Inserts one message; PL_ERR_EXISTS when a unique index ({conv, seq} or _id) refuses it. */
    int (*insert)(void *ud, const pl_msg_t *m);
    /* Inserts ms in order. PL_OK, or PL_ERR_EXISTS with *stored = how many went in before the
     * first refusal (later ones may or may not be in: servers go on after a refusal). */
    int (*insert_many)(void *ud, const pl_msg_t *const *ms, size_t n, size_t *stored);
    int (*delete_msg)(void *ud, const char *msg_id);
    /* The write intent of a partition: the highest offset that may be stored, -1 when none. */
    int (*read_intent)(void *ud, int partition, long long *end);
    /* Sets the write intents of n partitions, in one round trip. */
    int (*write_intents)(void *ud, const int *partitions, const long long *ends, size_t n);
} st_db_t;

#endif
