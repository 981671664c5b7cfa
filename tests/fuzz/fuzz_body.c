/*
 * libFuzzer driver for HTTP request bodies: the bytes go through the parse the HTTP layer
 * does (size cap, JSON with duplicate keys refused) and then through auth's register, login
 * and refresh rules. Asserts what handlers rely on: an accepted register names a normalized
 * username and bounded strings, a refusal always says why, and login tells a well-formed
 * account name from a malformed one without failing.
 */
#include "auth.h"
#include "parley/err.h"
#include "parley/proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BODY_MAX (64 * 1024) /* the services' request body cap */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > BODY_MAX) {
        return -1; /* refused with 413 before parsing */
    }
    json_t *body = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (body == NULL) {
        return 0;
    }
    const char *why = NULL;
    char norm[AUTH_USERNAME_MAX + 1];
    auth_register_t r;
    if (auth_register_parse(body, &r, &why) == PL_OK) {
        if (auth_username_normalize(r.user, norm) != PL_OK || strcmp(norm, r.user) != 0 ||
            r.pw == NULL || r.pw_len < AUTH_PASSWORD_MIN || r.pw_len > AUTH_PASSWORD_MAX ||
            r.display == NULL || strlen(r.display) == 0 || strlen(r.display) > 64 ||
            auth_locale_check(r.locale) != PL_OK || auth_time_zone_check(r.time_zone) != PL_OK) {
            abort();
        }
    } else if (why == NULL) {
        abort();
    }
    auth_login_t l;
    why = NULL;
    if (auth_login_parse(body, &l, &why) == PL_OK) {
        if (l.pw == NULL || l.device == NULL || strlen(l.device) == 0 || strlen(l.device) > 64 ||
            (l.shape_ok && auth_username_normalize(l.user, norm) != PL_OK)) {
            abort();
        }
    } else if (why == NULL) {
        abort();
    }
    const char *token;
    size_t len;
    char sid[PL_SESSION_ID_LEN];
    if (auth_json_str(body, "refresh_token", &token, &len) &&
        auth_refresh_parse(token, sid) == PL_OK && strlen(sid) != 32) {
        abort();
    }
    json_decref(body);
    return 0;
}
