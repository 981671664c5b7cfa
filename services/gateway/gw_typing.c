/*
 * Typing (see gw_typing.h). Two tables: the recipients of a (typist, conversation) as
 * parley-auth last named them, kept TYPING_CACHE_MS (a block or a membership change shows
 * within that); and the typists heard here, by (conversation, typist), with the time their
 * "start" lapses and the users it was written to, so the lapse can be written to them too.
 * Both are bounded: a full table is emptied (the cache is asked again; a typist dropped from
 * the second just shows until its own stop or the client's timeout).
 */
#include "gw_typing.h"
#include "parley/enc.h"
#include "parley/err.h"
#include "parley/proto.h"
#include "parley/wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS         4096
#define TABLE_MAX       100000
#define TYPING_CACHE_MS 10000
#define KEY_LEN         (PL_CONV_ID_LEN + PL_USERNAME_LEN + 2)

typedef struct item_s {
    struct item_s *next;
    char key[KEY_LEN]; /* "<user>|<conv>" or "<conv>|<user>" */
    json_t *to;        /* recipients */
    long long until_ms;
} item_t;

typedef struct table_s {
    item_t *b[BUCKETS];
    size_t n;
} table_t;

struct gw_typing_s {
    gw_typing_cfg_t cfg;
    table_t cache; /* "<typist>|<conv>" -> who may know, until when */
    table_t heard; /* "<conv>|<typist>" -> to whom a start was written here, until it lapses */
    pl_metric_t *m_sent, *m_heard, *m_lapsed;
};

static void table_clear(table_t *t)
{
    for (size_t i = 0; i < BUCKETS; i++) {
        while (t->b[i] != NULL) {
            item_t *it = t->b[i];
            t->b[i] = it->next;
            json_decref(it->to);
            free(it);
        }
    }
    t->n = 0;
}

static item_t **table_slot(table_t *t, const char *key)
{
    item_t **pp = &t->b[pl_hash_str(key) % BUCKETS];
    while (*pp != NULL && strcmp((*pp)->key, key) != 0) {
        pp = &(*pp)->next;
    }
    return pp;
}

/* Sets key's entry (to is taken). */
static void table_put(table_t *t, const char *key, json_t *to, long long until_ms)
{
    item_t **pp = table_slot(t, key);
    if (*pp == NULL) {
        if (t->n >= TABLE_MAX) {
            table_clear(t);
            pp = table_slot(t, key);
        }
        if ((*pp = calloc(1, sizeof(**pp))) == NULL) {
            json_decref(to);
            return;
        }
        snprintf((*pp)->key, sizeof((*pp)->key), "%s", key);
        t->n++;
    }
    json_decref((*pp)->to);
    (*pp)->to = to;
    (*pp)->until_ms = until_ms;
}

static void table_del(table_t *t, item_t **pp)
{
    item_t *it = *pp;
    *pp = it->next;
    json_decref(it->to);
    free(it);
    t->n--;
}

gw_typing_t *gw_typing_new(const gw_typing_cfg_t *cfg)
{
    gw_typing_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->cfg = *cfg;
    pl_metrics_t *m = cfg->metrics;
    t->m_sent = pl_metrics_counter(m, "parley_gateway_typing_sent_total",
                                   "Typing frames of local users fanned out", NULL);
    t->m_heard = pl_metrics_counter(m, "parley_gateway_typing_heard_total",
                                    "Typing envelopes heard from the gateways", NULL);
    t->m_lapsed = pl_metrics_counter(m, "parley_gateway_typing_lapsed_total",
                                     "Typing starts ended here after 10 s without a refresh", NULL);
    return t;
}

void gw_typing_free(gw_typing_t **pt)
{
    if (pt == NULL || *pt == NULL) {
        return;
    }
    table_clear(&(*pt)->cache);
    table_clear(&(*pt)->heard);
    free(*pt);
    *pt = NULL;
}

/* ---- a local typist ---- */

static void fan_out(gw_typing_t *t, const char *user, const char *conv, int start, json_t *to)
{
    size_t n = json_array_size(to);
    const char **names = n ? calloc(n, sizeof(*names)) : NULL;
    json_t *env = json_pack("{s:[{s:s,s:s,s:s,s:s,s:O}]}", "msgs", "type", "typing", "conv", conv,
                            "user", user, "state", start ? "start" : "stop", "to", to);
    char *text = env ? json_dumps(env, JSON_COMPACT) : NULL;
    json_decref(env);
    if (names != NULL && text != NULL) {
        for (size_t i = 0; i < n; i++) {
            names[i] = json_string_value(json_array_get(to, i));
        }
        gw_redis_fanout(t->cfg.redis, names, n, text);
        pl_metric_inc(t->m_sent);
    }
    free(names);
    free(text);
}

