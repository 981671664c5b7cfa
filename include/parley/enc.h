/*
 * Small encodings and randomness shared by tokens and identifiers: base64url without padding
 * (RFC 4648 section 5, as JWTs use it), lowercase hex, bytes from the kernel's CSPRNG, and
 * UTC timestamps as clients see them. Pure functions with no I/O except pl_random_bytes()
 * and the clock. Thread-safe.
 */
#ifndef PARLEY_ENC_H
#define PARLEY_ENC_H

#include <stddef.h>

/* Fills p with n random bytes from getrandom(2). Returns PL_OK or PL_ERR_IO. */
int pl_random_bytes(void *p, size_t n);

/* Bytes needed to base64url-encode n bytes, including the NUL. */
#define PL_B64URL_LEN(n) ((((n) + 2) / 3) * 4 + 1)

/* Writes the unpadded base64url text of p[0..n) and a NUL into out (PL_B64URL_LEN(n) bytes). */
void pl_b64url_encode(const void *p, size_t n, char *out);

/*
 * Decodes unpadded base64url text of length n into out, which holds at most max bytes. Returns
 * the decoded length, or -1 for a character outside the alphabet, an impossible length,
 * non-zero trailing bits or a result longer than max.
 */
long pl_b64url_decode(const char *s, size_t n, unsigned char *out, size_t max);

/* Writes 2n lowercase hex digits and a NUL into out. */
void pl_hex_encode(const void *p, size_t n, char *out);

/* Writes 2n random hex digits and a NUL into out (2n + 1 bytes). Returns as pl_random_bytes(). */
int pl_random_hex(char *out, size_t n);

/* FNV-1a hash of a NUL-terminated string, for in-memory hash tables (not for security). */
size_t pl_hash_str(const char *s);

/* Milliseconds since the Unix epoch, from CLOCK_REALTIME. */
long long pl_now_ms(void);

/* Writes ms since the epoch as "2026-11-29T13:00:00.123Z" (UTC) into out (32 bytes). */
void pl_iso8601_ms(long long ms, char out[32]);

#endif
