/*
 * librdkafka wrapper. All configuration lives in set_common(), producer_defaults and
 * consumer_defaults below, so the delivery semantics of the whole cluster can be read here.
 */
#include "parley/kafka.h"
#include "parley/err.h"
#include "parley/log.h"

#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct pl_kafka_s {
    rd_kafka_t *rk;
    int consumer;
    pl_kafka_dr_fn dr;
    void *ud;
};

static const char *const common_defaults[] = {
    "socket.nagle.disable",
    "true",
    "socket.keepalive.enable",
    "true",
    "reconnect.backoff.ms",
    "50",
    "reconnect.backoff.max.ms",
    "1000",
    "topic.metadata.refresh.interval.ms",
    "10000",
    NULL,
};

static const char *const producer_defaults[] = {
    "enable.idempotence",
    "true",
    "acks",
    "all",
    "linger.ms",
    "1",
    "batch.num.messages",
    "1000",
    "queue.buffering.max.messages",
    "100000",
    "queue.buffering.max.kbytes",
    "262144",
    /* A record not acknowledged in 10 s is reported failed: the client hears "unavailable"
     * and retries with the same client_id, which the store de-duplicates. */
    "message.timeout.ms",
    "10000",
    "partitioner",
    "murmur2_random",
    NULL,
};

static const char *const consumer_defaults[] = {
    "enable.auto.commit",
    "true",
    "enable.auto.offset.store",
    "false",
    "auto.commit.interval.ms",
    "500",
    "auto.offset.reset",
    "earliest",
    "fetch.wait.max.ms",
    "10",
    "fetch.error.backoff.ms",
    "10",
    "session.timeout.ms",
    "10000",
    "heartbeat.interval.ms",
    "1000",
    "max.poll.interval.ms",
    "60000",
    "statistics.interval.ms",
    "0",
    NULL,
};

static int set_all(rd_kafka_conf_t *conf, const char *const *kv)
{
    char err[256];
    for (size_t i = 0; kv != NULL && kv[i] != NULL && kv[i + 1] != NULL; i += 2) {
        if (rd_kafka_conf_set(conf, kv[i], kv[i + 1], err, sizeof(err)) != RD_KAFKA_CONF_OK) {
            pl_log_error("config_invalid", "kafka property %s: %s", kv[i], err);
            return PL_ERR_CONFIG;
        }
    }
    return PL_OK;
}

