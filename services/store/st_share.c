/*
 * Receipt sharing (see st_share.h).
 */
#include "st_share.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/wire.h"
#include "st_group.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS       4096
#define CACHE_MAX     100000
#define TOKEN_LEN     33
#define TOKEN_TTL_S   (7L * 86400)
#define GROUP_TTL_MS  10000
#define CONTACT_LISTS "contact_lists"

typedef struct reader_s {
    struct reader_s *next;
    char user[PL_USERNAME_LEN];
    char token[TOKEN_LEN];   /* the token what is below was read under ("" : none) */
    char current[TOKEN_LEN]; /* the token of this chunk */
    unsigned long loaded;    /* the chunk it was read in */
    unsigned long asked;     /* the chunk its token was asked for */
    int receipts;            /* settings.read_receipts */
    json_t *blocked;         /* users with a block either way */
} reader_t;

typedef struct group_s {
    struct group_s *next;
    char conv[PL_CONV_ID_LEN];
    long long count, read_ms;
} group_t;

struct st_share_s {
    pl_mongo_t *mongo;
    pl_redis_t *redis;
    long share_max;
    unsigned long chunk;
    reader_t *readers[BUCKETS];
    size_t nreaders;
    group_t *groups[BUCKETS];
    size_t ngroups;
};

st_share_t *st_share_new(pl_mongo_t *mg, pl_redis_t *rd, long share_max)
{
    st_share_t *s = calloc(1, sizeof(*s));
    if (s != NULL) {
        s->mongo = mg;
        s->redis = rd;
        s->share_max = share_max;
    }
    return s;
}

static void forget(st_share_t *s)
{
    for (size_t b = 0; b < BUCKETS; b++) {
        while (s->readers[b] != NULL) {
            reader_t *r = s->readers[b];
            s->readers[b] = r->next;
            json_decref(r->blocked);
            free(r);
        }
        while (s->groups[b] != NULL) {
            group_t *g = s->groups[b];
            s->groups[b] = g->next;
            free(g);
        }
    }
    s->nreaders = s->ngroups = 0;
}

void st_share_free(st_share_t **ps)
{
    if (ps == NULL || *ps == NULL) {
        return;
    }
    forget(*ps);
    free(*ps);
    *ps = NULL;
}

static reader_t *reader_get(st_share_t *s, const char *user)
{
    size_t b = pl_hash_str(user) % BUCKETS;
    for (reader_t *r = s->readers[b]; r != NULL; r = r->next) {
        if (strcmp(r->user, user) == 0) {
            return r;
        }
    }
    if (s->nreaders + s->ngroups >= CACHE_MAX) {
        forget(s);
    }
    reader_t *r = calloc(1, sizeof(*r));
    if (r != NULL) {
        snprintf(r->user, sizeof(r->user), "%s", user);
        r->next = s->readers[b];
        s->readers[b] = r;
        s->nreaders++;
    }
    return r;
}

struct tokens {
    reader_t **who;
};

static void on_token(void *ud, size_t idx, const char *field, const char *value)
{
    struct tokens *t = ud;
    (void)field;
    if (t->who[idx] != NULL) {
        snprintf(t->who[idx]->current, TOKEN_LEN, "%s", value);
    }
}

void st_share_prepare(st_share_t *s, const pl_cursor_t *curs, size_t n)
{
    s->chunk++;
    reader_t **who = calloc(n ? n : 1, sizeof(*who));
    char(*keys)[PL_KEY_LEN] = calloc(n ? n : 1, PL_KEY_LEN);
    const char **kp = calloc(n ? n : 1, sizeof(*kp));
    size_t k = 0;
    for (size_t i = 0; who != NULL && keys != NULL && kp != NULL && i < n; i++) {
        reader_t *r = reader_get(s, curs[i].user);
        if (r != NULL && r->asked != s->chunk && pl_key_policy(keys[k], r->user) == PL_OK) {
            r->asked = s->chunk; /* once per chunk */
            r->current[0] = '\0';
            who[k] = r;
            kp[k] = keys[k];
            k++;
        }
    }
    struct tokens t = {who};
    if (k > 0 && s->redis != NULL && pl_redis_get_multi(s->redis, kp, k, on_token, &t) == PL_OK) {
        for (size_t j = 0; j < k; j++) {
            if (who[j]->current[0] == '\0') {
                /* no token yet: make one, to cache under from the next chunk on */
                unsigned char raw[16];
                char fresh[TOKEN_LEN];
                int set = 0;
                pl_random_bytes(raw, sizeof(raw));
                pl_hex_encode(raw, sizeof(raw), fresh);
                pl_redis_set_nx(s->redis, kp[j], fresh, TOKEN_TTL_S, &set);
            }
        }
    }
    free(who);
    free(keys);
    free(kp);
}

