/*
 * The names that travel between services, in one place: Kafka topics, Redis keys and
 * channels, and the sizes of the identifiers every service passes around (DESIGN section 3).
 * A topic or "parley:" key written anywhere else is a bug: `make lint` looks for them. Not for
 * the shape of what travels under these names, which is proto.h's. Pure and thread-safe.
 */
#ifndef PARLEY_WIRE_H
#define PARLEY_WIRE_H

#include <stddef.h>

/* Kafka topics. All are keyed by conversation id. */
#define PL_TOPIC_MESSAGES  "parley.messages"  /* gateways -> store: accepted sends */
#define PL_TOPIC_COMMITTED "parley.committed" /* store -> router: stored, numbered messages */
/* gateways -> store: read and delivered cursors (no seq of their own; DESIGN 7.5) */
#define PL_TOPIC_CURSORS "parley.cursors"

/* Redis pub/sub channel on which parley-auth announces revoked sessions to the gateways. */
#define PL_CHANNEL_REVOKE "parley:revoke"
/* Redis pub/sub channel every gateway hears: presence changes with the users who may see them. */
#define PL_CHANNEL_PRESENCE "parley:presence"
/* Set of the gateways that ever said they were alive (the presence reaper's list). */
#define PL_KEY_GATEWAYS "parley:gateways"

/* Identifier buffers, terminating NUL included. */
#define PL_USERNAME_MAX   32 /* [a-z0-9_.-]{3,32} */
#define PL_USERNAME_LEN   (PL_USERNAME_MAX + 1)
#define PL_CONV_ID_LEN    72  /* "d:<a>:<b>": 2 + 32 + 1 + 32 + NUL, rounded up */
#define PL_MSG_ID_LEN     33  /* 32 hex digits */
#define PL_SESSION_ID_LEN 33  /* 32 hex digits, made by parley-auth */
#define PL_TOKEN_ID_LEN   33  /* a JWT's jti: 32 hex digits */
#define PL_GATEWAY_ID_LEN 64  /* "<PARLEY_GATEWAY_ID or host>-<8 hex>" */
#define PL_KEY_LEN        160 /* any key or channel below */

/*
 * The key builders write a NUL-terminated name into out (PL_KEY_LEN bytes) and return PL_OK,
 * or PL_ERR_TOOBIG when the name would not fit (nothing usable is written then).
 */

/* Hash "parley:presence:<user>": field "<gateway>:<conn>" -> gateway, one per live device. */
int pl_key_presence(char *out, const char *user);
/* "parley:pstate:<user>": the presence last announced for user, "on" or "off:<ms>". */
int pl_key_pstate(char *out, const char *user);
/* Set "parley:gwusers:<gateway>": users with at least one device on the gateway. */
int pl_key_gwusers(char *out, const char *gw_id);
/* "parley:reap:<gateway>": held by the gateway that announces a dead gateway's users offline. */
int pl_key_reap(char *out, const char *gw_id);
/* "parley:gw:<gateway>": set while the gateway is alive and subscribed (short TTL). */
int pl_key_gateway(char *out, const char *gw_id);
/* Channel "parley:deliver:<gateway>": router -> gateway pushes. */
int pl_key_deliver(char *out, const char *gw_id);
/* "parley:revoked:<session>": set for a revoked session until its last token expires. */
int pl_key_revoked(char *out, const char *sid);
/* "parley:rl:<what>:<who>": a rate-limit window of parley-auth. */
int pl_key_ratelimit(char *out, const char *what, const char *who);
/* "parley:policy:<user>": a token changed by parley-auth whenever something that decides who
 * may message user changes (a contact, a block, a setting); the store's permission cache
 * holds an answer only while the token it was read under is unchanged. */
int pl_key_policy(char *out, const char *user);
/* Sorted set "parley:convgw:<conv>": the gateways holding a socket of at least one member of
 * group conv, each scored with the time (ms) until which its interest stands (renewed by the
 * gateway). A hint for the router, rebuilt by the gateways: a missed push is repaired by the
 * seq gap the client sees. */
int pl_key_convgw(char *out, const char *conv);
/* The store's write intent document id of a partition of PL_TOPIC_MESSAGES. */
int pl_key_intent(char *out, int partition);

/* 1 when channel is a gateway's delivery channel (see pl_key_deliver). */
int pl_is_deliver_channel(const char *channel);

#endif
