/*
 * libmongoc wrapper. The error translation in map_error() is the only place where the driver's
 * error domains and server codes are interpreted.
 */
#include "parley/mongo.h"
#include "parley/err.h"
#include "parley/log.h"

#include <mongoc/mongoc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct pl_mongo_s {
    mongoc_client_pool_t *pool;
    char *db;
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* The driver's own log lines become JSON lines like ours (it writes plain text otherwise). */
static void on_driver_log(mongoc_log_level_t level, const char *domain, const char *message,
                          void *ud)
{
    (void)ud;
    int lvl = level <= MONGOC_LOG_LEVEL_ERROR     ? PL_LOG_ERROR
              : level <= MONGOC_LOG_LEVEL_WARNING ? PL_LOG_WARN
              : level <= MONGOC_LOG_LEVEL_INFO    ? PL_LOG_INFO
                                                  : PL_LOG_DEBUG;
    /* Servers without sessions (FerretDB) refuse endSessions at shutdown: harmless. */
    if (strstr(message, "endSessions") != NULL) {
        lvl = PL_LOG_DEBUG;
    }
    pl_log_fields(lvl, "mongo_driver", json_pack("{s:s}", "domain", domain), "%s", message);
}

static void init_driver(void)
{
    mongoc_init();
    mongoc_log_set_handler(on_driver_log, NULL);
}

static int map_error(const char *op, const bson_error_t *e)
{
    /* 11000 is the server's duplicate-key code, whichever domain reports it. */
    if (e->code == 11000 || e->code == 11001 || e->code == 12582) {
        return PL_ERR_EXISTS;
    }
    switch (e->domain) {
    case MONGOC_ERROR_STREAM:
    case MONGOC_ERROR_SERVER_SELECTION:
    case MONGOC_ERROR_CLIENT:
    case MONGOC_ERROR_PROTOCOL:
        pl_log_warn("mongo_unavailable", "%s: %s", op, e->message);
        return PL_ERR_UNAVAIL;
    default:
        pl_log_error("mongo_error", "%s: domain %u code %u: %s", op, e->domain, e->code,
                     e->message);
        return PL_ERR_INTERNAL;
    }
}

int pl_mongo_new(const char *uri_str, const char *db, pl_mongo_t **out)
{
    bson_error_t err;
    pthread_once(&init_once, init_driver);
    *out = NULL;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_str, &err);
    if (uri == NULL) {
        pl_log_error("config_invalid", "bad MongoDB URI: %s", err.message);
        return PL_ERR_CONFIG;
    }
    static const struct {
        const char *opt;
        int32_t ms;
    } timeouts[] = {{MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 2000},
                    {MONGOC_URI_CONNECTTIMEOUTMS, 2000},
                    {MONGOC_URI_SOCKETTIMEOUTMS, 10000}};
    for (size_t i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++) {
        if (!mongoc_uri_has_option(uri, timeouts[i].opt)) {
            mongoc_uri_set_option_as_int32(uri, timeouts[i].opt, timeouts[i].ms);
        }
    }
    pl_mongo_t *m = calloc(1, sizeof(*m));
    if (m == NULL || (m->db = strdup(db)) == NULL ||
        (m->pool = mongoc_client_pool_new(uri)) == NULL) {
        if (m != NULL) {
            free(m->db);
        }
        free(m);
        mongoc_uri_destroy(uri);
        return PL_ERR_NOMEM;
    }
    mongoc_client_pool_set_error_api(m->pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_pool_set_appname(m->pool, "parley");
    mongoc_uri_destroy(uri);
    *out = m;
    return PL_OK;
}

void pl_mongo_free(pl_mongo_t **pm)
{
    if (pm == NULL || *pm == NULL) {
        return;
    }
    mongoc_client_pool_destroy((*pm)->pool);
    free((*pm)->db);
    free(*pm);
    *pm = NULL;
}

int pl_mongo_ping(pl_mongo_t *m)
{
    bson_error_t err;
    bson_t cmd = BSON_INITIALIZER;
    BSON_APPEND_INT32(&cmd, "ping", 1);
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    bool ok = mongoc_client_command_simple(c, m->db, &cmd, NULL, NULL, &err);
    mongoc_client_pool_push(m->pool, c);
    bson_destroy(&cmd);
    return ok ? PL_OK : PL_ERR_UNAVAIL;
}

