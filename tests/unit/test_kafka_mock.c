/*
 * Faults a real broker cannot show on demand, through librdkafka's mock cluster and the
 * producer exactly as the gateway configures it (pl_kafka_producer_new): while produce
 * requests fail with NOT_ENOUGH_REPLICAS no record is reported delivered, and a request that
 * times out with its outcome unknown is reported failed, never delivered. DESIGN section 3:
 * the gateway acks only from a delivery report without error.
 */
#include "parley/err.h"
#include "parley/kafka.h"
#include "parley/log.h"
#include "parley/wire.h"

#include <CUnit/Basic.h>
#include <pthread.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <string.h>
#include <time.h>

#define PRODUCE_API 0 /* the Kafka protocol's ApiKey of Produce */

struct reports {
    int ok;
    int failed;
};

static void on_dr(void *ud, void *opaque, int err)
{
    struct reports *r = ud;
    (void)opaque;
    if (err == PL_OK) {
        r->ok++;
    } else {
        r->failed++;
    }
}

static pl_kafka_t *producer(struct reports *r, const char *timeout_ms, rd_kafka_mock_cluster_t **mc)
{
    const char *props[] = {"test.mock.num.brokers",
                           "3",
                           "message.timeout.ms",
                           timeout_ms,
                           "request.timeout.ms",
                           "1000",
                           "retry.backoff.ms",
                           "50",
                           NULL};
    pl_kafka_t *k = NULL;
    CU_ASSERT_EQUAL_FATAL(pl_kafka_producer_new("", props, on_dr, r, &k), PL_OK);
    *mc = rd_kafka_handle_mock_cluster(pl_kafka_handle(k));
    CU_ASSERT_PTR_NOT_NULL_FATAL(*mc);
    rd_kafka_mock_topic_create(*mc, PL_TOPIC_MESSAGES, 1, 3);
    return k;
}

static void wait_reports(pl_kafka_t *k, struct reports *r, int want, int seconds)
{
    time_t end = time(NULL) + seconds;
    while (r->ok + r->failed < want && time(NULL) < end) {
        pl_kafka_poll(k, 100);
    }
}

static void test_not_enough_replicas_is_never_an_ack(void)
{
    struct reports r = {0, 0};
    rd_kafka_mock_cluster_t *mc;
    pl_kafka_t *k = producer(&r, "3000", &mc);
    /* A healthy send first. */
    CU_ASSERT_EQUAL(pl_kafka_produce(k, PL_TOPIC_MESSAGES, "c", 1, "v0", 2, NULL), PL_OK);
    wait_reports(k, &r, 1, 10);
    CU_ASSERT_EQUAL(r.ok, 1);
    /* The window: every produce request fails with NOT_ENOUGH_REPLICAS until the timeout. */
    rd_kafka_resp_err_t errs[400];
    for (int i = 0; i < 400; i++) {
        errs[i] = RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS;
    }
    rd_kafka_mock_push_request_errors_array(mc, PRODUCE_API, 400, errs);
    for (int i = 0; i < 5; i++) {
        CU_ASSERT_EQUAL(pl_kafka_produce(k, PL_TOPIC_MESSAGES, "c", 1, "vw", 2, NULL), PL_OK);
    }
    wait_reports(k, &r, 6, 15);
    CU_ASSERT_EQUAL(r.ok, 1);     /* nothing from the window was reported delivered */
    CU_ASSERT_EQUAL(r.failed, 5); /* every one was reported failed: the client retries */
    /* After the window, sends succeed again. */
    rd_kafka_mock_clear_request_errors(mc, PRODUCE_API);
    CU_ASSERT_EQUAL(pl_kafka_produce(k, PL_TOPIC_MESSAGES, "c", 1, "v2", 2, NULL), PL_OK);
    wait_reports(k, &r, 7, 15);
    CU_ASSERT_EQUAL(r.ok, 2);
    pl_kafka_free(&k);
}

