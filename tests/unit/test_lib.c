/*
 * Unit tests of the shared library's standalone modules: the error table, bounded buffers,
 * configuration getters, encodings, the metrics registry, the HTTP status mapping, and held
 * HTTP requests answered from another thread (a real server on a loopback port).
 */
#include "parley/buf.h"
#include "parley/cfg.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/http.h"
#include "parley/log.h"
#include "parley/metrics.h"

#include <CUnit/Basic.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_err_table(void)
{
    CU_ASSERT_EQUAL(PL_OK, 0);
    CU_ASSERT_STRING_EQUAL(pl_errname(PL_ERR_TOOBIG), "PL_ERR_TOOBIG");
    CU_ASSERT_STRING_EQUAL(pl_errcode(PL_ERR_TOOBIG), "too_large");
    CU_ASSERT_STRING_EQUAL(pl_errcode(PL_ERR_RATELIMIT), "rate_limited");
    CU_ASSERT_STRING_EQUAL(pl_errcode(PL_ERR_UNAVAIL), "unavailable");
    CU_ASSERT_STRING_EQUAL(pl_strerror(12345), "unknown error");
    CU_ASSERT_STRING_EQUAL(pl_errname(-999), "PL_ERR_UNKNOWN");
    /* Every code is negative and distinct. */
    int codes[] = {
#define C(name, val, code, text) val,
        PL_ERRNO_MAP(C)
#undef C
    };
    size_t n = sizeof(codes) / sizeof(codes[0]);
    for (size_t i = 1; i < n; i++) {
        CU_ASSERT(codes[i] < 0);
        for (size_t j = 0; j < i; j++) {
            CU_ASSERT_NOT_EQUAL(codes[i], codes[j]);
        }
    }
}

static void test_http_status(void)
{
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_INVAL), 400);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_UNAUTH), 401);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_EXPIRED), 401);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_FORBIDDEN), 403);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_NOTFOUND), 404);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_EXISTS), 409);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_TOOBIG), 413);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_RATELIMIT), 429);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_UNAVAIL), 503);
    CU_ASSERT_EQUAL(pl_http_status_of(PL_ERR_INTERNAL), 500);

    pl_http_resp_t resp;
    memset(&resp, 0, sizeof(resp));
    pl_http_fail(&resp, PL_ERR_TOOBIG, "too big");
    CU_ASSERT_EQUAL(resp.status, 413);
    json_t *e = json_object_get(resp.body, "error");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "code")), "too_large");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "message")), "too big");
    json_decref(resp.body);
}

static void test_buf_cap(void)
{
    pl_buf_t b;
    pl_buf_init(&b, 10);
    CU_ASSERT_EQUAL(pl_buf_append(&b, "hello", 5), PL_OK);
    CU_ASSERT_EQUAL(pl_buf_append(&b, "world", 5), PL_OK);
    CU_ASSERT_EQUAL(b.len, 10);
    CU_ASSERT_STRING_EQUAL(b.data, "helloworld");
    /* One byte over the cap is refused and leaves the contents alone. */
    CU_ASSERT_EQUAL(pl_buf_append(&b, "!", 1), PL_ERR_TOOBIG);
    CU_ASSERT_EQUAL(b.len, 10);
    CU_ASSERT_STRING_EQUAL(b.data, "helloworld");
    CU_ASSERT(b.cap <= 11);
    CU_ASSERT_EQUAL(pl_buf_printf(&b, "%d", 1), PL_ERR_TOOBIG);
    pl_buf_reset(&b);
    CU_ASSERT_EQUAL(b.len, 0);
    CU_ASSERT_EQUAL(pl_buf_printf(&b, "%s-%d", "ab", 42), PL_OK);
    CU_ASSERT_STRING_EQUAL(b.data, "ab-42");
    char *s = pl_buf_detach(&b);
    CU_ASSERT_STRING_EQUAL(s, "ab-42");
    CU_ASSERT_PTR_NULL(b.data);
    free(s);
    pl_buf_free(&b);
    pl_buf_free(NULL);
}

static void test_buf_growth(void)
{
    pl_buf_t b;
    pl_buf_init(&b, 1 << 20);
    for (int i = 0; i < 100000; i++) {
        CU_ASSERT_EQUAL_FATAL(pl_buf_append(&b, "x", 1), PL_OK);
    }
    CU_ASSERT_EQUAL(b.len, 100000);
    CU_ASSERT(b.cap <= (1 << 20) + 1);
    /* A single huge append is refused before any allocation. */
    CU_ASSERT_EQUAL(pl_buf_append(&b, b.data, (size_t)-1 / 2), PL_ERR_TOOBIG);
    pl_buf_free(&b);
}

