/*
 * The consumer loop of the store and the router: take a batch, do its work, store its
 * offsets only once the work is done, retry the same batch with a growing backoff while the
 * work fails (a dependency down), and stop on a signal even in the middle of those retries,
 * leaving the batch's offsets unstored so it is done again after the restart. Not for the
 * work itself, which the service passes as a callback. Runs on the calling thread.
 */
#ifndef PARLEY_CONSUME_H
#define PARLEY_CONSUME_H

#include "parley/kafka.h"
#include "parley/metrics.h"

#include <signal.h>
#include <stddef.h>

typedef struct pl_consume_cfg_s {
    pl_kafka_t *consumer; /* borrowed */
    size_t batch_max;     /* records per batch, at most */
    int poll_ms;          /* how long a poll waits for the first record */
    int gather_ms;        /* then how long a batch goes on gathering (0: what is fetched) */
    const sigset_t *stop; /* blocked signals that end the loop (SIGTERM, SIGINT) */
    void *ud;
    /*
     * Does the work of one batch; attempt is 0 the first time and counts the retries of the
     * same records. PL_OK stores the batch's offsets; anything else retries it after a
     * backoff (100 ms, growing to 1 s). Records are valid during the call only.
     */
    int (*work)(void *ud, const pl_kafka_rec_t *recs, size_t n, int attempt);
    /* Called after every poll, batch or not (serving a producer, say). May be NULL. */
    void (*idle)(void *ud);
    /* A gauge set to the consumer's lag once a second. May be NULL. */
    pl_metric_t *lag;
} pl_consume_cfg_t;

/*
 * Runs until one of cfg->stop's signals is pending (it is taken). Returns PL_OK then, or
 * PL_ERR_NOMEM when the batch array cannot be allocated.
 */
int pl_consume_run(const pl_consume_cfg_t *cfg);

/* The backoff before retry number attempt (1, 2, …) of a batch, in milliseconds. Pure. */
long pl_consume_backoff_ms(int attempt);

#endif
