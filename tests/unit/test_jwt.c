/*
 * Unit tests of access-token verification against forged tokens. Tokens are built here with
 * OpenSSL directly (not with the signer under test), so the verifier is checked against
 * standard ES256 and against every forgery the issue lists: alg none, HS256 keyed with the
 * public key, other algorithms, expiry, nbf, iat, issuer, audience, tampering, another key,
 * a refresh token, revocation.
 */
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/jwt.h"
#include "parley/log.h"

#include "test_keys.h"

#include <CUnit/Basic.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ISS "parley"
#define AUD "parley"

static EVP_PKEY *key1, *key2;
static char *priv1, *pub1, *priv2;
static size_t priv1_len, pub1_len, priv2_len;
static pl_jwt_verifier_t *ver;
static long now;

/* Appends base64url(text) to out. */
static void b64_append(char *out, const void *p, size_t n)
{
    pl_b64url_encode(p, n, out + strlen(out));
}

/* ES256 over signing input with k: raw r || s, as JWS requires. */
static void es256(EVP_PKEY *k, const char *input, unsigned char sig[64])
{
    unsigned char der[128];
    size_t derlen = sizeof(der);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, k);
    EVP_DigestSign(md, der, &derlen, (const unsigned char *)input, strlen(input));
    EVP_MD_CTX_free(md);
    const unsigned char *p = der;
    ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)derlen);
    const BIGNUM *r, *s;
    ECDSA_SIG_get0(es, &r, &s);
    BN_bn2binpad(r, sig, 32);
    BN_bn2binpad(s, sig + 32, 32);
    ECDSA_SIG_free(es);
}

enum sigkind { SIG_ES256_K1, SIG_ES256_K2, SIG_HS256_PUB, SIG_NONE };

/* Builds header.payload.signature from JSON texts. Caller frees. */
static char *make(const char *header, const char *payload, enum sigkind kind)
{
    char *t = calloc(1, 8192);
    b64_append(t, header, strlen(header));
    memcpy(t + strlen(t), ".", 2);
    b64_append(t, payload, strlen(payload));
    unsigned char sig[64];
    unsigned int siglen = 0;
    switch (kind) {
    case SIG_ES256_K1:
        es256(key1, t, sig);
        siglen = 64;
        break;
    case SIG_ES256_K2:
        es256(key2, t, sig);
        siglen = 64;
        break;
    case SIG_HS256_PUB:
        HMAC(EVP_sha256(), pub1, (int)pub1_len, (const unsigned char *)t, strlen(t), sig, &siglen);
        break;
    case SIG_NONE:
        break;
    }
    memcpy(t + strlen(t), ".", 2);
    b64_append(t, sig, siglen);
    return t;
}

/* A well-formed payload with the given offsets from now. */
static char *claims(const char *iss, const char *aud, long iat_off, long exp_off)
{
    char *p = malloc(512);
    snprintf(p, 512,
             "{\"iss\":\"%s\",\"aud\":\"%s\",\"sub\":\"alice\",\"sid\":\"s1\",\"jti\":\"j1\","
             "\"iat\":%ld,\"exp\":%ld}",
             iss, aud, now + iat_off, now + exp_off);
    return p;
}

static int verify(const char *tok)
{
    pl_jwt_claims_t c;
    return pl_jwt_verify(ver, tok, now, &c);
}

static int verify_made(const char *header, const char *payload, enum sigkind kind)
{
    char *t = make(header, payload, kind);
    int rc = verify(t);
    free(t);
    return rc;
}

#define ES_HDR "{\"alg\":\"ES256\",\"typ\":\"JWT\"}"

static int setup(void)
{
    key1 = EVP_EC_gen("P-256");
    key2 = EVP_EC_gen("P-256");
    priv1 = test_pem_of(key1, 1, &priv1_len);
    pub1 = test_pem_of(key1, 0, &pub1_len);
    priv2 = test_pem_of(key2, 1, &priv2_len);
    now = (long)time(NULL);
    return pl_jwt_verifier_new(pub1, pub1_len, ISS, AUD, 30, NULL, NULL, &ver) != PL_OK;
}

