/*
 * parley-auth's REST handlers: register, login, refresh, logout and user profiles, per DESIGN
 * section 4. Every client mistake is answered with a JSON error and a 4xx status; a dependency
 * that does not answer is a 503 that the client may retry. Handlers run on the HTTP pool's
 * threads and share only the context, whose members are thread-safe.
 */
#include "auth.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/policy.h"

#include <bson/bson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Counts one attempt in a rate-limit window. Returns PL_OK to go on; otherwise the response is
 * already filled (429 with Retry-After, or 503 when Redis does not answer).
 */
int auth_rate_check(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *what, const char *who,
                    long limit)
{
    char key[PL_KEY_LEN];
    long count = 0;
    long ttl = 0;
    /* what and who are short (a limit's name, a username or an address): the key fits. */
    int rc = pl_key_ratelimit(key, what, who);
    if (rc == PL_OK) {
        rc = pl_redis_incr_window(ctx->redis, key, ctx->limits.window_s, &count, &ttl);
    }
    if (rc != PL_OK) {
        pl_http_fail(resp, PL_ERR_UNAVAIL, "service temporarily unavailable, retry shortly");
        resp->retry_after_s = 1;
        return rc;
    }
    if (count > limit) {
        pl_metric_inc(ctx->m_rate_limited);
        pl_http_fail(resp, PL_ERR_RATELIMIT, "too many attempts, retry later");
        resp->retry_after_s = ttl > 0 ? ttl : 1;
        return PL_ERR_RATELIMIT;
    }
    return PL_OK;
}

const char *auth_bson_str(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_UTF8(&it)) {
        return bson_iter_utf8(&it, NULL);
    }
    return NULL;
}

static long long bson_ms(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, key) && BSON_ITER_HOLDS_DATE_TIME(&it)) {
        return (long long)bson_iter_date_time(&it);
    }
    return 0;
}

static int bson_flag(const bson_t *doc, const char *key)
{
    bson_iter_t it;
    return bson_iter_init_find(&it, doc, key) && bson_iter_as_bool(&it);
}

/* A user's profile as JSON; full adds what only the user sees. New reference. */
static json_t *profile_json(const bson_t *user, int full)
{
    const char *name = auth_bson_str(user, "_id");
    const char *display = auth_bson_str(user, "display_name");
    json_t *j = json_pack("{s:s,s:s}", "username", name ? name : "", "display_name",
                          display ? display : (name ? name : ""));
    if (j != NULL && full) {
        char when[32];
        const char *locale = auth_bson_str(user, "locale");
        const char *tz = auth_bson_str(user, "time_zone");
        pl_iso8601_ms(bson_ms(user, "created_at"), when);
        json_object_set_new(j, "locale", json_string(locale ? locale : "en"));
        json_object_set_new(j, "time_zone", json_string(tz ? tz : "UTC"));
        json_object_set_new(j, "created_at", json_string(when));
    }
    return j;
}

static int find_user(auth_ctx_t *ctx, const char *name, bson_t **doc)
{
    return pl_mongo_find_id(ctx->mongo, "users", name, doc);
}

static void h_register(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    auth_register_t r;
    const char *why = NULL;
    if (auth_register_parse(pl_http_body(req), &r, &why) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, why);
        return;
    }
    if (auth_rate_check(ctx, resp, "register:a", pl_http_client_addr(req),
                        ctx->limits.register_per_addr) != PL_OK) {
        return;
    }
    char hash[256];
    if (auth_pw_hash(r.pw, r.pw_len, hash, sizeof(hash)) != PL_OK) {
        pl_http_fail_dep(resp, PL_ERR_INTERNAL);
        return;
    }
    long long now = pl_now_ms();
    bson_t doc = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&doc, "_id", r.user);
    BSON_APPEND_UTF8(&doc, "password_hash", hash);
    BSON_APPEND_UTF8(&doc, "display_name", r.display);
    BSON_APPEND_UTF8(&doc, "locale", r.locale);
    BSON_APPEND_UTF8(&doc, "time_zone", r.time_zone);
    BSON_APPEND_DATE_TIME(&doc, "created_at", now);
    int rc = pl_mongo_insert_one(ctx->mongo, "users", &doc);
    if (rc == PL_OK) {
        pl_metric_inc(ctx->m_registered);
        pl_log_info("user_registered", "user %s registered", r.user);
        pl_http_reply(resp, 201, profile_json(&doc, 1));
    } else if (rc == PL_ERR_EXISTS) {
        pl_http_fail(resp, PL_ERR_EXISTS, "username is taken");
    } else {
        pl_http_fail_dep(resp, rc);
    }
    bson_destroy(&doc);
}

