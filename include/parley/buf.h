/*
 * Growable byte buffers with a hard maximum (curl's dynbuf). Every buffer that input from a
 * client can fill is a pl_buf_t, so hostile input meets PL_ERR_TOOBIG instead of growing
 * memory without bound. The contents are always NUL-terminated for convenience, and the
 * terminator is not counted in len. Not thread-safe: one owner at a time.
 */
#ifndef PARLEY_BUF_H
#define PARLEY_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct pl_buf_s {
    char *data; /* NULL until the first append */
    size_t len; /* bytes used, excluding the terminating NUL */
    size_t cap; /* bytes allocated */
    size_t max; /* most bytes len may ever reach */
} pl_buf_t;

/* Prepares an empty buffer that will never hold more than max bytes. Allocates nothing. */
void pl_buf_init(pl_buf_t *b, size_t max);

/*
 * Appends n bytes. Returns PL_OK, PL_ERR_TOOBIG when len + n would exceed max (the buffer is
 * left as it was), or PL_ERR_NOMEM.
 */
int pl_buf_append(pl_buf_t *b, const void *p, size_t n);

/* Appends a NUL-terminated string; errors as pl_buf_append(). */
int pl_buf_append_str(pl_buf_t *b, const char *s);

/* Appends formatted text; errors as pl_buf_append(), plus PL_ERR_INVAL for a bad format. */
int pl_buf_printf(pl_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int pl_buf_vprintf(pl_buf_t *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Forgets the contents but keeps the allocation for reuse. */
void pl_buf_reset(pl_buf_t *b);

/*
 * Hands the contents to the caller, who must free() them; the buffer is left empty. Returns
 * an allocated empty string when nothing was appended, or NULL when that allocation fails.
 */
char *pl_buf_detach(pl_buf_t *b);

/* Releases the memory; the buffer may be reused after pl_buf_init(). Accepts NULL. */
void pl_buf_free(pl_buf_t *b);

#endif
