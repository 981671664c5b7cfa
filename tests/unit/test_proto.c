/*
 * Unit tests of the message envelope and the WebSocket handshake helpers: identifiers, client
 * frames (every field rule, limits, ignored forged fields), Kafka records, UTF-8 validation
 * fed whole, byte by byte and at every split, JSON depth, and RFC 6455 handshake checks.
 */
#include "parley/err.h"
#include "parley/log.h"
#include "parley/proto.h"
#include "parley/ws.h"

#include <CUnit/Basic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_ids(void)
{
    char conv[PL_CONV_ID_LEN], a[PL_MSG_ID_LEN], b[PL_MSG_ID_LEN], c[PL_MSG_ID_LEN];
    pl_conv_id("bob", "alice", conv);
    CU_ASSERT_STRING_EQUAL(conv, "d:alice:bob");
    pl_conv_id("alice", "bob", conv);
    CU_ASSERT_STRING_EQUAL(conv, "d:alice:bob");
    pl_conv_id("amy", "amy", conv);
    CU_ASSERT_STRING_EQUAL(conv, "d:amy:amy");
    pl_msg_id("alice", "c1", a);
    pl_msg_id("alice", "c1", b);
    CU_ASSERT_STRING_EQUAL(a, b);
    CU_ASSERT_EQUAL(strlen(a), 32);
    pl_msg_id("alice", "c2", c);
    CU_ASSERT_STRING_NOT_EQUAL(a, c);
    /* The separator keeps ("ab","c") and ("a","bc") apart. */
    pl_msg_id("ab", "c", b);
    pl_msg_id("a", "bc", c);
    CU_ASSERT_STRING_NOT_EQUAL(b, c);
    /* A client_id is scoped to its sender. */
    pl_msg_id("bob", "c1", c);
    CU_ASSERT_STRING_NOT_EQUAL(a, c);
}

static int parse(const char *s, pl_frame_t *f, const char **why)
{
    return pl_frame_parse(s, strlen(s), f, why);
}

static void test_frames(void)
{
    pl_frame_t f;
    const char *why;
    CU_ASSERT_EQUAL_FATAL(
        parse("{\"type\":\"send\",\"client_id\":\"c-1\",\"to\":\"Bob\",\"content\":\"hi \\u00e9\","
              "\"sender\":\"mallory\",\"seq\":7,\"msg_id\":\"x\",\"timestamp\":\"1999\"}",
              &f, &why),
        PL_OK);
    CU_ASSERT_EQUAL(f.type, PL_FRAME_SEND);
    CU_ASSERT_STRING_EQUAL(f.client_id, "c-1");
    CU_ASSERT_STRING_EQUAL(f.to, "bob");
    CU_ASSERT_EQUAL(f.content_len, 5);
    CU_ASSERT(memcmp(f.content, "hi \xc3\xa9", 5) == 0);
    pl_frame_clear(&f);

    CU_ASSERT_EQUAL(parse("{\"type\":\"auth\",\"token\":\"abc\"}", &f, &why), PL_OK);
    CU_ASSERT_EQUAL(f.type, PL_FRAME_AUTH);
    CU_ASSERT_STRING_EQUAL(f.token, "abc");
    pl_frame_clear(&f);

    const char *bad[] = {
        "",
        "null",
        "[]",
        "{}",
        "{\"type\":5}",
        "{\"type\":\"dance\"}",
        "{\"type\":\"auth\"}",
        "{\"type\":\"auth\",\"token\":\"\"}",
        "{\"type\":\"send\",\"to\":\"bob\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"\",\"to\":\"bob\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"a b\",\"to\":\"bob\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"b\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"bo\\u0000b\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"bob\",\"content\":\"\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"bob\",\"content\":5}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"bob\"}",
        "{\"type\":\"send\",\"type\":\"auth\",\"client_id\":\"c\",\"to\":\"bob\",\"content\":"
        "\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"bob\",\"content\":\"x\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse(bad[i], &f, &why);
        CU_ASSERT_EQUAL(rc, PL_ERR_INVAL);
        CU_ASSERT_PTR_NOT_NULL(why);
        CU_ASSERT_PTR_NULL(f.root);
    }
    /* client_id: 64 printable characters pass, 65 do not. */
    char buf[512];
    char id[66];
    memset(id, 'i', 65);
    id[64] = '\0';
    snprintf(buf, sizeof(buf),
             "{\"type\":\"send\",\"client_id\":\"%s\",\"to\":\"bob\",\"content\":\"x\"}", id);
    CU_ASSERT_EQUAL(parse(buf, &f, &why), PL_OK);
    pl_frame_clear(&f);
    id[64] = 'i';
    id[65] = '\0';
    snprintf(buf, sizeof(buf),
             "{\"type\":\"send\",\"client_id\":\"%s\",\"to\":\"bob\",\"content\":\"x\"}", id);
    CU_ASSERT_EQUAL(parse(buf, &f, &why), PL_ERR_INVAL);
}

