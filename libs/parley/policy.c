/*
 * The facts of pl_policy_allows() as MongoDB holds them (see policy.h).
 */
#include "parley/policy.h"
#include "parley/err.h"

#include <string.h>

static int holds(const bson_t *doc, const char *key, const char *value)
{
    bson_iter_t root, it, arr;
    if (!bson_iter_init(&root, doc) || !bson_iter_find_descendant(&root, key, &it)) {
        return 0; /* key may be a dotted path */
    }
    if (BSON_ITER_HOLDS_UTF8(&it)) {
        return strcmp(bson_iter_utf8(&it, NULL), value) == 0;
    }
    if (BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &arr)) {
        while (bson_iter_next(&arr)) {
            if (BSON_ITER_HOLDS_UTF8(&arr) && value == NULL) {
                return 1; /* any element */
            }
            if (BSON_ITER_HOLDS_UTF8(&arr) && strcmp(bson_iter_utf8(&arr, NULL), value) == 0) {
                return 1;
            }
        }
    }
    return 0;
}

int pl_policy_read(pl_mongo_t *m, const char *sender, const char *receiver, pl_policy_facts_t *f)
{
    bson_t *pair = NULL, *user = NULL;
    char conv[PL_CONV_ID_LEN];
    memset(f, 0, sizeof(*f));
    pl_conv_id(sender, receiver, conv); /* the pair's document has the 1:1 conversation's id */
    int rc = pl_mongo_find_id(m, "contacts", conv, &pair);
    if (rc == PL_OK) {
        f->accepted = holds(pair, "state", "accepted");
        f->blocked = holds(pair, "blocks", NULL);
        bson_destroy(pair);
    } else if (rc != PL_ERR_NOTFOUND) {
        return rc;
    }
    rc = pl_mongo_find_id(m, "users", receiver, &user);
    if (rc == PL_ERR_NOTFOUND) {
        f->receiver_missing = 1;
        return PL_OK;
    }
    if (rc == PL_OK) {
        bson_iter_t it;
        f->contacts_only = holds(user, "settings.who_can_message", "contacts");
        f->receiver_disabled = bson_iter_init_find(&it, user, "disabled") && bson_iter_as_bool(&it);
        bson_destroy(user);
    }
    return rc;
}