/* Makes "<sid>.<43 chars>" from the session id and 256 fresh random bits. */
static int new_refresh(const char *sid, char out[80])
{
    unsigned char raw[32];
    char enc[PL_B64URL_LEN(32)];
    if (pl_random_bytes(raw, sizeof(raw)) != PL_OK) {
        return PL_ERR_INTERNAL;
    }
    pl_b64url_encode(raw, sizeof(raw), enc);
    snprintf(out, 80, "%s.%s", sid, enc);
    return PL_OK;
}

/* Signs an access token and fills the token response. */
static void reply_tokens(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *user, const char *sid,
                         const char *refresh)
{
    char *access = NULL;
    if (pl_jwt_sign(ctx->signer, user, sid, (long)(pl_now_ms() / 1000), &access, NULL) != PL_OK) {
        pl_http_fail_dep(resp, PL_ERR_INTERNAL);
        return;
    }
    pl_http_reply(resp, 200,
                  json_pack("{s:s,s:s,s:I,s:s,s:s}", "access_token", access, "token_type", "Bearer",
                            "expires_in", (json_int_t)ctx->access_ttl_s, "refresh_token", refresh,
                            "session_id", sid));
    free(access);
}

static void h_login(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    auth_login_t l;
    const char *why = NULL;
    bson_t *doc = NULL;
    if (auth_login_parse(pl_http_body(req), &l, &why) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL, why);
        return;
    }
    /* A malformed name or password cannot belong to an account: same answer as a wrong one. */
    const char *user = l.user;
    if (auth_rate_check(ctx, resp, "login:a", pl_http_client_addr(req),
                        ctx->limits.login_per_addr) != PL_OK ||
        auth_rate_check(ctx, resp, "login:u", user, ctx->limits.login_per_user) != PL_OK) {
        return;
    }
    int rc = l.shape_ok ? find_user(ctx, user, &doc) : PL_ERR_NOTFOUND;
    if (rc != PL_OK && rc != PL_ERR_NOTFOUND) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    /* An unknown user costs one argon2id verification too, so timing does not tell. */
    const char *hash = doc ? auth_bson_str(doc, "password_hash") : NULL;
    int ok = auth_pw_verify(hash ? hash : ctx->dummy_hash, l.pw, l.pw_len) == PL_OK && hash != NULL;
    if (ok && bson_flag(doc, "disabled")) {
        pl_metric_inc(ctx->m_logins_failed);
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "account is disabled");
        goto out;
    }
    if (!ok) {
        pl_metric_inc(ctx->m_logins_failed);
        pl_log_info("login_failed", "failed login");
        pl_http_fail(resp, PL_ERR_UNAUTH, "invalid username or password");
        goto out;
    }
    char sid[PL_SESSION_ID_LEN];
    char refresh[80];
    char rhash[65];
    if (pl_random_hex(sid, 16) != PL_OK || new_refresh(sid, refresh) != PL_OK) {
        pl_http_fail_dep(resp, PL_ERR_INTERNAL);
        goto out;
    }
    auth_refresh_hash(refresh, rhash);
    long long now = pl_now_ms();
    bson_t s = BSON_INITIALIZER;
    bson_t prev;
    BSON_APPEND_UTF8(&s, "_id", sid);
    BSON_APPEND_UTF8(&s, "user", user);
    BSON_APPEND_UTF8(&s, "device", l.device);
    BSON_APPEND_UTF8(&s, "refresh_hash", rhash);
    BSON_APPEND_ARRAY_BEGIN(&s, "refresh_prev", &prev);
    bson_append_array_end(&s, &prev);
    BSON_APPEND_DATE_TIME(&s, "created_at", now);
    BSON_APPEND_DATE_TIME(&s, "expires_at", now + (long long)ctx->refresh_ttl_s * 1000);
    BSON_APPEND_BOOL(&s, "revoked", false);
    rc = pl_mongo_insert_one(ctx->mongo, "sessions", &s);
    bson_destroy(&s);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        goto out;
    }
    pl_metric_inc(ctx->m_logins_ok);
    pl_log_fields(PL_LOG_INFO, "login", json_pack("{s:s,s:s}", "user", user, "session", sid),
                  "session opened");
    reply_tokens(ctx, resp, user, sid, refresh);