static void test_sizes_and_depth(void)
{
    pl_frame_t f;
    const char *why;
    size_t big = PL_MAX_CONTENT + 1;
    char *s = malloc(big + 100);
    int n =
        snprintf(s, 100, "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"bob\",\"content\":\"");
    memset(s + n, 'x', big);
    memcpy(s + n + big, "\"}", 3);
    CU_ASSERT_EQUAL(pl_frame_parse(s, strlen(s), &f, &why), PL_ERR_TOOBIG);
    memcpy(s + n + big - 1, "\"}", 3);
    CU_ASSERT_EQUAL(pl_frame_parse(s, strlen(s), &f, &why), PL_OK);
    pl_frame_clear(&f);
    free(s);
    s = malloc(PL_MAX_FRAME + 2);
    memset(s, ' ', PL_MAX_FRAME + 1);
    CU_ASSERT_EQUAL(pl_frame_parse(s, PL_MAX_FRAME + 1, &f, &why), PL_ERR_TOOBIG);
    free(s);

    CU_ASSERT_TRUE(pl_json_depth_ok("[[[]]]", 6, 3));
    CU_ASSERT_FALSE(pl_json_depth_ok("[[[[]]]]", 8, 3));
    /* Brackets inside strings do not count, escaped quotes do not end them. */
    const char *str = "{\"a\":\"[[[[[[\\\"[[[[\"}";
    CU_ASSERT_TRUE(pl_json_depth_ok(str, strlen(str), 2));
    char deep[20001];
    memset(deep, '[', 10000);
    memset(deep + 10000, ']', 10000);
    deep[20000] = '\0';
    CU_ASSERT_EQUAL(parse(deep, &f, &why), PL_ERR_INVAL);
}

static void test_utf8(void)
{
    const char *good[] = {"",
                          "plain",
                          "\xc3\xa9",
                          "\xe2\x82\xac",
                          "\xf0\x9f\x98\x80",
                          "\xef\xbf\xbf",
                          "\xf4\x8f\xbf\xbf",
                          "a\xc3\xa9z\xe2\x82\xac"};
    const char *bad[] = {"\x80",         "\xc3",         "\xc3\x28",         "\xc0\xaf",
                         "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xf8\x88\x80\x80\x80",
                         "\xff",         "\xe2\x82",     "\xf0\x9f\x98"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        CU_ASSERT_TRUE(pl_utf8_valid((const unsigned char *)good[i], strlen(good[i])));
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_FALSE(pl_utf8_valid((const unsigned char *)bad[i], strlen(bad[i])));
    }
    /* Fed at every split: a prefix that ends inside a sequence is invalid on its own, and
     * both halves together are valid (the gateway validates whole messages). */
    const char *text = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80!";
    size_t len = strlen(text);
    for (size_t cut = 0; cut <= len; cut++) {
        int inside = cut < len && ((unsigned char)text[cut] & 0xc0) == 0x80;
        CU_ASSERT_EQUAL(pl_utf8_valid((const unsigned char *)text, cut), !inside);
    }
    CU_ASSERT_TRUE(pl_utf8_valid((const unsigned char *)text, len));
}

