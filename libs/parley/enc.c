/*
 * base64url, hex and random bytes. The decoder is strict (no padding, no whitespace, zero
 * trailing bits) so that one token has exactly one spelling.
 */
#include "parley/enc.h"
#include "parley/err.h"

#include <errno.h>
#include <stdio.h>
#include <sys/random.h>
#include <time.h>

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int pl_random_bytes(void *p, size_t n)
{
    unsigned char *c = p;
    while (n > 0) {
        ssize_t got = getrandom(c, n, 0);
        if (got < 0) {
            if (errno == EINTR) {
                continue;
            }
            return PL_ERR_IO;
        }
        c += got;
        n -= (size_t)got;
    }
    return PL_OK;
}

void pl_b64url_encode(const void *p, size_t n, char *out)
{
    const unsigned char *s = p;
    size_t o = 0;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63];
        out[o++] = b64[v & 63];
    }
    if (n - i == 1) {
        unsigned v = (unsigned)s[i] << 16;
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
    } else if (n - i == 2) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8;
        out[o++] = b64[v >> 18 & 63];
        out[o++] = b64[v >> 12 & 63];
        out[o++] = b64[v >> 6 & 63];
    }
    out[o] = '\0';
}

static int val(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '-') {
        return 62;
    }
    if (c == '_') {
        return 63;
    }
    return -1;
}

long pl_b64url_decode(const char *s, size_t n, unsigned char *out, size_t max)
{
    if (n % 4 == 1) {
        return -1;
    }
    size_t need = n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0);
    if (need > max) {
        return -1;
    }
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = val(s[i]);
        if (v < 0) {
            return -1;
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) {
        return -1;
    }
    return (long)o;
}

void pl_hex_encode(const void *p, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[s[i] >> 4];
        out[2 * i + 1] = hex[s[i] & 15];
    }
    out[2 * n] = '\0';
}

int pl_random_hex(char *out, size_t n)
{
    unsigned char raw[64];
    if (n > sizeof(raw)) {
        return PL_ERR_INVAL;
    }
    int rc = pl_random_bytes(raw, n);
    if (rc == PL_OK) {
        pl_hex_encode(raw, n, out);
    }
    return rc;
}

long long pl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void pl_iso8601_ms(long long ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    if (frac < 0) {
        frac += 1000;
        secs -= 1;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", frac);
}

size_t pl_hash_str(const char *s)
{
    size_t h = 1469598103934665603ull;
    while (*s) {
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    }
    return h;
}