static void test_unknown_outcome_is_never_an_ack(void)
{
    struct reports r = {0, 0};
    rd_kafka_mock_cluster_t *mc;
    pl_kafka_t *k = producer(&r, "2000", &mc);
    CU_ASSERT_EQUAL(pl_kafka_produce(k, PL_TOPIC_MESSAGES, "c", 1, "v0", 2, NULL), PL_OK);
    wait_reports(k, &r, 1, 10);
    CU_ASSERT_EQUAL_FATAL(r.ok, 1);
    /* The leader answers produce requests only after 5 s, past every timeout: the outcome of
     * the request is unknown when the record's time runs out. */
    int32_t leader = 1;
    for (int b = 1; b <= 3; b++) {
        rd_kafka_mock_broker_push_request_error_rtts(
            mc, b, PRODUCE_API, 5, RD_KAFKA_RESP_ERR_NO_ERROR, 5000, RD_KAFKA_RESP_ERR_NO_ERROR,
            5000, RD_KAFKA_RESP_ERR_NO_ERROR, 5000, RD_KAFKA_RESP_ERR_NO_ERROR, 5000,
            RD_KAFKA_RESP_ERR_NO_ERROR, 5000);
    }
    (void)leader;
    CU_ASSERT_EQUAL(pl_kafka_produce(k, PL_TOPIC_MESSAGES, "c", 1, "v1", 2, NULL), PL_OK);
    wait_reports(k, &r, 2, 20);
    CU_ASSERT_EQUAL(r.ok, 1);
    CU_ASSERT_EQUAL(r.failed, 1);
    pl_kafka_free(&k);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Consumes until the first record arrives (the group join takes a while on the mock). */
static long first_batch(pl_kafka_t *c, pl_kafka_rec_t *recs, size_t max, int gather_ms,
                        double *took)
{
    long n = 0;
    for (int i = 0; i < 100 && n == 0; i++) {
        double t0 = now_s();
        n = pl_kafka_consume_gather(c, recs, max, 200, gather_ms);
        *took = now_s() - t0;
    }
    return n;
}

struct later {
    pl_kafka_t *p;
    struct reports *r;
};

/* Produces one record 0.3 s from now, as a sender would while a batch gathers. */
static void *produce_later(void *arg)
{
    struct later *l = arg;
    struct timespec d = {0, 300 * 1000000L};
    nanosleep(&d, NULL);
    pl_kafka_produce(l->p, PL_TOPIC_MESSAGES, "c", 1, "late", 4, NULL);
    wait_reports(l->p, l->r, 3, 10);
    return NULL;
}

/* A batch's gather window (PARLEY_STORE_GATHER_MS, PARLEY_ROUTER_GATHER_MS): a record that
 * arrives within it after the first joins the batch, which is handed over when the window
 * ends; without one, the batch is what was fetched, handed over at once. */
static void test_gather_window(void)
{
    struct reports r = {0, 0};
    rd_kafka_mock_cluster_t *mc;
    pl_kafka_t *p = producer(&r, "5000", &mc);
    pl_kafka_t *c = NULL;
    const char *props[] = {"fetch.wait.max.ms", "10", NULL};
    CU_ASSERT_EQUAL_FATAL(pl_kafka_consumer_new(rd_kafka_mock_cluster_bootstraps(mc), "g",
                                                PL_TOPIC_MESSAGES, props, &c),
                          PL_OK);
    pl_kafka_rec_t recs[16];
    double took = 0;
    CU_ASSERT_EQUAL(pl_kafka_produce(p, PL_TOPIC_MESSAGES, "c", 1, "a", 1, NULL), PL_OK);
    wait_reports(p, &r, 1, 10);
    long n = first_batch(c, recs, 16, 0, &took);
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT(took < 1.0);
    pl_kafka_release(recs, (size_t)(n > 0 ? n : 0));

    CU_ASSERT_EQUAL(pl_kafka_produce(p, PL_TOPIC_MESSAGES, "c", 1, "b", 1, NULL), PL_OK);
    wait_reports(p, &r, 2, 10);
    struct later l = {p, &r};
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, produce_later, &l), 0);
    n = first_batch(c, recs, 16, 1500, &took);
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL(n, 2); /* "late" came 0.3 s into the window */
    CU_ASSERT(took >= 1.4);
    pl_kafka_release(recs, (size_t)(n > 0 ? n : 0));
    pl_kafka_free(&c);
    pl_kafka_free(&p);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    pl_log_init("test", PL_LOG_ERROR + 1);
    CU_pSuite s = CU_add_suite("kafka_mock", NULL, NULL);
    CU_add_test(s, "NOT_ENOUGH_REPLICAS window: no ack", test_not_enough_replicas_is_never_an_ack);
    CU_add_test(s, "request timeout: no ack from an unknown outcome",
                test_unknown_outcome_is_never_an_ack);
    CU_add_test(s, "a batch's gather window", test_gather_window);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
