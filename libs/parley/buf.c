/*
 * Bounded growable buffers. Growth doubles up to max so appends are amortised O(1); the
 * maximum is checked before any allocation, which is what keeps hostile input bounded.
 */
#include "parley/buf.h"
#include "parley/err.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIN_CAP 64

void pl_buf_init(pl_buf_t *b, size_t max)
{
    assert(b != NULL);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

/* Makes room for need more bytes plus the terminator. */
static int grow(pl_buf_t *b, size_t need)
{
    if (need > b->max - b->len) {
        return PL_ERR_TOOBIG;
    }
    size_t want = b->len + need + 1;
    if (want <= b->cap) {
        return PL_OK;
    }
    size_t cap = b->cap ? b->cap : MIN_CAP;
    while (cap < want) {
        cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    }
    if (cap > b->max + 1) {
        cap = b->max + 1;
    }
    char *p = realloc(b->data, cap);
    if (p == NULL) {
        return PL_ERR_NOMEM;
    }
    b->data = p;
    b->cap = cap;
    return PL_OK;
}

int pl_buf_append(pl_buf_t *b, const void *p, size_t n)
{
    assert(b != NULL);
    assert(p != NULL || n == 0);
    int rc = grow(b, n);
    if (rc != PL_OK) {
        return rc;
    }
    if (n > 0) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
    return PL_OK;
}

int pl_buf_append_str(pl_buf_t *b, const char *s)
{
    return pl_buf_append(b, s, strlen(s));
}

int pl_buf_vprintf(pl_buf_t *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    int n = vsnprintf(NULL, 0, fmt, cp);
    va_end(cp);
    if (n < 0) {
        return PL_ERR_INVAL;
    }
    int rc = grow(b, (size_t)n);
    if (rc != PL_OK) {
        return rc;
    }
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return PL_OK;
}

int pl_buf_printf(pl_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = pl_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

void pl_buf_reset(pl_buf_t *b)
{
    b->len = 0;
    if (b->data != NULL) {
        b->data[0] = '\0';
    }
}

char *pl_buf_detach(pl_buf_t *b)
{
    char *p = b->data ? b->data : calloc(1, 1);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    return p;
}

void pl_buf_free(pl_buf_t *b)
{
    if (b == NULL) {
        return;
    }
    free(b->data);
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}