out:
    if (doc != NULL) {
        bson_destroy(doc);
    }
}

/*
 * Sets flag to true and at_field to now on the document coll/_id. *matched (may be NULL) gets
 * how many documents matched. PL_OK or the MongoDB wrapper's error.
 */
static int flag_by_id(auth_ctx_t *ctx, const char *coll, const char *id, const char *flag,
                      const char *at_field, long *matched)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t set;
    BSON_APPEND_UTF8(&filter, "_id", id);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    BSON_APPEND_BOOL(&set, flag, true);
    BSON_APPEND_DATE_TIME(&set, at_field, pl_now_ms());
    bson_append_document_end(&upd, &set);
    int rc = pl_mongo_update_one(ctx->mongo, coll, &filter, &upd, 0, matched);
    bson_destroy(&filter);
    bson_destroy(&upd);
    return rc;
}

int auth_announce(auth_ctx_t *ctx, json_t *note)
{
    char *text = note ? json_dumps(note, JSON_COMPACT) : NULL;
    json_decref(note);
    int rc = text ? pl_redis_publish(ctx->redis, PL_CHANNEL_REVOKE, text, NULL) : PL_ERR_NOMEM;
    free(text);
    return rc;
}

/*
 * Revokes a session everywhere: MongoDB first (refresh stops, auth refuses its tokens), then
 * the Redis flag other services check until the last access token expires, then the live
 * notice gateways use to close sockets. Idempotent, so a client retries after a 503.
 */
static int revoke_session(auth_ctx_t *ctx, const char *sid, const char *user)
{
    int rc = flag_by_id(ctx, "sessions", sid, "revoked", "revoked_at", NULL);
    if (rc != PL_OK) {
        return rc;
    }
    char key[PL_KEY_LEN];
    rc = pl_key_revoked(key, sid);
    if (rc == PL_OK) {
        rc = pl_redis_set_ex(ctx->redis, key, user, ctx->access_ttl_s + PL_JWT_MAX_LEEWAY);
    }
    if (rc != PL_OK) {
        return rc;
    }
    rc = auth_announce(ctx, json_pack("{s:s,s:s}", "sid", sid, "user", user));
    if (rc == PL_OK) {
        pl_log_fields(PL_LOG_INFO, "session_revoked",
                      json_pack("{s:s,s:s}", "user", user, "session", sid), "session revoked");
    }
    return rc;
}

