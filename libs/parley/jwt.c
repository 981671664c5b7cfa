/*
 * ES256 tokens. libjwt signs them; everything it would decide from a token itself (which
 * algorithm, which claims matter) is decided here instead, because a token is
 * attacker-controlled input.
 *
 * Verification does not go through libjwt: jwt_decode() parses the PEM key again for every
 * token, and OpenSSL 3's decoders made that about 70% of a gateway's CPU per handshake (perf,
 * 5,000 connections: OSSL_DECODER_*, provider rwlocks, strcasecmp). The verifier parses the key
 * once and checks the signature with OpenSSL directly; tokens signed by libjwt are verified
 * against it in the unit tests and the fuzz driver.
 */
#include "parley/jwt.h"
#include "parley/enc.h"
#include "parley/err.h"

#include <jansson.h>
#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pl_jwt_signer_s {
    unsigned char *key;
    size_t keylen;
    char *iss;
    char *aud;
    long ttl;
};

struct pl_jwt_verifier_s {
    EVP_PKEY *pkey; /* a P-256 public key, parsed once; read-only, so shared by threads */
    char *iss;
    char *aud;
    long leeway;
    pl_jwt_revoked_fn revoked;
    void *ud;
};

static unsigned char *copy_key(const char *pem, size_t len)
{
    /* libjwt reads PEM through a BIO of exactly len bytes; a terminating NUL is harmless. */
    unsigned char *k = malloc(len + 1);
    if (k != NULL) {
        memcpy(k, pem, len);
        k[len] = '\0';
    }
    return k;
}

void pl_jwt_signer_free(pl_jwt_signer_t **ps)
{
    if (ps == NULL || *ps == NULL) {
        return;
    }
    pl_jwt_signer_t *s = *ps;
    if (s->key != NULL) {
        memset(s->key, 0, s->keylen);
    }
    free(s->key);
    free(s->iss);
    free(s->aud);
    free(s);
    *ps = NULL;
}

int pl_jwt_signer_new(const char *pem, size_t len, const char *iss, const char *aud, long ttl_s,
                      pl_jwt_signer_t **out)
{
    *out = NULL;
    pl_jwt_signer_t *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return PL_ERR_NOMEM;
    }
    s->key = copy_key(pem, len);
    s->keylen = len;
    s->iss = strdup(iss);
    s->aud = strdup(aud);
    s->ttl = ttl_s;
    if (s->key == NULL || s->iss == NULL || s->aud == NULL) {
        pl_jwt_signer_free(&s);
        return PL_ERR_NOMEM;
    }
    /* Sign once now so a wrong key stops the service at start, not at the first login. */
    char *probe = NULL;
    int rc = pl_jwt_sign(s, "probe", "probe", 0, &probe, NULL);
    free(probe);
    if (rc != PL_OK) {
        pl_jwt_signer_free(&s);
        return PL_ERR_CONFIG;
    }
    *out = s;
    return PL_OK;
}

int pl_jwt_sign(const pl_jwt_signer_t *s, const char *sub, const char *sid, long now, char **token,
                pl_jwt_claims_t *claims)
{
    int rc = PL_ERR_INTERNAL;
    jwt_t *jwt = NULL;
    char jti[33];
    *token = NULL;
    if (pl_random_hex(jti, 16) != PL_OK) {
        return PL_ERR_INTERNAL;
    }
    if (jwt_new(&jwt) != 0) {
        return PL_ERR_NOMEM;
    }
    if (jwt_add_grant(jwt, "iss", s->iss) || jwt_add_grant(jwt, "aud", s->aud) ||
        jwt_add_grant(jwt, "sub", sub) || jwt_add_grant(jwt, "sid", sid) ||
        jwt_add_grant(jwt, "jti", jti) || jwt_add_grant_int(jwt, "iat", now) ||
        jwt_add_grant_int(jwt, "exp", now + s->ttl) ||
        jwt_set_alg(jwt, JWT_ALG_ES256, s->key, (int)s->keylen)) {
        goto out;
    }
    *token = jwt_encode_str(jwt);
    if (*token == NULL) {
        goto out;
    }
    if (claims != NULL) {
        memset(claims, 0, sizeof(*claims));
        snprintf(claims->sub, sizeof(claims->sub), "%s", sub);
        snprintf(claims->sid, sizeof(claims->sid), "%s", sid);
        snprintf(claims->jti, sizeof(claims->jti), "%s", jti);
        claims->iat = now;
        claims->exp = now + s->ttl;
    }
    rc = PL_OK;
out:
    jwt_free(jwt);
    return rc;
}