static int teardown(void)
{
    pl_jwt_verifier_free(&ver);
    EVP_PKEY_free(key1);
    EVP_PKEY_free(key2);
    free(priv1);
    free(pub1);
    free(priv2);
    return 0;
}

static void test_valid_standard_es256(void)
{
    char *p = claims(ISS, AUD, 0, 900);
    char *t = make(ES_HDR, p, SIG_ES256_K1);
    pl_jwt_claims_t c;
    CU_ASSERT_EQUAL(pl_jwt_verify(ver, t, now, &c), PL_OK);
    CU_ASSERT_STRING_EQUAL(c.sub, "alice");
    CU_ASSERT_STRING_EQUAL(c.sid, "s1");
    CU_ASSERT_STRING_EQUAL(c.jti, "j1");
    CU_ASSERT_EQUAL(c.exp, now + 900);
    free(t);
    free(p);
}

static void test_signer_roundtrip(void)
{
    pl_jwt_signer_t *s = NULL;
    CU_ASSERT_EQUAL_FATAL(pl_jwt_signer_new(priv1, priv1_len, ISS, AUD, 900, &s), PL_OK);
    char *t1 = NULL, *t2 = NULL;
    pl_jwt_claims_t made, got;
    CU_ASSERT_EQUAL(pl_jwt_sign(s, "bob", "sess", now, &t1, &made), PL_OK);
    CU_ASSERT_EQUAL(pl_jwt_sign(s, "bob", "sess", now, &t2, NULL), PL_OK);
    CU_ASSERT_EQUAL(pl_jwt_verify(ver, t1, now, &got), PL_OK);
    CU_ASSERT_STRING_EQUAL(got.sub, "bob");
    CU_ASSERT_STRING_EQUAL(got.sid, "sess");
    CU_ASSERT_STRING_EQUAL(got.jti, made.jti);
    CU_ASSERT_EQUAL(got.exp, now + 900);
    /* Each token has its own jti. */
    CU_ASSERT_STRING_NOT_EQUAL(t1, t2);
    free(t1);
    free(t2);
    pl_jwt_signer_free(&s);
    /* A public key cannot sign. */
    CU_ASSERT_EQUAL(pl_jwt_signer_new(pub1, pub1_len, ISS, AUD, 900, &s), PL_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(s);
}

static void test_alg_none(void)
{
    char *p = claims(ISS, AUD, 0, 900);
    CU_ASSERT_EQUAL(verify_made("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, SIG_NONE), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(verify_made("{\"alg\":\"none\"}", p, SIG_ES256_K1), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(verify_made("{\"typ\":\"JWT\"}", p, SIG_ES256_K1), PL_ERR_UNAUTH);
    free(p);
}

static void test_hs256_with_public_key(void)
{
    char *p = claims(ISS, AUD, 0, 900);
    CU_ASSERT_EQUAL(verify_made("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", p, SIG_HS256_PUB),
                    PL_ERR_UNAUTH);
    /* The same MAC under a header that claims ES256 fails the signature check. */
    CU_ASSERT_EQUAL(verify_made(ES_HDR, p, SIG_HS256_PUB), PL_ERR_UNAUTH);
    free(p);
}

static void test_other_algorithms(void)
{
    char *p = claims(ISS, AUD, 0, 900);
    const char *hdrs[] = {"{\"alg\":\"ES384\"}",
                          "{\"alg\":\"RS256\"}",
                          "{\"alg\":\"PS256\"}",
                          "{\"alg\":\"es256\"}",
                          "{\"alg\":\"ES256 \"}",
                          "{\"alg\":256}",
                          "{\"alg\":\"ES256\",\"alg\":\"HS256\"}",
                          "{\"alg\":\"ES256\",\"crit\":[\"exp\"]}",
                          "[\"ES256\"]",
                          "not json"};
    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
        CU_ASSERT_EQUAL(verify_made(hdrs[i], p, SIG_ES256_K1), PL_ERR_UNAUTH);
    }
    free(p);
}

static void test_times(void)
{
    char *p;
    /* Expired beyond the 30 s leeway; within it still accepted. */
    p = claims(ISS, AUD, -1000, -31);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, p, SIG_ES256_K1), PL_ERR_EXPIRED);
    free(p);
    p = claims(ISS, AUD, -1000, -29);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, p, SIG_ES256_K1), PL_OK);
    free(p);
    /* Issued in the future. */
    p = claims(ISS, AUD, 120, 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, p, SIG_ES256_K1), PL_ERR_UNAUTH);
    free(p);
    /* Not yet valid. */
    char q[512];
    snprintf(q, sizeof(q),
             "{\"iss\":\"parley\",\"aud\":\"parley\",\"sub\":\"a\",\"sid\":\"s\",\"jti\":\"j\","
             "\"iat\":%ld,\"nbf\":%ld,\"exp\":%ld}",
             now, now + 300, now + 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, q, SIG_ES256_K1), PL_ERR_UNAUTH);
    /* exp of the wrong type, or missing. */
    snprintf(q, sizeof(q),
             "{\"iss\":\"parley\",\"aud\":\"parley\",\"sub\":\"a\",\"sid\":\"s\",\"jti\":\"j\","
             "\"iat\":%ld,\"exp\":\"%ld\"}",
             now, now + 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, q, SIG_ES256_K1), PL_ERR_UNAUTH);
    snprintf(q, sizeof(q),
             "{\"iss\":\"parley\",\"aud\":\"parley\",\"sub\":\"a\",\"sid\":\"s\",\"jti\":\"j\","
             "\"iat\":%ld}",
             now);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, q, SIG_ES256_K1), PL_ERR_UNAUTH);
    /* A configured leeway above the cap is clamped to 30 s. */
    pl_jwt_verifier_t *lax = NULL;
    CU_ASSERT_EQUAL(pl_jwt_verifier_new(pub1, pub1_len, ISS, AUD, 3600, NULL, NULL, &lax), PL_OK);
    p = claims(ISS, AUD, -1000, -60);
    char *t = make(ES_HDR, p, SIG_ES256_K1);
    pl_jwt_claims_t c;
    CU_ASSERT_EQUAL(pl_jwt_verify(lax, t, now, &c), PL_ERR_EXPIRED);
    free(t);
    free(p);
    pl_jwt_verifier_free(&lax);
}

