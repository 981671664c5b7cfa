/*
 * Keys for the unit tests: PEM text of an OpenSSL key, as parley-auth and the verifiers read
 * it from their key files.
 */
#ifndef PARLEY_TEST_KEYS_H
#define PARLEY_TEST_KEYS_H

#include <openssl/evp.h>
#include <stddef.h>

/* The private (priv = 1) or public PEM of k, as a new string the caller frees; its length in
 * *len. */
char *test_pem_of(EVP_PKEY *k, int priv, size_t *len);

#endif