static void test_records(void)
{
    pl_msg_t m, back;
    memset(&m, 0, sizeof(m));
    snprintf(m.msg_id, sizeof(m.msg_id), "%s", "0123456789abcdef0123456789abcdef");
    snprintf(m.conv, sizeof(m.conv), "%s", "d:alice:bob");
    snprintf(m.sender, sizeof(m.sender), "%s", "alice");
    snprintf(m.receiver, sizeof(m.receiver), "%s", "bob");
    snprintf(m.client_id, sizeof(m.client_id), "%s", "c1");
    snprintf(m.origin_gw, sizeof(m.origin_gw), "%s", "gw0");
    m.origin_conn = 42;
    m.content = "say \"hi\"\n\xe2\x82\xac";
    m.content_len = strlen(m.content);
    m.ts_ms = 1796562000123LL;
    char *rec = pl_msg_record(&m);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rec);
    CU_ASSERT_PTR_NULL(strstr(rec, "\"seq\""));
    CU_ASSERT_EQUAL_FATAL(pl_msg_parse(rec, strlen(rec), &back), PL_OK);
    CU_ASSERT_STRING_EQUAL(back.msg_id, m.msg_id);
    CU_ASSERT_STRING_EQUAL(back.origin_gw, "gw0");
    CU_ASSERT_EQUAL(back.origin_conn, 42);
    CU_ASSERT_EQUAL(back.content_len, m.content_len);
    CU_ASSERT(memcmp(back.content, m.content, m.content_len) == 0);
    CU_ASSERT_EQUAL(back.seq, 0);
    pl_msg_clear(&back);
    free(rec);
    m.seq = 7;
    rec = pl_msg_record(&m);
    CU_ASSERT_EQUAL_FATAL(pl_msg_parse(rec, strlen(rec), &back), PL_OK);
    CU_ASSERT_EQUAL(back.seq, 7);
    json_t *j = pl_msg_json(&back, 1);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "type")), "msg");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "timestamp")),
                           "2026-12-06T13:00:00.123Z");
    CU_ASSERT_PTR_NULL(json_object_get(j, "origin"));
    json_decref(j);
    pl_msg_clear(&back);
    free(rec);
    const char *bad = "{\"msg_id\":\"x\",\"conv\":\"c\",\"sender\":\"a\"}";
    CU_ASSERT_EQUAL(pl_msg_parse(bad, strlen(bad), &back), PL_ERR_INVAL);

    char *ack = pl_frame_ack("c1", "m1", NULL, 0);
    CU_ASSERT_STRING_EQUAL(ack, "{\"type\":\"ack\",\"client_id\":\"c1\",\"msg_id\":\"m1\"}");
    free(ack);
    ack = pl_frame_ack("c1", "m1", "d:a:b", 12); /* a replay's answer */
    CU_ASSERT_STRING_EQUAL(ack, "{\"type\":\"ack\",\"client_id\":\"c1\",\"msg_id\":\"m1\","
                                "\"conv\":\"d:a:b\",\"seq\":12}");
    free(ack);
    char *err = pl_frame_error("unavailable", "retry", "c1", 1000);
    json_t *e = json_loads(err, 0, NULL);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(e, "retry_after_ms")), 1000);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(e, "client_id")), "c1");
    json_decref(e);
    free(err);
}

static void test_cursors(void)
{
    pl_frame_t f;
    const char *why;
    const char *ok = "{\"type\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":7}";
    CU_ASSERT_EQUAL_FATAL(pl_frame_parse(ok, strlen(ok), &f, &why), PL_OK);
    CU_ASSERT_EQUAL(f.type, PL_FRAME_READ);
    CU_ASSERT_STRING_EQUAL(f.conv, "d:alice:bob");
    CU_ASSERT_EQUAL(f.seq, 7);
    pl_frame_clear(&f);
    const char *own = "{\"type\":\"delivered\",\"conv\":\"u:alice\",\"seq\":9007199254740991}";
    CU_ASSERT_EQUAL_FATAL(pl_frame_parse(own, strlen(own), &f, &why), PL_OK);
    CU_ASSERT_EQUAL(f.type, PL_FRAME_DELIVERED);
    CU_ASSERT_EQUAL(f.seq, PL_SEQ_MAX);
    pl_frame_clear(&f);
    const char *bad[] = {
        "{\"type\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":0}",
        "{\"type\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":-3}",
        "{\"type\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":\"7\"}",
        "{\"type\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":1.5}",
        "{\"type\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":9007199254740992}",
        "{\"type\":\"read\",\"conv\":\"x:1\",\"seq\":1}",
        "{\"type\":\"read\",\"seq\":1}",
        "{\"type\":\"delivered\",\"conv\":\"d:bob:alice\",\"seq\":1}", /* not in order */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(pl_frame_parse(bad[i], strlen(bad[i]), &f, &why), PL_ERR_INVAL);
        CU_ASSERT_PTR_NOT_NULL(why);
    }
    pl_cursor_t c = {"read", "g:0123456789ABCDEFGHJKMNPQRS", "bob", 42, 1700000000123LL, "gw-1", 5};
    char *rec = pl_cursor_record(&c);
    pl_cursor_t back;
    CU_ASSERT_EQUAL_FATAL(pl_cursor_parse(rec, strlen(rec), &back), PL_OK);
    CU_ASSERT_STRING_EQUAL(back.kind, "read");
    CU_ASSERT_STRING_EQUAL(back.conv, c.conv);
    CU_ASSERT_STRING_EQUAL(back.user, "bob");
    CU_ASSERT_EQUAL(back.seq, 42);
    CU_ASSERT_EQUAL(back.ts_ms, 1700000000123LL);
    CU_ASSERT_STRING_EQUAL(back.origin_gw, "gw-1");
    CU_ASSERT_EQUAL(back.origin_conn, 5);
    free(rec);
    const char *junk = "{\"kind\":\"typing\",\"conv\":\"d:a12:b12\",\"user\":\"a12\",\"seq\":1,"
                       "\"timestamp\":1}";
    CU_ASSERT_EQUAL(pl_cursor_parse(junk, strlen(junk), &back), PL_ERR_INVAL);
    char *ack = pl_frame_cursor_ack("read", "d:alice:bob", 3);
    CU_ASSERT_STRING_EQUAL(
        ack, "{\"type\":\"ack\",\"cursor\":\"read\",\"conv\":\"d:alice:bob\",\"seq\":3}");
    free(ack);
    char *rc = pl_frame_receipt("d:alice:bob", "bob", "delivered", 3);
    CU_ASSERT_STRING_EQUAL(rc, "{\"type\":\"receipt\",\"conv\":\"d:alice:bob\",\"user\":\"bob\","
                               "\"kind\":\"delivered\",\"seq\":3}");
    free(rc);
}