/* 1 when hash is among the session's rotated-out refresh hashes. */
static int was_rotated_out(const bson_t *doc, const char *hash)
{
    bson_iter_t it, arr;
    if (bson_iter_init_find(&it, doc, "refresh_prev") && BSON_ITER_HOLDS_ARRAY(&it) &&
        bson_iter_recurse(&it, &arr)) {
        while (bson_iter_next(&arr)) {
            if (BSON_ITER_HOLDS_UTF8(&arr) && strcmp(bson_iter_utf8(&arr, NULL), hash) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

/* A refresh token that is not the session's current one: refused, and when it is a
 * rotated-out one it was copied, so the whole session is revoked (RFC 6819). */
static void refuse_stale_refresh(auth_ctx_t *ctx, pl_http_resp_t *resp, const bson_t *doc,
                                 const char *sid, const char *user, const char *hash)
{
    int reused = was_rotated_out(doc, hash);
    if (reused) {
        pl_metric_inc(ctx->m_reuse);
        pl_log_fields(PL_LOG_WARN, "refresh_reuse",
                      json_pack("{s:s,s:s}", "user", user, "session", sid),
                      "rotated refresh token presented again; revoking the session");
        int rc = revoke_session(ctx, sid, user);
        if (rc != PL_OK) {
            pl_http_fail_dep(resp, rc);
            return;
        }
    }
    pl_http_fail(resp, PL_ERR_UNAUTH,
                 reused ? "refresh token was already used; the session is revoked"
                        : "invalid refresh token");
}

/*
 * Rotates the session's refresh hash from hash to rhash, keeping the newest AUTH_REFRESH_PREV
 * rotated-out hashes. A compare-and-swap on the current hash, so two racing refreshes cannot
 * both rotate: *matched is 0 when another one won.
 */
static int rotate_refresh(auth_ctx_t *ctx, const bson_t *doc, const char *sid, const char *hash,
                          const char *rhash, long long now, long *matched)
{
    bson_t f = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t set, prev;
    BSON_APPEND_UTF8(&f, "_id", sid);
    BSON_APPEND_UTF8(&f, "refresh_hash", hash);
    BSON_APPEND_BOOL(&f, "revoked", false);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    BSON_APPEND_UTF8(&set, "refresh_hash", rhash);
    BSON_APPEND_DATE_TIME(&set, "expires_at", now + (long long)ctx->refresh_ttl_s * 1000);
    BSON_APPEND_DATE_TIME(&set, "refreshed_at", now);
    BSON_APPEND_ARRAY_BEGIN(&set, "refresh_prev", &prev);
    BSON_APPEND_UTF8(&prev, "0", hash); /* this one first */
    bson_iter_t it, arr;
    int kept = 1;
    if (bson_iter_init_find(&it, doc, "refresh_prev") && BSON_ITER_HOLDS_ARRAY(&it) &&
        bson_iter_recurse(&it, &arr)) {
        while (kept < AUTH_REFRESH_PREV && bson_iter_next(&arr)) {
            if (BSON_ITER_HOLDS_UTF8(&arr)) {
                char idx[16];
                snprintf(idx, sizeof(idx), "%d", kept++);
                BSON_APPEND_UTF8(&prev, idx, bson_iter_utf8(&arr, NULL));
            }
        }
    }
    bson_append_array_end(&set, &prev);
    bson_append_document_end(&upd, &set);
    int rc = pl_mongo_update_one(ctx->mongo, "sessions", &f, &upd, 0, matched);
    bson_destroy(&f);
    bson_destroy(&upd);
    return rc;
}

static void h_refresh(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    json_t *body = pl_http_body(req);
    const char *token;
    size_t len;
    char sid[PL_SESSION_ID_LEN];
    char hash[65];
    bson_t *doc = NULL;

    if (!json_is_object(body) || !auth_json_str(body, "refresh_token", &token, &len)) {
        pl_http_fail(resp, PL_ERR_INVAL, "body must be {\"refresh_token\":…}");
        return;
    }
    if (len != strlen(token) || auth_refresh_parse(token, sid) != PL_OK) {
        pl_http_fail(resp, PL_ERR_UNAUTH, "invalid refresh token");
        return;
    }
    auth_refresh_hash(token, hash);
    int rc = pl_mongo_find_id(ctx->mongo, "sessions", sid, &doc);
    if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_UNAUTH, "invalid refresh token");
        return;
    }
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    const char *user = auth_bson_str(doc, "user");
    const char *current = auth_bson_str(doc, "refresh_hash");
    long long now = pl_now_ms();
    char refresh[80];
    char rhash[65];
    long matched = 0;
    if (user == NULL || current == NULL || bson_flag(doc, "revoked") ||
        bson_ms(doc, "expires_at") < now) {
        pl_http_fail(resp, PL_ERR_UNAUTH, "session has ended; log in again");
        goto out;
    }
    if (strcmp(current, hash) != 0) {
        refuse_stale_refresh(ctx, resp, doc, sid, user, hash);
        goto out;
    }
    if (new_refresh(sid, refresh) != PL_OK) {
        pl_http_fail_dep(resp, PL_ERR_INTERNAL);
        goto out;
    }
    auth_refresh_hash(refresh, rhash);
    rc = rotate_refresh(ctx, doc, sid, hash, rhash, now, &matched);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
    } else if (matched == 0) {
        pl_http_fail(resp, PL_ERR_UNAUTH, "refresh token was already used");
    } else {
        pl_metric_inc(ctx->m_refreshed);
        reply_tokens(ctx, resp, user, sid, refresh);
    }
out:
    bson_destroy(doc);
}

static void h_logout(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    if (pl_http_authenticate(req, resp, ctx->verifier_lax, &c) != PL_OK) {
        return;
    }
    int rc = revoke_session(ctx, c.sid, c.sub);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_metric_inc(ctx->m_logouts);
    pl_http_reply(resp, 204, NULL);
}

/* Appends a found document's _id (a string) to the JSON array ud. */
static int collect_id(void *ud, const bson_t *doc)
{
    const char *id = auth_bson_str(doc, "_id");
    if (id != NULL) {
        json_array_append_new(ud, json_string(id));
    }
    return json_array_size(ud) < 100000; /* a bound: sessions expire long before this */
}

/*
 * Revokes every live session of user (after a password change or when the account is
 * disabled): each goes through revoke_session(), so refresh stops, the Redis flag is set and
 * gateways close its sockets. PL_OK when all are revoked; retrying is safe.
 */
static int revoke_all(auth_ctx_t *ctx, const char *user)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t proj;
    BSON_APPEND_UTF8(&filter, "user", user);
    BSON_APPEND_BOOL(&filter, "revoked", false);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "_id", 1);
    bson_append_document_end(&opts, &proj);
    json_t *sids = json_array();
    int rc = sids ? pl_mongo_find(ctx->mongo, "sessions", &filter, &opts, collect_id, sids)
                  : PL_ERR_NOMEM;
    bson_destroy(&filter);
    bson_destroy(&opts);
    size_t i;
    json_t *v;
    json_array_foreach(sids, i, v)
    {
        if (rc == PL_OK) {
            rc = revoke_session(ctx, json_string_value(v), user);
        }
    }
    json_decref(sids);
    return rc;
}

