/*
 * The consumer loop (see consume.h). Signals are blocked by every service at start and read
 * here with sigtimedwait(), which doubles as the backoff between retries: a signal ends the
 * wait at once, so a service stops within one attempt's time whatever is down.
 */
#include "parley/consume.h"
#include "parley/err.h"
#include "parley/log.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

long pl_consume_backoff_ms(int attempt)
{
    return attempt < 10 ? 100L * attempt : 1000L;
}

/* Waits up to ms for a stop signal (0: just looks). 1 when one came (it is taken). */
static int stop_signal(const sigset_t *stop, long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    int rc;
    do {
        rc = sigtimedwait(stop, NULL, &t);
    } while (rc < 0 && errno == EINTR);
    return rc > 0;
}

/* Works one batch until it is done (1) or a stop signal came first (0). */
static int work_batch(const pl_consume_cfg_t *cfg, const pl_kafka_rec_t *recs, size_t n)
{
    for (int attempt = 0;; attempt++) {
        if (attempt > 0 && stop_signal(cfg->stop, pl_consume_backoff_ms(attempt))) {
            pl_log_info("batch_abandoned",
                        "stopping with a batch of %zu unfinished: its offsets "
                        "stay unstored and it is done again after a restart",
                        n);
            return 0;
        }
        int rc = cfg->work(cfg->ud, recs, n, attempt);
        if (rc == PL_OK) {
            pl_kafka_store_offsets(cfg->consumer, recs, n);
            return 1;
        }
        pl_log_warn("batch_retry", "batch of %zu not done (%s); retrying", n, pl_strerror(rc));
    }
}

int pl_consume_run(const pl_consume_cfg_t *cfg)
{
    pl_kafka_rec_t *recs = calloc(cfg->batch_max, sizeof(*recs));
    if (recs == NULL) {
        return PL_ERR_NOMEM;
    }
    time_t lag_at = 0;
    while (!stop_signal(cfg->stop, 0)) {
        long n = pl_kafka_consume_gather(cfg->consumer, recs, cfg->batch_max, cfg->poll_ms,
                                         cfg->gather_ms);
        int done = 1;
        if (n > 0) {
            done = work_batch(cfg, recs, (size_t)n);
            pl_kafka_release(recs, (size_t)n);
        }
        if (cfg->idle != NULL) {
            cfg->idle(cfg->ud);
        }
        if (cfg->lag != NULL && time(NULL) != lag_at) {
            lag_at = time(NULL);
            pl_metric_set(cfg->lag, pl_kafka_lag(cfg->consumer));
        }
        if (!done) {
            break;
        }
    }
    free(recs);
    return PL_OK;
}
