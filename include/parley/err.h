/*
 * One error vocabulary for the whole cluster. Every Parley function that can fail returns
 * PL_OK (0) or one of the negative codes below; wrappers translate their library's own
 * errors into these once, at the boundary, and put any detail on their context object.
 * This header is not for HTTP or WebSocket mapping: see http.h for status codes.
 */
#ifndef PARLEY_ERR_H
#define PARLEY_ERR_H

/* X(name, value, wire code, text). The wire code is what clients see in error bodies. */
#define PL_ERRNO_MAP(X)                                                                            \
    X(OK, 0, "ok", "success")                                                                      \
    X(NOMEM, -1, "internal", "out of memory")                                                      \
    X(INVAL, -2, "invalid", "invalid argument or request")                                         \
    X(TOOBIG, -3, "too_large", "value exceeds its size limit")                                     \
    X(NOTFOUND, -4, "not_found", "not found")                                                      \
    X(EXISTS, -5, "conflict", "already exists")                                                    \
    X(UNAUTH, -6, "unauthorized", "missing or invalid credentials")                                \
    X(FORBIDDEN, -7, "forbidden", "not allowed")                                                   \
    X(RATELIMIT, -8, "rate_limited", "too many requests")                                          \
    X(UNAVAIL, -9, "unavailable", "a dependency is unavailable")                                   \
    X(IO, -10, "internal", "input/output error")                                                   \
    X(PROTO, -11, "invalid", "protocol error")                                                     \
    X(EXPIRED, -12, "unauthorized", "expired")                                                     \
    X(REVOKED, -13, "unauthorized", "revoked")                                                     \
    X(CONFIG, -14, "internal", "invalid configuration")                                            \
    X(INTERNAL, -15, "internal", "internal error")

enum {
#define PL__ERR_ENUM(name, val, code, text) PL_ERR_##name = (val),
    PL_ERRNO_MAP(PL__ERR_ENUM)
#undef PL__ERR_ENUM
};

/* PL_OK is the success value; the table's OK row exists so pl_strerror(0) has a text. */
#define PL_OK PL_ERR_OK

/* Human-readable text for an error code; never NULL ("unknown error" for other values). */
const char *pl_strerror(int err);

/* Short symbolic name, such as "PL_ERR_TOOBIG"; never NULL. */
const char *pl_errname(int err);

/* Machine-readable code used in error bodies sent to clients, such as "too_large". */
const char *pl_errcode(int err);

#endif
