/*
 * parley-auth's internal interface: the service context shared by its request handlers, the
 * pure validation rules (unit-tested without a server), password hashing, and the route table.
 * Not a public header: nothing outside services/auth includes it.
 */
#ifndef PARLEY_AUTH_H
#define PARLEY_AUTH_H

#include "parley/http.h"
#include "parley/jwt.h"
#include "parley/kafka.h"
#include "parley/metrics.h"
#include "parley/mongo.h"
#include "parley/redis.h"
#include "parley/wire.h"

#include <stdatomic.h>
#include <stddef.h>

#define AUTH_USERNAME_MAX 32
#define AUTH_PASSWORD_MIN 8
#define AUTH_PASSWORD_MAX 1024
#define AUTH_REFRESH_PREV 16 /* rotated refresh hashes remembered for reuse detection */

typedef struct auth_limits_s {
    long window_s;       /* length of every rate-limit window */
    long login_per_user; /* login attempts per username per window */
    long login_per_addr; /* login attempts per client address per window */
    long register_per_addr;
    long contact_per_user; /* contact requests per user per window */
    long group_per_user;   /* group changes (create, add, remove, …) per user per window */
    long member_limit;     /* members of one group, at most */
} auth_limits_t;

typedef struct auth_ctx_s {
    pl_mongo_t *mongo;
    pl_redis_t *redis;
    pl_kafka_t *producer; /* system items of the users' own streams, to parley.messages */
    pl_jwt_signer_t *signer;
    pl_jwt_verifier_t *verifier;     /* checks the session in MongoDB */
    pl_jwt_verifier_t *verifier_lax; /* signature and claims only: logout is idempotent */
    pl_metrics_t *metrics;
    long access_ttl_s;
    long refresh_ttl_s;
    auth_limits_t limits;
    char dummy_hash[128]; /* verified for unknown users so they cost a real verification */
    atomic_int indexes_ready;
    pl_metric_t *m_logins_ok;
    pl_metric_t *m_logins_failed;
    pl_metric_t *m_registered;
    pl_metric_t *m_refreshed;
    pl_metric_t *m_reuse;
    pl_metric_t *m_rate_limited;
    pl_metric_t *m_logouts;
    pl_metric_t *m_social_changes;
} auth_ctx_t;

/*
 * Counts one attempt in a rate-limit window. Returns PL_OK to go on; otherwise the response is
 * already filled (429 with Retry-After, or 503 when Redis does not answer).
 */
int auth_rate_check(auth_ctx_t *ctx, pl_http_resp_t *resp, const char *what, const char *who,
                    long limit);

/* A string member of doc, or NULL. */
const char *auth_bson_str(const bson_t *doc, const char *key);

/* PL_OK when the account name exists and is not disabled, PL_ERR_NOTFOUND, or the database's
 * error. */
int auth_user_active(auth_ctx_t *ctx, const char *name);

/* Publishes note (stolen; NULL counts as out of memory) on the channel the gateways listen to
 * (PL_CHANNEL_REVOKE): {"sid","user"} closes a session's sockets; {"user","forget":true}
 * drops what gateways cached about who may message user. */
int auth_announce(auth_ctx_t *ctx, json_t *note);

/* Produces rec (a parley.messages record) under key and waits until Kafka has it under
 * acks=all. PL_OK, or PL_ERR_UNAVAIL (not known to be written: the caller answers 503). */
int auth_produce_wait(auth_ctx_t *ctx, const char *key, const char *rec);
/* The delivery report callback of ctx->producer (ud is the context). */
void auth_social_delivered(void *ud, void *opaque, int err);

/* Creates the contacts collection's indexes; PL_OK when they exist. */
int auth_social_indexes(auth_ctx_t *ctx);

