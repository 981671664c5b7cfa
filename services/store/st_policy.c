/*
 * The permission check before numbering (see st_policy.h). Per batch: one pipelined GET of
 * the receivers' policy tokens, then MongoDB only for pairs whose cached answer was read
 * under another token: the pair's contacts document and the receiver's settings, both by _id
 * (pl_policy_read: the one lookup every MongoDB-compatible server answers from an index).
 */
#include "st_policy.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/log.h"
#include "parley/policy.h"
#include "parley/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS     4096
#define TOKEN_LEN   33
#define TOKEN_TTL_S (7L * 86400) /* a token the store made; parley-auth's live as long */
#define CONTACTS    "contacts"
#define USERS       "users"

typedef struct answer_s {
    char receiver[PL_USERNAME_LEN];
    char sender[PL_USERNAME_LEN];
    char token[TOKEN_LEN]; /* "" when read without one: good for its batch only */
    unsigned long batch;
    int allowed;
    struct answer_s *next;
} answer_t;

struct st_policy_s {
    pl_mongo_t *mongo;
    pl_redis_t *redis;
    size_t max, count;
    unsigned long batch;
    answer_t *table[BUCKETS];
};

st_policy_t *st_policy_new(pl_mongo_t *mg, pl_redis_t *rd, size_t max)
{
    st_policy_t *p = calloc(1, sizeof(*p));
    if (p != NULL) {
        p->mongo = mg;
        p->redis = rd;
        p->max = max ? max : 1;
    }
    return p;
}

static void forget_all(st_policy_t *p)
{
    for (size_t b = 0; b < BUCKETS; b++) {
        while (p->table[b] != NULL) {
            answer_t *a = p->table[b];
            p->table[b] = a->next;
            free(a);
        }
    }
    p->count = 0;
}

void st_policy_free(st_policy_t **pp)
{
    if (pp == NULL || *pp == NULL) {
        return;
    }
    forget_all(*pp);
    free(*pp);
    *pp = NULL;
}

static size_t bucket(const char *receiver, const char *sender)
{
    unsigned long h = 5381;
    for (const char *c = receiver; *c; c++) {
        h = h * 33 + (unsigned char)*c;
    }
    h = h * 33 + '\n';
    for (const char *c = sender; *c; c++) {
        h = h * 33 + (unsigned char)*c;
    }
    return h % BUCKETS;
}

static answer_t *find(st_policy_t *p, const char *receiver, const char *sender)
{
    for (answer_t *a = p->table[bucket(receiver, sender)]; a != NULL; a = a->next) {
        if (strcmp(a->receiver, receiver) == 0 && strcmp(a->sender, sender) == 0) {
            return a;
        }
    }
    return NULL;
}

/* Remembers an answer; the whole table is dropped when full (answers are cheap to re-read). */
static void remember(st_policy_t *p, const char *receiver, const char *sender, const char *token,
                     int allowed)
{
    answer_t *a = find(p, receiver, sender);
    if (a == NULL) {
        if (p->count >= p->max) {
            forget_all(p);
        }
        if ((a = calloc(1, sizeof(*a))) == NULL) {
            return;
        }
        snprintf(a->receiver, sizeof(a->receiver), "%s", receiver);
        snprintf(a->sender, sizeof(a->sender), "%s", sender);
        size_t b = bucket(receiver, sender);
        a->next = p->table[b];
        p->table[b] = a;
        p->count++;
    }
    snprintf(a->token, sizeof(a->token), "%s", token);
    a->batch = p->batch;
    a->allowed = allowed;
}

struct tokens {
    char (*tok)[TOKEN_LEN];
};

static void on_token(void *ud, size_t idx, const char *field, const char *value)
{
    struct tokens *t = ud;
    (void)field;
    snprintf(t->tok[idx], TOKEN_LEN, "%s", value);
}

/* A candidate: a new text, edit or recall item between two different users of a 1:1
 * conversation. */
static int candidate(const st_rec_t *r)
{
    return r->first && strcmp(r->m.kind, PL_KIND_SYSTEM) != 0 && strncmp(r->m.conv, "d:", 2) == 0 &&
           strcmp(r->m.sender, r->m.receiver) != 0;
}

/* The receivers' tokens (tok[i] for recs[i], "" when absent or Redis is away); a missing
 * token is created, to be used from the next batch on. */
static void read_tokens(st_policy_t *p, st_rec_t *recs, size_t n, char (*tok)[TOKEN_LEN])
{
    char(*keys)[PL_KEY_LEN] = calloc(n ? n : 1, PL_KEY_LEN);
    const char **kp = calloc(n ? n : 1, sizeof(*kp));
    size_t k = 0;
    size_t *of = calloc(n ? n : 1, sizeof(*of));
    char(*got)[TOKEN_LEN] = calloc(n ? n : 1, TOKEN_LEN);
    if (keys == NULL || kp == NULL || of == NULL || got == NULL || p->redis == NULL) {
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (candidate(&recs[i]) && pl_key_policy(keys[k], recs[i].m.receiver) == PL_OK) {
            kp[k] = keys[k];
            of[k++] = i;
        }
    }
    struct tokens t = {got};
    if (pl_redis_get_multi(p->redis, kp, k, on_token, &t) != PL_OK) {
        goto out;
    }
    for (size_t j = 0; j < k; j++) {
        memcpy(tok[of[j]], got[j], TOKEN_LEN);
        if (got[j][0] == '\0') {
            unsigned char raw[16];
            char fresh[TOKEN_LEN];
            int set = 0;
            pl_random_bytes(raw, sizeof(raw));
            pl_hex_encode(raw, sizeof(raw), fresh);
            pl_redis_set_nx(p->redis, kp[j], fresh, TOKEN_TTL_S, &set);
        }
    }
out:
    free(keys);
    free(kp);
    free(of);
    free(got);
}

int st_policy_check(st_policy_t *p, st_rec_t *recs, size_t n)
{
    char(*tok)[TOKEN_LEN] = calloc(n ? n : 1, TOKEN_LEN);
    if (tok == NULL) {
        return PL_ERR_NOMEM;
    }
    p->batch++;
    read_tokens(p, recs, n, tok);
    int rc = PL_OK;
    for (size_t i = 0; i < n && rc == PL_OK; i++) {
        st_rec_t *r = &recs[i];
        if (!candidate(r)) {
            continue;
        }
        answer_t *a = find(p, r->m.receiver, r->m.sender);
        int allowed;
        if (a != NULL && ((tok[i][0] && strcmp(a->token, tok[i]) == 0) || a->batch == p->batch)) {
            allowed = a->allowed;
        } else {
            pl_policy_facts_t f;
            rc = pl_policy_read(p->mongo, r->m.sender, r->m.receiver, &f);
            allowed = pl_policy_allows(&f);
            if (rc == PL_OK) {
                remember(p, r->m.receiver, r->m.sender, tok[i], allowed);
            }
        }
        if (rc == PL_OK && !allowed) {
            r->refused = 1;
            r->first = 0;
        }
    }
    free(tok);
    return rc;
}