static void test_changes(void)
{
    pl_frame_t f;
    const char *why;
    const char *edit = "{\"type\":\"edit\",\"client_id\":\"e1\",\"conv\":\"d:alice:bob\","
                       "\"target_seq\":4,\"content\":\"fixed\"}";
    CU_ASSERT_EQUAL_FATAL(pl_frame_parse(edit, strlen(edit), &f, &why), PL_OK);
    CU_ASSERT_EQUAL(f.type, PL_FRAME_EDIT);
    CU_ASSERT_EQUAL(f.target_seq, 4);
    CU_ASSERT_STRING_EQUAL(f.client_id, "e1");
    CU_ASSERT_EQUAL(f.content_len, 5);
    pl_frame_clear(&f);
    const char *recall = "{\"type\":\"recall\",\"client_id\":\"r1\",\"conv\":"
                         "\"g:0123456789ABCDEFGHJKMNPQRS\",\"target_seq\":9}";
    CU_ASSERT_EQUAL_FATAL(pl_frame_parse(recall, strlen(recall), &f, &why), PL_OK);
    CU_ASSERT_EQUAL(f.type, PL_FRAME_RECALL);
    CU_ASSERT_EQUAL(f.content_len, 0);
    pl_frame_clear(&f);
    const char *bad[] = {
        "{\"type\":\"edit\",\"client_id\":\"e1\",\"conv\":\"d:alice:bob\",\"target_seq\":4}",
        "{\"type\":\"edit\",\"client_id\":\"e1\",\"conv\":\"d:alice:bob\",\"target_seq\":0,"
        "\"content\":\"x\"}",
        "{\"type\":\"recall\",\"conv\":\"d:alice:bob\",\"target_seq\":1}",
        "{\"type\":\"recall\",\"client_id\":\"r\",\"conv\":\"u:alice\",\"target_seq\":1}",
        "{\"type\":\"recall\",\"client_id\":\"sys:r\",\"conv\":\"d:alice:bob\",\"target_seq\":1}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(pl_frame_parse(bad[i], strlen(bad[i]), &f, &why), PL_ERR_INVAL);
    }
    /* target_seq travels in the record and back; an edit without one is not a record */
    pl_msg_t m;
    memset(&m, 0, sizeof(m));
    snprintf(m.msg_id, sizeof(m.msg_id), "%s", "00112233445566778899aabbccddeeff");
    snprintf(m.conv, sizeof(m.conv), "%s", "d:alice:bob");
    snprintf(m.sender, sizeof(m.sender), "%s", "alice");
    snprintf(m.receiver, sizeof(m.receiver), "%s", "bob");
    snprintf(m.client_id, sizeof(m.client_id), "%s", "e1");
    snprintf(m.kind, sizeof(m.kind), "%s", PL_KIND_EDIT);
    m.content = "fixed";
    m.content_len = 5;
    m.target_seq = 4;
    m.seq = 5;
    char *rec = pl_msg_record(&m);
    pl_msg_t back;
    CU_ASSERT_EQUAL_FATAL(pl_msg_parse(rec, strlen(rec), &back), PL_OK);
    CU_ASSERT_STRING_EQUAL(back.kind, "edit");
    CU_ASSERT_EQUAL(back.target_seq, 4);
    pl_msg_clear(&back);
    free(rec);
    m.target_seq = 0;
    rec = pl_msg_record(&m);
    CU_ASSERT_EQUAL(pl_msg_parse(rec, strlen(rec), &back), PL_ERR_INVAL);
    free(rec);
}

