/*
 * The gateway's session layer driven with scripted frames: a fake link records what the
 * session layer writes and asks of its transport, and a fake outside stands for Kafka, Redis
 * and parley-auth, answering when the test says. No sockets, no loop.
 */
#include "gw_session.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "parley/ws.h"

#include "test_keys.h"

#include <CUnit/Basic.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ISS "parley"
#define AUD "parley"

/* ---- a fake transport link ---- */

struct link {
    char frames[32][1024];
    int nframes;
    int held, resumed, throttled_ms;
    uint16_t closed; /* status, 0 while open */
    gw_sess_t *sess;
};

static gw_sessions_t *S;
static pl_metrics_t *metrics;

static int l_send(void *p, const char *text, size_t len)
{
    struct link *l = p;
    if (l->closed) {
        return PL_ERR_UNAVAIL;
    }
    if (l->nframes < 32) {
        snprintf(l->frames[l->nframes++], 1024, "%.*s", (int)len, text);
    }
    return PL_OK;
}

static void l_close(void *p, uint16_t status, const char *reason)
{
    struct link *l = p;
    (void)reason;
    if (!l->closed) {
        l->closed = status;
    }
}

static void l_hold(void *p)
{
    ((struct link *)p)->held = 1;
}

static void l_resume(void *p)
{
    struct link *l = p;
    l->held = 0;
    l->resumed++;
}

static void l_throttle(void *p, long ms)
{
    ((struct link *)p)->throttled_ms = (int)ms;
}

static const gw_link_ops_t link_ops = {l_send, l_close, l_hold, l_resume, l_throttle};

/* ---- a fake outside ---- */

struct produced {
    char topic[64];
    char value[2048];
    void *opaque;
};

static struct {
    struct produced rec[16];
    int nrec;
    int produce_rc;
    int presence; /* adds minus removes */
    /* the last revocation question, answered by the test */
    uint64_t rev_id;
    gw_done_fn rev_done;
    int rev_asked;
    int user_rc; /* the answer to every recipient question */
} out;

static int o_produce(void *ud, const char *topic, const char *key, const char *value, void *opaque)
{
    (void)ud;
    (void)key;
    if (out.produce_rc != PL_OK) {
        return out.produce_rc;
    }
    struct produced *p = &out.rec[out.nrec++ % 16];
    snprintf(p->topic, sizeof(p->topic), "%s", topic);
    snprintf(p->value, sizeof(p->value), "%s", value);
    p->opaque = opaque;
    return PL_OK;
}

static void o_presence_add(void *ud, const char *user, uint64_t id)
{
    (void)ud;
    (void)user;
    (void)id;
    out.presence++;
}

static void o_presence_del(void *ud, const char *user, uint64_t id)
{
    (void)ud;
    (void)user;
    (void)id;
    out.presence--;
}

static void o_check_revoked(void *ud, const char *sid, gw_sessions_t *s, uint64_t id,
                            gw_done_fn done)
{
    (void)ud;
    (void)sid;
    (void)s;
    out.rev_id = id;
    out.rev_done = done;
    out.rev_asked++;
}

static void o_may_post(void *ud, const char *user, const char *conv, gw_answer_fn done, void *arg)
{
    (void)ud;
    (void)user;
    (void)conv;
    done(arg, PL_OK);
}

static void o_is_member(void *ud, const char *user, const char *conv, gw_answer_fn done, void *arg)
{
    (void)ud;
    (void)conv;
    done(arg, strcmp(user, "alice") == 0 ? PL_OK : PL_ERR_FORBIDDEN);
}

static void o_may_write(void *ud, const char *from, const char *to, gw_answer_fn done, void *arg)
{
    (void)ud;
    (void)from;
    (void)to;
    done(arg, out.user_rc);
}

/* ---- keys and tokens ---- */

static pl_jwt_signer_t *signer;
static pl_jwt_verifier_t *verifier;

static int suite_setup(void)
{
    metrics = pl_metrics_new();
    EVP_PKEY *k = EVP_EC_gen("P-256");
    size_t priv_len, pub_len;
    char *priv = test_pem_of(k, 1, &priv_len), *pub = test_pem_of(k, 0, &pub_len);
    int rc = pl_jwt_signer_new(priv, priv_len, ISS, AUD, 900, &signer) ||
             pl_jwt_verifier_new(pub, pub_len, ISS, AUD, 30, NULL, NULL, &verifier);
    free(priv);
    free(pub);
    EVP_PKEY_free(k);
    return rc;
}

