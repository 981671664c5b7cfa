/*
 * libFuzzer driver for the gateway's frame handling: client bytes go through pl_ws_rx_feed()
 * as the gateway feeds it (a buffer that keeps the incomplete tail and appends the next read,
 * reads of sizes the input chooses, 64 KiB message cap), and every complete message goes
 * through the gateway's checks (opcode, UTF-8, envelope parse) and is answered with a frame
 * built by pl_ws_header(), as the gateway answers. It asserts what the gateway relies on: no
 * message above the cap, consumed counts within the buffer, a close payload handed over only
 * when valid, the kept tail never longer than one frame can be, and output bounded by input.
 */
#include "parley/err.h"
#include "parley/proto.h"
#include "parley/ws.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct feed {
    size_t out; /* bytes the answers would take on the wire */
    int closed; /* a close arrived: nothing after it is read */
};

static int on_frame(void *ud, int opcode, const unsigned char *data, size_t len)
{
    struct feed *f = ud;
    unsigned char h[PL_WS_HEADER_MAX];
    if (len > PL_MAX_FRAME) {
        abort(); /* the cap the gateway relies on */
    }
    if (opcode == PL_WS_OP_CLOSE) {
        uint16_t code;
        if (pl_ws_close_check(data, len, &code) != 0) {
            abort(); /* handed over only when valid */
        }
        f->closed = 1;
        f->out += pl_ws_header(h, PL_WS_OP_CLOSE, 2) + 2;
        return 1;
    }
    if (opcode == PL_WS_OP_PING) {
        f->out += pl_ws_header(h, PL_WS_OP_PONG, len) + len;
        return 0;
    }
    if (opcode == PL_WS_OP_PONG) {
        return 0;
    }
    if (opcode != PL_WS_OP_TEXT && opcode != PL_WS_OP_BINARY) {
        abort();
    }
    if (opcode == PL_WS_OP_BINARY || !pl_utf8_valid(data, len)) {
        f->closed = 1; /* the gateway closes with 1003 / 1007 and reads on only for a close */
        f->out += pl_ws_header(h, PL_WS_OP_CLOSE, 2) + 2;
        return 1;
    }
    pl_frame_t fr;
    const char *why = NULL;
    char *reply = pl_frame_parse((const char *)data, len, &fr, &why) == PL_OK
                      ? pl_frame_ack(fr.type == PL_FRAME_SEND ? fr.client_id : "auth", "0", NULL, 0)
                      : pl_frame_error("invalid", why, NULL, 0);
    if (reply != NULL) {
        size_t n = strlen(reply);
        f->out += pl_ws_header(h, PL_WS_OP_TEXT, n) + n;
        free(reply);
    }
    pl_frame_clear(&fr);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4 || size > 4 * PL_MAX_FRAME) {
        return -1;
    }
    uint32_t rng;
    memcpy(&rng, data, 4);
    data += 4;
    size -= 4;
    /* The gateway's buffer: the kept tail of the last read, then the next read. */
    size_t cap = PL_WS_HEADER_MAX + 4 + PL_MAX_FRAME + 64 * 1024;
    unsigned char *buf = malloc(cap);
    if (buf == NULL) {
        return 0;
    }
    struct feed f = {0, 0};
    pl_ws_rx_t rx = {0};
    size_t have = 0, off = 0;
    while (off < size && !f.closed) {
        rng = rng * 1103515245u + 12345u;
        size_t n = 1 + (rng >> 16) % 2048;
        n = n < size - off ? n : size - off;
        n = n < cap - have ? n : cap - have;
        memcpy(buf + have, data + off, n);
        off += n;
        have += n;
        long k = pl_ws_rx_feed(&rx, buf, have, PL_MAX_FRAME, on_frame, &f);
        if (k < 0) {
            if (-k != 1002 && -k != 1007 && -k != 1009 && -k != 1011) {
                abort();
            }
            break; /* failed: the gateway writes its close and drops the socket */
        }
        if ((size_t)k > have) {
            abort();
        }
        memmove(buf, buf + k, have - (size_t)k);
        have -= (size_t)k;
        /* What is kept is at most one frame's header, mask and payload up to the cap. */
        if (have > PL_WS_HEADER_MAX + 4 + PL_MAX_FRAME) {
            abort();
        }
    }
    if (f.out > 32 * (size + 4) + 4096) {
        abort();
    }
    pl_ws_rx_clear(&rx);
    free(buf);
    return 0;
}
