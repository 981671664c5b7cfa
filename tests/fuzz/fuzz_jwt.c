/*
 * libFuzzer driver for the token verifier, differential: whatever pl_jwt_verify accepts must
 * also pass an independent check written here with OpenSSL alone (three strict base64url
 * segments, header alg ES256, r || s signature valid for the test key over "header.payload").
 * Only the test's own signer holds that key, so an accepted token that fails the check is a
 * forgery the verifier let through. The input also names claims for a token this driver signs,
 * which must verify back to the same subject and session (the positive side).
 *
 * The key pair below exists only for this driver; no deployment trusts it.
 */
#include "parley/err.h"
#include "parley/jwt.h"

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char test_private[] =
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgnDVYmO188WGeXSSm\n"
    "rHNZy5+YwR4nyTcW7ybNoaAcByChRANCAAT0ph7z9sF5lKSJo+CsOOiEQnZWSSk/\n"
    "qhn7+rW6CReSvXWj5GuoPsHZO++lgngeDVqI7D8XZDilG9NE7ehAPIoN\n"
    "-----END PRIVATE KEY-----\n";
static const char test_public[] =
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9KYe8/bBeZSkiaPgrDjohEJ2Vkkp\n"
    "P6oZ+/q1ugkXkr11o+RrqD7B2TvvpYJ4Hg1aiOw/F2Q4pRvTRO3oQDyKDQ==\n"
    "-----END PUBLIC KEY-----\n";

#define NOW 1800000000L /* every token here is judged at this instant */

static pl_jwt_signer_t *signer;
static pl_jwt_verifier_t *verifier;
static EVP_PKEY *pub;

/* Strict base64url (no padding, no other alphabet), written apart from the library's. */
static long b64url(const char *s, size_t n, unsigned char *out, size_t max)
{
    unsigned acc = 0;
    int bits = 0;
    size_t k = 0;
    if (n % 4 == 1) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const char *at = s[i] ? strchr(alpha, s[i]) : NULL;
        if (at == NULL) {
            return -1;
        }
        acc = (acc << 6) | (unsigned)(at - alpha);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (k == max) {
                return -1;
            }
            out[k++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)k;
}

/* 1 when token is header.payload.signature signed by the test key with ES256. */
static int independently_valid(const char *token)
{
    const char *d1 = strchr(token, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    if (d2 == NULL || strchr(d2 + 1, '.') != NULL) {
        return 0;
    }
    unsigned char hdr[1024], sig[64];
    long hl = b64url(token, (size_t)(d1 - token), hdr, sizeof(hdr));
    if (hl <= 0 || b64url(d2 + 1, strlen(d2 + 1), sig, sizeof(sig)) != 64) {
        return 0;
    }
    json_t *h = json_loadb((const char *)hdr, (size_t)hl, 0, NULL);
    const char *alg = json_string_value(json_object_get(h, "alg"));
    int es256 = alg != NULL && strcmp(alg, "ES256") == 0;
    json_decref(h);
    if (!es256) {
        return 0;
    }
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
    unsigned char *der = NULL;
    int derlen = -1, ok = 0;
    if (es != NULL && r != NULL && s != NULL && ECDSA_SIG_set0(es, r, s) == 1) {
        r = s = NULL; /* owned by es now */
        derlen = i2d_ECDSA_SIG(es, &der);
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (derlen > 0 && md != NULL && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1 &&
        EVP_DigestVerify(md, der, (size_t)derlen, (const unsigned char *)token,
                         (size_t)(d2 - token)) == 1) {
        ok = 1;
    }
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return ok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    BIO *b = BIO_new_mem_buf(test_public, -1);
    pub = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL);
    BIO_free(b);
    if (pub == NULL ||
        pl_jwt_signer_new(test_private, strlen(test_private), "parley", "parley", 900, &signer) !=
            PL_OK ||
        pl_jwt_verifier_new(test_public, strlen(test_public), "parley", "parley", 30, NULL, NULL,
                            &verifier) != PL_OK) {
        fprintf(stderr, "fuzz_jwt: cannot load the test key\n");
        abort();
    }
    /* PARLEY_FUZZ_SEEDS=dir writes a few valid tokens there (how the seed corpus was made). */
    const char *dir = getenv("PARLEY_FUZZ_SEEDS");
    for (int i = 0; dir != NULL && i < 4; i++) {
        static const char *subs[] = {"alice", "bob", "a.b-c_d", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"};
        char *tok = NULL, path[512];
        if (pl_jwt_sign(signer, subs[i], "0123456789abcdef0123456789abcdef", NOW - i * 60, &tok,
                        NULL) == PL_OK) {
            snprintf(path, sizeof(path), "%s/valid-%d", dir, i);
            FILE *f = fopen(path, "w");
            if (f != NULL) {
                fputs(tok, f);
                fclose(f);
            }
            free(tok);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > PL_JWT_MAX_LEN + 16) {
        return -1;
    }
    char *token = malloc(size + 1);
    if (token == NULL) {
        return 0;
    }
    memcpy(token, data, size);
    token[size] = '\0';
    pl_jwt_claims_t c;
    int rc = pl_jwt_verify(verifier, token, NOW, &c);
    if ((rc == PL_OK || rc == PL_ERR_EXPIRED) && !independently_valid(token)) {
        fprintf(stderr, "fuzz_jwt: the verifier accepted a token the test key did not sign\n");
        abort();
    }
    if (rc == PL_OK && (c.sub[0] == '\0' || c.sid[0] == '\0' || c.exp + 30 < NOW)) {
        abort();
    }
    /* The positive side: claims named by the input, signed here, verify back unchanged. */
    char sub[64], sid[PL_SESSION_ID_LEN];
    snprintf(sub, sizeof(sub), "%.*s", (int)(size < 32 ? size : 32), token);
    snprintf(sid, sizeof(sid), "%.*s", (int)(size > 32 ? (size - 32 < 64 ? size - 32 : 64) : 0),
             size > 32 ? token + 32 : "");
    char *mine = NULL;
    if (sub[0] != '\0' && sid[0] != '\0' &&
        pl_jwt_sign(signer, sub, sid, NOW, &mine, NULL) == PL_OK) {
        if (pl_jwt_verify(verifier, mine, NOW, &c) != PL_OK || strcmp(c.sub, sub) != 0 ||
            strcmp(c.sid, sid) != 0 || !independently_valid(mine)) {
            fprintf(stderr, "fuzz_jwt: a token this test signed did not verify back\n");
            abort();
        }
    }
    free(mine);
    free(token);
    return 0;
}
