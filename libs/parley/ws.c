/*
 * WebSocket handshake helpers (RFC 6455 section 4.2).
 */
#include "parley/ws.h"
#include "parley/err.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
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