int pl_mongo_insert_one(pl_mongo_t *m, const char *coll, const bson_t *doc)
{
    bson_error_t err;
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(c, m->db, coll);
    bool ok = mongoc_collection_insert_one(col, doc, NULL, NULL, &err);
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(m->pool, c);
    return ok ? PL_OK : map_error("insert", &err);
}

int pl_mongo_delete_one(pl_mongo_t *m, const char *coll, const bson_t *filter)
{
    bson_error_t err;
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(c, m->db, coll);
    bool ok = mongoc_collection_delete_one(col, filter, NULL, NULL, &err);
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(m->pool, c);
    return ok ? PL_OK : map_error("delete", &err);
}

int pl_mongo_find_one(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *opts,
                      bson_t **doc)
{
    int rc = PL_ERR_NOTFOUND;
    bson_error_t err;
    const bson_t *found;
    bson_t o = BSON_INITIALIZER;
    if (opts != NULL) {
        bson_copy_to_excluding_noinit(opts, &o, "limit", NULL);
    }
    BSON_APPEND_INT64(&o, "limit", 1);
    *doc = NULL;
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(c, m->db, coll);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, &o, NULL);
    if (mongoc_cursor_next(cur, &found)) {
        *doc = bson_copy(found);
        rc = *doc ? PL_OK : PL_ERR_NOMEM;
    } else if (mongoc_cursor_error(cur, &err)) {
        rc = map_error("find", &err);
    }
    mongoc_cursor_destroy(cur);
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(m->pool, c);
    bson_destroy(&o);
    return rc;
}

int pl_mongo_find_id(pl_mongo_t *m, const char *coll, const char *id, bson_t **doc)
{
    bson_t filter = BSON_INITIALIZER;
    BSON_APPEND_UTF8(&filter, "_id", id);
    int rc = pl_mongo_find_one(m, coll, &filter, NULL, doc);
    bson_destroy(&filter);
    return rc;
}

static int update(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *upd,
                  int upsert, int many, long *matched)
{
    bson_error_t err;
    bson_t reply;
    bson_t opts = BSON_INITIALIZER;
    if (upsert) {
        BSON_APPEND_BOOL(&opts, "upsert", true);
    }
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(c, m->db, coll);
    bool ok = many ? mongoc_collection_update_many(col, filter, upd, &opts, &reply, &err)
                   : mongoc_collection_update_one(col, filter, upd, &opts, &reply, &err);
    if (ok && matched != NULL) {
        bson_iter_t it;
        *matched = 0;
        if (bson_iter_init_find(&it, &reply, "matchedCount") && BSON_ITER_HOLDS_NUMBER(&it)) {
            *matched = (long)bson_iter_as_int64(&it);
        }
    }
    bson_destroy(&reply);
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(m->pool, c);
    bson_destroy(&opts);
    return ok ? PL_OK : map_error("update", &err);
}

int pl_mongo_update_one(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *upd,
                        int upsert, long *matched)
{
    return update(m, coll, filter, upd, upsert, 0, matched);
}

int pl_mongo_update_many(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *upd,
                         long *matched)
{
    return update(m, coll, filter, upd, 0, 1, matched);
}

/*
 * At most this many statements per update command. FerretDB 1.24 keeps the cursor of every
 * statement of an update command open until the command ends, each holding one of its 100
 * SQLite connections, while each statement's write needs one more: a bulk of about 100
 * deadlocks it for good (seen with 211 conversation upserts; goroutines in BeginTx forever).
 */
#define UPSERT_CHUNK 16

static int upsert_chunk(pl_mongo_t *m, const char *coll, bson_t *const *filters,
                        bson_t *const *updates, size_t n)
{
    if (n == 1) {
        return update(m, coll, filters[0], updates[0], 1, 0, NULL);
    }
    bson_error_t err;
    bson_t reply;
    bson_t opts = BSON_INITIALIZER;
    bson_t one = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&opts, "ordered", true);
    BSON_APPEND_BOOL(&one, "upsert", true);
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(c, m->db, coll);
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(col, &opts);
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        ok = mongoc_bulk_operation_update_one_with_opts(bulk, filters[i], updates[i], &one, &err);
    }
    if (ok) {
        /* execute() initialises reply whatever happens; a refused update_one above did not. */
        ok = mongoc_bulk_operation_execute(bulk, &reply, &err);
        bson_destroy(&reply);
    }
    mongoc_bulk_operation_destroy(bulk);
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(m->pool, c);
    bson_destroy(&one);
    bson_destroy(&opts);
    return ok ? PL_OK : map_error("upsert_each", &err);
}

