/*
 * The WebSocket opening handshake of RFC 6455 as pure functions: checking an upgrade request's
 * headers, computing Sec-WebSocket-Accept, and matching Origin against an allowlist. Framing
 * itself is wslay's; this module does no I/O and keeps no state. Thread-safe.
 */
#ifndef PARLEY_WS_H
#define PARLEY_WS_H

#include <stddef.h>

/* RFC 6455 close codes the services use. */
enum {
    PL_WS_NORMAL = 1000,
    PL_WS_GOING_AWAY = 1001,
    PL_WS_PROTOCOL_ERROR = 1002,
    PL_WS_UNSUPPORTED = 1003,
    PL_WS_INVALID_DATA = 1007,
    PL_WS_POLICY = 1008,
    PL_WS_TOO_BIG = 1009,
    PL_WS_INTERNAL = 1011,
    PL_WS_TRY_AGAIN = 1013,
};

/*
 * Checks an upgrade request: method GET, "Upgrade: websocket", a Connection header listing
 * "upgrade", version 13 and a key that is base64 of 16 bytes. Any argument may be NULL (a
 * missing header). Returns PL_OK, or PL_ERR_INVAL with a reason in *why.
 */
int pl_ws_check_request(const char *method, const char *upgrade, const char *connection,
                        const char *version, const char *key, const char **why);

/* Writes the Sec-WebSocket-Accept value for key (29 bytes with the NUL). */
void pl_ws_accept(const char *key, char out[29]);

/*
 * 1 when origin may connect: no Origin header (not a browser), or an exact match of one entry
 * of allowlist (comma-separated, "*" allows all).
 */
int pl_ws_origin_allowed(const char *origin, const char *allowlist);

#endif
