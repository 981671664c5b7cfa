/*
 * PEM text of keys for the unit tests (see test_keys.h).
 */
#include "test_keys.h"

#include <openssl/pem.h>
#include <stdlib.h>
#include <string.h>

char *test_pem_of(EVP_PKEY *k, int priv, size_t *len)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (priv) {
        PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    } else {
        PEM_write_bio_PUBKEY(b, k);
    }
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = malloc((size_t)n + 1);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    *len = (size_t)n;
    BIO_free(b);
    return s;
}
