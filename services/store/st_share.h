/*
 * Who sees a receipt (DESIGN 7.5, guarantee 9), for the store's cursor thread: the other
 * members of a conversation hear a member's read and delivered cursors when its
 * settings.read_receipts is not false, in a 1:1 conversation when there is no block between the
 * two, in a group of at most share_max members, never those with a block either way with the
 * reader ("except", which the gateways leave out). What a reader allows is read from its `users`
 * and `contact_lists` documents (by _id) and cached under its policy token
 * (parley:policy:<user>, moved by parley-auth after every change of its settings, contacts or
 * blocks), so a chunk of cursors costs one MGET of tokens and lookups only for readers whose
 * token moved; a group's size is cached ten seconds. Without Redis every reader is read.
 * One thread only.
 */
#ifndef PARLEY_ST_SHARE_H
#define PARLEY_ST_SHARE_H

#include "parley/mongo.h"
#include "parley/proto.h"
#include "parley/redis.h"

#include <jansson.h>

typedef struct st_share_s st_share_t;

/* Over mg and rd (borrowed; rd may be NULL). NULL when out of memory. */
st_share_t *st_share_new(pl_mongo_t *mg, pl_redis_t *rd, long share_max);
void st_share_free(st_share_t **s);

/* Before deciding the cursors of a chunk: their readers' policy tokens, in one round trip. */
void st_share_prepare(st_share_t *s, const pl_cursor_t *curs, size_t n);

/* Whether cur's receipt goes to the other members (*share), and whom to leave out (*except: a
 * new JSON array, or NULL). PL_OK, or the database's error (then nothing is decided). */
int st_share_decide(st_share_t *s, const pl_cursor_t *cur, int *share, json_t **except);

#endif
