/*
 * Kafka through librdkafka, configured the way DESIGN section 3 requires: idempotent producers
 * with acks=all whose delivery reports are the only source of acks, and consumers that store
 * offsets only after their work is done and start from the earliest offset in a new group.
 * Latency settings are explicit because librdkafka 2.0's defaults favour throughput.
 * Errors reach callers as PL_ERR_* codes. A producer is thread-safe; a consumer belongs to the
 * thread that polls it.
 */
#ifndef PARLEY_KAFKA_H
#define PARLEY_KAFKA_H

#include <stddef.h>
#include <stdint.h>

typedef struct pl_kafka_s pl_kafka_t;

/*
 * Called once per produced record, from pl_kafka_poll() or pl_kafka_flush() on the caller's
 * thread: err is PL_OK when the broker acknowledged the record under acks=all, otherwise
 * PL_ERR_UNAVAIL (the outcome is failed or unknown: never treat it as delivered).
 */
typedef void (*pl_kafka_dr_fn)(void *ud, void *opaque, int err);

/* Extra "key=value" librdkafka properties, NULL-terminated pairs; may be NULL. */
typedef const char *const *pl_kafka_props_t;

/*
 * Creates an idempotent producer for brokers ("host:port,…"). dr may be NULL. Returns PL_OK,
 * PL_ERR_CONFIG (the property that failed is logged) or PL_ERR_NOMEM.
 */
int pl_kafka_producer_new(const char *brokers, pl_kafka_props_t props, pl_kafka_dr_fn dr, void *ud,
                          pl_kafka_t **out);

/*
 * Queues one record; the key and value are copied. opaque comes back in the delivery report.
 * Returns PL_OK, PL_ERR_UNAVAIL when the local queue is full (back off and retry), PL_ERR_TOOBIG,
 * or PL_ERR_INTERNAL.
 */
int pl_kafka_produce(pl_kafka_t *k, const char *topic, const char *key, size_t keylen,
                     const char *value, size_t vlen, void *opaque);

/* Serves delivery reports, waiting at most timeout_ms. Returns how many events were served. */
int pl_kafka_poll(pl_kafka_t *k, int timeout_ms);

/* Waits until every queued record is reported, at most timeout_ms. PL_OK or PL_ERR_UNAVAIL. */
int pl_kafka_flush(pl_kafka_t *k, int timeout_ms);

/*
 * Makes librdkafka write one byte to fd (a pipe's write end) whenever delivery reports are
 * waiting, so an event loop can call pl_kafka_poll(k, 0) when it is readable.
 */
void pl_kafka_io_event(pl_kafka_t *k, int fd);

/* PL_OK when a broker answers a metadata request within timeout_ms. Thread-safe. */
int pl_kafka_ping(pl_kafka_t *k, int timeout_ms);

/* Records in flight (queued or awaiting a report). */
int pl_kafka_outq_len(pl_kafka_t *k);

/* Creates a consumer in group subscribed to topic. Errors as pl_kafka_producer_new(). */
int pl_kafka_consumer_new(const char *brokers, const char *group, const char *topic,
                          pl_kafka_props_t props, pl_kafka_t **out);

/* One consumed record; key and value are borrowed until pl_kafka_release(). */
typedef struct pl_kafka_rec_s {
    const char *key;
    size_t keylen;
    const char *value;
    size_t vlen;
    int32_t partition;
    int64_t offset;
    void *handle;
} pl_kafka_rec_t;

/*
 * Fetches up to max records, waiting at most timeout_ms for the first. Returns the count (0 on
 * timeout), or PL_ERR_UNAVAIL. Errors the consumer recovers from by itself are logged.
 */
long pl_kafka_consume(pl_kafka_t *k, pl_kafka_rec_t *recs, size_t max, int timeout_ms);
/* As pl_kafka_consume(), then goes on gathering for up to gather_ms after the first record
 * (or until max): a batch's fixed costs are shared by more records, for that much latency. */
long pl_kafka_consume_gather(pl_kafka_t *k, pl_kafka_rec_t *recs, size_t max, int timeout_ms,
                             int gather_ms);

/* Releases records from pl_kafka_consume(). */
void pl_kafka_release(pl_kafka_rec_t *recs, size_t n);

/*
 * Marks recs as done: each partition's offset after its highest record is stored, and
 * committed automatically within a second. Returns PL_OK or PL_ERR_INTERNAL.
 */
int pl_kafka_store_offsets(pl_kafka_t *k, const pl_kafka_rec_t *recs, size_t n);

/* The underlying rd_kafka_t, for tests that drive librdkafka's mock cluster. */
void *pl_kafka_handle(pl_kafka_t *k);

/* Total lag over the assigned partitions, or -1 when unknown. */
long long pl_kafka_lag(pl_kafka_t *k);

/*
 * For a producer: flushes for at most 10 s, then frees. For a consumer: leaves the group
 * (committing stored offsets), then frees. Sets *k to NULL. Accepts NULL.
 */
void pl_kafka_free(pl_kafka_t **k);

#endif
