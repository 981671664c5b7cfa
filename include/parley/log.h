/*
 * Structured logging: one JSON object per line on stderr, with a UTC timestamp, the level,
 * the service name and an event name that operators can grep and count. Not for secrets:
 * callers never pass tokens, passwords or message bodies. Safe to call from any thread.
 */
#ifndef PARLEY_LOG_H
#define PARLEY_LOG_H

#include <jansson.h>

enum { PL_LOG_DEBUG = 0, PL_LOG_INFO = 1, PL_LOG_WARN = 2, PL_LOG_ERROR = 3 };

/* Sets the service name written on every line and the lowest level written. */
void pl_log_init(const char *service, int min_level);

/* Parses "debug", "info", "warn" or "error"; returns PL_LOG_INFO for anything else. */
int pl_log_level_parse(const char *s);

/*
 * Writes one line: {"ts":…,"level":…,"service":…,"event":event, "msg": formatted text,
 * plus every member of fields}. fields may be NULL; the call steals the reference.
 */
void pl_log_fields(int level, const char *event, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define pl_log_debug(event, ...) pl_log_fields(PL_LOG_DEBUG, (event), NULL, __VA_ARGS__)
#define pl_log_info(event, ...)  pl_log_fields(PL_LOG_INFO, (event), NULL, __VA_ARGS__)
#define pl_log_warn(event, ...)  pl_log_fields(PL_LOG_WARN, (event), NULL, __VA_ARGS__)
#define pl_log_error(event, ...) pl_log_fields(PL_LOG_ERROR, (event), NULL, __VA_ARGS__)

#endif
