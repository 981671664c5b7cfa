/*
 * parley-store's MongoDB: the st_db_t the sequence allocator runs on, the conversation
 * documents, the indexes of DESIGN section 3, and reading stored messages back. Every BSON
 * document the store writes is built here. Thread-safe where pl_mongo is (the history handlers
 * read through it from the HTTP pool).
 */
#ifndef PARLEY_ST_MONGO_H
#define PARLEY_ST_MONGO_H

#include "parley/mongo.h"
#include "parley/proto.h"
#include "st_db.h"

#include <stddef.h>

/* The sequence allocator's database over m (borrowed; must outlive it). */
void st_mongo_db(pl_mongo_t *m, st_db_t *out);

/* Fills m from a stored message document; strings are borrowed from doc. PL_OK or
 * PL_ERR_INVAL when _id, content or seq is missing. */
int st_msg_from_bson(const bson_t *doc, pl_msg_t *m);

/* One upsert per conversation document (members, last_seq by $max, last_timestamp,
 * last_msg_id) for the n messages tops, each the latest of its conversation, in one bulk. */
int st_mongo_upsert_conversations(pl_mongo_t *m, const pl_msg_t *const *tops, size_t n);

/* Creates the indexes of DESIGN section 3. PL_OK when they exist. */
int st_mongo_ensure_indexes(pl_mongo_t *m);

#endif
