/*
 * Read and delivered cursors (DESIGN 7.5), on a thread of their own: consumes parley.cursors,
 * pushes each cursor at once as a receipt (a parley.committed record of type "receipt" that the
 * router delivers), and writes the cursors to the `members` documents coalesced: at most one
 * write per (conversation, member) per flush interval, whatever the frame rate. A record's
 * offset is stored only after its cursor is written, so an acknowledged cursor survives a
 * crash of the store (it is read again and written then). Cursors only move forward ($max)
 * and never past the conversation's last seq. Not for the message path: the consumer, the
 * producer and the thread are the module's own, so a flush of parley.messages' producer never
 * waits for receipts.
 */
#ifndef PARLEY_ST_CURSOR_H
#define PARLEY_ST_CURSOR_H

#include "parley/metrics.h"
#include "parley/mongo.h"
#include "parley/redis.h"

typedef struct st_cursors_s st_cursors_t;

typedef struct st_cursors_cfg_s {
    const char *brokers;    /* copied by librdkafka */
    const char *group;      /* consumer group */
    const char *redis_host; /* for the readers' policy tokens (st_share.h) */
    int redis_port;
    pl_mongo_t *mongo;     /* borrowed; thread-safe */
    pl_metrics_t *metrics; /* borrowed */
    long flush_ms;         /* the coalescing interval (1000 by default) */
    long share_max;        /* groups above this many members get no receipts pushed (100) */
} st_cursors_cfg_t;

/* Creates the consumer and producer and starts the thread. PL_OK, or an error (logged). */
int st_cursors_start(const st_cursors_cfg_t *cfg, st_cursors_t **out);
/* Stops the thread after a last flush (records not written stay unstored: they come again
 * after a restart), leaves the group and frees. Accepts NULL. */
void st_cursors_stop(st_cursors_t **c);

#endif
