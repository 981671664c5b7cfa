/*
 * libFuzzer driver for the message envelope: the checks a gateway runs on a client's text
 * frame (UTF-8, JSON depth, pl_frame_parse) and the parse of a Kafka record (pl_msg_parse).
 * Besides "no crash, no leak", it asserts the limits a valid result promises and that a
 * record survives its own round trip. Not a unit test: see tests/unit/test_proto.c.
 */
#include "parley/err.h"
#include "parley/proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void check_frame(const char *p, size_t n)
{
    pl_frame_t f;
    const char *why = NULL;
    if (!pl_utf8_valid((const unsigned char *)p, n)) {
        return; /* the gateway closes with 1007 before parsing */
    }
    int rc = pl_frame_parse(p, n, &f, &why);
    if (rc == PL_OK) {
        if (f.type == PL_FRAME_SEND) {
            if (f.content == NULL || f.content_len > PL_MAX_CONTENT || strlen(f.client_id) == 0 ||
                strlen(f.client_id) > PL_MAX_CLIENT_ID) {
                abort();
            }
            char to[PL_USERNAME_MAX + 1];
            if (f.conv[0] != '\0') {
                /* A send to a conversation: a d: or g: id, and no "to" beside it. */
                int kind = pl_conv_kind(f.conv);
                if ((kind != 'd' && kind != 'g') || f.to[0] != '\0') {
                    abort();
                }
            } else if (pl_username_normalize(f.to, to) != PL_OK || strcmp(to, f.to) != 0) {
                abort(); /* "to" must come out normalized */
            }
        } else if (f.type != PL_FRAME_AUTH || f.token == NULL) {
            abort();
        }
    } else if (why == NULL || (rc != PL_ERR_INVAL && rc != PL_ERR_TOOBIG)) {
        abort(); /* every refusal says why, in the documented vocabulary */
    }
    pl_frame_clear(&f);
}

static void check_record(const char *p, size_t n)
{
    pl_msg_t m;
    if (pl_msg_parse(p, n, &m) != PL_OK) {
        return;
    }
    /* What parses must print and parse back to the same message. */
    char *rec = pl_msg_record(&m);
    if (rec == NULL) {
        abort();
    }
    pl_msg_t again;
    if (pl_msg_parse(rec, strlen(rec), &again) != PL_OK || strcmp(again.msg_id, m.msg_id) != 0 ||
        strcmp(again.conv, m.conv) != 0 || strcmp(again.sender, m.sender) != 0 ||
        strcmp(again.receiver, m.receiver) != 0 || again.content_len != m.content_len ||
        again.seq != m.seq || again.ts_ms != m.ts_ms ||
        memcmp(again.content, m.content, m.content_len) != 0) {
        abort();
    }
    json_t *j = pl_msg_json(&m, 1);
    json_decref(j);
    pl_msg_clear(&again);
    free(rec);
    pl_msg_clear(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2 * PL_MAX_FRAME) {
        return -1; /* wslay refuses bigger messages before they reach this code */
    }
    (void)pl_json_depth_ok((const char *)data, size, PL_MAX_JSON_DEPTH);
    check_frame((const char *)data, size);
    check_record((const char *)data, size);
    return 0;
}