/* Reads the account of the token's user and checks password. PL_OK with *doc (the caller
 * destroys it), or the response is already filled. */
static int check_password(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *user, const char *pw,
                          size_t pw_len, bson_t **doc)
{
    int rc = auth_rate_check(ctx, resp, "login:u", user, ctx->limits.login_per_user);
    if (rc != PL_OK) {
        return rc;
    }
    rc = find_user(ctx, user, doc);
    if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_UNAUTH, "account no longer exists");
        return rc;
    }
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return rc;
    }
    const char *hash = auth_bson_str(*doc, "password_hash");
    if (hash == NULL || auth_pw_verify(hash, pw, pw_len) != PL_OK) {
        pl_metric_inc(ctx->m_logins_failed);
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "current password is wrong");
        bson_destroy(*doc);
        *doc = NULL;
        return PL_ERR_FORBIDDEN;
    }
    return PL_OK;
}

/* POST /v1/auth/password {current_password, new_password}: every session ends. */
static void h_password(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    bson_t *doc = NULL;
    json_t *body = pl_http_body(req);
    json_t *cur = json_object_get(body, "current_password");
    json_t *next = json_object_get(body, "new_password");
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    if (!json_is_string(cur) || !json_is_string(next) ||
        auth_password_check(json_string_length(next)) != PL_OK) {
        pl_http_fail(resp, PL_ERR_INVAL,
                     "body must be {\"current_password\":…,\"new_password\": 8 to 1024 bytes}");
        return;
    }
    if (check_password(ctx, resp, c.sub, json_string_value(cur), json_string_length(cur), &doc) !=
        PL_OK) {
        return;
    }
    bson_destroy(doc);
    char hash[256];
    if (auth_pw_hash(json_string_value(next), json_string_length(next), hash, sizeof(hash)) !=
        PL_OK) {
        pl_http_fail_dep(resp, PL_ERR_INTERNAL);
        return;
    }
    bson_t filter = BSON_INITIALIZER;
    bson_t upd = BSON_INITIALIZER;
    bson_t set;
    BSON_APPEND_UTF8(&filter, "_id", c.sub);
    BSON_APPEND_DOCUMENT_BEGIN(&upd, "$set", &set);
    BSON_APPEND_UTF8(&set, "password_hash", hash);
    BSON_APPEND_DATE_TIME(&set, "password_changed_at", pl_now_ms());
    bson_append_document_end(&upd, &set);
    int rc = pl_mongo_update_one(ctx->mongo, "users", &filter, &upd, 0, NULL);
    bson_destroy(&filter);
    bson_destroy(&upd);
    /* The hash is changed first: a retry after a failed revocation uses the new password. */
    rc = rc == PL_OK ? revoke_all(ctx, c.sub) : rc;
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_log_fields(PL_LOG_INFO, "password_changed", json_pack("{s:s}", "user", c.sub),
                  "password changed; every session revoked");
    pl_http_reply(resp, 204, NULL);
}