static void test_handshake(void)
{
    const char *why;
    char accept[29];
    /* RFC 6455 section 1.3's example. */
    pl_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", accept);
    CU_ASSERT_STRING_EQUAL(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", "websocket", "Upgrade", "13", key, &why), PL_OK);
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", "WebSocket", "keep-alive, Upgrade", "13", key, &why),
                    PL_OK);
    CU_ASSERT_EQUAL(pl_ws_check_request("POST", "websocket", "Upgrade", "13", key, &why),
                    PL_ERR_INVAL);
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", NULL, "Upgrade", "13", key, &why), PL_ERR_INVAL);
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", "websocket", "keep-alive", "13", key, &why),
                    PL_ERR_INVAL);
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", "websocket", "Upgradez", "13", key, &why),
                    PL_ERR_INVAL);
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", "websocket", "Upgrade", "8", key, &why),
                    PL_ERR_INVAL);
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", "websocket", "Upgrade", "13", "short", &why),
                    PL_ERR_INVAL);
    CU_ASSERT_EQUAL(
        pl_ws_check_request("GET", "websocket", "Upgrade", "13", "dGhlIHNhbXBsZSBub25jZQ=!", &why),
        PL_ERR_INVAL);
    CU_ASSERT_EQUAL(pl_ws_check_request("GET", "websocket", "Upgrade", "13", NULL, &why),
                    PL_ERR_INVAL);
    CU_ASSERT_PTR_NOT_NULL(why);

    CU_ASSERT_TRUE(pl_ws_origin_allowed(NULL, "http://a"));
    CU_ASSERT_TRUE(pl_ws_origin_allowed("http://a", "http://b, http://a"));
    CU_ASSERT_FALSE(pl_ws_origin_allowed("http://evil", "http://a,http://b"));
    CU_ASSERT_FALSE(pl_ws_origin_allowed("http://a.evil", "http://a"));
    CU_ASSERT_TRUE(pl_ws_origin_allowed("http://anything", "*"));
    CU_ASSERT_FALSE(pl_ws_origin_allowed("http://a", NULL));
}

/* ---- WebSocket framing ---- */

struct got {
    int n;
    int op[16];
    size_t len[16];
    char text[16][128];
    int stop_after;
};

static int collect(void *ud, int op, const unsigned char *d, size_t n)
{
    struct got *g = ud;
    if (g->n < 16) {
        g->op[g->n] = op;
        g->len[g->n] = n;
        snprintf(g->text[g->n], sizeof(g->text[0]), "%.*s", (int)(n < 127 ? n : 127), d);
    }
    g->n++;
    return g->stop_after != 0 && g->n >= g->stop_after;
}

/* Appends a masked client frame; returns its size. */
static size_t client_frame(unsigned char *out, int first_byte, const void *payload, size_t n)
{
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    out[h++] = (unsigned char)first_byte;
    if (n < 126) {
        out[h++] = (unsigned char)(0x80 | n);
    } else if (n <= 0xffff) {
        out[h++] = 0x80 | 126;
        out[h++] = (unsigned char)(n >> 8);
        out[h++] = (unsigned char)n;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) {
            out[h++] = (unsigned char)((unsigned long long)n >> (8 * i));
        }
    }
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) {
        out[h + i] = ((const unsigned char *)payload)[i] ^ mask[i & 3];
    }
    return h + n;
}

static long feed(pl_ws_rx_t *rx, unsigned char *b, size_t n, struct got *g)
{
    return pl_ws_rx_feed(rx, b, n, 1000, collect, g);
}