static int suite_teardown(void)
{
    pl_jwt_signer_free(&signer);
    pl_jwt_verifier_free(&verifier);
    gw_sessions_free(&S);
    pl_metrics_free(&metrics);
    return 0;
}

static gw_sessions_t *new_sessions(double rate, double burst, long auth_timeout_ms)
{
    gw_sessions_cfg_t cfg = {
        .gw_id = "gw-test",
        .verifier = verifier,
        .outside = {NULL, o_produce, o_presence_add, o_presence_del, o_check_revoked, o_may_write,
                    o_may_post, o_is_member},
        .metrics = metrics,
        .inflight_max = 4,
        .user_rate = rate,
        .user_burst = burst,
        .cursor_rate = 2, /* a burst of 4 */
        .auth_timeout_ms = auth_timeout_ms,
    };
    return gw_sessions_new(&cfg);
}

static void fresh(double rate, double burst)
{
    gw_sessions_free(&S);
    memset(&out, 0, sizeof(out));
    S = new_sessions(rate, burst, 10000);
}

static void claims_for(const char *user, const char *sid, pl_jwt_claims_t *c, char **token)
{
    char *t = NULL;
    CU_ASSERT_EQUAL_FATAL(pl_jwt_sign(signer, user, sid, (long)time(NULL), &t, c), PL_OK);
    if (token != NULL) {
        *token = t;
    } else {
        free(t);
    }
}

static void text(struct link *l, const char *frame)
{
    gw_sessions_link_cbs.on_text(S, l->sess, frame, strlen(frame));
}

/* Opens l as user, authenticated at the handshake, and lets the revocation check pass. */
static void open_as(struct link *l, const char *user, const char *sid)
{
    pl_jwt_claims_t c;
    memset(l, 0, sizeof(*l));
    claims_for(user, sid, &c, NULL);
    l->sess = gw_sessions_link_cbs.on_open(S, l, &link_ops, &c);
    CU_ASSERT_PTR_NOT_NULL_FATAL(l->sess);
    CU_ASSERT_EQUAL(l->held, 1);
    out.rev_done(S, out.rev_id, PL_OK);
}

static int has(const struct link *l, int i, const char *needle)
{
    return i < l->nframes && strstr(l->frames[i], needle) != NULL;
}

/* ---- tests ---- */

static void test_first_frame_auth(void)
{
    fresh(1000, 1000);
    struct link l;
    memset(&l, 0, sizeof(l));
    l.sess = gw_sessions_link_cbs.on_open(S, &l, &link_ops, NULL);
    /* A send before auth closes with 1008. */
    text(&l, "{\"type\":\"send\",\"client_id\":\"c1\",\"to\":\"bob\",\"content\":\"hi\"}");
    CU_ASSERT_EQUAL(l.closed, PL_WS_POLICY);
    gw_sessions_link_cbs.on_closed(S, l.sess);

    memset(&l, 0, sizeof(l));
    l.sess = gw_sessions_link_cbs.on_open(S, &l, &link_ops, NULL);
    char *token = NULL, frame[2048];
    claims_for("alice", "0123456789abcdef0123456789abcdef", NULL, &token);
    snprintf(frame, sizeof(frame), "{\"type\":\"auth\",\"token\":\"%s\"}", token);
    free(token);
    text(&l, frame);
    CU_ASSERT_EQUAL(l.held, 1); /* nothing more is read during the revocation check */
    CU_ASSERT_EQUAL(out.rev_asked, 1);
    CU_ASSERT_EQUAL(out.presence, 0);
    out.rev_done(S, out.rev_id, PL_OK);
    CU_ASSERT_EQUAL(l.resumed, 1);
    CU_ASSERT_TRUE(has(&l, 0, "\"type\":\"ready\""));
    CU_ASSERT_TRUE(has(&l, 0, "\"user\":\"alice\""));
    CU_ASSERT_EQUAL(out.presence, 1);
    gw_sessions_link_cbs.on_closed(S, l.sess);
    CU_ASSERT_EQUAL(out.presence, 0); /* its presence entry goes with it */
    CU_ASSERT_EQUAL(gw_sessions_count(S), 0);
}

