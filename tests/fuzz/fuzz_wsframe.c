/*
 * libFuzzer driver for the gateway's frame handling: client bytes go through wslay configured
 * as the gateway configures it (server side, 64 KiB message cap), split into reads of sizes
 * the input chooses, and every complete message goes through the gateway's checks (opcode,
 * UTF-8, envelope parse), answered with a queued frame as the gateway answers. It asserts
 * that wslay never hands over a message above the cap and that the output stays bounded.
 */
#include "parley/err.h"
#include "parley/proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <wslay/wslay.h>

struct feed {
    const uint8_t *p;
    size_t n, off;
    uint32_t rng; /* picks read sizes, so frames arrive split at varied places */
    size_t out;   /* bytes wslay asked to send */
    int closed;
};

static ssize_t feed_recv(wslay_event_context_ptr ws, uint8_t *buf, size_t len, int flags, void *ud)
{
    struct feed *f = ud;
    (void)flags;
    if (f->off == f->n) {
        wslay_event_set_error(ws, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    f->rng = f->rng * 1103515245u + 12345u;
    size_t want = 1 + (f->rng >> 16) % 512;
    size_t n = f->n - f->off;
    n = n < want ? n : want;
    n = n < len ? n : len;
    memcpy(buf, f->p + f->off, n);
    f->off += n;
    return (ssize_t)n;
}

static ssize_t feed_send(wslay_event_context_ptr ws, const uint8_t *data, size_t len, int flags,
                         void *ud)
{
    struct feed *f = ud;
    (void)ws;
    (void)data;
    (void)flags;
    f->out += len;
    return (ssize_t)len;
}

static void on_msg(wslay_event_context_ptr ws, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    struct feed *f = ud;
    if (arg->msg_length > PL_MAX_FRAME) {
        abort(); /* the cap the gateway relies on */
    }
    if (arg->opcode == WSLAY_CONNECTION_CLOSE || arg->opcode == WSLAY_PING ||
        arg->opcode == WSLAY_PONG) {
        f->closed |= arg->opcode == WSLAY_CONNECTION_CLOSE;
        return;
    }
    if (arg->opcode == WSLAY_BINARY_FRAME) {
        wslay_event_queue_close(ws, 1003, NULL, 0);
        return;
    }
    if (!pl_utf8_valid(arg->msg, arg->msg_length)) {
        wslay_event_queue_close(ws, 1007, NULL, 0);
        return;
    }
    pl_frame_t fr;
    const char *why = NULL;
    char *reply = pl_frame_parse((const char *)arg->msg, arg->msg_length, &fr, &why) == PL_OK
                      ? pl_frame_ack(fr.type == PL_FRAME_SEND ? fr.client_id : "auth", "0")
                      : pl_frame_error("invalid", why, NULL, 0);
    if (reply != NULL) {
        struct wslay_event_msg m = {WSLAY_TEXT_FRAME, (const uint8_t *)reply, strlen(reply)};
        wslay_event_queue_msg(ws, &m);
        free(reply);
    }
    pl_frame_clear(&fr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct wslay_event_callbacks cb = {feed_recv, feed_send, NULL,  NULL,
                                                    NULL,      NULL,      on_msg};
    if (size < 4 || size > 4 * PL_MAX_FRAME) {
        return -1;
    }
    struct feed f = {data + 4, size - 4, 0, 0, 0, 0};
    memcpy(&f.rng, data, 4);
    wslay_event_context_ptr ws;
    if (wslay_event_context_server_init(&ws, &cb, &f) != 0) {
        return 0;
    }
    wslay_event_config_set_max_recv_msg_length(ws, PL_MAX_FRAME);
    /* Each turn reads what is there and writes what was queued, as the gateway's loop does. */
    for (int turn = 0; turn < 100000 && f.off < f.n; turn++) {
        if (!wslay_event_want_read(ws) || wslay_event_recv(ws) != 0) {
            break;
        }
        if (wslay_event_want_write(ws) && wslay_event_send(ws) != 0) {
            break;
        }
    }
    while (wslay_event_want_write(ws) && wslay_event_send(ws) == 0 && f.out < 64u * 1024 * 1024) {
    }
    /* A reply is at most a couple of hundred bytes per frame of at least six: output is
     * bounded by the input, whatever it holds. */
    if (f.out > 32 * size + 4096) {
        abort();
    }
    wslay_event_context_free(ws);
    return 0;
}
