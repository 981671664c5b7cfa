/*
 * Unit tests of parley-auth's pure rules: username, password, locale and time-zone checks,
 * argon2id hashing, and refresh-token shape and hashing.
 */
#include "auth.h"
#include "parley/err.h"
#include "parley/log.h"

#include <CUnit/Basic.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static void test_usernames(void)
{
    char out[AUTH_USERNAME_MAX + 1];
    CU_ASSERT_EQUAL(auth_username_normalize("alice", out), PL_OK);
    CU_ASSERT_STRING_EQUAL(out, "alice");
    CU_ASSERT_EQUAL(auth_username_normalize("Bob.Smith-2_x", out), PL_OK);
    CU_ASSERT_STRING_EQUAL(out, "bob.smith-2_x");
    CU_ASSERT_EQUAL(auth_username_normalize("abc", out), PL_OK);
    CU_ASSERT_EQUAL(auth_username_normalize("abcdefghijklmnopqrstuvwxyz012345", out), PL_OK);
    CU_ASSERT_EQUAL(auth_username_normalize("abcdefghijklmnopqrstuvwxyz0123456", out),
                    PL_ERR_INVAL);
    CU_ASSERT_EQUAL(auth_username_normalize("ab", out), PL_ERR_INVAL);
    CU_ASSERT_EQUAL(auth_username_normalize("", out), PL_ERR_INVAL);
    CU_ASSERT_EQUAL(auth_username_normalize(NULL, out), PL_ERR_INVAL);
    const char *bad[] = {"al ice", "al/ice", "al:ice", "al\xc3\xa9", "al\nce", "a@b.c", "a*b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CU_ASSERT_EQUAL(auth_username_normalize(bad[i], out), PL_ERR_INVAL);
    }
}

static void test_passwords(void)
{
    CU_ASSERT_EQUAL(auth_password_check(7), PL_ERR_INVAL);
    CU_ASSERT_EQUAL(auth_password_check(8), PL_OK);
    CU_ASSERT_EQUAL(auth_password_check(1024), PL_OK);
    CU_ASSERT_EQUAL(auth_password_check(1025), PL_ERR_INVAL);
}

static void test_locale_tz(void)
{
    CU_ASSERT_EQUAL(auth_locale_check("en"), PL_OK);
    CU_ASSERT_EQUAL(auth_locale_check("pt-BR"), PL_OK);
    CU_ASSERT_EQUAL(auth_locale_check("e"), PL_ERR_INVAL);
    CU_ASSERT_EQUAL(auth_locale_check("en US"), PL_ERR_INVAL);
    CU_ASSERT_EQUAL(auth_time_zone_check("Europe/Paris"), PL_OK);
    CU_ASSERT_EQUAL(auth_time_zone_check("Etc/GMT+5"), PL_OK);
    CU_ASSERT_EQUAL(auth_time_zone_check("UTC"), PL_OK);
    CU_ASSERT_EQUAL(auth_time_zone_check(""), PL_ERR_INVAL);
    CU_ASSERT_EQUAL(auth_time_zone_check("Europe/Paris;rm"), PL_ERR_INVAL);
}

