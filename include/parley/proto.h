/*
 * The message envelope shared by every service: identifiers (usernames, conversation ids,
 * msg_ids), the client frames a gateway accepts, the Kafka record of a message, and the frames
 * a gateway pushes. Parsing takes bytes and returns a validated struct or an error with a
 * human-readable reason; nothing here does I/O, so tests drive it byte by byte. Thread-safe.
 */
#ifndef PARLEY_PROTO_H
#define PARLEY_PROTO_H

#include "parley/wire.h"

#include <jansson.h>
#include <stddef.h>

#define PL_MAX_FRAME      (64 * 1024) /* largest client frame and message, in bytes */
#define PL_MAX_CONTENT    (60 * 1024) /* largest content, so its frames stay under 64 KiB */
#define PL_MAX_CLIENT_ID  64
#define PL_MAX_JSON_DEPTH 16

/*
 * Copies a username into out (PL_USERNAME_MAX + 1 bytes) folded to lowercase and checks it
 * against [a-z0-9_.-]{3,32}. Returns PL_OK or PL_ERR_INVAL.
 */
int pl_username_normalize(const char *in, char *out);

/* The 1:1 conversation id "d:<smaller>:<larger>" into out (PL_CONV_ID_LEN bytes). */
void pl_conv_id(const char *a, const char *b, char out[PL_CONV_ID_LEN]);

/* A user's own control stream "u:<user>" (DESIGN 7.1) into out (PL_CONV_ID_LEN bytes). */
void pl_user_conv(const char *user, char out[PL_CONV_ID_LEN]);

/*
 * The kind of a conversation id (DESIGN 7.1): 'd' for "d:<a>:<b>" (a < b, both usernames),
 * 'g' for a group "g:<26 Crockford base-32 digits>", 'u' for "u:<user>", 0 when malformed.
 * Pure.
 */
int pl_conv_kind(const char *conv);

/*
 * A group's conversation id from its owner and the client_id of its creation, so a retried
 * create names the same group: "g:" and 26 Crockford base-32 digits of SHA-256 over both.
 * out holds PL_CONV_ID_LEN bytes.
 */
void pl_group_conv(const char *owner, const char *client_id, char out[PL_CONV_ID_LEN]);

/*
 * Server-made client_ids (the system items of a u: stream) start with this; a client's send
 * may not, so a client cannot make its own message collide with one of them.
 */
#define PL_SYSTEM_CLIENT_ID_PREFIX "sys:"

/*
 * The msg_id of (sender, client_id): 32 hex digits of SHA-256 over both, so a client's retry
 * of the same send maps to the same message everywhere. out holds PL_MSG_ID_LEN bytes.
 */
void pl_msg_id(const char *sender, const char *client_id, char out[PL_MSG_ID_LEN]);

/*
 * 1 when the JSON text nests arrays and objects at most max deep (strings are skipped
 * correctly). Run before parsing, so hostile nesting is refused cheaply.
 */
int pl_json_depth_ok(const char *p, size_t len, int max);

/* 1 when p[0..len) is valid UTF-8 (no overlongs, surrogates or values above U+10FFFF). */
int pl_utf8_valid(const unsigned char *p, size_t len);

enum pl_frame_type {
    PL_FRAME_SEND = 1,
    PL_FRAME_AUTH = 2,
    PL_FRAME_READ,
    PL_FRAME_DELIVERED,
    PL_FRAME_TYPING,
    PL_FRAME_EDIT,
    PL_FRAME_RECALL
};

/* Cursor kinds (DESIGN 7.5): how far a member has read, and how far its devices have received. */
#define PL_CURSOR_READ      "read"
#define PL_CURSOR_DELIVERED "delivered"
#define PL_CURSOR_LEN       10
/* The largest seq a cursor frame may name: JSON numbers stay exact below 2^53. */
#define PL_SEQ_MAX 9007199254740991LL

/* A client frame. Strings point into root, which the caller releases with pl_frame_clear(). */
typedef struct pl_frame_s {
    enum pl_frame_type type;
    json_t *root;
    const char *token;                    /* auth */
    char client_id[PL_MAX_CLIENT_ID + 1]; /* send */
    char to[PL_USERNAME_MAX + 1];         /* send to a user, normalized; "" when conv is set */
    char conv[PL_CONV_ID_LEN];            /* send to a conversation ("d:" or "g:"); or "" */
    const char *content;                  /* send; may contain NUL bytes */
    size_t content_len;
    long long seq;        /* read, delivered: the cursor's new position, 1..PL_SEQ_MAX */
    int typing;           /* typing: 1 for "start", 0 for "stop" */
    long long target_seq; /* edit, recall: the item changed */
} pl_frame_t;

/*
 * Parses one client text frame. A read or delivered frame names a "conv" (d:, g: or u:) and a
 * "seq"; a typing frame a "conv" (d: or g:) and a "state" ("start" or "stop"); an edit a
 * "client_id", a "conv" (d: or g:), a "target_seq" and a "content", a recall the same but
 * the content. A send names its
 * destination with "to" (a user) or "conv" (a "d:" or "g:" conversation id), exactly one of them.
 * Returns PL_OK with *f filled, or PL_ERR_INVAL (bad JSON, too deep, unknown type, missing or
 * malformed fields) or PL_ERR_TOOBIG (content over PL_MAX_CONTENT) with a reason in *why (a static
 * string). Fields a client may not set (sender, seq, msg_id, timestamp) are ignored.
 */
int pl_frame_parse(const char *data, size_t len, pl_frame_t *f, const char **why);
void pl_frame_clear(pl_frame_t *f);

/* What decides whether one user may message another (DESIGN 7.2): the pair's contacts document
 * and the receiver's settings. The store decides with it before numbering, parley-auth when a
 * gateway asks before producing. */