static void test_bad_and_revoked_tokens(void)
{
    fresh(1000, 1000);
    struct link l;
    memset(&l, 0, sizeof(l));
    l.sess = gw_sessions_link_cbs.on_open(S, &l, &link_ops, NULL);
    text(&l, "{\"type\":\"auth\",\"token\":\"eyJhbGciOiJub25lIn0.e30.\"}");
    CU_ASSERT_EQUAL(l.closed, PL_WS_POLICY);
    CU_ASSERT_EQUAL(out.rev_asked, 0);
    gw_sessions_link_cbs.on_closed(S, l.sess);

    pl_jwt_claims_t c;
    memset(&l, 0, sizeof(l));
    claims_for("alice", "fedcba9876543210fedcba9876543210", &c, NULL);
    l.sess = gw_sessions_link_cbs.on_open(S, &l, &link_ops, &c);
    out.rev_done(S, out.rev_id, PL_ERR_REVOKED);
    CU_ASSERT_EQUAL(l.closed, PL_WS_POLICY);
    CU_ASSERT_EQUAL(l.resumed, 0);
    CU_ASSERT_EQUAL(out.presence, 0);
    gw_sessions_link_cbs.on_closed(S, l.sess);
    /* An answer for a session that is gone is ignored. */
    out.rev_done(S, out.rev_id, PL_OK);
    CU_ASSERT_EQUAL(out.presence, 0);
}

static void test_send_ack_and_push(void)
{
    fresh(1000, 1000);
    struct link a, a2, b;
    open_as(&a, "alice", "0123456789abcdef0123456789abcdef");
    open_as(&a2, "alice", "11111111111111111111111111111111");
    open_as(&b, "bob", "22222222222222222222222222222222");
    out.user_rc = PL_OK;
    text(&a, "{\"type\":\"send\",\"client_id\":\"c1\",\"to\":\"bob\",\"content\":\"hi\","
             "\"sender\":\"mallory\"}");
    CU_ASSERT_EQUAL_FATAL(out.nrec, 1);
    CU_ASSERT_STRING_EQUAL(out.rec[0].topic, PL_TOPIC_MESSAGES);
    /* The sender is the token's user, whatever the frame says. */
    CU_ASSERT_PTR_NOT_NULL(strstr(out.rec[0].value, "\"sender\":\"alice\""));
    CU_ASSERT_PTR_NOT_NULL(strstr(out.rec[0].value, "\"conv\":\"d:alice:bob\""));
    CU_ASSERT_EQUAL(a.nframes, 1); /* no ack before the delivery report */
    gw_sessions_delivered(S, out.rec[0].opaque, PL_OK);
    CU_ASSERT_TRUE(has(&a, 1, "\"type\":\"ack\""));
    CU_ASSERT_TRUE(has(&a, 1, "\"client_id\":\"c1\""));

    /* A committed message reaches every device of both users, once. */
    char msg_id[PL_MSG_ID_LEN];
    pl_msg_id("alice", "c1", msg_id);
    char rec[512];
    snprintf(rec, sizeof(rec),
             "{\"msg_id\":\"%s\",\"conv\":\"d:alice:bob\",\"sender\":\"alice\",\"receiver\":"
             "\"bob\",\"content\":\"hi\",\"client_id\":\"c1\",\"timestamp\":1,\"seq\":7}",
             msg_id);
    json_t *j = json_loads(rec, 0, NULL);
    gw_sessions_push(S, j);
    json_decref(j);
    CU_ASSERT_TRUE(has(&a, 2, "\"seq\":7"));
    CU_ASSERT_TRUE(has(&a2, 1, "\"seq\":7"));
    CU_ASSERT_TRUE(has(&b, 1, "\"seq\":7"));
    CU_ASSERT_EQUAL(a2.nframes, 2);
    CU_ASSERT_EQUAL(b.nframes, 2);
    gw_sessions_link_cbs.on_closed(S, a.sess);
    gw_sessions_link_cbs.on_closed(S, a2.sess);
    gw_sessions_link_cbs.on_closed(S, b.sess);
}