static void test_hashing(void)
{
    char h1[256], h2[256];
    const char *pw = "correct horse battery";
    CU_ASSERT_EQUAL_FATAL(auth_pw_hash(pw, strlen(pw), h1, sizeof(h1)), PL_OK);
    CU_ASSERT_EQUAL_FATAL(auth_pw_hash(pw, strlen(pw), h2, sizeof(h2)), PL_OK);
    /* argon2id with at least 19 MiB and 2 passes, and a random salt each time. */
    CU_ASSERT_PTR_NOT_NULL(strstr(h1, "$argon2id$v=19$m=19456,t=2,p=1$"));
    CU_ASSERT_STRING_NOT_EQUAL(h1, h2);
    CU_ASSERT_PTR_NULL(strstr(h1, pw));
    CU_ASSERT_EQUAL(auth_pw_verify(h1, pw, strlen(pw)), PL_OK);
    CU_ASSERT_EQUAL(auth_pw_verify(h2, pw, strlen(pw)), PL_OK);
    CU_ASSERT_EQUAL(auth_pw_verify(h1, "correct horse batterx", strlen(pw)), PL_ERR_UNAUTH);
    /* Never truncated: a prefix or an extension does not match. */
    CU_ASSERT_EQUAL(auth_pw_verify(h1, pw, strlen(pw) - 1), PL_ERR_UNAUTH);
    char longer[64];
    snprintf(longer, sizeof(longer), "%sX", pw);
    CU_ASSERT_EQUAL(auth_pw_verify(h1, longer, strlen(longer)), PL_ERR_UNAUTH);
    /* The full 1024 bytes count, including the last one. */
    char big[1024];
    memset(big, 'p', sizeof(big));
    CU_ASSERT_EQUAL_FATAL(auth_pw_hash(big, sizeof(big), h1, sizeof(h1)), PL_OK);
    CU_ASSERT_EQUAL(auth_pw_verify(h1, big, sizeof(big)), PL_OK);
    big[1023] = 'q';
    CU_ASSERT_EQUAL(auth_pw_verify(h1, big, sizeof(big)), PL_ERR_UNAUTH);
    /* Embedded NUL bytes are part of the password. */
    CU_ASSERT_EQUAL_FATAL(auth_pw_hash("abc\0defgh", 9, h1, sizeof(h1)), PL_OK);
    CU_ASSERT_EQUAL(auth_pw_verify(h1, "abc\0defgh", 9), PL_OK);
    CU_ASSERT_EQUAL(auth_pw_verify(h1, "abc\0xxxxx", 9), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(auth_pw_verify("not a hash", pw, strlen(pw)), PL_ERR_UNAUTH);
}

static void test_refresh_tokens(void)
{
    char sid[PL_SESSION_ID_LEN];
    const char *ok = "e1b53cd76cd275df1ca01929d536337a.WW9dUGMEn-b4h8C4TjJf9zkjH32y65bqd5KU6pKMxQI";
    CU_ASSERT_EQUAL(auth_refresh_parse(ok, sid), PL_OK);
    CU_ASSERT_STRING_EQUAL(sid, "e1b53cd76cd275df1ca01929d536337a");
    CU_ASSERT_EQUAL(auth_refresh_parse(NULL, sid), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(auth_refresh_parse("", sid), PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(
        auth_refresh_parse(
            "E1b53cd76cd275df1ca01929d536337a.WW9dUGMEn-b4h8C4TjJf9zkjH32y65bqd5KU6pKMxQI", sid),
        PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(
        auth_refresh_parse(
            "e1b53cd76cd275df1ca01929d536337a.WW9dUGMEn+b4h8C4TjJf9zkjH32y65bqd5KU6pKMxQI", sid),
        PL_ERR_UNAUTH);
    CU_ASSERT_EQUAL(
        auth_refresh_parse(
            "e1b53cd76cd275df1ca01929d536337a.WW9dUGMEn-b4h8C4TjJf9zkjH32y65bqd5KU6pKMxQIx", sid),
        PL_ERR_UNAUTH);
    /* An access token is not a refresh token. */
    CU_ASSERT_EQUAL(auth_refresh_parse("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", sid),
                    PL_ERR_UNAUTH);
    char h1[65], h2[65];
    auth_refresh_hash(ok, h1);
    auth_refresh_hash(ok, h2);
    CU_ASSERT_STRING_EQUAL(h1, h2);
    CU_ASSERT_EQUAL(strlen(h1), 64);
    CU_ASSERT_PTR_NULL(strstr(h1, "WW9d"));
}

int main(void)
{
    if (sodium_init() < 0 || CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    pl_log_init("test", PL_LOG_ERROR + 1);
    CU_pSuite s = CU_add_suite("auth", NULL, NULL);
    CU_add_test(s, "usernames", test_usernames);
    CU_add_test(s, "password length", test_passwords);
    CU_add_test(s, "locale and time zone", test_locale_tz);
    CU_add_test(s, "argon2id hashing", test_hashing);
    CU_add_test(s, "refresh tokens", test_refresh_tokens);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return failed ? 1 : 0;
}