/* Marks user disabled (login refused, not a recipient) and revokes every session. */
static int disable_account(auth_ctx_t *ctx, const char *user)
{
    long matched = 0;
    int rc = flag_by_id(ctx, "users", user, "disabled", "disabled_at", &matched);
    if (rc == PL_OK && matched == 0) {
        return PL_ERR_NOTFOUND;
    }
    rc = rc == PL_OK ? revoke_all(ctx, user) : rc;
    if (rc == PL_OK) {
        /* Gateways cache that a recipient exists for minutes: tell them it no longer does. */
        rc = auth_announce(ctx, json_pack("{s:s,s:b}", "user", user, "disabled", 1));
    }
    if (rc == PL_OK) {
        pl_log_fields(PL_LOG_INFO, "account_disabled", json_pack("{s:s}", "user", user),
                      "account disabled; every session revoked");
    }
    return rc;
}

/* POST /v1/auth/disable {password}: the user closes their own account. */
static void h_disable(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    bson_t *doc = NULL;
    json_t *pw = json_object_get(pl_http_body(req), "password");
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    if (!json_is_string(pw)) {
        pl_http_fail(resp, PL_ERR_INVAL, "body must be {\"password\":…}");
        return;
    }
    if (check_password(ctx, resp, c.sub, json_string_value(pw), json_string_length(pw), &doc) !=
        PL_OK) {
        return;
    }
    bson_destroy(doc);
    int rc = disable_account(ctx, c.sub);
    if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
        return;
    }
    pl_http_reply(resp, 204, NULL);
}

/* POST /internal/users/<name>/disable: the operator's switch (the edge never routes it). */
static void h_internal_disable(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    char name[AUTH_USERNAME_MAX + 1];
    char in[AUTH_USERNAME_MAX + 2];
    const char *p = pl_http_path(req) + strlen("/internal/users/");
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : 0;
    if (slash == NULL || strcmp(slash, "/disable") != 0 || n == 0 || n >= sizeof(in)) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such endpoint");
        return;
    }
    memcpy(in, p, n);
    in[n] = '\0';
    if (auth_username_normalize(in, name) != PL_OK || strcmp(in, name) != 0) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
        return;
    }
    int rc = disable_account(ctx, name);
    if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
    } else if (rc != PL_OK) {
        pl_http_fail_dep(resp, rc);
    } else {
        pl_http_reply(resp, 204, NULL);
    }
}