static void test_ws_rx(void)
{
    static unsigned char b[4096];
    pl_ws_rx_t rx = {0};
    struct got g = {0};
    /* Two whole frames and half of a third: two handed over, the half left. */
    size_t n = client_frame(b, 0x81, "hello", 5);
    n += client_frame(b + n, 0x89, "hb", 2);
    size_t third = client_frame(b + n, 0x81, "world", 5);
    CU_ASSERT_EQUAL(feed(&rx, b, n + 3, &g), (long)n);
    CU_ASSERT_EQUAL(g.n, 2);
    CU_ASSERT_EQUAL(g.op[0], PL_WS_OP_TEXT);
    CU_ASSERT_STRING_EQUAL(g.text[0], "hello");
    CU_ASSERT_EQUAL(g.op[1], PL_WS_OP_PING);
    CU_ASSERT_STRING_EQUAL(g.text[1], "hb");
    memmove(b, b + n, third);
    CU_ASSERT_EQUAL(feed(&rx, b, third, &g), (long)third);
    CU_ASSERT_STRING_EQUAL(g.text[2], "world");
    /* Fragments with a ping between them: one message, in order; memory only meanwhile. */
    memset(&g, 0, sizeof(g));
    n = client_frame(b, 0x01, "ab", 2);
    n += client_frame(b + n, 0x89, "", 0);
    CU_ASSERT_EQUAL(feed(&rx, b, n, &g), (long)n);
    CU_ASSERT_PTR_NOT_NULL(rx.frag);
    n = client_frame(b, 0x00, "cd", 2);
    n += client_frame(b + n, 0x80, "ef", 2);
    CU_ASSERT_EQUAL(feed(&rx, b, n, &g), (long)n);
    CU_ASSERT_EQUAL(g.n, 2);
    CU_ASSERT_EQUAL(g.op[1], PL_WS_OP_TEXT);
    CU_ASSERT_STRING_EQUAL(g.text[1], "abcdef");
    CU_ASSERT_PTR_NULL(rx.frag);
    /* The callback stops the feed: the rest is not consumed. */
    memset(&g, 0, sizeof(g));
    g.stop_after = 1;
    size_t one = client_frame(b, 0x81, "x", 1);
    n = one + client_frame(b + one, 0x81, "y", 1);
    CU_ASSERT_EQUAL(feed(&rx, b, n, &g), (long)one);
    CU_ASSERT_EQUAL(g.n, 1);
    /* Violations. */
    struct {
        int first;
        const char *payload;
        size_t len;
        int masked;
        long want;
    } bad[] = {
        {0x81, "x", 1, 0, -PL_WS_PROTOCOL_ERROR},          /* unmasked */
        {0xc1, "x", 1, 1, -PL_WS_PROTOCOL_ERROR},          /* RSV1 */
        {0x83, "x", 1, 1, -PL_WS_PROTOCOL_ERROR},          /* reserved opcode */
        {0x8b, "x", 1, 1, -PL_WS_PROTOCOL_ERROR},          /* reserved control opcode */
        {0x09, "x", 1, 1, -PL_WS_PROTOCOL_ERROR},          /* fragmented ping */
        {0x80, "x", 1, 1, -PL_WS_PROTOCOL_ERROR},          /* continuation of nothing */
        {0x88, "\x03", 1, 1, -PL_WS_PROTOCOL_ERROR},       /* one-byte close */
        {0x88, "\x03\xed", 2, 1, -PL_WS_PROTOCOL_ERROR},   /* close code 1005 */
        {0x88, "\x03\xe8\xff", 3, 1, -PL_WS_INVALID_DATA}, /* reason not UTF-8 */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pl_ws_rx_t r2 = {0};
        memset(&g, 0, sizeof(g));
        n = client_frame(b, bad[i].first, bad[i].payload, bad[i].len);
        if (!bad[i].masked) {
            b[1] &= 0x7f;
        }
        CU_ASSERT_EQUAL(feed(&r2, b, n, &g), bad[i].want);
        CU_ASSERT_EQUAL(g.n, 0);
        pl_ws_rx_clear(&r2);
    }
    /* A ping of 126 bytes is refused from its header alone. */
    memset(&g, 0, sizeof(g));
    unsigned char big[200] = {0};
    n = client_frame(b, 0x89, big, 126);
    CU_ASSERT_EQUAL(feed(&rx, b, 4, &g), -PL_WS_PROTOCOL_ERROR);
    /* Over the cap: refused from the header, before the payload arrives. */
    n = client_frame(b, 0x81, big, 200);
    b[1] = 0x80 | 127;
    memset(b + 2, 0, 8);
    b[5] = 0x40; /* 1 GiB declared */
    CU_ASSERT_EQUAL(feed(&rx, b, 10, &g), -PL_WS_TOO_BIG);
    /* Fragments adding up past the cap. */
    pl_ws_rx_t r3 = {0};
    static unsigned char part[600];
    n = client_frame(b, 0x01, part, 600);
    CU_ASSERT_EQUAL(feed(&r3, b, n, &g), (long)n);
    n = client_frame(b, 0x80, part, 600);
    CU_ASSERT_EQUAL(feed(&r3, b, n, &g), -PL_WS_TOO_BIG);
    pl_ws_rx_clear(&r3);
    /* A new message inside a fragmented one. */
    n = client_frame(b, 0x01, "a", 1);
    n += client_frame(b + n, 0x81, "b", 1);
    CU_ASSERT_EQUAL(feed(&r3, b, n, &g), -PL_WS_PROTOCOL_ERROR);
    pl_ws_rx_clear(&r3);
    pl_ws_rx_clear(&rx);
}