typedef struct pl_policy_facts_s {
    int accepted;          /* the two are contacts */
    int blocked;           /* either blocked the other */
    int contacts_only;     /* the receiver's who_can_message is "contacts" */
    int receiver_missing;  /* no such account (existence is checked elsewhere) */
    int receiver_disabled; /* the receiver's account is disabled (read with the settings) */
} pl_policy_facts_t;

/* 1 when a text message may go from the sender to the receiver given f. Pure. */
int pl_policy_allows(const pl_policy_facts_t *f);

/* Kinds of stream item (DESIGN 7.1). A record or document without one is a text item. */
#define PL_KIND_TEXT   "text"
#define PL_KIND_SYSTEM "system"
#define PL_KIND_EDIT   "edit"   /* new content for target_seq (DESIGN 7.5) */
#define PL_KIND_RECALL "recall" /* target_seq's content taken back */
#define PL_KIND_LEN    8

/* A message (any stream item) as it travels through Kafka and out to clients. */
typedef struct pl_msg_s {
    char msg_id[PL_MSG_ID_LEN];
    char conv[PL_CONV_ID_LEN];
    char sender[PL_USERNAME_MAX + 1];
    char receiver[PL_USERNAME_MAX + 1];
    char client_id[PL_MAX_CLIENT_ID + 1];
    const char *content; /* borrowed from root, or from the caller when built by hand */
    size_t content_len;
    long long ts_ms; /* accepted at the gateway, ms since the epoch, UTC */
    long long seq;   /* 0 until the store numbers it */
    char origin_gw[PL_GATEWAY_ID_LEN];
    unsigned long long origin_conn;
    char kind[PL_KIND_LEN]; /* PL_KIND_*; never empty once parsed */
    long long target_seq;   /* edit and recall items: the item they change */
    long long edited_at_ms; /* history only: the target's latest edit (0: none) */
    unsigned char recalled; /* history only: the target was recalled (its content erased) */
    json_t *event;          /* system items: what happened (an object); borrowed like content */
    /* parley.committed only: the store refused the message (an error code such as
     * "forbidden"); it was not stored, has no seq, and goes back to its sender only. */
    char refused[16];
    /* parley.committed only: a later copy of a message already stored and announced (a
     * client's resend): it goes back to the sending device only, with its seq. */
    unsigned char replay;
    /* parley.committed, group items only: the seq of the group's latest membership change at
     * or before this item (mver), and for a membership change the one before it (pmver), so
     * a gateway can tell whether its view of the members is current (gw_groups.h). 0: none. */
    long long mver, pmver;
    json_t *root; /* owns content and event after pl_msg_parse() */
} pl_msg_t;

/*
 * Parses a Kafka record value (parley.messages or parley.committed). Returns PL_OK or
 * PL_ERR_INVAL for anything malformed. Release with pl_msg_clear().
 */
int pl_msg_parse(const char *data, size_t len, pl_msg_t *m);
void pl_msg_clear(pl_msg_t *m);

/* As pl_msg_parse() for an object already parsed; strings and event are borrowed from o
 * (m->root NULL). */
int pl_msg_from_json(json_t *o, pl_msg_t *m);

/* The Kafka record value of m (with "seq" when m->seq > 0). New string; caller frees. */
char *pl_msg_record(const pl_msg_t *m);

/* m as a new JSON object of the DESIGN's msg frame and REST form (type "msg" when frame), with
 * its kind, and its event for a system item. */
json_t *pl_msg_json(const pl_msg_t *m, int frame);
/* The "msg" frame of m as compact JSON text (free() it), or NULL when out of memory. */
char *pl_msg_frame_text(const pl_msg_t *m);

/*
 * A cursor as it travels on PL_TOPIC_CURSORS (gateway -> store, keyed by conv): user has read
 * (or received) conv up to seq. The gateway checked that user belongs to conv.
 */
typedef struct pl_cursor_s {
    char kind[PL_CURSOR_LEN]; /* PL_CURSOR_READ or PL_CURSOR_DELIVERED */
    char conv[PL_CONV_ID_LEN];
    char user[PL_USERNAME_LEN];
    long long seq;
    long long ts_ms; /* accepted at the gateway */
    char origin_gw[PL_GATEWAY_ID_LEN];
    unsigned long long origin_conn;
} pl_cursor_t;

/* The record value of c (new string, caller frees; NULL when out of memory). */
char *pl_cursor_record(const pl_cursor_t *c);
/* Parses a PL_TOPIC_CURSORS record value. PL_OK or PL_ERR_INVAL. */
int pl_cursor_parse(const char *data, size_t len, pl_cursor_t *c);

/* Server frames, as new strings the caller frees. retry_after_ms <= 0 omits it. */
/* {"type":"ack","client_id","msg_id"}, with "conv" and "seq" when conv is not NULL (the answer
 * to a resend of a message already stored: DESIGN 4, docs/protocol.md). */
char *pl_frame_ack(const char *client_id, const char *msg_id, const char *conv, long long seq);
/* The ack of a read or delivered frame: {"type":"ack","cursor":kind,"conv","seq"}. */
char *pl_frame_cursor_ack(const char *kind, const char *conv, long long seq);
/* {"type":"typing","conv","user","state":"start"|"stop"} (DESIGN 7.5). */
char *pl_frame_typing(const char *conv, const char *user, int start);
/* {"type":"receipt","conv","user","kind","seq"} (DESIGN 7.5). */
char *pl_frame_receipt(const char *conv, const char *user, const char *kind, long long seq);
char *pl_frame_error(const char *code, const char *message, const char *client_id,
                     long retry_after_ms);

#endif
