/*
 * WebSocket handshake helpers (RFC 6455 section 4.2).
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

long pl_ws_rx_feed(pl_ws_rx_t *rx, unsigned char *buf, size_t len, size_t max_msg, pl_ws_msg_fn cb,
                   void *ud)
{
    size_t off = 0;
    for (;;) {
        const unsigned char *h = buf + off;
        size_t avail = len - off;
        if (avail < 2) {
            return (long)off;
        }
        int fin = h[0] & 0x80, op = h[0] & 0x0f;
        if (h[0] & 0x70) {
            return -PL_WS_PROTOCOL_ERROR; /* reserved bits: no extension was negotiated */
        }
        if (!(h[1] & 0x80)) {
            return -PL_WS_PROTOCOL_ERROR; /* a client must mask every frame */
        }
        int control = op & 0x08;
        if (op != PL_WS_OP_CONT && op != PL_WS_OP_TEXT && op != PL_WS_OP_BINARY &&
            op != PL_WS_OP_CLOSE && op != PL_WS_OP_PING && op != PL_WS_OP_PONG) {
            return -PL_WS_PROTOCOL_ERROR;
        }
        uint64_t plen = h[1] & 0x7f;
        size_t hlen = 2;
        if (control && (!fin || plen > 125)) {
            return -PL_WS_PROTOCOL_ERROR;
        }
        if (plen == 126) {
            if (avail < 4) {
                return (long)off;
            }
            plen = (uint64_t)h[2] << 8 | h[3];
            hlen = 4;
        } else if (plen == 127) {
            if (avail < 10) {
                return (long)off;
            }
            plen = 0;
            for (int i = 0; i < 8; i++) {
                plen = plen << 8 | h[2 + i];
            }
            if (plen >> 63) {
                return -PL_WS_PROTOCOL_ERROR;
            }
            hlen = 10;
        }
        /* Refused before its bytes arrive: a frame over the cap is never buffered. */
        if (plen > max_msg || (op == PL_WS_OP_CONT && rx->frag_len + plen > max_msg)) {
            return -PL_WS_TOO_BIG;
        }
        if (!control && (op == PL_WS_OP_CONT) != (rx->frag_op != 0)) {
            /* A continuation with no message begun, or a new message inside one. */
            return -PL_WS_PROTOCOL_ERROR;
        }
        if (avail < hlen + 4 + plen) {
            return (long)off;
        }
        const unsigned char *mask = h + hlen;
        unsigned char *p = buf + off + hlen + 4;
        for (uint64_t i = 0; i < plen; i++) {
            p[i] ^= mask[i & 3];
        }
        off += hlen + 4 + (size_t)plen;
        int stop = 0;
        if (control) {
            if (op == PL_WS_OP_CLOSE) {
                uint16_t code;
                int bad = pl_ws_close_check(p, (size_t)plen, &code);
                if (bad) {
                    return -bad;
                }
            }
            stop = cb(ud, op, p, (size_t)plen);
        } else if (fin && op != PL_WS_OP_CONT) {
            stop = cb(ud, op, p, (size_t)plen);
        } else {
            int err = frag_append(rx, p, (size_t)plen, max_msg);
            if (err) {
                return -err;
            }
            if (op != PL_WS_OP_CONT) {
                rx->frag_op = op;
            }
            if (fin) {
                int fop = rx->frag_op;
                unsigned char *m = rx->frag;
                size_t mlen = rx->frag_len;
                rx->frag = NULL;
                rx->frag_len = 0;
                rx->frag_op = 0;
                stop = cb(ud, fop, m ? m : p, mlen);
                free(m);
            }
        }
        if (stop) {
            return (long)off;
        }
    }
}