static void test_ws_header(void)
{
    unsigned char h[PL_WS_HEADER_MAX];
    CU_ASSERT_EQUAL(pl_ws_header(h, PL_WS_OP_TEXT, 5), 2);
    CU_ASSERT_EQUAL(h[0], 0x81);
    CU_ASSERT_EQUAL(h[1], 5);
    CU_ASSERT_EQUAL(pl_ws_header(h, PL_WS_OP_PONG, 125), 2);
    CU_ASSERT_EQUAL(h[0], 0x8a);
    CU_ASSERT_EQUAL(pl_ws_header(h, PL_WS_OP_TEXT, 126), 4);
    CU_ASSERT_EQUAL(h[1], 126);
    CU_ASSERT_EQUAL(h[2], 0);
    CU_ASSERT_EQUAL(h[3], 126);
    CU_ASSERT_EQUAL(pl_ws_header(h, PL_WS_OP_TEXT, 65536), 10);
    CU_ASSERT_EQUAL(h[1], 127);
    CU_ASSERT_EQUAL(h[7], 1);
    CU_ASSERT_EQUAL(h[9], 0);
    uint16_t code;
    CU_ASSERT_EQUAL(pl_ws_close_check((const unsigned char *)"", 0, &code), 0);
    CU_ASSERT_EQUAL(code, 1005);
    CU_ASSERT_EQUAL(pl_ws_close_check((const unsigned char *)"\x03\xf5", 2, &code), 0);
    CU_ASSERT_EQUAL(code, 1013);
    CU_ASSERT_EQUAL(pl_ws_close_check((const unsigned char *)"\x0b\xb7", 2, &code),
                    PL_WS_PROTOCOL_ERROR); /* 2999 */
}

/* Stream items of kind system carry an event; refusals travel without a seq; the rule of who
 * may message whom; server-made client_ids cannot be sent by a client. */
static void test_kinds_and_policy(void)
{
    const char *sys = "{\"msg_id\":\"m\",\"conv\":\"u:bob\",\"sender\":\"bob\","
                      "\"receiver\":\"bob\",\"content\":\"\",\"client_id\":\"sys:1\","
                      "\"timestamp\":1,\"kind\":\"system\",\"event\":{\"type\":\"contact\"}}";
    pl_msg_t m;
    CU_ASSERT_EQUAL_FATAL(pl_msg_parse(sys, strlen(sys), &m), PL_OK);
    CU_ASSERT_STRING_EQUAL(m.kind, PL_KIND_SYSTEM);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(m.event, "type")), "contact");
    char *rec = pl_msg_record(&m);
    CU_ASSERT_PTR_NOT_NULL(strstr(rec, "\"event\":{\"type\":\"contact\"}"));
    free(rec);
    pl_msg_clear(&m);
    const char *bad[] = {
        /* a system item without its event, an event on a text item, an unknown kind */
        "{\"msg_id\":\"m\",\"conv\":\"u:b\",\"sender\":\"b\",\"receiver\":\"b\",\"content\":"
        "\"\",\"client_id\":\"c\",\"timestamp\":1,\"kind\":\"system\"}",
        "{\"msg_id\":\"m\",\"conv\":\"u:b\",\"sender\":\"b\",\"receiver\":\"b\",\"content\":"
        "\"\",\"client_id\":\"c\",\"timestamp\":1,\"event\":{}}",
        "{\"msg_id\":\"m\",\"conv\":\"u:b\",\"sender\":\"b\",\"receiver\":\"b\",\"content\":"
        "\"\",\"client_id\":\"c\",\"timestamp\":1,\"kind\":\"poll\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(pl_msg_parse(bad[i], strlen(bad[i]), &m), PL_ERR_INVAL);
    }
    const char *text = "{\"msg_id\":\"m\",\"conv\":\"d:a:b\",\"sender\":\"a\",\"receiver\":"
                       "\"b\",\"content\":\"x\",\"client_id\":\"c\",\"timestamp\":1,"
                       "\"refused\":\"forbidden\"}";
    CU_ASSERT_EQUAL_FATAL(pl_msg_parse(text, strlen(text), &m), PL_OK);
    CU_ASSERT_STRING_EQUAL(m.kind, PL_KIND_TEXT);
    CU_ASSERT_STRING_EQUAL(m.refused, "forbidden");
    json_t *j = pl_msg_json(&m, 0);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(j, "kind")), "text");
    json_decref(j);
    pl_msg_clear(&m);

    /* contact x blocked x contacts-only */
    for (int acc = 0; acc < 2; acc++) {
        for (int blk = 0; blk < 2; blk++) {
            for (int only = 0; only < 2; only++) {
                pl_policy_facts_t f = {.accepted = acc, .blocked = blk, .contacts_only = only};
                CU_ASSERT_EQUAL(pl_policy_allows(&f), !blk && (acc || !only));
            }
        }
    }

    pl_frame_t f;
    const char *why = NULL;
    const char *forged = "{\"type\":\"send\",\"client_id\":\"sys:abc\",\"to\":\"bob\","
                         "\"content\":\"x\"}";
    CU_ASSERT_EQUAL(pl_frame_parse(forged, strlen(forged), &f, &why), PL_ERR_INVAL);
    char conv[PL_CONV_ID_LEN];
    pl_user_conv("bob", conv);
    CU_ASSERT_STRING_EQUAL(conv, "u:bob");
}

