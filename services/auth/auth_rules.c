/*
 * parley-auth's pure rules: what a username, password, locale, time zone and refresh token may
 * look like, and password hashing. No I/O here, so unit tests cover every rule directly.
 */
#include "auth.h"
#include "parley/err.h"
#include "parley/proto.h"

#include <sodium.h>
#include <string.h>

int auth_username_normalize(const char *in, char *out)
{
    return pl_username_normalize(in, out);
}

int auth_password_check(size_t len)
{
    return len >= AUTH_PASSWORD_MIN && len <= AUTH_PASSWORD_MAX ? PL_OK : PL_ERR_INVAL;
}

static int charset_check(const char *s, size_t min, size_t max, const char *extra)
{
    size_t n = s ? strnlen(s, max + 1) : 0;
    if (n < min || n > max) {
        return PL_ERR_INVAL;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(extra, c) != NULL)) {
            return PL_ERR_INVAL;
        }
    }
    return PL_OK;
}

int auth_locale_check(const char *s)
{
    return charset_check(s, 2, 35, "_-");
}

int auth_time_zone_check(const char *s)
{
    return charset_check(s, 1, 64, "/_+-");
}

/* OWASP's argon2id minimum: 19 MiB of memory, 2 passes, 1 lane. */
#define PW_OPSLIMIT 2
#define PW_MEMLIMIT (19u * 1024u * 1024u)

int auth_pw_hash(const char *pw, size_t len, char *out, size_t outlen)
{
    char tmp[crypto_pwhash_STRBYTES];
    if (outlen < sizeof(tmp)) {
        return PL_ERR_INVAL;
    }
    if (crypto_pwhash_str_alg(tmp, pw, len, PW_OPSLIMIT, PW_MEMLIMIT,
                              crypto_pwhash_ALG_ARGON2ID13) != 0) {
        return PL_ERR_NOMEM;
    }
    memcpy(out, tmp, sizeof(tmp));
    return PL_OK;
}

int auth_pw_verify(const char *hash, const char *pw, size_t len)
{
    return crypto_pwhash_str_verify(hash, pw, len) == 0 ? PL_OK : PL_ERR_UNAUTH;
}

void auth_refresh_hash(const char *token, char out[65])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, (const unsigned char *)token, strlen(token));
    sodium_bin2hex(out, 65, h, sizeof(h));
}

int auth_refresh_parse(const char *token, char sid[33])
{
    /* "<32 hex>.<43 base64url>": a session id and 256 random bits. */
    if (token == NULL || strnlen(token, 80) != 32 + 1 + 43 || token[32] != '.') {
        return PL_ERR_UNAUTH;
    }
    for (int i = 0; i < 32; i++) {
        char c = token[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return PL_ERR_UNAUTH;
        }
    }
    for (int i = 33; i < 76; i++) {
        char c = token[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_')) {
            return PL_ERR_UNAUTH;
        }
    }
    memcpy(sid, token, 32);
    sid[32] = '\0';
    return PL_OK;
}