void pl_jwt_verifier_free(pl_jwt_verifier_t **pv)
{
    if (pv == NULL || *pv == NULL) {
        return;
    }
    EVP_PKEY_free((*pv)->pkey);
    free((*pv)->iss);
    free((*pv)->aud);
    free(*pv);
    *pv = NULL;
}

int pl_jwt_verifier_new(const char *pem, size_t len, const char *iss, const char *aud,
                        long leeway_s, pl_jwt_revoked_fn revoked, void *ud, pl_jwt_verifier_t **out)
{
    *out = NULL;
    if (pem == NULL || len == 0 || strstr(pem, "PUBLIC KEY") == NULL) {
        return PL_ERR_CONFIG;
    }
    pl_jwt_verifier_t *v = calloc(1, sizeof(*v));
    if (v == NULL) {
        return PL_ERR_NOMEM;
    }
    v->iss = strdup(iss);
    v->aud = strdup(aud);
    v->leeway = leeway_s < 0 ? 0 : leeway_s > PL_JWT_MAX_LEEWAY ? PL_JWT_MAX_LEEWAY : leeway_s;
    v->revoked = revoked;
    v->ud = ud;
    if (v->iss == NULL || v->aud == NULL) {
        pl_jwt_verifier_free(&v);
        return PL_ERR_NOMEM;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    v->pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    char group[32] = "";
    if (v->pkey == NULL || !EVP_PKEY_is_a(v->pkey, "EC") ||
        !EVP_PKEY_get_utf8_string_param(v->pkey, "group", group, sizeof(group), NULL) ||
        strcmp(group, "prime256v1") != 0) {
        pl_jwt_verifier_free(&v);
        return PL_ERR_CONFIG; /* not a P-256 public key: ES256 needs one */
    }
    *out = v;
    return PL_OK;
}

/* Decodes one base64url segment of at most max decoded bytes as a JSON object. */
static json_t *segment_json(const char *s, size_t n, size_t max)
{
    unsigned char buf[PL_JWT_MAX_LEN];
    if (max > sizeof(buf)) {
        max = sizeof(buf);
    }
    long len = pl_b64url_decode(s, n, buf, max);
    if (len <= 0) {
        return NULL;
    }
    json_t *j = json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* Copies a required string claim of at most cap - 1 bytes; 0 when absent, empty or too long. */
static int claim_str(json_t *claims, const char *name, char *dst, size_t cap)
{
    const char *s = json_string_value(json_object_get(claims, name));
    if (s == NULL || *s == '\0' || strlen(s) >= cap) {
        return 0;
    }
    memcpy(dst, s, strlen(s) + 1);
    return 1;
}

/* Reads a NumericDate claim; 0 when absent or not an integer. */
static int claim_time(json_t *claims, const char *name, long *out)
{
    json_t *t = json_object_get(claims, name);
    if (!json_is_integer(t)) {
        return 0;
    }
    *out = (long)json_integer_value(t);
    return 1;
}

static int check_claims(const pl_jwt_verifier_t *v, json_t *claims, long now, pl_jwt_claims_t *out)
{
    char iss[256], aud[256];
    long nbf;
    if (!claim_str(claims, "iss", iss, sizeof(iss)) || strcmp(iss, v->iss) != 0 ||
        !claim_str(claims, "aud", aud, sizeof(aud)) || strcmp(aud, v->aud) != 0 ||
        !claim_str(claims, "sub", out->sub, sizeof(out->sub)) ||
        !claim_str(claims, "sid", out->sid, sizeof(out->sid)) ||
        !claim_str(claims, "jti", out->jti, sizeof(out->jti)) ||
        !claim_time(claims, "iat", &out->iat) || !claim_time(claims, "exp", &out->exp)) {
        return PL_ERR_UNAUTH;
    }
    if (out->iat > now + v->leeway) {
        return PL_ERR_UNAUTH;
    }
    if (json_object_get(claims, "nbf") != NULL &&
        (!claim_time(claims, "nbf", &nbf) || nbf > now + v->leeway)) {
        return PL_ERR_UNAUTH;
    }
    if (now > out->exp + v->leeway) {
        return PL_ERR_EXPIRED;
    }
    return PL_OK;
}

/* 1 when sig (r || s, 32 bytes each) is pkey's ES256 signature of the signing input. */
static int es256_ok(EVP_PKEY *pkey, const char *input, size_t n, const unsigned char *sig)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    unsigned char der[80];
    unsigned char *p = der;
    int ok = 0;
    SHA256((const unsigned char *)input, n, digest);
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL);
    BIGNUM *s = BN_bin2bn(sig + 32, 32, NULL);
    if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return 0;
    }
    /* r and s now belong to es. DER of two 33-byte integers fits in 72 bytes. */
    int derlen = i2d_ECDSA_SIG(es, NULL) <= (int)sizeof(der) ? i2d_ECDSA_SIG(es, &p) : -1;
    ECDSA_SIG_free(es);
    EVP_PKEY_CTX *ctx = derlen > 0 ? EVP_PKEY_CTX_new(pkey, NULL) : NULL;
    if (ctx != NULL && EVP_PKEY_verify_init(ctx) == 1 &&
        EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1) {
        ok = EVP_PKEY_verify(ctx, der, (size_t)derlen, digest, sizeof(digest)) == 1;
    }
    EVP_PKEY_CTX_free(ctx);
    return ok;
}

