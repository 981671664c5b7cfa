/*
 * JSON-lines logger. Each line is built in memory and written with one write(2), so lines
 * from different threads never interleave (stderr writes below PIPE_BUF are atomic on pipes;
 * longer lines are rare and still whole per call).
 */
#include "parley/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char service_name[64] = "parley";
static int min_level = PL_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void pl_log_init(const char *service, int level)
{
    snprintf(service_name, sizeof(service_name), "%s", service ? service : "parley");
    min_level = level;
}

int pl_log_level_parse(const char *s)
{
    for (int i = 0; s != NULL && i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            return i;
        }
    }
    return PL_LOG_INFO;
}

void pl_log_fields(int level, const char *event, json_t *fields, const char *fmt, ...)
{
    if (level < min_level || level < PL_LOG_DEBUG || level > PL_LOG_ERROR) {
        json_decref(fields);
        return;
    }
    struct timespec ts;
    struct tm tm;
    char when[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + n, sizeof(when) - n, ".%03ldZ", ts.tv_nsec / 1000000);

    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    json_t *line = json_object();
    if (line == NULL) {
        json_decref(fields);
        return;
    }
    json_object_set_new(line, "ts", json_string(when));
    json_object_set_new(line, "level", json_string(level_names[level]));
    json_object_set_new(line, "service", json_string(service_name));
    json_object_set_new(line, "event", json_string(event ? event : "log"));
    /* Invalid UTF-8 in a message would make json_string() fail; keep the line anyway. */
    json_t *m = json_string(msg);
    json_object_set_new(line, "msg", m ? m : json_string("(unprintable)"));
    if (fields != NULL) {
        json_object_update_missing(line, fields);
        json_decref(fields);
    }
    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(line);
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    text[len] = '\n';
    /* A short write to stderr is not worth retrying; logging must never block the caller. */
    ssize_t w = write(STDERR_FILENO, text, len + 1);
    (void)w;
    free(text);
}