static void test_cursors(void)
{
    fresh(1000, 1000);
    struct link a, a2, b;
    open_as(&a, "alice", "0123456789abcdef0123456789abcdef");
    open_as(&a2, "alice", "11111111111111111111111111111111");
    open_as(&b, "bob", "22222222222222222222222222222222");
    text(&a, "{\"type\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":5}");
    CU_ASSERT_EQUAL_FATAL(out.nrec, 1);
    CU_ASSERT_STRING_EQUAL(out.rec[0].topic, PL_TOPIC_CURSORS);
    pl_cursor_t c;
    CU_ASSERT_EQUAL_FATAL(pl_cursor_parse(out.rec[0].value, strlen(out.rec[0].value), &c), PL_OK);
    CU_ASSERT_STRING_EQUAL(c.user, "alice");
    CU_ASSERT_STRING_EQUAL(c.kind, "read");
    CU_ASSERT_EQUAL(c.seq, 5);
    CU_ASSERT_STRING_EQUAL(c.origin_gw, "gw-test");
    CU_ASSERT_EQUAL(a.nframes, 1); /* acked from the delivery report only */
    gw_sessions_delivered(S, out.rec[0].opaque, PL_OK);
    CU_ASSERT_TRUE(has(&a, 1, "\"cursor\":\"read\""));
    /* A group: asked about (bob is not a member here); another's 1:1 or own stream: refused. */
    text(&b, "{\"type\":\"delivered\",\"conv\":\"g:0123456789ABCDEFGHJKMNPQRS\",\"seq\":1}");
    text(&b, "{\"type\":\"read\",\"conv\":\"d:alice:carol\",\"seq\":1}");
    text(&b, "{\"type\":\"read\",\"conv\":\"u:alice\",\"seq\":1}");
    CU_ASSERT_EQUAL(out.nrec, 1);
    CU_ASSERT_TRUE(has(&b, 1, "forbidden") && has(&b, 2, "forbidden") && has(&b, 3, "forbidden"));
    /* A failed report: an error, never an ack. */
    text(&a, "{\"type\":\"delivered\",\"conv\":\"g:0123456789ABCDEFGHJKMNPQRS\",\"seq\":2}");
    CU_ASSERT_EQUAL_FATAL(out.nrec, 2);
    gw_sessions_delivered(S, out.rec[1].opaque, PL_ERR_UNAVAIL);
    CU_ASSERT_TRUE(has(&a, 2, "unavailable"));
    /* The bucket: 4 at once (two taken), then rate_limited. */
    text(&a, "{\"type\":\"read\",\"conv\":\"u:alice\",\"seq\":1}");
    text(&a, "{\"type\":\"read\",\"conv\":\"u:alice\",\"seq\":2}");
    text(&a, "{\"type\":\"read\",\"conv\":\"u:alice\",\"seq\":3}");
    CU_ASSERT_EQUAL(out.nrec, 4);
    CU_ASSERT_TRUE(has(&a, 3, "rate_limited"));
    /* A receipt: the reader's other devices and the other member, not the reading device. */
    json_t *r = json_pack("{s:s,s:s,s:s,s:s,s:i,s:b,s:{s:s,s:I}}", "type", "receipt", "kind",
                          "read", "conv", "d:alice:bob", "user", "alice", "seq", 5, "share", 1,
                          "origin", "gateway", "gw-test", "conn", (json_int_t)1);
    int before = a.nframes;
    gw_sessions_receipt(S, r);
    CU_ASSERT_EQUAL(a.nframes, before);
    CU_ASSERT_TRUE(has(&a2, 1, "\"type\":\"receipt\""));
    CU_ASSERT_TRUE(has(&b, 4, "\"type\":\"receipt\""));
    json_object_set_new(r, "share", json_false());
    gw_sessions_receipt(S, r);
    CU_ASSERT_TRUE(has(&a2, 2, "\"type\":\"receipt\""));
    CU_ASSERT_EQUAL(b.nframes, 5); /* not shared: not to bob */
    json_decref(r);
    for (int i = 2; i < 4; i++) {
        gw_sessions_delivered(S, out.rec[i].opaque, PL_OK);
    }
    gw_sessions_link_cbs.on_closed(S, a.sess);
    gw_sessions_link_cbs.on_closed(S, a2.sess);
    gw_sessions_link_cbs.on_closed(S, b.sess);
}