static void test_issuer_audience(void)
{
    char *p = claims("evil", AUD, 0, 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, p, SIG_ES256_K1), PL_ERR_UNAUTH);
    free(p);
    p = claims(ISS, "other-app", 0, 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, p, SIG_ES256_K1), PL_ERR_UNAUTH);
    free(p);
    char q[512];
    snprintf(q, sizeof(q),
             "{\"iss\":\"parley\",\"aud\":[\"parley\"],\"sub\":\"a\",\"sid\":\"s\",\"jti\":\"j\","
             "\"iat\":%ld,\"exp\":%ld}",
             now, now + 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, q, SIG_ES256_K1), PL_ERR_UNAUTH);
    /* Duplicate claims are refused rather than resolved either way. */
    snprintf(q, sizeof(q),
             "{\"iss\":\"parley\",\"aud\":\"parley\",\"sub\":\"a\",\"sub\":\"root\",\"sid\":\"s\","
             "\"jti\":\"j\",\"iat\":%ld,\"exp\":%ld}",
             now, now + 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, q, SIG_ES256_K1), PL_ERR_UNAUTH);
}

static void test_tampering(void)
{
    char *p = claims(ISS, AUD, 0, 900);
    char *t = make(ES_HDR, p, SIG_ES256_K1);
    CU_ASSERT_EQUAL(verify(t), PL_OK);

    /* Swap the payload for one naming another user, keeping the signature. */
    char *q = strdup(p);
    memcpy(strstr(q, "alice"), "mallo", 5);
    char *other = make(ES_HDR, q, SIG_ES256_K1);
    char *forged = calloc(1, 8192);
    const char *dot1 = strchr(t, '.');
    const char *dot2 = strchr(dot1 + 1, '.');
    const char *odot1 = strchr(other, '.');
    const char *odot2 = strchr(odot1 + 1, '.');
    memcpy(forged, t, (size_t)(dot1 - t + 1));
    strncat(forged, odot1 + 1, (size_t)(odot2 - odot1 - 1));
    memcpy(forged + strlen(forged), dot2, strlen(dot2) + 1);
    CU_ASSERT_EQUAL(verify(forged), PL_ERR_UNAUTH);

    /* Flip a bit in every signature position in turn (a sample of them). */
    size_t siglen = strlen(dot2 + 1);
    for (size_t i = 0; i < siglen; i += 7) {
        char *s = strdup(t);
        char *c = s + (dot2 + 1 - t) + i;
        *c = *c == 'A' ? 'B' : 'A';
        CU_ASSERT_EQUAL(verify(s), PL_ERR_UNAUTH);
        free(s);
    }
    /* Truncated and extended signatures, and an extra segment. */
    char *s = strdup(t);
    s[strlen(s) - 2] = '\0';
    CU_ASSERT_EQUAL(verify(s), PL_ERR_UNAUTH);
    free(s);
    s = malloc(strlen(t) + 8);
    snprintf(s, strlen(t) + 8, "%sAAAA", t);
    CU_ASSERT_EQUAL(verify(s), PL_ERR_UNAUTH);
    snprintf(s, strlen(t) + 8, "%s.e30", t);
    CU_ASSERT_EQUAL(verify(s), PL_ERR_UNAUTH);
    free(s);
    free(forged);
    free(other);
    free(q);
    free(t);
    free(p);
}

