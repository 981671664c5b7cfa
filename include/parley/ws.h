/*
 * The server side of RFC 6455 as pure functions: checking an upgrade request's headers,
 * computing Sec-WebSocket-Accept, matching Origin against an allowlist, and the framing of a
 * connection (client frames in, server frames out). No I/O; the only state is the caller's
 * pl_ws_rx_t, which holds memory only while a fragmented message is being received. That is
 * what keeps an idle socket on the gateway at a few hundred bytes. Thread-safe.
 */
#ifndef PARLEY_WS_H
#define PARLEY_WS_H

#include <stddef.h>
#include <stdint.h>

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

/* Opcodes (RFC 6455 5.2). */
enum {
    PL_WS_OP_CONT = 0x0,
    PL_WS_OP_TEXT = 0x1,
    PL_WS_OP_BINARY = 0x2,
    PL_WS_OP_CLOSE = 0x8,
    PL_WS_OP_PING = 0x9,
    PL_WS_OP_PONG = 0xa,
};

/* The largest server frame header: 2 bytes and a 64-bit length. */
#define PL_WS_HEADER_MAX 10

/* Receiving state of one connection: a fragmented message being put together, else nothing. */
typedef struct pl_ws_rx_s {
    unsigned char *frag; /* the fragments so far; NULL between messages */
    size_t frag_len;
    int frag_op; /* PL_WS_OP_TEXT or PL_WS_OP_BINARY while fragmented, else 0 */
} pl_ws_rx_t;

/*
 * Called for each complete message (PL_WS_OP_TEXT or PL_WS_OP_BINARY, reassembled) and each
 * control frame (close, ping, pong; a close payload already checked by pl_ws_close_check).
 * data is valid during the call only. Returns 0 to go on, nonzero to stop after this frame.
 */
typedef int (*pl_ws_msg_fn)(void *ud, int opcode, const unsigned char *data, size_t len);

/*
 * Consumes the complete client frames at the start of buf[0..len), unmasking them in place,
 * and hands messages and control frames to cb. Returns the number of bytes consumed: what
 * follows is an incomplete frame, to be fed again with the bytes after it. On a violation
 * returns minus the close status to fail the connection with: PL_WS_PROTOCOL_ERROR (unmasked
 * frame, reserved bits, unknown opcode, a control frame over 125 bytes or fragmented, a bad
 * continuation, an invalid close payload), PL_WS_INVALID_DATA (a close reason that is not
 * UTF-8), PL_WS_TOO_BIG (a message over max_msg bytes) or PL_WS_INTERNAL (out of memory).
 * Text is not checked for UTF-8 here (the caller checks whole messages).
 */
long pl_ws_rx_feed(pl_ws_rx_t *rx, unsigned char *buf, size_t len, size_t max_msg, pl_ws_msg_fn cb,
                   void *ud);

/* Frees what rx holds. */
void pl_ws_rx_clear(pl_ws_rx_t *rx);

/* Writes the header of a server frame (FIN, unmasked) of opcode and len bytes; returns its size. */
size_t pl_ws_header(unsigned char out[PL_WS_HEADER_MAX], int opcode, size_t len);

/*
 * Checks a close frame's payload (RFC 6455 5.5.1, 7.4): empty, or a status code that may be
 * sent on the wire followed by a UTF-8 reason. Returns 0 and sets *code (1005 when there is
 * none) when valid, else the status to fail with (PL_WS_PROTOCOL_ERROR or PL_WS_INVALID_DATA).
 */
int pl_ws_close_check(const unsigned char *p, size_t len, uint16_t *code);

#endif