/* Applies "k=v;k=v" (at most 4 KiB). A malformed entry is a configuration error. */
static int set_list(rd_kafka_conf_t *conf, const char *list)
{
    char buf[4096];
    if (strlen(list) >= sizeof(buf)) {
        pl_log_error("config_invalid", "PARLEY_KAFKA_CONFIG is longer than 4 KiB");
        return PL_ERR_CONFIG;
    }
    memcpy(buf, list, strlen(list) + 1);
    for (char *item = buf, *next; item != NULL && *item; item = next) {
        next = strchr(item, ';');
        if (next != NULL) {
            *next++ = '\0';
        }
        char *eq = strchr(item, '=');
        if (eq == NULL || eq == item) {
            pl_log_error("config_invalid", "PARLEY_KAFKA_CONFIG: expected key=value");
            return PL_ERR_CONFIG;
        }
        *eq = '\0';
        const char *kv[] = {item, eq + 1, NULL};
        int rc = set_all(conf, kv);
        if (rc != PL_OK) {
            return rc;
        }
    }
    return PL_OK;
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    pl_log_fields(level <= 3   ? PL_LOG_ERROR
                  : level <= 4 ? PL_LOG_WARN
                               : PL_LOG_DEBUG,
                  "kafka_log", json_pack("{s:s}", "facility", fac), "%s", buf);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    (void)opaque;
    /* Broker-down and similar errors are transient: librdkafka retries by itself. */
    pl_log_warn("kafka_error", "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void on_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    pl_kafka_t *k = opaque;
    if (m->err) {
        pl_log_warn("kafka_delivery_failed", "%s", rd_kafka_err2str(m->err));
    }
    if (k->dr != NULL) {
        k->dr(k->ud, m->_private, m->err ? PL_ERR_UNAVAIL : PL_OK);
    }
}

static int create(const char *brokers, pl_kafka_props_t props, const char *const *defaults,
                  const char *group, pl_kafka_t *k)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    int rc = set_all(conf, common_defaults);
    if (rc == PL_OK) {
        rc = set_all(conf, defaults);
    }
    if (rc == PL_OK && group != NULL) {
        const char *g[] = {"group.id", group, NULL};
        rc = set_all(conf, g);
    }
    if (rc == PL_OK) {
        const char *b[] = {"bootstrap.servers", brokers, NULL};
        rc = set_all(conf, b);
    }
    if (rc == PL_OK) {
        rc = set_all(conf, props);
    }
    /* Operator settings for every client, applied last: TLS or SASL to the brokers
     * ("security.protocol=ssl;ssl.ca.location=/etc/parley/ca.pem"), or any other property. */
    const char *extra = getenv("PARLEY_KAFKA_CONFIG");
    if (rc == PL_OK && extra != NULL && *extra) {
        rc = set_list(conf, extra);
    }
    /* librdkafka's own debug contexts ("fetch,protocol", …) for diagnosing a live cluster. */
    const char *debug = getenv("PARLEY_KAFKA_DEBUG");
    if (rc == PL_OK && debug != NULL && *debug) {
        const char *d[] = {"debug", debug, NULL};
        rc = set_all(conf, d);
    }
    if (rc != PL_OK) {
        rd_kafka_conf_destroy(conf);
        return rc;
    }
    rd_kafka_conf_set_opaque(conf, k);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (!k->consumer) {
        rd_kafka_conf_set_dr_msg_cb(conf, on_dr);
    }
    k->rk =
        rd_kafka_new(k->consumer ? RD_KAFKA_CONSUMER : RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (k->rk == NULL) {
        pl_log_error("kafka_create_failed", "%s", err);
        rd_kafka_conf_destroy(conf);
        return PL_ERR_CONFIG;
    }
    return PL_OK;
}

int pl_kafka_producer_new(const char *brokers, pl_kafka_props_t props, pl_kafka_dr_fn dr, void *ud,
                          pl_kafka_t **out)
{
    *out = NULL;
    pl_kafka_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return PL_ERR_NOMEM;
    }
    k->dr = dr;
    k->ud = ud;
    int rc = create(brokers, props, producer_defaults, NULL, k);
    if (rc != PL_OK) {
        free(k);
        return rc;
    }
    *out = k;
    return PL_OK;
}

int pl_kafka_produce(pl_kafka_t *k, const char *topic, const char *key, size_t keylen,
                     const char *value, size_t vlen, void *opaque)
{
    rd_kafka_resp_err_t err = rd_kafka_producev(
        k->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, keylen),
        RD_KAFKA_V_VALUE((void *)value, vlen), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return PL_OK;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return PL_ERR_UNAVAIL;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        return PL_ERR_TOOBIG;
    default:
        pl_log_error("kafka_produce_failed", "%s", rd_kafka_err2str(err));
        return err == RD_KAFKA_RESP_ERR__FATAL ? PL_ERR_INTERNAL : PL_ERR_UNAVAIL;
    }
}

int pl_kafka_poll(pl_kafka_t *k, int timeout_ms)
{
    return rd_kafka_poll(k->rk, timeout_ms);
}

int pl_kafka_flush(pl_kafka_t *k, int timeout_ms)
{
    return rd_kafka_flush(k->rk, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR ? PL_OK : PL_ERR_UNAVAIL;
}

void pl_kafka_io_event(pl_kafka_t *k, int fd)
{
    rd_kafka_queue_t *q = rd_kafka_queue_get_main(k->rk);
    rd_kafka_queue_io_event_enable(q, fd, "1", 1);
    rd_kafka_queue_destroy(q);
}

int pl_kafka_ping(pl_kafka_t *k, int timeout_ms)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(k->rk, 0, NULL, &md, timeout_ms);
    if (md != NULL) {
        rd_kafka_metadata_destroy(md);
    }
    return err == RD_KAFKA_RESP_ERR_NO_ERROR ? PL_OK : PL_ERR_UNAVAIL;
}

int pl_kafka_outq_len(pl_kafka_t *k)
{
    return rd_kafka_outq_len(k->rk);
}

int pl_kafka_consumer_new(const char *brokers, const char *group, const char *topic,
                          pl_kafka_props_t props, pl_kafka_t **out)
{
    *out = NULL;
    pl_kafka_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        return PL_ERR_NOMEM;
    }
    k->consumer = 1;
    int rc = create(brokers, props, consumer_defaults, group, k);
    if (rc != PL_OK) {
        free(k);
        return rc;
    }
    rd_kafka_poll_set_consumer(k->rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(k->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        pl_log_error("kafka_subscribe_failed", "%s: %s", topic, rd_kafka_err2str(err));
        rd_kafka_destroy(k->rk);
        free(k);
        return PL_ERR_CONFIG;
    }
    *out = k;
    return PL_OK;
}