static void h_me(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    bson_t *doc = NULL;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    int rc = find_user(ctx, c.sub, &doc);
    if (rc == PL_OK) {
        pl_http_reply(resp, 200, profile_json(doc, 1));
        bson_destroy(doc);
    } else if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_UNAUTH, "account no longer exists");
    } else {
        pl_http_fail_dep(resp, rc);
    }
}

static void h_user(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    pl_jwt_claims_t c;
    char name[AUTH_USERNAME_MAX + 1];
    bson_t *doc = NULL;
    if (pl_http_authenticate(req, resp, ctx->verifier, &c) != PL_OK) {
        return;
    }
    const char *p = pl_http_path(req) + strlen("/v1/users/");
    if (auth_username_normalize(p, name) != PL_OK || strlen(p) != strlen(name)) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
        return;
    }
    int rc = find_user(ctx, name, &doc);
    if (rc == PL_OK) {
        pl_http_reply(resp, 200, profile_json(doc, 0));
        bson_destroy(doc);
    } else if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
    } else {
        pl_http_fail_dep(resp, rc);
    }
}

/*
 * Whether an account exists, for the gateways' recipient check. It needs no token because a
 * gateway asks on behalf of a verified sender; the edge never routes /internal/ to clients
 * (existence is no secret anyway: registration answers 409 for a taken name).
 */
int auth_user_active(auth_ctx_t *ctx, const char *name)
{
    bson_t filter = BSON_INITIALIZER;
    bson_t opts = BSON_INITIALIZER;
    bson_t proj;
    bson_t *doc = NULL;
    BSON_APPEND_UTF8(&filter, "_id", name);
    BSON_APPEND_DOCUMENT_BEGIN(&opts, "projection", &proj);
    BSON_APPEND_INT32(&proj, "_id", 1);
    BSON_APPEND_INT32(&proj, "disabled", 1);
    bson_append_document_end(&opts, &proj);
    int rc = pl_mongo_find_one(ctx->mongo, "users", &filter, &opts, &doc);
    bson_destroy(&filter);
    bson_destroy(&opts);
    if (rc == PL_OK) {
        int disabled = bson_flag(doc, "disabled");
        bson_destroy(doc);
        rc = disabled ? PL_ERR_NOTFOUND : PL_OK; /* a disabled account receives nothing */
    }
    return rc;
}

static void h_internal_user(pl_http_req_t *req, pl_http_resp_t *resp, void *ud)
{
    auth_ctx_t *ctx = ud;
    char name[AUTH_USERNAME_MAX + 1];
    const char *p = pl_http_path(req) + strlen("/internal/users/");
    if (auth_username_normalize(p, name) != PL_OK || strcmp(p, name) != 0) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
        return;
    }
    /* ?from=<sender>: may the sender write to name (DESIGN 7.2)? The store decides again
     * before numbering; this answer spares a refused sender its ack. */
    const char *from = pl_http_query(req, "from");
    char sender[AUTH_USERNAME_MAX + 1];
    int rc;
    if (from != NULL && auth_username_normalize(from, sender) == PL_OK) {
        /* The facts hold the receiver's account as read for its settings: two lookups (the
         * pair's contacts document and the account) rather than three, for every new pair a
         * gateway asks about. */
        pl_policy_facts_t f;
        rc = pl_policy_read(ctx->mongo, sender, name, &f);
        if (rc == PL_OK && (f.receiver_missing || f.receiver_disabled)) {
            rc = PL_ERR_NOTFOUND; /* a disabled account receives nothing */
        } else if (rc == PL_OK && !pl_policy_allows(&f)) {
            rc = PL_ERR_FORBIDDEN;
        }
    } else {
        rc = auth_user_active(ctx, name);
    }
    if (rc == PL_OK) {
        pl_http_reply(resp, 200, json_pack("{s:s}", "username", name));
    } else if (rc == PL_ERR_FORBIDDEN) {
        pl_http_fail(resp, PL_ERR_FORBIDDEN, "you cannot message this user");
    } else if (rc == PL_ERR_NOTFOUND) {
        pl_http_fail(resp, PL_ERR_NOTFOUND, "no such user");
    } else {
        pl_http_fail_dep(resp, rc);
    }
}

