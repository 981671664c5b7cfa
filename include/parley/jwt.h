/*
 * Access tokens: ES256 JWTs signed by parley-auth (with libjwt) and verified by every service
 * that takes a token (auth, gateway, store). Verification does not use libjwt: it accepts
 * only ES256 (never "none", never an HS256 token whose MAC was keyed with the public key),
 * checks the signature with OpenSSL against a P-256 key parsed once, checks exp, nbf, iat,
 * iss and aud with a bounded leeway, then asks an optional callback whether the token's
 * session was revoked. Not for refresh tokens, which are opaque.
 * Signers and verifiers are immutable after creation and safe to share between threads.
 */
#ifndef PARLEY_JWT_H
#define PARLEY_JWT_H

#include "parley/wire.h"

#include <stddef.h>

#define PL_JWT_MAX_LEN    4096 /* longer tokens are refused before any parsing */
#define PL_JWT_MAX_LEEWAY 30   /* seconds of clock skew tolerated, at most */

typedef struct pl_jwt_claims_s {
    char sub[64];                /* the username */
    char sid[PL_SESSION_ID_LEN]; /* the session id */
    char jti[PL_TOKEN_ID_LEN];   /* this token's id */
    long iat;
    long exp;
} pl_jwt_claims_t;

typedef struct pl_jwt_signer_s pl_jwt_signer_t;
typedef struct pl_jwt_verifier_s pl_jwt_verifier_t;

/*
 * Returns PL_OK when the session of c is live, PL_ERR_REVOKED when it was revoked, or
 * PL_ERR_UNAVAIL when that cannot be known now. Called on the verifying thread.
 */
typedef int (*pl_jwt_revoked_fn)(void *ud, const pl_jwt_claims_t *c);

/*
 * Creates a signer from a PEM EC P-256 private key (copied). Tokens carry iss, aud and live
 * ttl_s seconds. Returns PL_OK, PL_ERR_CONFIG for a key that cannot sign ES256, PL_ERR_NOMEM.
 */
int pl_jwt_signer_new(const char *pem, size_t len, const char *iss, const char *aud, long ttl_s,
                      pl_jwt_signer_t **out);
void pl_jwt_signer_free(pl_jwt_signer_t **s);

/*
 * Signs a token for sub and sid issued at now (Unix seconds), with a fresh random jti. On
 * PL_OK, *token is a new string the caller frees and *claims (may be NULL) what it says.
 * Returns PL_ERR_NOMEM or PL_ERR_INTERNAL otherwise.
 */
int pl_jwt_sign(const pl_jwt_signer_t *s, const char *sub, const char *sid, long now, char **token,
                pl_jwt_claims_t *claims);

/*
 * Creates a verifier from a PEM EC P-256 public key (copied), expecting iss and aud and
 * tolerating leeway_s seconds of skew (capped at PL_JWT_MAX_LEEWAY). revoked may be NULL.
 * Returns PL_OK, PL_ERR_CONFIG or PL_ERR_NOMEM.
 */
int pl_jwt_verifier_new(const char *pem, size_t len, const char *iss, const char *aud,
                        long leeway_s, pl_jwt_revoked_fn revoked, void *ud,
                        pl_jwt_verifier_t **out);
void pl_jwt_verifier_free(pl_jwt_verifier_t **v);

/*
 * Verifies token at time now. Returns PL_OK with the claims in *out; PL_ERR_UNAUTH for
 * anything malformed, forged, of another algorithm, issuer or audience, or not yet valid;
 * PL_ERR_EXPIRED; PL_ERR_REVOKED; PL_ERR_UNAVAIL when revocation cannot be checked.
 */
int pl_jwt_verify(const pl_jwt_verifier_t *v, const char *token, long now, pl_jwt_claims_t *out);

#endif