int pl_jwt_verify(const pl_jwt_verifier_t *v, const char *token, long now, pl_jwt_claims_t *out)
{
    int rc = PL_ERR_UNAUTH;
    json_t *header = NULL;
    json_t *claims = NULL;
    memset(out, 0, sizeof(*out));

    if (token == NULL) {
        return PL_ERR_UNAUTH;
    }
    size_t len = strnlen(token, PL_JWT_MAX_LEN + 1);
    if (len == 0 || len > PL_JWT_MAX_LEN) {
        return PL_ERR_UNAUTH;
    }
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot1 == NULL || dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token))) {
        return PL_ERR_UNAUTH;
    }
    /* Pin the algorithm before anything else is read: only ES256, whatever the header says. */
    header = segment_json(token, (size_t)(dot1 - token), 512);
    const char *alg = json_string_value(json_object_get(header, "alg"));
    if (alg == NULL || strcmp(alg, "ES256") != 0 || json_object_get(header, "crit") != NULL) {
        goto out;
    }
    /* An ES256 signature is exactly r || s, 32 bytes each. */
    unsigned char sig[96];
    const char *sig_s = dot2 + 1;
    if (pl_b64url_decode(sig_s, len - (size_t)(sig_s - token), sig, sizeof(sig)) != 64) {
        goto out;
    }
    if (!es256_ok(v->pkey, token, (size_t)(dot2 - token), sig)) {
        goto out;
    }
    /* Claims come from our own strict parse of the verified payload (duplicates refused). */
    claims = segment_json(dot1 + 1, (size_t)(dot2 - dot1 - 1), PL_JWT_MAX_LEN);
    if (claims == NULL) {
        goto out;
    }
    rc = check_claims(v, claims, now, out);
    if (rc == PL_OK && v->revoked != NULL) {
        rc = v->revoked(v->ud, out);
    }
out:
    if (rc != PL_OK) {
        memset(out, 0, sizeof(*out));
    }
    json_decref(claims);
    json_decref(header);
    return rc;
}