static void test_other_key(void)
{
    char *p = claims(ISS, AUD, 0, 900);
    CU_ASSERT_EQUAL(verify_made(ES_HDR, p, SIG_ES256_K2), PL_ERR_UNAUTH);
    free(p);
    pl_jwt_signer_t *s = NULL;
    CU_ASSERT_EQUAL_FATAL(pl_jwt_signer_new(priv2, priv2_len, ISS, AUD, 900, &s), PL_OK);
    char *t = NULL;
    CU_ASSERT_EQUAL(pl_jwt_sign(s, "alice", "s", now, &t, NULL), PL_OK);
    CU_ASSERT_EQUAL(verify(t), PL_ERR_UNAUTH);
    free(t);
    pl_jwt_signer_free(&s);
}

/* The verifier takes only a P-256 public key: ES256 means that curve and nothing else. */
static void test_key_types(void)
{
    pl_jwt_verifier_t *v = NULL;
    EVP_PKEY *p384 = EVP_EC_gen("secp384r1");
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    size_t n = 0;
    char *pem = test_pem_of(p384, 0, &n);
    CU_ASSERT_EQUAL(pl_jwt_verifier_new(pem, n, ISS, AUD, 0, NULL, NULL, &v), PL_ERR_CONFIG);
    free(pem);
    pem = test_pem_of(rsa, 0, &n);
    CU_ASSERT_EQUAL(pl_jwt_verifier_new(pem, n, ISS, AUD, 0, NULL, NULL, &v), PL_ERR_CONFIG);
    free(pem);
    const char *bad = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
    CU_ASSERT_EQUAL(pl_jwt_verifier_new(bad, strlen(bad), ISS, AUD, 0, NULL, NULL, &v),
                    PL_ERR_CONFIG);
    CU_ASSERT_EQUAL(pl_jwt_verifier_new(priv1, priv1_len, ISS, AUD, 0, NULL, NULL, &v),
                    PL_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(v);
    CU_ASSERT_EQUAL(pl_jwt_verifier_new(pub1, pub1_len, ISS, AUD, 0, NULL, NULL, &v), PL_OK);
    pl_jwt_verifier_free(&v);
    EVP_PKEY_free(p384);
    EVP_PKEY_free(rsa);
}

static void test_garbage(void)
{
    CU_ASSERT_EQUAL(verify(NULL), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(verify(""), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(verify(".."), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(verify("a.b.c"), PL_ERR_UNAUTH);
    /* A refresh token is opaque, never an access token. */
    CU_ASSERT_EQUAL(verify("e1b53cd76cd275df1ca01929d536337a."
                           "WW9dUGMEn-b4h8C4TjJf9zkjH32y65bqd5KU6pKMxQI"),
                    PL_ERR_UNAUTH);
    char *big = malloc(PL_JWT_MAX_LEN + 100);
    memset(big, 'A', PL_JWT_MAX_LEN + 99);
    big[PL_JWT_MAX_LEN + 99] = '\0';
    big[10] = '.';
    big[20] = '.';
    CU_ASSERT_EQUAL(verify(big), PL_ERR_UNAUTH);
    free(big);
}

static int revoked_cb(void *ud, const pl_jwt_claims_t *c)
{
    int *mode = ud;
    if (*mode == 1 && strcmp(c->sid, "s1") == 0) {
        return PL_ERR_REVOKED;
    }
    return *mode == 2 ? PL_ERR_UNAVAIL : PL_OK;
}

static void test_revocation(void)
{
    int mode = 0;
    pl_jwt_verifier_t *v = NULL;
    CU_ASSERT_EQUAL_FATAL(pl_jwt_verifier_new(pub1, pub1_len, ISS, AUD, 30, revoked_cb, &mode, &v),
                          PL_OK);
    char *p = claims(ISS, AUD, 0, 900);
    char *t = make(ES_HDR, p, SIG_ES256_K1);
    pl_jwt_claims_t c;
    CU_ASSERT_EQUAL(pl_jwt_verify(v, t, now, &c), PL_OK);
    mode = 1;
    CU_ASSERT_EQUAL(pl_jwt_verify(v, t, now, &c), PL_ERR_REVOKED);
    CU_ASSERT_STRING_EQUAL(c.sub, "");
    mode = 2;
    CU_ASSERT_EQUAL(pl_jwt_verify(v, t, now, &c), PL_ERR_UNAVAIL);
    free(t);
    free(p);
    pl_jwt_verifier_free(&v);
    /* A private key or garbage is not a verification key. */
    CU_ASSERT_EQUAL(pl_jwt_verifier_new("junk", 4, ISS, AUD, 30, NULL, NULL, &v), PL_ERR_CONFIG);
}

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    pl_log_init("test", PL_LOG_ERROR + 1);
    CU_pSuite s = CU_add_suite("jwt", setup, teardown);
    CU_add_test(s, "standard ES256 token accepted", test_valid_standard_es256);
    CU_add_test(s, "signer round trip", test_signer_roundtrip);
    CU_add_test(s, "alg none refused", test_alg_none);
    CU_add_test(s, "HS256 keyed with the public key refused", test_hs256_with_public_key);
    CU_add_test(s, "other algorithms refused", test_other_algorithms);
    CU_add_test(s, "exp, nbf, iat with leeway", test_times);
    CU_add_test(s, "issuer and audience", test_issuer_audience);
    CU_add_test(s, "tampered payload and signature", test_tampering);
    CU_add_test(s, "another key", test_other_key);
    CU_add_test(s, "only P-256 public keys", test_key_types);
    CU_add_test(s, "garbage and refresh tokens", test_garbage);
    CU_add_test(s, "revoked sessions", test_revocation);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
