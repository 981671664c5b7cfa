/*
 * MongoDB access through a libmongoc client pool, for worker threads that may block. Each call
 * pops a client, runs one operation and pushes the client back, and translates bson_error_t
 * into PL_ERR_* once: a duplicate key is PL_ERR_EXISTS, an unreachable server PL_ERR_UNAVAIL.
 * Documents are libbson's bson_t, the driver's own data type. Not for event-loop threads.
 * Thread-safe.
 */
#ifndef PARLEY_MONGO_H
#define PARLEY_MONGO_H

#include <bson/bson.h>

typedef struct pl_mongo_s pl_mongo_t;

/*
 * Creates a pool for the URI and database. Short server-selection, connect and socket
 * timeouts are added unless the URI sets its own, so an outage is reported in seconds rather
 * than blocking requests. No connection is made yet. Returns PL_OK, PL_ERR_CONFIG for a bad
 * URI, or PL_ERR_NOMEM.
 */
int pl_mongo_new(const char *uri, const char *db, pl_mongo_t **out);

/* Frees the pool; sets *m to NULL. Accepts NULL. */
void pl_mongo_free(pl_mongo_t **m);

/* PL_OK when the server answers a ping, PL_ERR_UNAVAIL otherwise. */
int pl_mongo_ping(pl_mongo_t *m);

/* Inserts doc. Returns PL_OK, PL_ERR_EXISTS on a duplicate key, PL_ERR_UNAVAIL, PL_ERR_INTERNAL. */
int pl_mongo_insert_one(pl_mongo_t *m, const char *coll, const bson_t *doc);

/* Deletes the first document matching filter (none is not an error). Errors as
 * pl_mongo_insert_one(). */
int pl_mongo_delete_one(pl_mongo_t *m, const char *coll, const bson_t *filter);

/*
 * Finds the first document matching filter (opts may be NULL, as in mongoc's find options).
 * On PL_OK, *doc is a new document the caller destroys with bson_destroy(). Returns
 * PL_ERR_NOTFOUND when none matches, PL_ERR_UNAVAIL or PL_ERR_INTERNAL.
 */
int pl_mongo_find_one(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *opts,
                      bson_t **doc);

/* pl_mongo_find_one() of the document whose _id is the string id: the one query shape every
 * MongoDB-compatible server answers from an index. Same results. */
int pl_mongo_find_id(pl_mongo_t *m, const char *coll, const char *id, bson_t **doc);

/*
 * Updates the first document matching filter with the update operators in update; upsert
 * inserts when none matches. *matched (may be NULL) gets the number matched. Errors as
 * pl_mongo_insert_one().
 */
int pl_mongo_update_one(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *update,
                        int upsert, long *matched);

/*
 * n upserts, each of one document (filters[i], updates[i]), sent as ordered bulk writes of
 * up to 16 (one round trip per 16 instead of one each; see UPSERT_CHUNK in mongo.c). Errors as
 * pl_mongo_insert_one(); on an error the ones before it may have been applied (each is idempotent
 * where the store uses it).
 */
int pl_mongo_upsert_each(pl_mongo_t *m, const char *coll, bson_t *const *filters,
                         bson_t *const *updates, size_t n);

/* Updates every document matching filter; *matched as above. Errors as pl_mongo_insert_one(). */
int pl_mongo_update_many(pl_mongo_t *m, const char *coll, const bson_t *filter,
                         const bson_t *update, long *matched);

/* Called for each document found; doc is borrowed for the call only. Return 0 to stop. */
typedef int (*pl_mongo_doc_fn)(void *ud, const bson_t *doc);

/*
 * Runs a find with mongoc's options (sort, limit, projection) and calls fn for each
 * document. Returns PL_OK, PL_ERR_UNAVAIL or PL_ERR_INTERNAL.
 */
int pl_mongo_find(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *opts,
                  pl_mongo_doc_fn fn, void *ud);

/*
 * Inserts n documents in one ordered bulk write: they are stored in order until the first
 * failure. Returns PL_OK when all were stored; PL_ERR_EXISTS when docs[*stored] was refused
 * as a duplicate key (the ones before it are stored, the ones after it were not tried);
 * PL_ERR_UNAVAIL or PL_ERR_INTERNAL when nothing is known (retry them all).
 */
int pl_mongo_insert_many(pl_mongo_t *m, const char *coll, bson_t *const *docs, size_t n,
                         size_t *stored);

/* Creates an index (a no-op when it exists). Errors as pl_mongo_insert_one(). */
int pl_mongo_create_index(pl_mongo_t *m, const char *coll, const bson_t *keys, const char *name,
                          int unique);

#endif