int auth_session_live(void *ud, const pl_jwt_claims_t *c)
{
    auth_ctx_t *ctx = ud;
    bson_t *doc = NULL;
    int rc = pl_mongo_find_id(ctx->mongo, "sessions", c->sid, &doc);
    if (rc == PL_ERR_NOTFOUND) {
        return PL_ERR_REVOKED;
    }
    if (rc != PL_OK) {
        return rc == PL_ERR_UNAVAIL ? PL_ERR_UNAVAIL : PL_ERR_INTERNAL;
    }
    const char *user = auth_bson_str(doc, "user");
    rc = (user == NULL || strcmp(user, c->sub) != 0 || bson_flag(doc, "revoked")) ? PL_ERR_REVOKED
                                                                                  : PL_OK;
    bson_destroy(doc);
    return rc;
}

int auth_ensure_indexes(auth_ctx_t *ctx)
{
    if (atomic_load(&ctx->indexes_ready)) {
        return PL_OK;
    }
    bson_t keys = BSON_INITIALIZER;
    BSON_APPEND_INT32(&keys, "user", 1);
    int rc = pl_mongo_create_index(ctx->mongo, "sessions", &keys, "user_1", 0);
    bson_destroy(&keys);
    if (rc == PL_OK) {
        rc = auth_social_indexes(ctx);
    }
    if (rc == PL_OK) {
        atomic_store(&ctx->indexes_ready, 1);
    }
    return rc;
}

const pl_http_route_t auth_routes[] = {
    {"POST", "/v1/auth/register", h_register},
    {"POST", "/v1/auth/login", h_login},
    {"POST", "/v1/auth/refresh", h_refresh},
    {"POST", "/v1/auth/logout", h_logout},
    {"POST", "/v1/auth/password", h_password},
    {"POST", "/v1/auth/disable", h_disable},
    {"GET", "/v1/users/me", h_me},
    {"GET", "/v1/users/me/settings", auth_h_settings},
    {"PATCH", "/v1/users/me/settings", auth_h_settings_patch},
    {"GET", "/v1/contacts", auth_h_contacts},
    {"POST", "/v1/contacts", auth_h_contact_add},
    {"POST", "/v1/contacts/", auth_h_contact_accept},
    {"DELETE", "/v1/contacts/", auth_h_contact_delete},
    {"GET", "/v1/blocks", auth_h_blocks},
    {"GET", "/v1/presence", auth_h_presence},
    {"POST", "/v1/groups", auth_h_group_create},
    {"GET", "/v1/groups/", auth_h_group_get},
    {"PATCH", "/v1/groups/", auth_h_group_patch},
    {"POST", "/v1/groups/", auth_h_group_post},
    {"DELETE", "/v1/groups/", auth_h_group_delete},
    {"GET", "/internal/groups", auth_h_internal_groups},
    {"POST", "/internal/groups/members", auth_h_internal_members},
    {"GET", "/internal/groups/may_post", auth_h_internal_may_post},
    {"GET", "/internal/typing", auth_h_internal_typing},
    {"POST", "/internal/presence/", auth_h_internal_presence},
    {"PUT", "/v1/blocks/", auth_h_block},
    {"DELETE", "/v1/blocks/", auth_h_unblock},
    {"GET", "/v1/users/", h_user},
    {"GET", "/internal/users/", h_internal_user},
    {"POST", "/internal/users/", h_internal_disable},
};
const size_t auth_nroutes = sizeof(auth_routes) / sizeof(auth_routes[0]);