static void test_send_failures(void)
{
    fresh(1000, 1000);
    struct link a;
    open_as(&a, "alice", "0123456789abcdef0123456789abcdef");
    out.user_rc = PL_ERR_NOTFOUND;
    text(&a, "{\"type\":\"send\",\"client_id\":\"c1\",\"to\":\"nobody\",\"content\":\"x\"}");
    CU_ASSERT_TRUE(has(&a, 1, "\"code\":\"not_found\""));
    out.user_rc = PL_OK;
    text(&a, "{\"type\":\"send\",\"client_id\":\"c2\",\"to\":\"bob\",\"content\":\"x\"}");
    /* A failed or unknown delivery is never acked: the client is told to retry. */
    gw_sessions_delivered(S, out.rec[0].opaque, PL_ERR_UNAVAIL);
    CU_ASSERT_TRUE(has(&a, 2, "\"code\":\"unavailable\""));
    CU_ASSERT_TRUE(has(&a, 2, "\"client_id\":\"c2\""));
    out.produce_rc = PL_ERR_UNAVAIL;
    text(&a, "{\"type\":\"send\",\"client_id\":\"c3\",\"to\":\"bob\",\"content\":\"x\"}");
    CU_ASSERT_TRUE(has(&a, 3, "\"retry_after_ms\":1000"));
    out.produce_rc = PL_OK;
    /* Malformed frames are answered with the error table's codes, the client_id echoed. */
    text(&a, "{\"type\":\"send\",\"client_id\":\"c4\",\"to\":\"bob\"}");
    CU_ASSERT_TRUE(has(&a, 4, "\"code\":\"invalid\""));
    CU_ASSERT_TRUE(has(&a, 4, "\"client_id\":\"c4\""));
    /* Not allowed (a block, or contacts only): refused before Kafka, with one wording. */
    int produced = out.nrec;
    out.user_rc = PL_ERR_FORBIDDEN;
    text(&a, "{\"type\":\"send\",\"client_id\":\"c5\",\"to\":\"bob\",\"content\":\"x\"}");
    CU_ASSERT_TRUE(has(&a, 5, "\"code\":\"forbidden\""));
    CU_ASSERT_TRUE(has(&a, 5, "\"client_id\":\"c5\""));
    CU_ASSERT_EQUAL(out.nrec, produced);
    out.user_rc = PL_OK;
    /* The store's refusal of an acked send comes back as a push to its device. */
    /* Its origin, as the gateway wrote it into the record of c2. */
    const char *conn = strstr(out.rec[0].value, "\"conn\":");
    CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
    unsigned long long id = strtoull(conn + 7, NULL, 10);
    char push[512];
    snprintf(push, sizeof(push),
             "{\"msg_id\":\"m\",\"conv\":\"d:alice:bob\",\"sender\":\"alice\","
             "\"receiver\":\"bob\",\"content\":\"x\",\"client_id\":\"c6\",\"timestamp\":1,"
             "\"refused\":\"forbidden\",\"origin\":{\"gateway\":\"gw-test\",\"conn\":%llu}}",
             id);
    json_t *j = json_loads(push, 0, NULL);
    gw_sessions_push(S, j);
    json_decref(j);
    CU_ASSERT_TRUE(has(&a, 6, "\"code\":\"forbidden\""));
    CU_ASSERT_TRUE(has(&a, 6, "\"client_id\":\"c6\""));
    CU_ASSERT_EQUAL(a.closed, 0);
    gw_sessions_link_cbs.on_closed(S, a.sess);
}

static void test_budget_and_inflight(void)
{
    fresh(1, 2);
    struct link a;
    open_as(&a, "alice", "0123456789abcdef0123456789abcdef");
    out.user_rc = PL_OK;
    for (int i = 0; i < 3; i++) {
        char f[128];
        snprintf(f, sizeof(f),
                 "{\"type\":\"send\",\"client_id\":\"b%d\",\"to\":\"bob\","
                 "\"content\":\"x\"}",
                 i);
        text(&a, f);
    }
    CU_ASSERT_EQUAL(out.nrec, 2); /* the burst */
    CU_ASSERT_TRUE(has(&a, 1, "\"code\":\"rate_limited\""));
    CU_ASSERT_TRUE(a.throttled_ms > 0 && a.throttled_ms <= 1001);
    for (int i = 0; i < out.nrec; i++) {
        gw_sessions_delivered(S, out.rec[i].opaque, PL_OK); /* the producer's reports */
    }
    gw_sessions_link_cbs.on_closed(S, a.sess);

    fresh(1000, 1000);
    open_as(&a, "alice", "0123456789abcdef0123456789abcdef");
    out.user_rc = PL_OK;
    for (int i = 0; i < 5; i++) {
        char f[128];
        snprintf(f, sizeof(f),
                 "{\"type\":\"send\",\"client_id\":\"i%d\",\"to\":\"bob\","
                 "\"content\":\"x\"}",
                 i);
        text(&a, f);
    }
    CU_ASSERT_EQUAL(out.nrec, 4); /* inflight_max: the fifth waits for an ack */
    CU_ASSERT_TRUE(has(&a, 1, "too many unacknowledged sends"));
    /* Delivery reports after the session went away are settled quietly. */
    gw_sessions_link_cbs.on_closed(S, a.sess);
    for (int i = 0; i < 4; i++) {
        gw_sessions_delivered(S, out.rec[i].opaque, PL_OK);
    }
}