static void test_groups(void)
{
    char g[PL_CONV_ID_LEN], g2[PL_CONV_ID_LEN], g3[PL_CONV_ID_LEN];
    pl_group_conv("alice", "c-1", g);
    pl_group_conv("alice", "c-1", g2);
    pl_group_conv("alice", "c-2", g3);
    CU_ASSERT_EQUAL(strlen(g), 28);
    CU_ASSERT_STRING_EQUAL(g, g2); /* a retried create names the same group */
    CU_ASSERT_STRING_NOT_EQUAL(g, g3);
    CU_ASSERT_EQUAL(pl_conv_kind(g), 'g');
    CU_ASSERT_EQUAL(pl_conv_kind("d:alice:bob"), 'd');
    CU_ASSERT_EQUAL(pl_conv_kind("u:alice"), 'u');
    const char *bad[] = {"d:bob:alice",
                         "d:alice:alice",
                         "d:Alice:bob",
                         "d:alice",
                         "u:Al",
                         "g:0123456789ABCDEFGHJKMNPQR",
                         "g:0123456789ABCDEFGHJKMNPQRI",
                         "g:0123456789abcdefghjkmnpqrs",
                         "x:alice",
                         "",
                         "g:"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(pl_conv_kind(bad[i]), 0);
    }
    CU_ASSERT_EQUAL(pl_conv_kind("g:0123456789ABCDEFGHJKMNPQRS"), 'g');

    pl_frame_t f;
    const char *why = NULL;
    char text[256];
    snprintf(text, sizeof(text),
             "{\"type\":\"send\",\"client_id\":\"c\",\"conv\":\"%s\","
             "\"content\":\"x\"}",
             g);
    CU_ASSERT_EQUAL_FATAL(pl_frame_parse(text, strlen(text), &f, &why), PL_OK);
    CU_ASSERT_STRING_EQUAL(f.conv, g);
    CU_ASSERT_STRING_EQUAL(f.to, "");
    pl_frame_clear(&f);
    const char *refused[] = {
        /* both destinations, neither, a user's own stream, a malformed id */
        "{\"type\":\"send\",\"client_id\":\"c\",\"to\":\"bob\",\"conv\":\"d:alice:bob\","
        "\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"conv\":\"u:bob\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"conv\":\"g:nope\",\"content\":\"x\"}",
        "{\"type\":\"send\",\"client_id\":\"c\",\"conv\":7,\"content\":\"x\"}",
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        CU_ASSERT_EQUAL(pl_frame_parse(refused[i], strlen(refused[i]), &f, &why), PL_ERR_INVAL);
    }

    /* Membership versions travel on committed group records. */
    pl_msg_t m;
    memset(&m, 0, sizeof(m));
    snprintf(m.msg_id, sizeof(m.msg_id), "m1");
    snprintf(m.conv, sizeof(m.conv), "%s", g);
    snprintf(m.sender, sizeof(m.sender), "alice");
    snprintf(m.receiver, sizeof(m.receiver), "%.*s", PL_USERNAME_MAX, g);
    snprintf(m.client_id, sizeof(m.client_id), "c");
    m.content = "hi";
    m.content_len = 2;
    m.seq = 9;
    m.mver = 7;
    m.pmver = 3;
    char *rec = pl_msg_record(&m);
    pl_msg_t back;
    CU_ASSERT_EQUAL_FATAL(pl_msg_parse(rec, strlen(rec), &back), PL_OK);
    CU_ASSERT_EQUAL(back.mver, 7);
    CU_ASSERT_EQUAL(back.pmver, 3);
    CU_ASSERT_STRING_EQUAL(back.receiver, g);
    pl_msg_clear(&back);
    free(rec);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    pl_log_init("test", PL_LOG_ERROR + 1);
    CU_pSuite s = CU_add_suite("proto", NULL, NULL);
    CU_add_test(s, "identifiers", test_ids);
    CU_add_test(s, "client frames", test_frames);
    CU_add_test(s, "sizes and depth", test_sizes_and_depth);
    CU_add_test(s, "UTF-8 at every split", test_utf8);
    CU_add_test(s, "records and server frames", test_records);
    CU_add_test(s, "stream item kinds, refusals, who may message whom", test_kinds_and_policy);
    CU_add_test(s, "conversation kinds, group ids, sends to a conversation", test_groups);
    CU_add_test(s, "read and delivered cursors", test_cursors);
    CU_add_test(s, "edit and recall frames and records", test_changes);
    CU_add_test(s, "WebSocket handshake", test_handshake);
    CU_add_test(s, "WebSocket frames in", test_ws_rx);
    CU_add_test(s, "WebSocket frames out", test_ws_header);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
