/*
 * parley-auth's pure rules: what a username, password, locale, time zone and refresh token may
 * look like, and password hashing. No I/O here, so unit tests cover every rule directly.
 */
#include "auth.h"
#include "parley/err.h"
#include "parley/proto.h"

#include <sodium.h>
#include <stdio.h>
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

int auth_refresh_parse(const char *token, char sid[PL_SESSION_ID_LEN])
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

int auth_json_str(json_t *body, const char *key, const char **out, size_t *len)
{
    json_t *v = json_object_get(body, key);
    if (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v))) {
        return 0;
    }
    *out = json_string_value(v);
    *len = json_string_length(v);
    return 1;
}

int auth_register_parse(json_t *body, auth_register_t *r, const char **why)
{
    const char *name;
    size_t name_len, n;
    memset(r, 0, sizeof(*r));
    r->locale = "en";
    r->time_zone = "UTC";
    if (!json_is_object(body)) {
        *why = "body must be a JSON object";
        return PL_ERR_INVAL;
    }
    if (!auth_json_str(body, "username", &name, &name_len) ||
        auth_username_normalize(name, r->user) != PL_OK) {
        *why = "username must be 3 to 32 characters of a-z, 0-9, '_', '.' or '-'";
        return PL_ERR_INVAL;
    }
    json_t *pw = json_object_get(body, "password"); /* bytes: NULs are the client's business */
    r->pw = json_string_value(pw);
    r->pw_len = json_string_length(pw);
    if (r->pw == NULL || auth_password_check(r->pw_len) != PL_OK) {
        *why = "password must be a string of 8 to 1024 bytes";
        return PL_ERR_INVAL;
    }
    if (json_object_get(body, "display_name") == NULL) {
        r->display = r->user;
    } else if (!auth_json_str(body, "display_name", &r->display, &n) || n == 0 || n > 64) {
        *why = "display_name must be a string of 1 to 64 bytes";
        return PL_ERR_INVAL;
    }
    if (json_object_get(body, "locale") != NULL &&
        (!auth_json_str(body, "locale", &r->locale, &n) || auth_locale_check(r->locale) != PL_OK)) {
        *why = "locale must look like \"en\" or \"pt-BR\"";
        return PL_ERR_INVAL;
    }
    if (json_object_get(body, "time_zone") != NULL &&
        (!auth_json_str(body, "time_zone", &r->time_zone, &n) ||
         auth_time_zone_check(r->time_zone) != PL_OK)) {
        *why = "time_zone must be an IANA name such as Europe/Paris";
        return PL_ERR_INVAL;
    }
    return PL_OK;
}

int auth_login_parse(json_t *body, auth_login_t *l, const char **why)
{
    const char *name;
    size_t name_len, n;
    memset(l, 0, sizeof(*l));
    l->device = "unknown";
    json_t *pw = json_object_get(body, "password");
    if (!json_is_object(body) || !auth_json_str(body, "username", &name, &name_len) ||
        !json_is_string(pw)) {
        *why = "body must be {\"username\":…,\"password\":…}";
        return PL_ERR_INVAL;
    }
    l->pw = json_string_value(pw);
    l->pw_len = json_string_length(pw);
    if (json_object_get(body, "device") != NULL &&
        (!auth_json_str(body, "device", &l->device, &n) || n == 0 || n > 64)) {
        *why = "device must be a string of 1 to 64 bytes";
        return PL_ERR_INVAL;
    }
    l->shape_ok =
        auth_username_normalize(name, l->user) == PL_OK && auth_password_check(l->pw_len) == PL_OK;
    if (!l->shape_ok) {
        snprintf(l->user, sizeof(l->user), "-invalid-");
    }
    return PL_OK;
}