static int find_opt(st_share_t *s, const char *coll, const char *id, bson_t **doc)
{
    int rc = pl_mongo_find_id(s->mongo, coll, id, doc);
    if (rc == PL_ERR_NOTFOUND) {
        *doc = NULL;
        return PL_OK;
    }
    return rc;
}

/* What r allows, read again unless cached under its current token. */
static int reader_load(st_share_t *s, reader_t *r)
{
    if (r->current[0] != '\0' && strcmp(r->token, r->current) == 0 && r->blocked != NULL) {
        return PL_OK;
    }
    bson_t *user = NULL, *lists = NULL;
    int rc = find_opt(s, "users", r->user, &user);
    if (rc == PL_OK) {
        rc = find_opt(s, CONTACT_LISTS, r->user, &lists);
    }
    if (rc == PL_OK) {
        bson_iter_t root, it, arr;
        r->receipts = !(user && bson_iter_init(&root, user) &&
                        bson_iter_find_descendant(&root, "settings.read_receipts", &it) &&
                        BSON_ITER_HOLDS_BOOL(&it) && !bson_iter_bool(&it));
        json_decref(r->blocked);
        r->blocked = json_array();
        if (lists && bson_iter_init_find(&it, lists, "blocked") && BSON_ITER_HOLDS_ARRAY(&it) &&
            bson_iter_recurse(&it, &arr)) {
            while (bson_iter_next(&arr)) {
                if (BSON_ITER_HOLDS_UTF8(&arr)) {
                    json_array_append_new(r->blocked, json_string(bson_iter_utf8(&arr, NULL)));
                }
            }
        }
        /* without a token it is good for this chunk only */
        snprintf(r->token, sizeof(r->token), "%s", r->current[0] ? r->current : "");
    }
    bson_destroy(user);
    bson_destroy(lists);
    return rc;
}

static int listed(json_t *users, const char *name)
{
    for (size_t i = 0; i < json_array_size(users); i++) {
        if (strcmp(json_string_value(json_array_get(users, i)), name) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The group's member_count, read again after GROUP_TTL_MS. */
static int group_size(st_share_t *s, const char *conv, long long *count)
{
    size_t b = pl_hash_str(conv) % BUCKETS;
    group_t *g = s->groups[b];
    while (g != NULL && strcmp(g->conv, conv) != 0) {
        g = g->next;
    }
    long long now = pl_now_ms();
    if (g != NULL && now - g->read_ms < GROUP_TTL_MS) {
        *count = g->count;
        return PL_OK;
    }
    bson_t *doc = NULL;
    bson_iter_t it;
    int rc = find_opt(s, ST_GROUPS, conv, &doc);
    *count = doc && bson_iter_init_find(&it, doc, "member_count") && BSON_ITER_HOLDS_NUMBER(&it)
                 ? bson_iter_as_int64(&it)
                 : 0;
    bson_destroy(doc);
    if (rc == PL_OK && g == NULL && (g = calloc(1, sizeof(*g))) != NULL) {
        snprintf(g->conv, sizeof(g->conv), "%s", conv);
        g->next = s->groups[b];
        s->groups[b] = g;
        s->ngroups++;
    }
    if (rc == PL_OK && g != NULL) {
        g->count = *count;
        g->read_ms = now;
    }
    return rc;
}

int st_share_decide(st_share_t *s, const pl_cursor_t *cur, int *share, json_t **except)
{
    *share = 0;
    *except = NULL;
    int kind = pl_conv_kind(cur->conv);
    reader_t *r = kind == 'u' ? NULL : reader_get(s, cur->user);
    if (r == NULL) {
        return kind == 'u' ? PL_OK : PL_ERR_NOMEM;
    }
    if (r->loaded != s->chunk) {
        int rc = reader_load(s, r);
        if (rc != PL_OK) {
            return rc;
        }
        r->loaded = s->chunk;
    }
    if (!r->receipts) {
        return PL_OK;
    }
    if (kind == 'd') {
        char a[PL_USERNAME_LEN], b[PL_USERNAME_LEN];
        if (sscanf(cur->conv, "d:%32[^:]:%32s", a, b) == 2) {
            *share = !listed(r->blocked, strcmp(a, cur->user) == 0 ? b : a);
        }
        return PL_OK;
    }
    long long count = 0;
    int rc = group_size(s, cur->conv, &count);
    if (rc == PL_OK && count <= s->share_max) {
        *share = 1;
        *except = json_array_size(r->blocked) ? json_incref(r->blocked) : NULL;
    }
    return rc;
}