struct question {
    gw_typing_t *t;
    char user[PL_USERNAME_LEN];
    char conv[PL_CONV_ID_LEN];
    int start;
    gw_typing_done_fn done;
    void *arg;
};

static void on_recipients(void *arg, int rc, json_t *answer)
{
    struct question *q = arg;
    json_t *to = json_object_get(answer, "to");
    if (rc == PL_OK && json_is_array(to)) {
        char key[KEY_LEN];
        snprintf(key, sizeof(key), "%s|%s", q->user, q->conv);
        table_put(&q->t->cache, key, json_incref(to), pl_now_ms() + TYPING_CACHE_MS);
        fan_out(q->t, q->user, q->conv, q->start, to);
    }
    q->done(q->arg, rc == PL_OK || rc == PL_ERR_FORBIDDEN ? rc : PL_ERR_UNAVAIL);
    free(q);
}

void gw_typing_send(gw_typing_t *t, const char *user, const char *conv, int start,
                    gw_typing_done_fn done, void *arg)
{
    char key[KEY_LEN];
    snprintf(key, sizeof(key), "%s|%s", user, conv);
    item_t **pp = table_slot(&t->cache, key);
    if (*pp != NULL && (*pp)->until_ms > pl_now_ms()) {
        fan_out(t, user, conv, start, (*pp)->to);
        done(arg, PL_OK);
        return;
    }
    struct question *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        done(arg, PL_ERR_UNAVAIL);
        return;
    }
    *q = (struct question){.t = t, .start = start, .done = done, .arg = arg};
    snprintf(q->user, sizeof(q->user), "%s", user);
    snprintf(q->conv, sizeof(q->conv), "%s", conv);
    char path[200];
    snprintf(path, sizeof(path), "/internal/typing?conv=%s&user=%s", conv, user);
    gw_users_call(t->cfg.users, "GET", path, NULL, on_recipients, q);
}

/* ---- typists heard ---- */

static void write_to(gw_typing_t *t, json_t *to, const char *conv, const char *user, int start)
{
    char *text = pl_frame_typing(conv, user, start);
    if (text == NULL) {
        return;
    }
    size_t len = strlen(text);
    for (size_t i = 0; i < json_array_size(to); i++) {
        const char *u = json_string_value(json_array_get(to, i));
        if (u != NULL) {
            t->cfg.deliver(t->cfg.ud, u, text, len);
        }
    }
    free(text);
}

void gw_typing_heard(gw_typing_t *t, json_t *rec)
{
    const char *conv = json_string_value(json_object_get(rec, "conv"));
    const char *user = json_string_value(json_object_get(rec, "user"));
    const char *state = json_string_value(json_object_get(rec, "state"));
    json_t *to = json_object_get(rec, "to");
    if (conv == NULL || user == NULL || state == NULL || !json_is_array(to) ||
        strlen(conv) >= PL_CONV_ID_LEN || strlen(user) >= PL_USERNAME_LEN) {
        return;
    }
    pl_metric_inc(t->m_heard);
    int start = strcmp(state, "start") == 0;
    write_to(t, to, conv, user, start);
    char key[KEY_LEN];
    snprintf(key, sizeof(key), "%s|%s", conv, user);
    if (start) {
        table_put(&t->heard, key, json_incref(to), pl_now_ms() + GW_TYPING_EXPIRE_MS);
        return;
    }
    item_t **pp = table_slot(&t->heard, key);
    if (*pp != NULL) {
        table_del(&t->heard, pp);
    }
}

void gw_typing_tick(gw_typing_t *t)
{
    long long now = pl_now_ms();
    for (size_t b = 0; b < BUCKETS; b++) {
        item_t **pp = &t->heard.b[b];
        while (*pp != NULL) {
            if ((*pp)->until_ms > now) {
                pp = &(*pp)->next;
                continue;
            }
            /* "<conv>|<user>": conversation ids hold no '|' */
            char conv[PL_CONV_ID_LEN];
            const char *bar = strchr((*pp)->key, '|');
            snprintf(conv, sizeof(conv), "%.*s", (int)(bar - (*pp)->key), (*pp)->key);
            write_to(t, (*pp)->to, conv, bar + 1, 0);
            pl_metric_inc(t->m_lapsed);
            table_del(&t->heard, pp);
        }
    }
}