static void test_cfg(void)
{
    long v;
    int bv;
    unsetenv("PARLEY_T_INT");
    CU_ASSERT_EQUAL(pl_cfg_int("PARLEY_T_INT", 7, 0, 10, &v), PL_OK);
    CU_ASSERT_EQUAL(v, 7);
    setenv("PARLEY_T_INT", "9", 1);
    CU_ASSERT_EQUAL(pl_cfg_int("PARLEY_T_INT", 7, 0, 10, &v), PL_OK);
    CU_ASSERT_EQUAL(v, 9);
    setenv("PARLEY_T_INT", "11", 1);
    CU_ASSERT_EQUAL(pl_cfg_int("PARLEY_T_INT", 7, 0, 10, &v), PL_ERR_CONFIG);
    CU_ASSERT_EQUAL(v, 7);
    setenv("PARLEY_T_INT", "9x", 1);
    CU_ASSERT_EQUAL(pl_cfg_int("PARLEY_T_INT", 7, 0, 10, &v), PL_ERR_CONFIG);
    setenv("PARLEY_T_INT", "", 1);
    CU_ASSERT_EQUAL(pl_cfg_int("PARLEY_T_INT", 7, 0, 10, &v), PL_OK);
    CU_ASSERT_EQUAL(v, 7);
    setenv("PARLEY_T_INT", "99999999999999999999999", 1);
    CU_ASSERT_EQUAL(pl_cfg_int("PARLEY_T_INT", 7, 0, 10, &v), PL_ERR_CONFIG);

    setenv("PARLEY_T_BOOL", "yes", 1);
    CU_ASSERT_EQUAL(pl_cfg_bool("PARLEY_T_BOOL", 0, &bv), PL_OK);
    CU_ASSERT_EQUAL(bv, 1);
    setenv("PARLEY_T_BOOL", "OFF", 1);
    CU_ASSERT_EQUAL(pl_cfg_bool("PARLEY_T_BOOL", 1, &bv), PL_OK);
    CU_ASSERT_EQUAL(bv, 0);
    setenv("PARLEY_T_BOOL", "maybe", 1);
    CU_ASSERT_EQUAL(pl_cfg_bool("PARLEY_T_BOOL", 1, &bv), PL_ERR_CONFIG);
    CU_ASSERT_EQUAL(bv, 1);

    setenv("PARLEY_T_STR", "abc", 1);
    CU_ASSERT_STRING_EQUAL(pl_cfg_str("PARLEY_T_STR", "d"), "abc");
    unsetenv("PARLEY_T_STR");
    CU_ASSERT_STRING_EQUAL(pl_cfg_str("PARLEY_T_STR", "d"), "d");
}

static void test_read_file(void)
{
    char path[] = "/tmp/parley-test-XXXXXX";
    int fd = mkstemp(path);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT_EQUAL(write(fd, "0123456789", 10), 10);
    close(fd);
    char *s = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL(pl_read_file(path, 10, &s, &len), PL_OK);
    CU_ASSERT_EQUAL(len, 10);
    CU_ASSERT_STRING_EQUAL(s, "0123456789");
    free(s);
    CU_ASSERT_EQUAL(pl_read_file(path, 9, &s, &len), PL_ERR_TOOBIG);
    CU_ASSERT_PTR_NULL(s);
    unlink(path);
    CU_ASSERT_EQUAL(pl_read_file(path, 9, &s, &len), PL_ERR_NOTFOUND);
}