/* The handlers of contacts, blocks and settings (auth_social.c, DESIGN 7.2). */
void auth_h_contacts(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_contact_add(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_contact_accept(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_contact_delete(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_blocks(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_block(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_unblock(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_settings(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_settings_patch(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);

/* One document per user, {_id: user, open: [contacts]}: the accepted contacts with no block
 * either way, derived from `contacts` by every change of a pair (auth_social.c), so presence
 * finds a user's viewers with one lookup by _id. */
#define AUTH_CONTACT_LISTS "contact_lists"

/* Groups (auth_groups.c, DESIGN 7.4). */
void auth_h_group_create(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_group_get(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_group_patch(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_group_post(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_group_delete(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_internal_groups(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_internal_members(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_internal_may_post(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
/* GET /internal/typing?conv=&user= (auth_typing.c): who may see user typing in conv. */
void auth_h_internal_typing(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
/* Presence (auth_presence.c, DESIGN 7.3). */
void auth_h_presence(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
void auth_h_internal_presence(pl_http_req_t *req, pl_http_resp_t *resp, void *ud);
/* Adds "presence" to each entry of contacts ([{user, …}]) that me may see. */
int auth_presence_fill(auth_ctx_t *ctx, const char *me, json_t *contacts);

/*
 * Copies a username into out (AUTH_USERNAME_MAX + 1 bytes) folded to lowercase, and checks it
 * against [a-z0-9_.-]{3,32}. Returns PL_OK or PL_ERR_INVAL.
 */
int auth_username_normalize(const char *in, char *out);

/* PL_OK when a password of len bytes is acceptable (8 to 1024), PL_ERR_INVAL otherwise. */
int auth_password_check(size_t len);

/* PL_OK for a locale such as "en" or "pt-BR" ([A-Za-z0-9_-], 2 to 35 bytes). */
int auth_locale_check(const char *s);

/* PL_OK for an IANA zone name such as "Europe/Paris" or "UTC" ([A-Za-z0-9/_+-], 1 to 64). */
int auth_time_zone_check(const char *s);

/*
 * Hashes pw[0..len) with argon2id (19 MiB, 2 passes, random salt) into out, an encoded
 * "$argon2id$…" string of at most outlen bytes. Returns PL_OK, PL_ERR_NOMEM.
 */
int auth_pw_hash(const char *pw, size_t len, char *out, size_t outlen);

/* PL_OK when pw matches the encoded hash, PL_ERR_UNAUTH otherwise. */
int auth_pw_verify(const char *hash, const char *pw, size_t len);

/* Hex SHA-256 of a refresh token, as stored (65 bytes with the NUL). */
void auth_refresh_hash(const char *token, char out[65]);

/*
 * Splits a refresh token "<sid>.<secret>" and checks its shape; copies the session id into
 * sid (33 bytes). Returns PL_OK or PL_ERR_UNAUTH.
 */
int auth_refresh_parse(const char *token, char sid[PL_SESSION_ID_LEN]);

/* Reads an optional string member of body without embedded NULs into *out (borrowed) and
 * *len. 1 when present and valid, else 0. */
int auth_json_str(json_t *body, const char *key, const char **out, size_t *len);

/* A register request's fields; strings are borrowed from the JSON body. */
typedef struct auth_register_s {
    char user[AUTH_USERNAME_MAX + 1]; /* normalized */
    const char *pw;
    size_t pw_len;
    const char *display, *locale, *time_zone;
} auth_register_t;

/* A login request's fields; strings are borrowed from the JSON body. */
typedef struct auth_login_s {
    char user[AUTH_USERNAME_MAX + 1]; /* normalized, or "-invalid-" when no account can match */
    int shape_ok;                     /* 0: the name or password cannot belong to an account */
    const char *pw;
    size_t pw_len;
    const char *device;
} auth_login_t;

/*
 * Validates a register body (DESIGN section 4). Pure: no I/O, any JSON value accepted.
 * Returns PL_OK with r filled, or PL_ERR_INVAL with a message for the client in *why.
 * r's strings are borrowed from body and valid while it lives.
 */
int auth_register_parse(json_t *body, auth_register_t *r, const char **why);

/*
 * Validates a login body. A malformed name or password is not an error (it gets the same
 * answer as a wrong one, after the same work): shape_ok says so. Returns PL_OK, or
 * PL_ERR_INVAL with *why when the body itself is malformed. Strings are borrowed from body.
 */
int auth_login_parse(json_t *body, auth_login_t *l, const char **why);

/* The verifier's revocation callback: the session must exist in MongoDB and not be revoked. */
int auth_session_live(void *ud, const pl_jwt_claims_t *c);

/* Creates the collections' indexes once; PL_OK when they exist. */
int auth_ensure_indexes(auth_ctx_t *ctx);

extern const pl_http_route_t auth_routes[];
extern const size_t auth_nroutes;

#endif