static long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

long pl_kafka_consume(pl_kafka_t *k, pl_kafka_rec_t *recs, size_t max, int timeout_ms)
{
    return pl_kafka_consume_gather(k, recs, max, timeout_ms, 0);
}

long pl_kafka_consume_gather(pl_kafka_t *k, pl_kafka_rec_t *recs, size_t max, int timeout_ms,
                             int gather_ms)
{
    size_t n = 0;
    int wait = timeout_ms;
    long long until = 0;
    while (n < max) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(k->rk, wait);
        /* Take what is already fetched; once a record has opened the gathering window, wait
         * for more until it ends. */
        if (m != NULL && !m->err && until == 0 && gather_ms > 0) {
            until = now_ms() + gather_ms;
        }
        long long left = until != 0 ? until - now_ms() : 0;
        wait = left > 0 ? (int)left : 0;
        if (m == NULL && wait == 0) {
            break;
        }
        if (m == NULL) {
            continue;
        }
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                pl_log_warn("kafka_consume_error", "%s", rd_kafka_message_errstr(m));
            }
            rd_kafka_message_destroy(m);
            continue;
        }
        recs[n].key = m->key;
        recs[n].keylen = m->key_len;
        recs[n].value = m->payload;
        recs[n].vlen = m->len;
        recs[n].partition = m->partition;
        recs[n].offset = m->offset;
        recs[n].handle = m;
        n++;
    }
    return (long)n;
}

void pl_kafka_release(pl_kafka_rec_t *recs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        rd_kafka_message_destroy(recs[i].handle);
        recs[i].handle = NULL;
    }
}

int pl_kafka_store_offsets(pl_kafka_t *k, const pl_kafka_rec_t *recs, size_t n)
{
    if (n == 0) {
        return PL_OK;
    }
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_message_t *m = recs[i].handle;
        const char *topic = rd_kafka_topic_name(m->rkt);
        rd_kafka_topic_partition_t *p = rd_kafka_topic_partition_list_find(l, topic, m->partition);
        if (p == NULL) {
            p = rd_kafka_topic_partition_list_add(l, topic, m->partition);
            p->offset = m->offset + 1;
        } else if (m->offset + 1 > p->offset) {
            p->offset = m->offset + 1;
        }
    }
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(k->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    /* After a rebalance took a partition away, storing its offset fails harmlessly: the new
     * owner replays from the last commit and the consumers are idempotent. */
    if (err && err != RD_KAFKA_RESP_ERR__STATE) {
        pl_log_warn("kafka_offset_store_failed", "%s", rd_kafka_err2str(err));
        return PL_ERR_INTERNAL;
    }
    return PL_OK;
}

void *pl_kafka_handle(pl_kafka_t *k)
{
    return k->rk;
}

long long pl_kafka_lag(pl_kafka_t *k)
{
    rd_kafka_topic_partition_list_t *parts = NULL;
    if (rd_kafka_assignment(k->rk, &parts) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        return -1;
    }
    long long lag = 0;
    rd_kafka_position(k->rk, parts);
    for (int i = 0; i < parts->cnt; i++) {
        int64_t lo, hi;
        rd_kafka_topic_partition_t *p = &parts->elems[i];
        if (rd_kafka_get_watermark_offsets(k->rk, p->topic, p->partition, &lo, &hi) ||
            p->offset < 0) {
            continue;
        }
        lag += hi > p->offset ? hi - p->offset : 0;
    }
    rd_kafka_topic_partition_list_destroy(parts);
    return lag;
}

void pl_kafka_free(pl_kafka_t **pk)
{
    if (pk == NULL || *pk == NULL) {
        return;
    }
    pl_kafka_t *k = *pk;
    if (k->consumer) {
        rd_kafka_consumer_close(k->rk);
    } else if (rd_kafka_flush(k->rk, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        pl_log_warn("kafka_flush_incomplete", "%d records unreported at shutdown",
                    rd_kafka_outq_len(k->rk));
    }
    rd_kafka_destroy(k->rk);
    free(k);
    *pk = NULL;
}