static void test_b64url(void)
{
    char out[PL_B64URL_LEN(64)];
    unsigned char back[64];
    /* RFC 4648 test vectors, unpadded. */
    const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *want[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        pl_b64url_encode(in[i], strlen(in[i]), out);
        CU_ASSERT_STRING_EQUAL(out, want[i]);
        long n = pl_b64url_decode(want[i], strlen(want[i]), back, sizeof(back));
        CU_ASSERT_EQUAL(n, (long)strlen(in[i]));
        CU_ASSERT(memcmp(back, in[i], strlen(in[i])) == 0);
    }
    unsigned char bin[] = {0xfb, 0xff, 0xfe};
    pl_b64url_encode(bin, 3, out);
    CU_ASSERT_STRING_EQUAL(out, "-__-");
    /* Strictness: padding, the standard alphabet, stray bits and impossible lengths. */
    CU_ASSERT_EQUAL(pl_b64url_decode("Zg==", 4, back, sizeof(back)), -1);
    CU_ASSERT_EQUAL(pl_b64url_decode("+/+/", 4, back, sizeof(back)), -1);
    CU_ASSERT_EQUAL(pl_b64url_decode("Zh", 2, back, sizeof(back)), -1);
    CU_ASSERT_EQUAL(pl_b64url_decode("Zm9vY", 5, back, sizeof(back)), -1);
    CU_ASSERT_EQUAL(pl_b64url_decode("Zm9vYmFy", 8, back, 5), -1);
}

static void test_hex_time(void)
{
    char out[32];
    unsigned char b[] = {0x00, 0xab, 0xff};
    pl_hex_encode(b, 3, out);
    CU_ASSERT_STRING_EQUAL(out, "00abff");
    char r1[33], r2[33];
    CU_ASSERT_EQUAL(pl_random_hex(r1, 16), PL_OK);
    CU_ASSERT_EQUAL(pl_random_hex(r2, 16), PL_OK);
    CU_ASSERT_EQUAL(strlen(r1), 32);
    CU_ASSERT_STRING_NOT_EQUAL(r1, r2);
    pl_iso8601_ms(1796562000123LL, out);
    CU_ASSERT_STRING_EQUAL(out, "2026-12-06T13:00:00.123Z");
    pl_iso8601_ms(0, out);
    CU_ASSERT_STRING_EQUAL(out, "1970-01-01T00:00:00.000Z");
}

static void test_metrics(void)
{
    pl_metrics_t *m = pl_metrics_new();
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    pl_metric_t *ok = pl_metrics_counter(m, "t_requests_total", "Requests", "code=\"200\"");
    pl_metric_t *bad = pl_metrics_counter(m, "t_requests_total", "Requests", "code=\"500\"");
    pl_metric_t *g = pl_metrics_gauge(m, "t_conns", "Connections", NULL);
    double bounds[] = {0.1, 1};
    pl_metric_t *h = pl_metrics_histogram(m, "t_latency_seconds", "Latency", NULL, bounds, 2);
    CU_ASSERT_PTR_EQUAL(ok, pl_metrics_counter(m, "t_requests_total", "x", "code=\"200\""));
    CU_ASSERT_PTR_NULL(pl_metrics_gauge(m, "t_requests_total", "wrong type", NULL));
    pl_metric_add(ok, 3);
    pl_metric_inc(bad);
    pl_metric_set(g, 5);
    pl_metric_gauge_add(g, -2);
    pl_metric_observe(h, 0.05);
    pl_metric_observe(h, 0.5);
    pl_metric_observe(h, 5);
    pl_metric_inc(NULL);
    CU_ASSERT_EQUAL(pl_metric_value(ok), 3);
    CU_ASSERT_EQUAL(pl_metric_value(g), 3);

    pl_buf_t out;
    pl_buf_init(&out, 1 << 16);
    CU_ASSERT_EQUAL(pl_metrics_render(m, &out), PL_OK);
    const char *t = out.data;
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "# TYPE t_requests_total counter\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_requests_total{code=\"200\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_requests_total{code=\"500\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_conns 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_bucket{le=\"0.1\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_bucket{le=\"1\"} 2\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_count 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(t, "t_latency_seconds_sum 5.55\n"));
    /* HELP/TYPE once per family even with two series. */
    const char *first = strstr(t, "# TYPE t_requests_total");
    CU_ASSERT_PTR_NULL(strstr(first + 1, "# TYPE t_requests_total"));
    pl_buf_free(&out);
    pl_metrics_free(&m);
    CU_ASSERT_PTR_NULL(m);
}

/* ---- held requests (pl_http_hold / pl_http_answer) ---- */

struct held_box {
    pthread_mutex_t lock;
    pl_http_req_t *held[4];
    int n;
};

static void h_hold(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    struct held_box *b = ud;
    pl_http_req_t *h = pl_http_hold(req, resp);
    pthread_mutex_lock(&b->lock);
    b->held[b->n++] = h;
    pthread_mutex_unlock(&b->lock);
}

static int held_count(struct held_box *b)
{
    pthread_mutex_lock(&b->lock);
    int n = b->n;
    pthread_mutex_unlock(&b->lock);
    return n;
}