int pl_mongo_upsert_each(pl_mongo_t *m, const char *coll, bson_t *const *filters,
                         bson_t *const *updates, size_t n)
{
    int rc = PL_OK;
    for (size_t i = 0; i < n && rc == PL_OK; i += UPSERT_CHUNK) {
        size_t k = n - i < UPSERT_CHUNK ? n - i : UPSERT_CHUNK;
        rc = upsert_chunk(m, coll, filters + i, updates + i, k);
    }
    return rc;
}

int pl_mongo_create_index(pl_mongo_t *m, const char *coll, const bson_t *keys, const char *name,
                          int unique)
{
    bson_error_t err;
    bson_t cmd = BSON_INITIALIZER;
    bson_t indexes, index;
    BSON_APPEND_UTF8(&cmd, "createIndexes", coll);
    BSON_APPEND_ARRAY_BEGIN(&cmd, "indexes", &indexes);
    BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
    BSON_APPEND_DOCUMENT(&index, "key", keys);
    BSON_APPEND_UTF8(&index, "name", name);
    if (unique) {
        BSON_APPEND_BOOL(&index, "unique", true);
    }
    bson_append_document_end(&indexes, &index);
    bson_append_array_end(&cmd, &indexes);
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    bool ok = mongoc_client_write_command_with_opts(c, m->db, &cmd, NULL, NULL, &err);
    mongoc_client_pool_push(m->pool, c);
    bson_destroy(&cmd);
    return ok ? PL_OK : map_error("create_index", &err);
}

int pl_mongo_find(pl_mongo_t *m, const char *coll, const bson_t *filter, const bson_t *opts,
                  pl_mongo_doc_fn fn, void *ud)
{
    int rc = PL_OK;
    bson_error_t err;
    const bson_t *doc;
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(c, m->db, coll);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(col, filter, opts, NULL);
    while (mongoc_cursor_next(cur, &doc)) {
        if (!fn(ud, doc)) {
            break;
        }
    }
    if (mongoc_cursor_error(cur, &err)) {
        rc = map_error("find", &err);
    }
    mongoc_cursor_destroy(cur);
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(m->pool, c);
    return rc;
}

int pl_mongo_insert_many(pl_mongo_t *m, const char *coll, bson_t *const *docs, size_t n,
                         size_t *stored)
{
    int rc = PL_OK;
    bson_error_t err;
    bson_t reply;
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_BOOL(&opts, "ordered", true);
    *stored = 0;
    mongoc_client_t *c = mongoc_client_pool_pop(m->pool);
    mongoc_collection_t *col = mongoc_client_get_collection(c, m->db, coll);
    mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(col, &opts);
    for (size_t i = 0; i < n; i++) {
        mongoc_bulk_operation_insert(bulk, docs[i]);
    }
    if (mongoc_bulk_operation_execute(bulk, &reply, &err)) {
        *stored = n;
    } else {
        /* An ordered write stops at its first error: writeErrors[0] says which and why. */
        bson_iter_t it, arr, one;
        int32_t idx = -1, code = 0;
        if (bson_iter_init_find(&it, &reply, "writeErrors") && BSON_ITER_HOLDS_ARRAY(&it) &&
            bson_iter_recurse(&it, &arr) && bson_iter_next(&arr) &&
            BSON_ITER_HOLDS_DOCUMENT(&arr) && bson_iter_recurse(&arr, &one)) {
            while (bson_iter_next(&one)) {
                if (strcmp(bson_iter_key(&one), "index") == 0) {
                    idx = (int32_t)bson_iter_as_int64(&one);
                } else if (strcmp(bson_iter_key(&one), "code") == 0) {
                    code = (int32_t)bson_iter_as_int64(&one);
                }
            }
        }
        if (code == 11000 && idx >= 0 && (size_t)idx < n) {
            *stored = (size_t)idx;
            rc = PL_ERR_EXISTS;
        } else {
            rc = map_error("insert_many", &err);
            if (rc == PL_ERR_EXISTS) {
                rc = PL_ERR_INTERNAL;
            }
        }
    }
    bson_destroy(&reply);
    mongoc_bulk_operation_destroy(bulk);
    mongoc_collection_destroy(col);
    mongoc_client_pool_push(m->pool, c);
    bson_destroy(&opts);
    return rc;
}