static void test_revoke_drain(void)
{
    fresh(1000, 1000);
    struct link a, b, c;
    open_as(&a, "alice", "0123456789abcdef0123456789abcdef");
    open_as(&b, "alice", "11111111111111111111111111111111");
    gw_sessions_revoke(S, "alice", "11111111111111111111111111111111");
    CU_ASSERT_EQUAL(a.closed, 0);
    CU_ASSERT_EQUAL(b.closed, PL_WS_POLICY);
    gw_sessions_drain(S);
    out.user_rc = PL_OK;
    text(&a, "{\"type\":\"send\",\"client_id\":\"d1\",\"to\":\"bob\",\"content\":\"x\"}");
    CU_ASSERT_TRUE(has(&a, 1, "\"code\":\"unavailable\""));
    CU_ASSERT_EQUAL(out.nrec, 0);
    memset(&c, 0, sizeof(c));
    c.sess = gw_sessions_link_cbs.on_open(S, &c, &link_ops, NULL);
    CU_ASSERT_EQUAL(c.closed, PL_WS_GOING_AWAY);
    gw_sessions_close_all(S, PL_WS_GOING_AWAY, "bye");
    CU_ASSERT_EQUAL(a.closed, PL_WS_GOING_AWAY);
    gw_sessions_link_cbs.on_closed(S, a.sess);
    gw_sessions_link_cbs.on_closed(S, b.sess);
    gw_sessions_link_cbs.on_closed(S, c.sess);
    CU_ASSERT_EQUAL(gw_sessions_count(S), 0);
}

static void test_expiry(void)
{
    fresh(1000, 1000);
    /* A token that was valid at the handshake and has expired since: the tick closes it. */
    pl_jwt_claims_t c;
    char *t = NULL;
    struct link a, w;
    memset(&a, 0, sizeof(a));
    CU_ASSERT_EQUAL_FATAL(pl_jwt_sign(signer, "alice", "0123456789abcdef0123456789abcdef",
                                      (long)time(NULL) - 900 - PL_JWT_MAX_LEEWAY - 2, &t, &c),
                          PL_OK);
    free(t);
    a.sess = gw_sessions_link_cbs.on_open(S, &a, &link_ops, &c);
    out.rev_done(S, out.rev_id, PL_OK);
    CU_ASSERT_EQUAL(a.closed, 0);
    /* One that has not authenticated within the timeout is closed too. */
    gw_sessions_t *T = new_sessions(1, 1, 0);
    memset(&w, 0, sizeof(w));
    w.sess = gw_sessions_link_cbs.on_open(T, &w, &link_ops, NULL);
    struct timespec ms = {0, 2000000};
    nanosleep(&ms, NULL);
    gw_sessions_tick(S);
    gw_sessions_tick(T);
    CU_ASSERT_EQUAL(a.closed, PL_WS_POLICY);
    CU_ASSERT_EQUAL(w.closed, PL_WS_POLICY);
    gw_sessions_link_cbs.on_closed(S, a.sess);
    gw_sessions_link_cbs.on_closed(T, w.sess);
    gw_sessions_free(&T);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    pl_log_init("test", PL_LOG_ERROR + 1);
    CU_pSuite s = CU_add_suite("gateway sessions", suite_setup, suite_teardown);
    CU_add_test(s, "first-frame auth, ready, presence", test_first_frame_auth);
    CU_add_test(s, "forged and revoked tokens", test_bad_and_revoked_tokens);
    CU_add_test(s, "send, ack from the report, push to every device", test_send_ack_and_push);
    CU_add_test(s, "refused sends", test_send_failures);
    CU_add_test(s, "read and delivered cursors, receipts", test_cursors);
    CU_add_test(s, "budget and in-flight cap", test_budget_and_inflight);
    CU_add_test(s, "revoke, drain", test_revoke_drain);
    CU_add_test(s, "expired token and authentication timeout", test_expiry);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