/* Sends a GET for path to port; returns the connected socket. */
static int http_get(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char req[128];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads the whole answer (HTTP/1.0: until the server closes). */
static void read_all(int fd, char *out, size_t cap)
{
    size_t len = 0;
    ssize_t r;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (len + 1 < cap && (r = read(fd, out + len, cap - 1 - len)) > 0) {
        len += (size_t)r;
    }
    out[len] = '\0';
    close(fd);
}

static void test_http_hold(void)
{
    struct held_box box = {.n = 0};
    pthread_mutex_init(&box.lock, NULL);
    static const pl_http_route_t routes[] = {{"GET", "/hold", h_hold}};
    pl_http_cfg_t cfg = {.bind_addr = "127.0.0.1",
                         .port = 0,
                         .threads = 1,
                         .body_max = 1024,
                         .max_conns = 16,
                         .allow_hold = 1,
                         .routes = routes,
                         .nroutes = 1,
                         .ud = &box};
    pl_http_t *h = NULL;
    CU_ASSERT_EQUAL_FATAL(pl_http_start(&cfg, &h), PL_OK);
    int port = pl_http_port(h);
    int a = http_get(port, "/hold");
    int b = http_get(port, "/hold");
    CU_ASSERT_FATAL(a >= 0 && b >= 0);
    for (int i = 0; i < 500 && held_count(&box) < 2; i++) {
        usleep(10 * 1000);
    }
    CU_ASSERT_EQUAL_FATAL(held_count(&box), 2);
    /* Held: nothing is answered until someone answers. */
    char buf[2048];
    struct timeval tv = {0, 200 * 1000};
    setsockopt(a, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    CU_ASSERT(read(a, buf, sizeof(buf)) < 0);
    /* Answered from this thread (not the server's), each its own way. */
    char *text = strdup("{\"frames\":[],\"next\":1}");
    pl_http_answer(box.held[0], 200, text, strlen(text), 0);
    pl_http_answer_error(box.held[1], PL_ERR_RATELIMIT, "slow down", 1500);
    read_all(a, buf, sizeof(buf));
    CU_ASSERT(strncmp(buf, "HTTP/1.0 200", 12) == 0 || strncmp(buf, "HTTP/1.1 200", 12) == 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "{\"frames\":[],\"next\":1}"));
    read_all(b, buf, sizeof(buf));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, " 429 "));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "Retry-After: 2"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"retry_after_ms\":1500"));
    CU_ASSERT_PTR_NOT_NULL(strstr(buf, "\"code\":\"rate_limited\""));
    /* A held request whose client went away: the answer is dropped, nothing leaks. */
    int c = http_get(port, "/hold");
    for (int i = 0; i < 500 && held_count(&box) < 3; i++) {
        usleep(10 * 1000);
    }
    CU_ASSERT_EQUAL_FATAL(held_count(&box), 3);
    close(c);
    pl_http_answer(box.held[2], 200, strdup("{}"), 2, 0);
    usleep(100 * 1000);
    pl_http_stop(&h);
    pthread_mutex_destroy(&box.lock);
}

static void test_log_level(void)
{
    CU_ASSERT_EQUAL(pl_log_level_parse("debug"), PL_LOG_DEBUG);
    CU_ASSERT_EQUAL(pl_log_level_parse("error"), PL_LOG_ERROR);
    CU_ASSERT_EQUAL(pl_log_level_parse("nonsense"), PL_LOG_INFO);
    CU_ASSERT_EQUAL(pl_log_level_parse(NULL), PL_LOG_INFO);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    pl_log_init("test", PL_LOG_ERROR + 1);
    CU_pSuite s = CU_add_suite("lib", NULL, NULL);
    CU_add_test(s, "error table", test_err_table);
    CU_add_test(s, "http status mapping", test_http_status);
    CU_add_test(s, "buffer cap", test_buf_cap);
    CU_add_test(s, "buffer growth", test_buf_growth);
    CU_add_test(s, "config getters", test_cfg);
    CU_add_test(s, "bounded file read", test_read_file);
    CU_add_test(s, "base64url", test_b64url);
    CU_add_test(s, "hex, random, time", test_hex_time);
    CU_add_test(s, "metrics registry", test_metrics);
    CU_add_test(s, "log level", test_log_level);
    CU_add_test(s, "held http requests", test_http_hold);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
