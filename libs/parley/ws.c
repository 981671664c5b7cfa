/*
 * RFC 6455 as pure functions (see ws.h): the handshake checks of section 4.2, and the framing
 * of section 5, client frames in (pl_ws_rx_feed: masking, reserved bits, opcodes, control frame
 * rules, fragmentation, close payloads, the message cap) and server frame headers out.
 */
#include "parley/ws.h"
#include "parley/err.h"
#include "parley/proto.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* 1 when the comma-separated header value lists token (case-insensitive). */
static int has_token(const char *list, const char *token)
{
    size_t n = strlen(token);
    const char *p = list;
    while (p != NULL && *p) {
        while (*p == ' ' || *p == '\t' || *p == ',') {
            p++;
        }
        const char *end = p;
        while (*end && *end != ',') {
            end++;
        }
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
            last--;
        }
        if ((size_t)(last - p) == n && strncasecmp(p, token, n) == 0) {
            return 1;
        }
        p = end;
    }
    return 0;
}

int pl_ws_check_request(const char *method, const char *upgrade, const char *connection,
                        const char *version, const char *key, const char **why)
{
    unsigned char raw[32];
    *why = NULL;
    if (method == NULL || strcmp(method, "GET") != 0) {
        *why = "WebSocket upgrades use GET";
    } else if (upgrade == NULL || !has_token(upgrade, "websocket")) {
        *why = "missing \"Upgrade: websocket\"";
    } else if (connection == NULL || !has_token(connection, "upgrade")) {
        *why = "missing \"Connection: Upgrade\"";
    } else if (version == NULL || strcmp(version, "13") != 0) {
        *why = "Sec-WebSocket-Version must be 13";
    } else if (key == NULL || strlen(key) != 24 ||
               EVP_DecodeBlock(raw, (const unsigned char *)key, 24) != 18 || key[22] != '=' ||
               key[23] != '=') {
        /* 16 bytes encode to 24 characters ending in "=="; DecodeBlock counts the padding. */
        *why = "Sec-WebSocket-Key must be base64 of 16 bytes";
    }
    return *why ? PL_ERR_INVAL : PL_OK;
}

void pl_ws_accept(const char *key, char out[29])
{
    char buf[128];
    unsigned char h[SHA_DIGEST_LENGTH];
    int n = snprintf(buf, sizeof(buf), "%s%s", key, WS_GUID);
    SHA1((const unsigned char *)buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1, h);
    EVP_EncodeBlock((unsigned char *)out, h, SHA_DIGEST_LENGTH);
}

int pl_ws_origin_allowed(const char *origin, const char *allowlist)
{
    if (origin == NULL) {
        return 1;
    }
    if (allowlist == NULL) {
        return 0;
    }
    return has_token(allowlist, "*") || has_token(allowlist, origin);
}

/* ---- framing ---- */

size_t pl_ws_header(unsigned char out[PL_WS_HEADER_MAX], int opcode, size_t len)
{
    out[0] = (unsigned char)(0x80 | (opcode & 0x0f));
    if (len < 126) {
        out[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (unsigned char)(len >> 8);
        out[3] = (unsigned char)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++) {
        out[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    }
    return 10;
}

/* Status codes an endpoint may send (RFC 6455 7.4.1 and the IANA registry), as Autobahn
 * tests them: 1004-1006 and 1015 are reserved, 1016-2999 unassigned, 5000 and up invalid. */
static int close_code_ok(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

int pl_ws_close_check(const unsigned char *p, size_t len, uint16_t *code)
{
    *code = 1005;
    if (len == 0) {
        return 0;
    }
    if (len == 1) {
        return PL_WS_PROTOCOL_ERROR;
    }
    unsigned c = (unsigned)p[0] << 8 | p[1];
    if (!close_code_ok(c)) {
        return PL_WS_PROTOCOL_ERROR;
    }
    if (!pl_utf8_valid(p + 2, len - 2)) {
        return PL_WS_INVALID_DATA;
    }
    *code = (uint16_t)c;
    return 0;
}

void pl_ws_rx_clear(pl_ws_rx_t *rx)
{
    free(rx->frag);
    rx->frag = NULL;
    rx->frag_len = 0;
    rx->frag_op = 0;
}

/* Appends a fragment; the buffer grows to what the message needs, never past max. */
static int frag_append(pl_ws_rx_t *rx, const unsigned char *p, size_t n, size_t max)
{
    if (rx->frag_len + n > max) {
        return PL_WS_TOO_BIG;
    }
    if (n == 0) {
        return 0;
    }
    unsigned char *g = realloc(rx->frag, rx->frag_len + n);
    if (g == NULL) {
        return PL_WS_INTERNAL;
    }
    memcpy(g + rx->frag_len, p, n);
    rx->frag = g;
    rx->frag_len += n;
    return 0;
}

/* A frame header: fin, opcode, payload length and header length (mask excluded). */
struct frame_head {
    int fin, op, control;
    uint64_t plen;
    size_t hlen;
};

/* Reads the header at h (avail bytes). 1 when complete, 0 when more bytes are needed, or a
 * negative close status for a header no client may send. */
static int read_head(const unsigned char *h, size_t avail, struct frame_head *f)
{
    if (avail < 2) {
        return 0;
    }
    f->fin = h[0] & 0x80;
    f->op = h[0] & 0x0f;
    f->control = f->op & 0x08;
    if (h[0] & 0x70) {
        return -PL_WS_PROTOCOL_ERROR; /* reserved bits: no extension was negotiated */
    }
    if (!(h[1] & 0x80)) {
        return -PL_WS_PROTOCOL_ERROR; /* a client must mask every frame */
    }
    if (f->op != PL_WS_OP_CONT && f->op != PL_WS_OP_TEXT && f->op != PL_WS_OP_BINARY &&
        f->op != PL_WS_OP_CLOSE && f->op != PL_WS_OP_PING && f->op != PL_WS_OP_PONG) {
        return -PL_WS_PROTOCOL_ERROR;
    }
    f->plen = h[1] & 0x7f;
    f->hlen = 2;
    if (f->control && (!f->fin || f->plen > 125)) {
        return -PL_WS_PROTOCOL_ERROR;
    }
    if (f->plen == 126) {
        if (avail < 4) {
            return 0;
        }
        f->plen = (uint64_t)h[2] << 8 | h[3];
        f->hlen = 4;
    } else if (f->plen == 127) {
        if (avail < 10) {
            return 0;
        }
        f->plen = 0;
        for (int i = 0; i < 8; i++) {
            f->plen = f->plen << 8 | h[2 + i];
        }
        if (f->plen >> 63) {
            return -PL_WS_PROTOCOL_ERROR;
        }
        f->hlen = 10;
    }
    return 1;
}

/* Hands one unmasked frame's payload p to cb, as a whole message or as a control frame, or
 * keeps it as part of a fragmented message. cb's answer (nonzero: stop), or a negative close
 * status. */
static int deliver(pl_ws_rx_t *rx, const struct frame_head *f, unsigned char *p, size_t max_msg,
                   pl_ws_msg_fn cb, void *ud)
{
    size_t plen = (size_t)f->plen;
    if (f->control) {
        uint16_t code;
        int bad = f->op == PL_WS_OP_CLOSE ? pl_ws_close_check(p, plen, &code) : 0;
        return bad ? -bad : cb(ud, f->op, p, plen);
    }
    if (f->fin && f->op != PL_WS_OP_CONT) {
        return cb(ud, f->op, p, plen);
    }
    int err = frag_append(rx, p, plen, max_msg);
    if (err) {
        return -err;
    }
    if (f->op != PL_WS_OP_CONT) {
        rx->frag_op = f->op;
    }
    if (!f->fin) {
        return 0;
    }
    int fop = rx->frag_op;
    unsigned char *m = rx->frag;
    size_t mlen = rx->frag_len;
    rx->frag = NULL;
    rx->frag_len = 0;
    rx->frag_op = 0;
    int stop = cb(ud, fop, m ? m : p, mlen);
    free(m);
    return stop;
}

long pl_ws_rx_feed(pl_ws_rx_t *rx, unsigned char *buf, size_t len, size_t max_msg, pl_ws_msg_fn cb,
                   void *ud)
{
    size_t off = 0;
    for (;;) {
        const unsigned char *h = buf + off;
        size_t avail = len - off;
        struct frame_head f;
        int rc = read_head(h, avail, &f);
        if (rc <= 0) {
            return rc < 0 ? rc : (long)off;
        }
        /* Refused before its bytes arrive: a frame over the cap is never buffered. */
        if (f.plen > max_msg || (f.op == PL_WS_OP_CONT && rx->frag_len + f.plen > max_msg)) {
            return -PL_WS_TOO_BIG;
        }
        if (!f.control && (f.op == PL_WS_OP_CONT) != (rx->frag_op != 0)) {
            /* A continuation with no message begun, or a new message inside one. */
            return -PL_WS_PROTOCOL_ERROR;
        }
        if (avail < f.hlen + 4 + f.plen) {
            return (long)off;
        }
        const unsigned char *mask = h + f.hlen;
        unsigned char *p = buf + off + f.hlen + 4;
        for (uint64_t i = 0; i < f.plen; i++) {
            p[i] ^= mask[i & 3];
        }
        off += f.hlen + 4 + (size_t)f.plen;
        rc = deliver(rx, &f, p, max_msg, cb, ud);
        if (rc < 0) {
            return rc;
        }
        if (rc) {
            return (long)off;
        }
    }
}
